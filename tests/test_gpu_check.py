"""The GPU check kit (gpu/check.py) runs without a GPU exactly as the README shows it, and
its report holds every check: so the kit cannot rot between the rare runs on a GPU."""

from __future__ import annotations

import gzip
import importlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from transferability import params as tparams

from .conftest import ENV, ROOT

PROJECT = ["Snakefile", "params.yaml", "workflow", "src", "benchmarks", "gpu"]
GPU = ROOT / "gpu"
FMNIST = "/usr/share/datasets/fashion-mnist"
# Run as `python HOOK <script.py | cli> args...`: torch's settings written to $SETTINGS_DUMP, one JSON
# line each time training.train starts, then the script (or the CLI) run as usual. Patched before the
# stages are imported, so the CLI's train stage and the kit's worker both call the wrapper.
HOOK = """
import json, os, runpy, sys
import torch
from transferability.training import loop as training
real = training.train

def train(*args, **kwargs):
    cuda, cudnn = torch.backends.cuda, torch.backends.cudnn
    seen = {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "matmul_fp32_precision": cuda.matmul.fp32_precision, "conv_fp32_precision": cudnn.conv.fp32_precision,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "cudnn_benchmark": cudnn.benchmark, "cudnn_deterministic": cudnn.deterministic,
            "mkldnn_fp32_precision": torch.backends.mkldnn.fp32_precision,
            "default_dtype": str(torch.get_default_dtype())}
    with open(os.environ["SETTINGS_DUMP"], "a") as f:
        f.write(json.dumps(seen) + "\\n")
    return real(*args, **kwargs)

training.train = train
sys.argv = sys.argv[1:]
if sys.argv[0] == "cli":
    from transferability.cli import main
    sys.exit(main(sys.argv[1:]))
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))  # as `python script.py` does: its folder first
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def kit_module(name: str):
    """gpu/<name>.py, imported as the kit imports its modules: from its own folder on the path."""
    sys.path.insert(0, str(GPU))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(GPU))


def readme_command() -> str:
    """The README's line that runs the kit on the CPU, without its comment."""
    line = next(ln for ln in (ROOT / "README.md").read_text().splitlines() if "gpu/check.py --cpu" in ln)
    return line.split("#")[0].strip()


@pytest.mark.slow  # Snakemake and two dozen training jobs
def test_gpu_check_runs_on_the_cpu_as_the_readme_shows(tmp_path):
    for name in PROJECT:  # a copy of the project: the kit writes into its data/
        src = ROOT / name
        copy = shutil.copytree if src.is_dir() else shutil.copy2
        copy(src, tmp_path / name, **({"ignore": shutil.ignore_patterns("__pycache__", "*.egg-info", "results")}
                                       if src.is_dir() else {}))
    command = readme_command()
    assert command == "python gpu/check.py --cpu --out data/gpu-check"
    proc = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "data" / "gpu-check"
    report = json.loads((out / "gpu_check.json").read_text())
    s = report["sections"]
    assert report["mode"] == "cpu" and report["finished"] and report["elapsed_s"] < report["budget_s"]
    assert sorted(s) == sorted(["setup", "device", "smoke", "snakemake", "lock", "prepare", "throughput"])
    assert {k: v["status"] for k, v in s.items()} == dict.fromkeys(s, "ok"), json.dumps(s, indent=1)[-4000:]
    assert s["setup"]["missing_after"] == [] and s["device"]["torch"]

    # the smoke networks on the "device" (the CPU) against the CPU: the same device, the same bits
    smoke = s["smoke"]
    assert smoke["networks"] == 3 and smoke["test_images"] == 200 and smoke["within_tolerance"]
    (run,) = smoke["device_runs"].values()  # a tiny run's one device run: the CPU itself
    assert run["precision"] == "float32" and run["identical"] == 3 and run["max_abs_diff"] == 0 and run["missing"] == 0
    assert [r["network"] for r in run["compare"]] == ["random0/seed0/baseA", "random0/seed0/baseB",
                                                      "random0/seed0/A2B"]
    assert all(0 < r["cpu"] == r["device"] <= 1 for r in run["compare"])

    # three jobs at once ran one after another behind the lock; a killed holder freed it for the waiter,
    # and resumed from its checkpoint to the bytes of its uninterrupted run
    lock = s["lock"]
    claims = sorted(j["claimed_s"] for j in lock["jobs"])
    assert lock["serialised"] and len(claims) == 3 and all(g > 0 for g in lock["gaps_s"])
    assert sum(j["waited_s"] > claims[0] for j in lock["jobs"]) == 2  # two waited for the first holder
    kill = lock["kill"]
    assert kill["freed_card"] and not kill["holder_finished_first"] and 0 < kill["waiter_claimed_after_kill_s"] < 2
    assert re.search(r"resumed from epoch [1-7] of 8", kill["resumed"]), kill
    assert kill["resumed_metrics_identical"] and kill["waiter_metrics_identical"]

    assert s["prepare"]["images"] == 40 and s["prepare"]["images_per_s"] > 0
    configs = {(c["net"], c["precision"], c["compile"]): c for c in s["throughput"]["configs"]}
    assert sorted(configs) == [("caffenet", "float32", False), ("small", "bfloat16", False),
                               ("small", "float32", False)]
    assert all(c["status"] == "ok" and c["images_per_s"] > 0 and c["peak_mem_mib"] > 0 for c in configs.values())
    caffenet = configs[("caffenet", "float32", False)]
    assert caffenet["streamed"] and caffenet["batch"] == 8
    assert not configs[("small", "float32", False)]["streamed"]
    # the streamed row measured apart: the loader and the step over the loop's batches, the slower named
    assert caffenet["loader_batches"] == caffenet["steps"] == caffenet["step_steps"] > 0
    slower = "loader" if caffenet["loader_images_per_s"] < caffenet["step_images_per_s"] else "step"
    assert caffenet["bound"] == slower
    assert all("bound" not in c for c in configs.values() if not c["streamed"])
    assert {c["torch_settings"]["conv_fp32_precision"] for c in configs.values()} == {"ieee"}

    # Snakemake with --resources gpu=1 gives the CLI run's bytes
    snake = s["snakemake"]
    assert snake["all_same"] and len(snake["same_as_cli"]) == 3

    assert report["checks"] == {"smoke_within_tolerance": True, "snakemake_same_as_cli": True, "lock_serialised": True,
                                "killed_holder_freed_card": True, "resume_identical": True,
                                "prepare_images_per_s": s["prepare"]["images_per_s"], "throughput_measured": 3,
                                "streamed_bound": caffenet["verdict"]}
    md = (out / "gpu_check.md").read_text()
    assert "| smoke | ok |" in md and "## Training throughput" in md and "## Per-card lock" in md
    assert "### Loader against step" in md and caffenet["verdict"] in md
    with tarfile.open(out / "gpu_check_logs.tar.gz") as tar:
        assert "smoke-on-cpu/logs/train_split_random0_seed_0_variant_baseA.log" in tar.getnames()
    assert "## Training throughput" in proc.stdout  # the summary printed at the end


@pytest.mark.slow  # the kit as a subprocess
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the kit would run in full")
def test_gpu_check_without_a_gpu_says_why_and_still_writes_its_report(tmp_path):
    proc = subprocess.run([sys.executable, str(GPU / "check.py"), "--out", str(tmp_path)],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: the GPU check found problems: device")
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    s = report["sections"]
    assert report["mode"] == "cuda" and report["finished"] and s["setup"]["status"] == "ok"
    assert s["device"]["status"] == "failed" and "finds no CUDA device" in s["device"]["error"]
    assert sorted(k for k, v in s.items() if v["status"] == "skipped") == ["lock", "prepare", "smoke", "snakemake",
                                                                           "throughput"]
    assert all(v["summary"] == "skipped: the device section failed" for k, v in s.items() if k not in
               ("setup", "device"))
    assert "| device | failed |" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.slow  # reads the whole Fashion-MNIST twice
def test_gpu_pack_writes_the_default_images_per_class_as_idx(tmp_path):
    pack = kit_module("pack")
    from transferability.data.sources.fashion_mnist import fashion_mnist

    pack.write_fashion_mnist(tmp_path / "fm")
    images, labels, classes, _ = fashion_mnist(tmp_path / "fm")
    full_images, full_labels, _, _ = fashion_mnist("/usr/share/datasets/fashion-mnist")
    for part, per_class in pack.PER_CLASS.items():
        assert np.bincount(labels[part]).tolist() == [per_class] * 10
        first = np.flatnonzero(full_labels[part] == 3)[:per_class]  # the first images of a class, in order
        assert np.array_equal(images[part][labels[part] == 3], full_images[part][first])
    again = tmp_path / "again"
    pack.write_fashion_mnist(again)
    for f in (tmp_path / "fm").iterdir():
        assert f.read_bytes() == (again / f.name).read_bytes()  # no timestamp in the gzip header
        assert gzip.open(f).read(4)[:2] == b"\0\0"


def hooked(tmp_path, name: str, args: list[str]) -> list[dict]:
    """``args`` run under HOOK in tmp_path/name; the settings each training.train started with."""
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    (tmp_path / "hook.py").write_text(HOOK)
    dump = folder / "settings.jsonl"
    dump.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, str(tmp_path / "hook.py"), *args], cwd=folder,
                          env={**ENV, "SETTINGS_DUMP": str(dump)}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in dump.read_text().splitlines()] if dump.exists() else []


@pytest.mark.slow  # the kit's throughput worker, end to end
def test_the_kit_sets_torch_up_as_a_training_job_does(tmp_path):
    """A throughput row's torch settings when training starts, in the kit's worker and in a training
    job of the same compute run by the CLI (the train stage's own path): the same. The kit once set
    threads and the device itself and left float32 convolutions in torch's default TF32."""
    shared, measurements = kit_module("kit"), kit_module("measurements")
    kit = shared.Kit(device="cpu", work=tmp_path, deadline=0.0, env=ENV, fmnist=Path(FMNIST))
    config = next(c for c in measurements.throughput_configs(kit) if (c["net"], c["precision"]) == ("small", "float32"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    worker = [str(shared.WORKER), "throughput-worker", str(tmp_path / "config.json"),
              str(tmp_path / "result.json")]
    kit_seen = hooked(tmp_path, "kit", worker)

    params = tparams.load(config["params"])  # the row's params, as a job would be given them
    params["dataset"]["root"] = FMNIST
    params["compute"].update(device=config["device"], precision=config["precision"], compile=config["compile"],
                             gpu_lock_dir=config["lock_dir"])
    params["train"].update(images_per_class=config["images_per_class"], epochs=1)
    params["evaluate"]["images_per_class"] = config["images_per_class"]
    ws = tmp_path / "job"
    ws.mkdir()
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    job = ["cli", "--params", "params.yaml", *shared.job_threads(ws)]
    for stage in (["prepare"], ["split", "--split", "random0"]):
        hooked(tmp_path, "job", [*job, *stage])
    (job_seen,) = hooked(tmp_path, "job", [*job, "train", "--split", "random0", "--seed", "0", "--variant", "baseB"])

    assert job_seen["conv_fp32_precision"] == "ieee" and job_seen["threads"] == params["compute"]["threads"]
    assert kit_seen == [job_seen, job_seen]  # warm-up and measured run
    recorded = json.loads((tmp_path / "result.json").read_text())["torch_settings"]
    assert recorded.items() <= job_seen.items()  # what the kit reports is what it ran under


@pytest.mark.slow  # the kit's loader and step rows, end to end
def test_the_streamed_row_measures_the_loader_and_the_step_apart(tmp_path):
    """CaffeNet streamed from the kit's prepared store: the loader alone, the step alone and the loop
    over the same batches, the slower side named as the bound, in the JSON's row, the checks and the
    Markdown."""
    shared, measurements, check = kit_module("kit"), kit_module("measurements"), kit_module("check")
    kit = shared.Kit(device="cpu", work=tmp_path, deadline=time.monotonic() + 900, env=ENV, fmnist=Path(FMNIST))
    kit.results["prepare"] = measurements.prepare(kit)
    config = measurements.throughput_configs(kit)[0]
    assert (config["net"], config["precision"], config["compile"], config["batch"]) == ("caffenet", "float32",
                                                                                       False, 8)
    row = {"net": "caffenet", "precision": "float32", "compile": False,
           **shared.run_worker(kit, "throughput-worker", config, 600)}
    assert row["status"] == "ok", row.get("error")
    assert row["streamed"] and row["train_images"] == 16 and row["epochs"] == 1
    assert row["loader_batches"] == row["steps"] == row["step_steps"] == 2  # the same batches, each way
    loader, step, loop = row["loader_images_per_s"], row["step_images_per_s"], row["images_per_s"]
    assert min(loader, step, loop) > 0
    side, other, slow, fast = ("loader", "step", loader, step) if loader < step else ("step", "loader", step, loader)
    assert row["bound"] == side
    assert row["verdict"].startswith(f"{side}-bound: {side} {slow:.0f} img/s < {other} {fast:.0f} img/s; "
                                     f"the loop {loop:.0f} img/s")
    assert row["serial_images_per_s"] == pytest.approx(1 / (1 / loader + 1 / step), abs=0.1)
    assert row["loop_of_bound"] == pytest.approx(loop / slow, abs=1e-3)
    assert row["loader_gpu_busy_pct"] is row["step_gpu_busy_pct"] is row["gpu_busy_pct"] is None  # no GPU here
    assert row["torch_settings"]["conv_fp32_precision"] == "ieee"  # float32 as a job's: not torch's TF32

    sections_ = {"throughput": {"status": "ok", "configs": [row]}}
    report = {"sections": sections_, "date": "today", "commit": "HEAD", "command": "python3 gpu/check.py",
              "elapsed_s": 1.0, "budget_s": 450, "finished": True, "checks": check.checks(sections_)}
    assert report["checks"]["streamed_bound"] == row["verdict"]
    md = check.markdown(report)
    assert "### Loader against step" in md and f"| {row['verdict']} |" in md
