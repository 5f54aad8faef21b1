"""The GPU check kit (benchmarks/gpu_check.py) runs without a GPU exactly as the README shows it, and
its report holds every check: so the kit cannot rot between the rare runs on a GPU."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch

from .conftest import ENV, ROOT

PROJECT = ["Snakefile", "params.yaml", "workflow", "src", "benchmarks"]


def readme_command() -> str:
    """The README's line that runs the kit on the CPU, without its comment."""
    line = next(ln for ln in (ROOT / "README.md").read_text().splitlines() if "gpu_check.py --cpu" in ln)
    return line.split("#")[0].strip()


@pytest.mark.slow  # Snakemake and two dozen training jobs
def test_gpu_check_runs_on_the_cpu_as_the_readme_shows(tmp_path):
    for name in PROJECT:  # a copy of the project: the kit writes into its data/
        src = ROOT / name
        copy = shutil.copytree if src.is_dir() else shutil.copy2
        copy(src, tmp_path / name, **({"ignore": shutil.ignore_patterns("__pycache__", "*.egg-info", "results")}
                                       if src.is_dir() else {}))
    command = readme_command()
    assert command == "python benchmarks/gpu_check.py --cpu --out data/gpu-check"
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
    assert run["identical"] == 3 and run["max_abs_diff"] == 0 and run["missing"] == 0
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
    assert configs[("caffenet", "float32", False)]["streamed"] and configs[("caffenet", "float32", False)]["batch"] == 8
    assert not configs[("small", "float32", False)]["streamed"]

    # Snakemake with --resources gpu=1 gives the CLI run's bytes
    snake = s["snakemake"]
    assert snake["all_same"] and len(snake["same_as_cli"]) == 3

    assert report["checks"] == {"smoke_within_tolerance": True, "snakemake_same_as_cli": True, "lock_serialised": True,
                                "killed_holder_freed_card": True, "resume_identical": True,
                                "prepare_images_per_s": s["prepare"]["images_per_s"], "throughput_measured": 3}
    md = (out / "gpu_check.md").read_text()
    assert "| smoke | ok |" in md and "## Training throughput" in md and "## Per-card lock" in md
    with tarfile.open(out / "gpu_check_logs.tar.gz") as tar:
        assert "smoke-on-cpu/logs/train_split_random0_seed_0_variant_baseA.log" in tar.getnames()
    assert "## Training throughput" in proc.stdout  # the summary printed at the end


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the kit would run in full")
def test_gpu_check_without_a_gpu_says_why_and_still_writes_its_report(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path)],
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


def test_gpu_pack_writes_the_default_images_per_class_as_idx(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from gpu_pack import PER_CLASS, write_fashion_mnist
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from transferability.sources import fashion_mnist

    write_fashion_mnist(tmp_path / "fm")
    images, labels, classes, _ = fashion_mnist(tmp_path / "fm")
    full_images, full_labels, _, _ = fashion_mnist("/usr/share/datasets/fashion-mnist")
    for part, per_class in PER_CLASS.items():
        assert np.bincount(labels[part]).tolist() == [per_class] * 10
        first = np.flatnonzero(full_labels[part] == 3)[:per_class]  # the first images of a class, in order
        assert np.array_equal(images[part][labels[part] == 3], full_images[part][first])
    again = tmp_path / "again"
    write_fashion_mnist(again)
    for f in (tmp_path / "fm").iterdir():
        assert f.read_bytes() == (again / f.name).read_bytes()  # no timestamp in the gzip header
        assert gzip.open(f).read(4)[:2] == b"\0\0"
