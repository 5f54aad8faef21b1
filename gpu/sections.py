"""The GPU check kit's sections: each proves one part of the GPU path through the real pipeline and
returns what it saw, as plain data for gpu/check.py's JSON and Markdown table.

- ``device``: what the kit ran on;
- ``smoke``: the smoke experiment trained through the CLI stages in DAG order on the device (as
  configured: IEEE float32; and with ``compute.precision: tf32``), and beside it on the CPU; every
  network's accuracy compared;
- ``snakemake``: part of it again through Snakemake with ``--resources gpu=1``: the CLI's bits;
- ``lock``: training jobs started at once on one card run one at a time; a killed holder frees the
  card, and the killed job resumes from its checkpoint with the uninterrupted run's metrics;
- ``prepare``: a generated JPEG tree through the prepare stage with every core;
- ``throughput``: training images/s through ``training.train`` and the real data path (the default
  small net from memory, CaffeNet at batch 256 streamed from the prepared store), float32 and
  bfloat16, with and without torch.compile: peak memory and the share of time the GPU was busy; for
  the streamed net, the loader alone and the step alone beside the loop, and which one bounds it.

Work that may crash, hang or overrun runs in a process of its own, started as
``python gpu/sections.py <worker> <config.json> <result.json>``: each throughput configuration,
the prepare measurement, and (``locked-train``, CPU runs only) a train stage behind the per-card
lock, which a CUDA job takes itself and a CPU job never does.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from transferability import params as tparams
from transferability import runs
from transferability.runs import Network

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"  # common.py and prepare.py, which the workers reuse
PROFILES = ROOT / "workflow" / "params"
CLAIMED = "claimed GPU"  # how a training job says it holds a card (devices.resolve_device)
# Accuracies on the device against the CPU (smoke section), from gpu/tolerance.py: how far
# rounding alone moved the smoke experiment's 46 k-best accuracies on the CPU (200 test images a
# network: 0.005 an image; 14 SGD steps, after which a small change in the weights moves the images
# near a decision boundary). Per network, on the mean |difference|, and on the signed mean, where a
# defect of the GPU path (other crops, a wrong normalisation, a frozen layer trained) would show: it
# moves every network the same way. Each bound is the measurement with a margin for its own spread.
TOLERANCE = {
    "fp32": {"per_network": 0.05, "mean_abs": 0.01, "mean": 0.005,
             "why": "float32 kernels of another summation order (torch's instead of oneDNN's) moved them on the "
                    "CPU by at most 0.035, 0.0034 on average, -0.0002 signed (standard error 0.0012)"},
    "tf32": {"per_network": 0.075, "mean_abs": 0.02, "mean": 0.01,
             "why": "bfloat16 autocast, a coarser rounding than TF32's, moved them on the CPU by at most 0.06, "
                    "0.0125 on average, -0.0027 signed (standard error 0.0027)"},
}


@dataclass
class Kit:
    """What every section needs: the device, a scratch folder, the time left, the environment."""

    device: str                 # "cuda", or "cpu" for the tiny CPU run (--cpu)
    work: Path                  # workspaces, stores and logs
    deadline: float             # time.monotonic() by which the sections must have stopped
    env: dict[str, str]         # PATH with the `transferability` command, PYTHONPATH with src/
    fmnist: Path                # the Fashion-MNIST folder every workspace reads
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    results: dict[str, Any] = field(default_factory=dict)  # earlier sections', by name

    @property
    def tiny(self) -> bool:
        return self.device == "cpu"

    def left(self, reserve: float = 0.0) -> float:
        """Seconds left before the deadline, less ``reserve``; at least 1 (subprocess timeouts)."""
        return max(1.0, self.deadline - time.monotonic() - reserve)


class JobFailed(RuntimeError):
    """A command of the pipeline failed; the message ends with its stderr's last lines."""

    def __init__(self, cmd: list[str], proc: subprocess.CompletedProcess | None, note: str = "") -> None:
        tail = "" if proc is None else (proc.stderr or "")[-1500:]
        super().__init__(f"{' '.join(cmd)}: {note or f'exit {proc.returncode}'}\n{tail}")


# --- params and workspaces -------------------------------------------------------------------

def smoke_params(kit: Kit, device: str, locks: str = "locks", precision: str | None = None) -> dict[str, Any]:
    """The smoke profile on ``device`` (in ``precision`` where given), its card locks in
    ``work/<locks>``; in a tiny run three networks of it instead of 46."""
    params = copy.deepcopy(tparams.load(PROFILES / "smoke.yaml"))
    params["dataset"]["root"] = str(kit.fmnist)
    params["compute"].update(device=device, gpu_lock_dir=str(kit.work / locks))
    if precision:
        params["compute"]["precision"] = precision
    if kit.tiny:
        params["experiment"].update(variants=["AnB"], layers=[2],
                                    dissimilar={"splits": [], "seeds": [0], "variants": []})
        params["estimators"]["methods"] = []  # one n: nothing to rank
    return tparams.validate(params, "smoke params")


def workspace(kit: Kit, name: str, params: dict[str, Any], snakefile: bool = False) -> Path:
    """A fresh project folder with ``params`` as its params.yaml (and the workflow, for Snakemake)."""
    ws = kit.work / name
    shutil.rmtree(ws, ignore_errors=True)
    ws.mkdir(parents=True)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if snakefile:
        shutil.copy2(ROOT / "Snakefile", ws / "Snakefile")
        shutil.copytree(ROOT / "workflow", ws / "workflow", ignore=shutil.ignore_patterns("__pycache__"))
    return ws


def train_args(net: Network) -> list[str]:
    n = ["--n", str(net.n)] if net.n is not None else []
    return ["train", "--split", net.split, "--seed", str(net.seed), "--variant", net.variant, *n]


def label(net: Network) -> str:
    return f"{net.split}/seed{net.seed}/{net.slug}"


def job_threads(ws: Path) -> list[str]:
    """``--threads compute.threads``, as Snakemake gives a job: the count is in each metrics.json."""
    return ["--threads", str(yaml.safe_load((ws / "params.yaml").read_text())["compute"]["threads"])]


def cli(kit: Kit, ws: Path, *args: str) -> subprocess.CompletedProcess:
    """One stage, exactly as a Snakemake rule runs it (with the threads the params ask for); its output
    kept in ws/logs/."""
    cmd = ["transferability", "--params", "params.yaml", *job_threads(ws), *args]
    try:
        proc = subprocess.run(cmd, cwd=ws, env=kit.env, capture_output=True, text=True,
                              timeout=kit.left())
    except subprocess.TimeoutExpired as exc:
        raise JobFailed(cmd, None, "stopped: the kit's time budget ran out") from exc
    log = ws / "logs" / ("_".join(a.lstrip("-") for a in args) + ".log")
    log.parent.mkdir(exist_ok=True)
    log.write_text(proc.stderr)
    if proc.returncode:
        raise JobFailed(cmd, proc)
    return proc


def run_dag(kit: Kit, ws: Path, params: dict[str, Any], workers: int) -> dict[str, Any]:
    """prepare, split, then every network's train stage in DAG order (the bases, then the networks
    that copy from them), ``workers`` jobs at a time."""
    t = time.monotonic()
    exp = params["experiment"]
    cli(kit, ws, "prepare")
    for split in [*exp["splits"], *exp["dissimilar"]["splits"]]:
        cli(kit, ws, "split", "--split", split)
    nets = runs.networks(params)
    for wave in ([n for n in nets if n.is_base], [n for n in nets if not n.is_base]):
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda net: cli(kit, ws, *train_args(net)), wave))
    wall = [json.loads((ws / n.file("timing.json")).read_text())["wall_time_s"] for n in nets]
    return {"networks": len(nets), "workers": workers, "seconds": round(time.monotonic() - t, 1),
            "train_seconds": round(sum(wall), 1)}


def metrics(ws: Path, net: Network) -> dict[str, Any]:
    return json.loads((ws / net.file("metrics.json")).read_text())


# --- sections ----------------------------------------------------------------------------------

def device(kit: Kit) -> dict[str, Any]:
    import torch

    out = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "python": platform.python_version(),
           "host": platform.node(), "cores": kit.cores, "cpu": cpu_name(),
           "host_memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
           "env": {k: os.environ[k] for k in ("CUDA_VISIBLE_DEVICES", "NVIDIA_TF32_OVERRIDE") if k in os.environ}}
    if kit.tiny:
        return {**out, "name": "cpu", "summary": f"the CPU ({out['cpu']}), torch {out['torch']}"}
    if not torch.cuda.is_available():
        smi = shutil.which("nvidia-smi")
        raise RuntimeError(f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no CUDA device; "
                           f"nvidia-smi {'is at ' + smi if smi else 'is not installed'}")
    props = torch.cuda.get_device_properties(0)
    driver = nvidia_smi("driver_version")
    return {**out, "name": props.name, "summary": f"{props.name}, driver {driver}, torch {out['torch']}",
            "count": torch.cuda.device_count(),
            "capability": f"{props.major}.{props.minor}", "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count, "cudnn": torch.backends.cudnn.version(),
            "driver": driver,
            # float32 on a GPU: cuDNN convolutions use TF32 unless told not to; matrix products do not
            "tf32": {"cudnn_conv": torch.backends.cudnn.allow_tf32,
                     "matmul": torch.backends.cuda.matmul.allow_tf32}}


def device_runs(kit: Kit) -> dict[str, dict[str, Any]]:
    """The smoke experiment's runs on the device, each with the ``compute.precision`` its jobs run in
    (None: the profile's own, float32), which ``devices.setup`` turns into torch's float32 settings
    as in any training job, and its tolerance. On a GPU: as configured (IEEE float32, the CPU's
    scale of rounding), then ``tf32`` (float32 convolutions and matrix products in TF32). The first
    is the one the Snakemake section repeats. A tiny run has the CPU as its device: the same bits."""
    if kit.tiny:
        return {"cpu": {"precision": None, "tolerance": {"per_network": 0.0, "mean_abs": 0.0, "mean": 0.0,
                                                         "why": "the same device: the same bits"}}}
    return {"fp32": {"precision": None, "tolerance": TOLERANCE["fp32"]},
            "tf32": {"precision": "tf32", "tolerance": TOLERANCE["tf32"]}}


def compare(dev_ws: Path, cpu_ws: Path, nets: list[Network], tolerance: dict[str, Any],
            exact: bool) -> dict[str, Any]:
    """Every network's k-best accuracy (and every evaluation's) in one run against the CPU run; a
    network the run did not finish counts as missing, and a run with one missing is not within."""
    rows = []
    done = [n for n in nets if (dev_ws / n.file("metrics.json")).exists()]
    for net in done:
        a, b = metrics(dev_ws, net), metrics(cpu_ws, net)
        rows.append({"network": label(net), "device": a["top1_kbest"], "cpu": b["top1_kbest"],
                     "diff": round(a["top1_kbest"] - b["top1_kbest"], 6),
                     "evals_max_diff": round(max(abs(x["top1"] - y["top1"])
                                                 for x, y in zip(a["evals"], b["evals"], strict=True)), 6),
                     "same_schedule": all(a[k] == b[k] for k in ("steps", "num_train", "num_test"))
                     and len(a["evals"]) == len(b["evals"]),
                     "identical": (dev_ws / net.file("metrics.json")).read_bytes()
                     == (cpu_ws / net.file("metrics.json")).read_bytes()})
    diffs = [r["diff"] for r in rows] or [float("nan")]
    worst, mean_abs = max(map(abs, diffs)), sum(map(abs, diffs)) / len(diffs)
    mean = sum(diffs) / len(diffs)
    within = (len(done) == len(nets) and all(r["same_schedule"] for r in rows) and worst <= tolerance["per_network"]
              and mean_abs <= tolerance["mean_abs"] and abs(mean) <= tolerance["mean"]
              and (not exact or all(r["identical"] for r in rows)))
    return {"max_abs_diff": worst, "mean_abs_diff": round(mean_abs, 6), "mean_diff": round(mean, 6),
            "missing": len(nets) - len(done), "identical": sum(r["identical"] for r in rows),
            "within_tolerance": within, "compare": rows}


def smoke(kit: Kit) -> dict[str, Any]:
    """The smoke experiment on the device (each of device_runs) and on the CPU at once, through the
    CLI; every network's accuracy compared with the CPU's."""
    plans = device_runs(kit)
    cpu_params = smoke_params(kit, "cpu")
    cpu_ws = workspace(kit, "smoke-cpu-reference", cpu_params)
    # each device run has locks of its own, so the runs share the card; two jobs a run, so a job's
    # start-up is hidden behind the other's training while it waits for the lock
    workers = 1 if kit.tiny else 2
    with ThreadPoolExecutor(len(plans) + 1) as pool:
        started = {}
        for name, plan in plans.items():
            plan["params"] = smoke_params(kit, kit.device, f"locks-{name}", plan["precision"])
            plan["ws"] = workspace(kit, f"smoke-on-{name}", plan["params"])
            started[name] = pool.submit(run_dag, kit, plan["ws"], plan["params"], workers)
        cpu = pool.submit(run_dag, kit, cpu_ws, cpu_params, max(1, kit.cores - workers * len(plans)))
        cpu_run = cpu.result()  # without the CPU's run there is nothing to compare: the section fails
        done = {}
        for name, future in started.items():  # a device run that fails is a finding: kept, with its error
            try:
                done[name] = future.result()
            except Exception as exc:  # noqa: BLE001
                done[name] = {"error": f"{type(exc).__name__}: {exc}"}
    nets = runs.networks(cpu_params)
    out = {"cpu_run": cpu_run, "networks": len(nets), "test_images": metrics(cpu_ws, nets[0])["num_test"],
           "device_runs": {name: {"run": done[name], "precision": plan["params"]["compute"].get("precision", "float32"),
                                  "tolerance": plan["tolerance"],
                                  **compare(plan["ws"], cpu_ws, nets, plan["tolerance"], kit.tiny)}
                           for name, plan in plans.items()}}
    out["within_tolerance"] = all(r["within_tolerance"] for r in out["device_runs"].values())
    out["summary"] = "; ".join(
        f"{name}: {len(nets) - r['missing']} of {len(nets)} networks, max |device - CPU| {r['max_abs_diff']:.4f}, "
        f"mean {r['mean_abs_diff']:.4f}, signed {r['mean_diff']:+.4f} (tolerance {r['tolerance']['per_network']} / "
        f"{r['tolerance']['mean_abs']} / {r['tolerance']['mean']}): "
        + ("within" if r["within_tolerance"] else "OUTSIDE") for name, r in out["device_runs"].items())
    return out


def snakemake_targets(params: dict[str, Any]) -> list[Network]:
    """The first split's bases and every variant at the middle n: each rule and kind of network."""
    exp = params["experiment"]
    split, seed, n = exp["splits"][0], exp["seeds"][0], exp["layers"][len(exp["layers"]) // 2]
    return [Network(split, seed, "baseA"), Network(split, seed, "baseB"),
            *[Network(split, seed, v, n) for v in exp["variants"]]]


def snakemake(kit: Kit) -> dict[str, Any]:
    """Networks of the smoke run again through Snakemake on the device: the same bytes as the CLI's."""
    if importlib.util.find_spec("snakemake") is None:
        return {"skipped": "Snakemake is not installed here", "summary": "Snakemake is not installed here"}
    params = smoke_params(kit, kit.device)
    ws = workspace(kit, "snakemake", params, snakefile=True)
    targets = snakemake_targets(params)
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(kit.cores), "--resources", "gpu=1",
           "--scheduler", "greedy", *[str(n.file("metrics.json")) for n in targets]]
    t = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ws, env=kit.env, capture_output=True, text=True, timeout=kit.left())
    except subprocess.TimeoutExpired as exc:
        raise JobFailed(cmd, None, "stopped: the kit's time budget ran out") from exc
    (ws / "snakemake.log").write_text(proc.stderr)
    if proc.returncode:
        raise JobFailed(cmd, proc)
    cli_ws = kit.work / f"smoke-on-{next(iter(device_runs(kit)))}"  # the run as configured
    same = {label(n): (ws / n.file("metrics.json")).read_bytes() == (cli_ws / n.file("metrics.json")).read_bytes()
            for n in targets if (cli_ws / n.file("metrics.json")).exists()}
    gpu_jobs = [ln for ln in proc.stderr.splitlines() if ln.strip().startswith("resources:") and "gpu=1" in ln]
    return {"command": " ".join(["snakemake", *cmd[3:6]]) + " ...", "targets": [label(n) for n in targets],
            "seconds": round(time.monotonic() - t, 1), "same_as_cli": same,
            "all_same": bool(same) and all(same.values()), "jobs_with_gpu_1": len(gpu_jobs),
            "summary": f"{len(targets)} networks via `snakemake --resources gpu=1`: "
                       f"{sum(same.values())} of {len(same)} metrics.json identical to the CLI run's"}


class Job:
    """A training job in the background, each line of its stderr stamped as it arrives and kept in
    ws/logs/<network>-<n>.log."""

    def __init__(self, kit: Kit, ws: Path, net: Network, run: int) -> None:
        args = ["--params", "params.yaml", *job_threads(ws), *train_args(net)]
        # a CUDA job claims a card itself; a CPU job never does, so a worker takes the same lock first
        self.cmd = [sys.executable, __file__, "locked-train", *args] if kit.tiny else ["transferability", *args]
        self.net, self.lines = net, []
        self.log = ws / "logs" / f"{label(net).replace('/', '_')}-{run}.log"
        self.log.parent.mkdir(exist_ok=True)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, cwd=ws, env=kit.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        with open(self.log, "w") as log:
            for line in self.proc.stderr:
                self.lines.append((time.monotonic(), line.rstrip()))
                log.write(line)

    def at(self, text: str) -> float | None:
        """When the first line containing ``text`` arrived."""
        return next((t for t, line in self.lines if text in line), None)

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise RuntimeError(f"{label(self.net)} still ran when the kit's time ran out") from None
        self.reader.join()
        if rc and rc != -signal.SIGKILL:
            raise RuntimeError(f"{' '.join(self.cmd)} failed ({rc}):\n{self.tail()}")
        return rc

    def stop(self) -> None:
        """Kill the job if it still runs (a section that failed half-way leaves nothing behind)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def record(self, t0: float) -> dict[str, Any]:
        claimed = self.at(CLAIMED)
        return {"network": label(self.net), "rc": self.proc.returncode, "started_s": round(self.started - t0, 3),
                "claimed_s": None if claimed is None else round(claimed - t0, 3),
                "last_line_s": round(self.lines[-1][0] - t0, 3) if self.lines else None,
                "waited_s": None if claimed is None else round(claimed - self.started, 3)}

    def tail(self) -> str:
        return "\n".join(line for _, line in self.lines[-15:])


def poll(test: Any, timeout: float) -> Any:
    """``test()`` every 10 ms until it returns something true, or None after ``timeout`` seconds."""
    stop = time.monotonic() + timeout
    while not (found := test()) and time.monotonic() < stop:
        time.sleep(0.01)
    return found or None


def lock(kit: Kit) -> dict[str, Any]:
    """Three training jobs started at once on one card run one at a time; then kill_and_resume."""
    params = smoke_params(kit, kit.device)
    # jobs that hold the card for seconds, so a kill lands inside the run
    params["train"].update(images_per_class=40 if kit.tiny else 300, batch_size=8, epochs=8 if kit.tiny else 3)
    ws = workspace(kit, "lock", params)
    cli(kit, ws, "prepare")
    cli(kit, ws, "split", "--split", "random0")
    nets = [Network("random0", 0, "baseA"), Network("random0", 0, "baseB"), Network("random0", 0, "RnB", 2)]
    jobs = [Job(kit, ws, n, 1) for n in nets]
    try:
        for job in jobs:
            job.wait(kit.left(30))
    finally:
        for job in jobs:
            job.stop()
    holds = sorted((job.at(CLAIMED), job.lines[-1][0]) for job in jobs)
    gaps = [round(b[0] - a[1], 3) for a, b in zip(holds, holds[1:], strict=False)]
    out = {"jobs": [j.record(jobs[0].started) for j in jobs], "gaps_s": gaps, "serialised": min(gaps) > 0,
           "lock_dir": params["compute"]["gpu_lock_dir"]}
    try:
        out["kill"] = kill_and_resume(kit, ws, nets[:2])
    except Exception as exc:  # noqa: BLE001 - a failure here (a resume that crashes) is a finding
        out["kill"] = {"error": f"{type(exc).__name__}: {exc}"}
    k = out["kill"]
    out["summary"] = f"3 jobs at once: {'one at a time' if out['serialised'] else 'OVERLAPPED'} (gaps {gaps} s); " + (
        f"killed holder: card taken {k['waiter_claimed_after_kill_s']:.2f} s later; rerun "
        f"{'resumed' if k['resumed'] else 'did NOT resume'}, metrics "
        f"{'identical' if k['resumed_metrics_identical'] else 'DIFFERENT'} to the uninterrupted run's"
        if "error" not in k else f"kill and resume: {k['error'].splitlines()[0]}")
    return out


def kill_and_resume(kit: Kit, ws: Path, nets: list[Network]) -> dict[str, Any]:
    """Two jobs (trained before, uninterrupted) started at once again from no checkpoint: the one
    that claims the card is SIGKILLed after its first epoch's checkpoint, so the other, waiting for
    the card by then, takes it; then the killed one runs again and resumes. Both must end with their
    uninterrupted runs' bytes."""
    for net in nets:
        shutil.move(ws / net.file("metrics.json"), ws / f"{net.slug}-first-run.json")
    shutil.rmtree(ws / runs.CHECKPOINTS)
    pair = [Job(kit, ws, n, 2) for n in nets]
    try:
        holder = poll(lambda: next((j for j in pair if j.at(CLAIMED)), None), kit.left(30))
        if holder is None or not poll((ws / holder.net.checkpoint).exists, kit.left(30)):
            raise RuntimeError(f"no job claimed the card and wrote a checkpoint:\n{pair[0].tail()}")
        holder.proc.kill()
        killed_at = time.monotonic()
        waiter = pair[1] if holder is pair[0] else pair[0]
        holder.wait(10)
        waiter.wait(kit.left(20))
    finally:
        for job in pair:
            job.stop()
    claimed = waiter.at(CLAIMED)
    latency = round(claimed - killed_at, 3)
    finished_first = holder.proc.returncode == 0
    rerun = Job(kit, ws, holder.net, 3)
    try:
        rerun.wait(kit.left(10))
        error = None
    except RuntimeError as exc:  # e.g. a resume that crashes on the device
        error = str(exc)
    finally:
        rerun.stop()

    def same(net: Network) -> bool:
        done = ws / net.file("metrics.json")
        return done.exists() and done.read_bytes() == (ws / f"{net.slug}-first-run.json").read_bytes()

    return {"killed": label(holder.net), "holder_finished_first": finished_first, "waiter": label(waiter.net),
            "waiter_claimed_after_kill_s": latency,
            # the waiter polls the lock every 0.5 s (devices.claim_gpu)
            "freed_card": not finished_first and 0 < latency < 2.0,
            "waiter_metrics_identical": same(waiter.net),
            "resumed": next((line for _, line in rerun.lines if "resumed from epoch" in line), None),
            "rerun_error": error, "resumed_metrics_identical": error is None and same(holder.net)}


def run_worker(kit: Kit, name: str, config: dict[str, Any], timeout: float) -> dict[str, Any]:
    """``python gpu/sections.py <name> config.json result.json``; its result, or why there is none."""
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=kit.work))
    (folder / "config.json").write_text(json.dumps(config))
    cmd = [sys.executable, __file__, name, str(folder / "config.json"), str(folder / "result.json")]
    try:
        proc = subprocess.run(cmd, env=kit.env, capture_output=True, text=True, timeout=timeout, cwd=folder)
    except subprocess.TimeoutExpired:
        return {"status": f"stopped after {timeout:.0f} s (time budget)"}
    (folder / "stderr.log").write_text(proc.stderr)
    if proc.returncode:
        return {"status": "failed", "error": proc.stderr[-1500:]}
    return {"status": "ok", **json.loads((folder / "result.json").read_text())}


def prepare(kit: Kit) -> dict[str, Any]:
    """JPEGs (ILSVRC-2012's mix of sizes) decoded into a 256x256 store by every core."""
    config = {"root": str(kit.work / "jpeg"), "workers": kit.cores, "kind": "small" if kit.tiny else "imagenet",
              "per_class": 4 if kit.tiny else 48, "copies": 2 if kit.tiny else 50}
    result = run_worker(kit, "prepare-worker", config, kit.left())
    if result["status"] != "ok":
        raise RuntimeError(f"prepare: {result['status']}\n{result.get('error', '')}")
    result["summary"] = (f"{result['images']} JPEGs, {result['workers']} workers: "
                         f"{result['images_per_s']:.0f} images/s ({result['images_per_s_per_core']:.0f} per core)")
    return result


def throughput_configs(kit: Kit) -> list[dict[str, Any]]:
    """The configurations in the order they matter: the ImageNet profile's own (CaffeNet, bfloat16,
    compiled) first. A tiny run compiles only the small net: CaffeNet takes minutes on a CPU."""
    store = kit.results.get("prepare", {}).get("store")
    caffenet = {"net": "caffenet", "params": str(PROFILES / "imagenet.yaml"), "store": store,
                "batch": 8 if kit.tiny else 256, "warmup_epochs": 1, "epochs": 1 if kit.tiny else 2}
    small = {"net": "small", "params": str(ROOT / "params.yaml"), "fmnist": str(kit.fmnist),
             "batch": None, "warmup_epochs": 1 if kit.tiny else 2, "epochs": 1 if kit.tiny else 30,
             "images_per_class": 40 if kit.tiny else None}
    order = [(caffenet, "bfloat16", True), (caffenet, "float32", False), (caffenet, "bfloat16", False),
             (caffenet, "float32", True), (small, "float32", False), (small, "bfloat16", False),
             (small, "float32", True), (small, "bfloat16", True)]
    return [{**base, "device": kit.device, "precision": precision, "compile": compiled,
             "lock_dir": str(kit.work / "locks")}
            for base, precision, compiled in order
            if not (kit.tiny and (compiled or (base is caffenet and precision == "bfloat16")))]


def throughput(kit: Kit) -> dict[str, Any]:
    configs = []
    for config in throughput_configs(kit):
        keys = {k: config[k] for k in ("net", "precision", "compile")}
        if config["net"] == "caffenet" and not config["store"]:
            configs.append({**keys, "status": "skipped: no store (the prepare section failed)"})
            continue
        if kit.left() < 20:
            configs.append({**keys, "status": "skipped: time budget"})
            continue
        configs.append({**keys, **run_worker(kit, "throughput-worker", config, min(150.0, kit.left(5)))})
    done = [c for c in configs if c["status"] == "ok"]
    return {"configs": configs, "summary": f"{len(done)} of {len(configs)} configurations measured: " + ", ".join(
        f"{c['net']} {c['precision']}{' compiled' if c['compile'] else ''} {c['images_per_s']:.0f}/s"
        + (f" ({c['bound']}-bound: loader {c['loader_images_per_s']:.0f}/s, step {c['step_images_per_s']:.0f}/s)"
           if "bound" in c else "") for c in done)}


SECTIONS = {"device": device, "smoke": smoke, "snakemake": snakemake, "lock": lock, "prepare": prepare,
            "throughput": throughput}


# --- workers (separate processes) --------------------------------------------------------------

def cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor())


def nvidia_smi(field_name: str) -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    proc = subprocess.run(["nvidia-smi", f"--query-gpu={field_name}", "--format=csv,noheader,nounits", "-i", "0"],
                          capture_output=True, text=True)
    value = proc.stdout.strip() if proc.returncode == 0 else ""
    return value or None


class BusySampler:
    """The GPU's utilisation, read every 0.1 s while a run trains: NVML's share of its last sample
    period in which a kernel ran (through torch, or nvidia-smi where torch cannot reach NVML)."""

    def __init__(self, device: Any) -> None:
        self.device, self.samples, self.how = device, [], None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def read(self) -> float | None:
        import torch

        if self.how != "nvidia-smi":
            try:
                value, self.how = float(torch.cuda.utilization(self.device)), "NVML (torch.cuda.utilization)"
                return value
            except Exception:  # noqa: BLE001 - torch finds no pynvml here: nvidia-smi instead
                self.how = "nvidia-smi"
        value = nvidia_smi("utilization.gpu")
        return None if value is None else float(value)

    def _run(self) -> None:
        while not self.stop.is_set():
            if (value := self.read()) is not None:
                self.samples.append(value)
            self.stop.wait(0.1)

    def __enter__(self) -> BusySampler:
        if self.device.type == "cuda":
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()

    @property
    def percent(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def torch_settings() -> dict[str, Any]:
    """What torch was set up to do, as a training job's results depend on it: threads, how float32
    convolutions and matrix products round, deterministic algorithms."""
    import torch

    return {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "matmul_fp32_precision": torch.backends.cuda.matmul.fp32_precision,
            "conv_fp32_precision": torch.backends.cudnn.conv.fp32_precision,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark}


def synchronize(dev: Any) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def loader_alone(data: Any, params: dict[str, Any], epochs: int) -> dict[str, Any]:
    """The training job's batches without its step: ``training.step_batches`` (the streamed loader
    with the job's reader threads, then ``make_batch``: crops, flips, normalisation, on the device)
    over each epoch's shuffled order, for the batches of ``epochs`` epochs, nothing trained; timed
    to the device's last kernel."""
    import torch

    from transferability.training import step_batches

    tr, compute = params["train"], params["compute"]
    dev = data.y_train.device
    gen = torch.Generator().manual_seed(0)
    count = 0
    synchronize(dev)
    t = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(data.x_train), generator=gen)
        for _batch in step_batches(data, None, order, tr["batch_size"], tr.get("crop"), tr.get("mirror", False), gen,
                                   compute.get("channels_last", False), compute["threads"]):
            count += 1
    synchronize(dev)
    seconds = time.perf_counter() - t
    return {"batches": count, "seconds": round(seconds, 3),
            "images_per_s": round(len(data.x_train) * epochs / max(seconds, 1e-9), 1)}


def bound(loader: float, step: float, loop: float) -> dict[str, Any]:
    """Which side limits the loop: the slower of the loader alone and the step alone. A loop that
    overlaps them runs at the slower one's rate; one that runs them one after the other at
    1 / (1/loader + 1/step) ("serial")."""
    side = "loader" if loader < step else "step"
    slow, fast = (loader, step) if side == "loader" else (step, loader)
    other = "step" if side == "loader" else "loader"
    serial = 1 / (1 / loader + 1 / step)
    return {"bound": side, "serial_images_per_s": round(serial, 1),
            "loop_of_bound": round(loop / slow, 3),
            "verdict": f"{side}-bound: {side} {slow:.0f} img/s < {other} {fast:.0f} img/s; the loop "
                       f"{loop:.0f} img/s ({loop / slow:.2f} of the {side}; {serial:.0f} if run one after the other)"}


def throughput_worker(config: dict[str, Any]) -> dict[str, Any]:
    """One configuration, set up by ``devices.setup`` as a training job is: a warm-up run
    (allocation, kernel choice, compilation), then the measured run, both through ``training.train``
    as a training job runs it. A streamed half is measured in parts too: the loader alone (the
    job's batches, nothing trained), and the step alone (the same training on the half held on the
    device), so the report says which side bounds the loop."""
    import torch

    sys.path.insert(0, str(BENCHMARKS))
    from common import default_half

    from transferability.data import Streamed, half_data, input_size
    from transferability.devices import setup
    from transferability.models import build_model
    from transferability.splits import make_split
    from transferability.store import load_store
    from transferability.training import train

    params = copy.deepcopy(tparams.load(config["params"]))
    compute, tr, ev = params["compute"], params["train"], params["evaluate"]
    compute.update(device=config["device"], precision=config["precision"], compile=config["compile"],
                   gpu_lock_dir=config["lock_dir"])
    dev = setup(compute)  # exactly as stages.train_network sets up a job with this compute
    settings = torch_settings()
    tr["batch_size"] = config["batch"] or tr["batch_size"]
    ev.update(evals=1, k_best=1)  # one evaluation, at the end: images/s leaves it out
    if config["net"] == "caffenet":  # the prepared store's half B, streamed as an ImageNet half is
        store = load_store(config["store"])
        halves = make_split("random0", {"method": "random", "seed": 0}, store.classes)

        def half(resident_gb: float | None) -> Any:  # resident_gb None: every image in memory
            return half_data(store, halves, "B", None, 2 if config["device"] == "cpu" else 10,
                             resident_gb=resident_gb, normalise=tr.get("normalise", "mean_std"))
        data = half(0)
    else:  # the default params' half B in memory, as the default run trains it
        params["dataset"]["root"] = config["fmnist"]
        if config["images_per_class"]:
            tr["images_per_class"] = ev["images_per_class"] = config["images_per_class"]
        data = default_half(params)
    c, size = data.x_train.shape[1], input_size(data.x_train.shape[-1], tr.get("crop"))
    net = build_model(params["model"], c, len(data.class_names), size, seed=0,
                      fast_lrn=compute.get("fast_lrn", True)).to(dev)
    if compute.get("channels_last"):
        net = net.to(memory_format=torch.channels_last)
    data = data.to(dev)
    streamed = isinstance(data.x_train, Streamed)
    folder = Path.cwd()
    timings, busy = {}, {}
    for run, epochs in (("warm-up", config["warmup_epochs"]), ("measured", config["epochs"])):
        tr["epochs"] = epochs
        synchronize(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        with BusySampler(dev) as busy[run]:
            timings[run] = train(net, data, params, 0, folder / f"{run}.ckpt", run, f"{config['net']} {run}")
    gpu = dev.type == "cuda"
    peak = round((torch.cuda.max_memory_allocated(dev) if gpu else
                  resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20, 1)
    loop = timings["measured"]["timing"]["train_images_per_s"]
    out = {"device_name": torch.cuda.get_device_name(dev) if gpu else "cpu", "threads": compute["threads"],
           "torch_settings": settings, "batch": tr["batch_size"], "train_images": len(data.x_train),
           "last_batch": len(data.x_train) % tr["batch_size"], "epochs": config["epochs"],
           "steps": timings["measured"]["results"]["steps"], "streamed": streamed, "images_per_s": loop,
           "warmup_s": timings["warm-up"]["timing"]["wall_time_s"],
           "measured_s": timings["measured"]["timing"]["wall_time_s"],
           "peak_mem_mib": peak, "peak_mem_of": "GPU, torch.cuda.max_memory_allocated" if gpu else
           "host, the process's max RSS", "gpu_busy_pct": busy["measured"].percent,
           "busy_samples": len(busy["measured"].samples), "busy_from": busy["measured"].how}
    if not streamed:  # a half in memory has no loader to measure apart
        return out
    with BusySampler(dev) as busy_loader:
        loader = loader_alone(data, params, config["epochs"])
    del data  # the streamed half's buffers, before the same images are put on the device
    resident = half(None).to(dev)  # each batch gathered, cropped and flipped there: the step's own work
    tr["epochs"] = config["epochs"]
    synchronize(dev)
    with BusySampler(dev) as busy_step:
        step = train(net, resident, params, 0, folder / "step.ckpt", "step", f"{config['net']} step alone")
    step_rate = step["timing"]["train_images_per_s"]
    return {**out, "loader_images_per_s": loader["images_per_s"], "loader_batches": loader["batches"],
            "loader_s": loader["seconds"], "loader_gpu_busy_pct": busy_loader.percent,
            "step_images_per_s": step_rate, "step_steps": step["results"]["steps"],
            "step_s": step["timing"]["wall_time_s"], "step_gpu_busy_pct": busy_step.percent,
            **bound(loader["images_per_s"], step_rate, loop)}


def prepare_worker(config: dict[str, Any]) -> dict[str, Any]:
    """benchmarks/prepare.py's photo-like JPEGs (its ``imagenet`` mix: 1 in 8 of 800-1600 px), written
    once for 4 classes and hard-linked into ``copies`` times as many class folders (every file is
    decoded in full; the page cache holds them all), then its ``prepare_in``: the prepare stage."""
    sys.path.insert(0, str(BENCHMARKS))
    from prepare import prepare_in, write_fixture

    root = Path(config["root"])
    base = root / "base"
    write_fixture(base, config["per_class"], config["kind"])
    tree = root / "tree"
    files = 0
    for part_dir in base.iterdir():
        for k in range(config["copies"]):
            for class_dir in part_dir.iterdir():
                dest = tree / part_dir.name / f"{class_dir.name}_{k:03d}"
                dest.mkdir(parents=True)
                for f in class_dir.iterdir():
                    os.link(f, dest / f.name)
                    files += 1
    params = tparams.load(PROFILES / "imagenet.yaml")
    params["dataset"].update(root=str(tree), name="gpucheck", val_labels=None)
    store, seconds = prepare_in(root / "project", params, config["workers"])
    return {"images": files, "classes": 4 * config["copies"], "workers": config["workers"],
            "seconds": round(seconds, 2), "images_per_s": round(files / seconds, 1),
            "images_per_s_per_core": round(files / seconds / config["workers"], 1),
            "shard_images": params["dataset"]["shard_images"], "store": str(store)}


def locked_train(argv: list[str]) -> int:
    """A CPU run's training job behind the per-card lock: claim it as a CUDA job does, then train."""
    from transferability.cli import main
    from transferability.devices import claim_gpu

    params = tparams.load(argv[argv.index("--params") + 1])
    lock_dir = params["compute"]["gpu_lock_dir"]
    claim_gpu(1, lock_dir)
    print(f"{CLAIMED} 0 ({lock_dir}/gpu0.lock)", file=sys.stderr, flush=True)
    return main(argv)


WORKERS = {"throughput-worker": throughput_worker, "prepare-worker": prepare_worker}

if __name__ == "__main__":
    if sys.argv[1] == "locked-train":
        sys.exit(locked_train(sys.argv[2:]))
    result = WORKERS[sys.argv[1]](json.loads(Path(sys.argv[2]).read_text()))
    Path(sys.argv[3]).write_text(json.dumps(result, indent=1))
