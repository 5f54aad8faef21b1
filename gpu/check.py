"""The GPU check kit: one command that proves the GPU path on a GPU machine in under 8 minutes and
writes what it saw to DIR/gpu_check.json and DIR/gpu_check.md (DIR/gpu_check_logs.tar.gz: every
job's log).

    python3 gpu/check.py                    # on a CUDA machine: DIR is $OUT
    python3 gpu/check.py --out DIR          # ... or DIR
    python gpu/check.py --cpu --out DIR     # every check at tiny sizes on the CPU

A bare machine (Python 3.12 with torch, no Snakemake, no network) needs ``.gpukit/`` in this checkout
(``make gpu-kit``): where jsonschema or Snakemake is missing the kit first installs the wheels carried
there (``pip install --no-index --no-deps --target``), then runs the package from src/ (PYTHONPATH, no
install) behind a ``transferability`` command of its own. The sections (gpu/sections.py, from the
modules beside it) run in order under one time budget; a section that fails is recorded with its
error and the kit goes on. The report is rewritten after every section, so a kill leaves what was
done. Only the standard library is imported before the set-up: on a bare machine nothing else may be
there yet.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / ".gpukit"  # what `make gpu-kit` packs: wheels/, fashion-mnist/, COMMIT
NEEDED = ("jsonschema", "snakemake")  # what the GPU machine's image lacks (gpu/requirements.txt)
FMNIST = [Path("/usr/share/datasets/fashion-mnist"), KIT / "fashion-mnist"]
# The device tool allows 10 minutes a call and the issue 8 for the kit: its sections stop by 7.5.
# A CPU run has no such limit; its budget only stops a hung run (a loaded 2-core machine took 20 min).
BUDGET_S = {"cuda": 450, "cpu": 3600}
# The order the sections run in, and the most each may take of a CUDA run's budget: correctness
# first, then the measurements, whose configurations come in order of importance.
CAPS_S = {"device": 30, "smoke": 150, "snakemake": 60, "lock": 75, "prepare": 45, "throughput": 450}


def setup(work: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """The carried wheels where a needed module is missing, src/ on the path, a `transferability`
    command as the project's install gives one; the environment every job of the kit runs in."""
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    wheels = sorted((KIT / "wheels").glob("*.whl"))
    paths = [str(ROOT / "src")]
    if missing and wheels:
        site = work / "site"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels)], check=True)
        paths.append(str(site))
    sys.path[:0] = paths
    importlib.invalidate_caches()
    command = work / "bin" / "transferability"
    command.parent.mkdir(parents=True)
    command.write_text(f"#!{sys.executable}\nimport sys\nfrom transferability.cli import main\nsys.exit(main())\n")
    command.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, *filter(None, [os.environ.get("PYTHONPATH")])]),
           "PATH": f"{command.parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "GIT_PYTHON_REFRESH": "quiet",  # Snakemake's GitPython on a machine without git
           "PYTHONUNBUFFERED": "1"}
    return env, {"python": sys.version.split()[0], "executable": sys.executable, "missing_before": missing,
                 "wheels_installed": len(wheels) if missing and wheels else 0,
                 "missing_after": [m for m in NEEDED if importlib.util.find_spec(m) is None]}


def commit() -> str:
    """This checkout's commit; where the copied tree has no .git, the one `make gpu-kit` packed."""
    proc = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if proc.returncode == 0 and proc.stdout.strip():
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src", "gpu", "benchmarks"],
                               capture_output=True, text=True).stdout.strip()
        return proc.stdout.strip() + ("+changes" if dirty else "")
    packed = KIT / "COMMIT"
    return f"{packed.read_text().strip()[:12]} (packed)" if packed.exists() else "unknown"


def checks(sections: dict[str, Any]) -> dict[str, Any]:
    """Each claim the kit tests, true, false, or None where its section did not get that far."""
    smoke, lock, snake = sections.get("smoke", {}), sections.get("lock", {}), sections.get("snakemake", {})
    prep, thr = sections.get("prepare", {}), sections.get("throughput", {})
    return {"smoke_within_tolerance": smoke.get("within_tolerance"),
            "snakemake_same_as_cli": snake.get("all_same"),
            "lock_serialised": lock.get("serialised"),
            "killed_holder_freed_card": lock.get("kill", {}).get("freed_card"),
            "resume_identical": lock.get("kill", {}).get("resumed_metrics_identical"),
            "prepare_images_per_s": prep.get("images_per_s"),
            "throughput_measured": sum(c["status"] == "ok" for c in thr.get("configs", [])) if thr else None,
            # the ImageNet profile's streamed configuration measured first: what bounds its loop
            "streamed_bound": next((c["verdict"] for c in thr.get("configs", []) if "bound" in c), None)}


def cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(cell(v) for v in row) + " |" for row in rows], ""]


def markdown(report: dict[str, Any]) -> str:
    s = report["sections"]
    dev = s.get("device", {})
    out = [f"# GPU check: {dev.get('name', '?')}, {report['date']}, commit {report['commit']}", "",
           f"`{report['command']}`: {report['elapsed_s']:.0f} s of a {report['budget_s']} s budget"
           f"{'' if report['finished'] else ' (still running)'}.", ""]
    out += table(["section", "status", "seconds", "result"],
                 [[k, v["status"], v.get("seconds"), v.get("summary") or v.get("error", "").split("\n")[0]]
                  for k, v in s.items()])
    out += table(["check", "result"], [[k, v] for k, v in report["checks"].items()])
    if dev.get("torch"):
        keys = ["name", "driver", "torch", "torch_cuda", "cudnn", "capability", "memory_gib", "cores", "python"]
        out += ["## Device", ""] + table(keys, [[dev.get(k) for k in keys]])
    if runs := s.get("smoke", {}).get("device_runs"):
        sm = s["smoke"]
        out += [f"## Smoke experiment: {dev.get('name')} against the CPU", "",
                f"Top-1 (mean of the k best evaluations) on {sm['test_images']} test images per network.", ""]
        out += [f"- {name} (compute.precision: {r['precision']}): "
                + (f"run failed: {r['run']['error'].splitlines()[0]}; " if "error" in r["run"] else "")
                + f"{sm['networks'] - r['missing']} networks compared, max |diff| "
                f"{r['max_abs_diff']:.4f}, mean |diff| {r['mean_abs_diff']:.4f}, mean diff {r['mean_diff']:+.4f}, "
                f"{r['identical']} of {sm['networks']} bit-identical; tolerance {r['tolerance']['per_network']} per "
                f"network, {r['tolerance']['mean_abs']} on the mean |diff|, {r['tolerance']['mean']} on the mean diff "
                f"({r['tolerance']['why']}): "
                + ("**within**" if r["within_tolerance"] else "**OUTSIDE**") for name, r in runs.items()]
        by_run = [{c["network"]: c for c in r["compare"]} for r in runs.values()]
        cpu = {n: c["cpu"] for rows in by_run for n, c in rows.items()}
        out += [""] + table(["network", "CPU", *[h for name in runs for h in (name, f"{name} - CPU")]],
                            [[n, acc, *[v for rows in by_run for v in ((rows[n]["device"], rows[n]["diff"])
                                                                        if n in rows else ("missing", ""))]]
                             for n, acc in cpu.items()])
    if jobs := s.get("lock", {}).get("jobs"):
        out += ["## Per-card lock", ""] + table(["job", "started (s)", "claimed the card (s)", "last line (s)",
                                                  "waited (s)"],
                                                 [[j["network"], j["started_s"], j["claimed_s"], j["last_line_s"],
                                                   j["waited_s"]] for j in jobs])
    if configs := s.get("throughput", {}).get("configs"):
        out += ["## Training throughput", ""]
        out += table(["net", "batch", "precision", "compile", "images/s", "peak memory (MiB)", "GPU busy (%)",
                      "streamed", "status"],
                     [[c["net"], c.get("batch"), c["precision"], c["compile"], c.get("images_per_s"),
                       c.get("peak_mem_mib"), c.get("gpu_busy_pct"), c.get("streamed"), c["status"]]
                      for c in configs])
        if split := [c for c in configs if "bound" in c]:
            out += ["### Loader against step", "",
                    "The loader alone (the job's batches and crops, nothing trained), the step alone (the same "
                    "training, the half held on the device), and the loop that runs both; the slower side bounds "
                    "the loop, which runs at its rate when the two overlap and at the serial rate when they take "
                    "turns.", ""]
            out += table(["net", "precision", "compile", "loader images/s", "step images/s", "loop images/s",
                          "serial images/s", "loop / bound", "bound", "GPU busy: loader / step / loop (%)"],
                         [[c["net"], c["precision"], c["compile"], c["loader_images_per_s"], c["step_images_per_s"],
                           c["images_per_s"], c["serial_images_per_s"], c["loop_of_bound"], c["verdict"],
                           " / ".join(cell(c[k]) or "-" for k in ("loader_gpu_busy_pct", "step_gpu_busy_pct",
                                                                  "gpu_busy_pct"))]
                          for c in split])
    if "images_per_s" in (prep := s.get("prepare", {})):
        out += ["## Prepare", ""] + table(["JPEGs", "workers", "seconds", "images/s", "images/s per core"],
                                          [[prep["images"], prep["workers"], prep["seconds"], prep["images_per_s"],
                                            prep["images_per_s_per_core"]]])
    return "\n".join(out)


def write(out: Path, report: dict[str, Any], t0: float) -> None:
    from transferability.files.atomic import write_json, write_text  # stdlib only: importable before set-up

    report["elapsed_s"] = round(time.monotonic() - t0, 1)
    report["checks"] = checks(report["sections"])
    write_json(out / "gpu_check.json", report)
    write_text(out / "gpu_check.md", markdown(report) + "\n")


def pack_logs(work: Path, out: Path) -> None:
    """Every job's log (the work folder goes with the machine), as one small archive."""
    with tarfile.open(out / "gpu_check_logs.tar.gz", "w:gz") as tar:
        for log in sorted(work.rglob("*.log")):
            tar.add(log, arcname=str(log.relative_to(work)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder for the report (default: $OUT)")
    p.add_argument("--cpu", action="store_true", help="every check at tiny sizes on the CPU, no GPU needed")
    p.add_argument("--budget-s", type=float, default=None, help="stop the sections after this many seconds "
                   f"(default: {BUDGET_S['cuda']} on a GPU, {BUDGET_S['cpu']} with --cpu)")
    p.add_argument("--work", default=None, help="scratch folder, kept (default: a temporary one, removed)")
    args = p.parse_args()
    if not args.out:
        p.error("say where the report goes: --out DIR (or set $OUT)")
    fmnist = next((r for r in FMNIST if (r / "train-images-idx3-ubyte.gz").exists()), None)
    if fmnist is None:
        p.error(f"no Fashion-MNIST in {FMNIST[0]} or {FMNIST[1]}: `apt-get install dataset-fashion-mnist`, "
                "or `make gpu-kit` here to pack a copy that travels with the checkout")
    t0 = time.monotonic()
    mode = "cpu" if args.cpu else "cuda"
    budget = args.budget_s or BUDGET_S[mode]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"kit": "gpu_check", "date": datetime.now(UTC).isoformat(timespec="seconds"),
                              "commit": commit(), "mode": mode, "command": " ".join(["python3", *sys.argv]),
                              "budget_s": budget, "finished": False, "data": str(fmnist), "sections": {}}
    try:
        env, info = setup(work)
        report["sections"]["setup"] = {"status": "ok", "seconds": round(time.monotonic() - t0, 1), **info,
                                       "summary": f"Python {info['python']}, {info['wheels_installed']} wheels "
                                                  f"installed, missing: {info['missing_after'] or 'nothing'}"}
    except Exception as exc:  # noqa: BLE001 - nothing else can run: say why and stop
        sys.path.insert(0, str(ROOT / "src"))
        report["sections"]["setup"] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        write(out, report, t0)
        print(f"error: set-up failed: {exc}", file=sys.stderr)
        return 1
    sys.path.insert(0, str(Path(__file__).parent))  # the sections beside this file, importable after set-up
    from kit import Kit
    from sections import SECTIONS

    kit = Kit(device=mode, work=work, deadline=0.0, env=env, fmnist=fmnist)
    end = t0 + budget
    for name in CAPS_S:
        kit.deadline = end if args.cpu else min(end, time.monotonic() + CAPS_S[name])
        started = time.monotonic()
        device_failed = "device" in kit.results and report["sections"]["device"]["status"] != "ok"
        if end - started < 10 or device_failed:
            why = "the device section failed" if device_failed else "time budget"
            report["sections"][name] = {"status": "skipped", "summary": f"skipped: {why}"}
            continue
        print(f"[{started - t0:5.0f} s] {name} ...", flush=True)
        try:
            result = SECTIONS[name](kit)
            record = {"status": "skipped" if "skipped" in result else "ok",
                      "seconds": round(time.monotonic() - started, 1), **result}
        except Exception as exc:  # noqa: BLE001 - recorded; the next section runs
            record = {"status": "failed", "seconds": round(time.monotonic() - started, 1),
                      "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        kit.results[name] = record
        report["sections"][name] = record
        print(f"[{time.monotonic() - t0:5.0f} s] {name}: {record['status']}: "
              f"{record.get('summary') or record.get('error', '')[:300]}", flush=True)
        write(out, report, t0)
    report["finished"] = True
    write(out, report, t0)
    pack_logs(work, out)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    print(markdown(report))
    failed = [k for k, v in report["sections"].items() if v["status"] == "failed"]
    failed += [k for k, v in report["checks"].items() if v is False]
    if failed:
        print(f"error: the GPU check found problems: {', '.join(failed)} (see {out / 'gpu_check.md'})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
