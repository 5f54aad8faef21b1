"""Every benchmark script runs (in --quick mode) and writes its result file; no timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from .conftest import ENV, ROOT, SMOKE

BENCH = ROOT / "benchmarks"


def run_bench(name: str, tmp_path, *extra: str) -> dict:
    out = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--quick", "--params", str(SMOKE),
                           "--out", str(out), *extra], env=ENV, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["benchmark"] == name and result["quick"] and result["versions"]["torch"]
    assert result["machine"]["cores"] >= 1
    return result["figures"]


@pytest.mark.slow  # a benchmark run end to end
def test_loop_benchmark(tmp_path):
    f = run_bench("loop", tmp_path)
    assert f["ours_images_per_s"] > 0 and f["bare_images_per_s"] > 0
    assert f["efficiency"] == pytest.approx(f["ours_images_per_s"] / f["bare_images_per_s"])


@pytest.mark.slow  # a benchmark run end to end
def test_frozen_prefix_benchmark(tmp_path):
    f = run_bench("frozen_prefix", tmp_path)
    assert sorted(f["AnB"]) == [str(n) for n in range(1, 8)]
    for n, modes in f["AnB"].items():
        assert sorted(modes) == ["cache", "no_grad"] and modes["cache"]["cache_s"] > 0, n
        assert modes["no_grad"]["cache_s"] == 0


@pytest.mark.slow  # a benchmark run end to end
def test_compute_benchmark(tmp_path):
    f = run_bench("compute", tmp_path, "--skip-compile")
    assert all(v > 0 for v in f["matmul_gflops"].values())
    assert f["train_step"]["caffenet, batch 32 (cpu)"]["flops_per_image"] > 4e9  # about 4.35 GFLOP a training image
    assert len(f["settings"]) == 7 and all(v["images_per_s"] > 0 for v in f["settings"].values())
    assert sorted(map(int, f["batch_sizes"])) == [8, 16, 32, 64, 128]


@pytest.mark.slow  # a benchmark run end to end
def test_prepare_benchmark(tmp_path):
    f = run_bench("prepare", tmp_path, "--size", "64")
    assert f["images"] == 4 * (10 + 2) and all(v > 0 for v in f["images_per_s_per_core"].values())


def test_fanout_parses_snakemakes_log():
    sys.path.insert(0, str(BENCH))
    try:
        from fanout import rule_times
    finally:
        sys.path.remove(str(BENCH))
    log = """[Sun Nov 22 01:18:17 2026]
localrule train_transfer:
    jobid: 35
[Sun Nov 22 01:18:17 2026]
localrule train_base:
    jobid: 2
[Sun Nov 22 01:18:21 2026]
Finished jobid: 35 (Rule: train_transfer)
[Sun Nov 22 01:18:50 2026]
Finished jobid: 2 (Rule: train_base)
[Sun Nov 22 01:18:51 2026]
rule report:
    jobid: 0
[Sun Nov 22 01:18:59 2026]
Finished jobid: 0 (Rule: report)
"""
    assert rule_times(log) == {"train_transfer": {"jobs": 1, "busy_s": 4.0, "span_s": 4.0},
                               "train_base": {"jobs": 1, "busy_s": 33.0, "span_s": 33.0},
                               "report": {"jobs": 1, "busy_s": 8.0, "span_s": 8.0}}


@pytest.mark.slow  # a benchmark run end to end
def test_caffenet_benchmark_runs_the_imagenet_profile_on_this_device(tmp_path):
    f = run_bench("caffenet", tmp_path, "--params", str(ROOT / "workflow" / "params" / "imagenet.yaml"))
    assert f["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert f["batch"] == 16 and f["steps"] == 1 and f["train_images_per_s"] > 0
    # the training stage's own set-up (devices.setup): the profile's 4 threads, not every core;
    # float32 as IEEE float32; deterministic algorithms on a GPU only, as a training job has them
    assert f["threads"] == 4 and f["conv_fp32_precision"] == "ieee"
    assert f["deterministic"] == torch.cuda.is_available()
    assert f["gflop_per_image"] == pytest.approx(4.3, abs=0.1)  # the study's CaffeNet, 227x227 crops
    assert f["achieved_gflop_s"] == pytest.approx(f["train_images_per_s"] * f["gflop_per_image"], rel=0.01)


@pytest.mark.slow  # a benchmark run end to end
def test_convergence_ladder(tmp_path):
    """Two budgets of one unit: bases and BnB+ trained through the CLI, the move when doubled computed."""
    f = run_bench("convergence", tmp_path, "--budgets", "0.5", "1", "--units", "1", "--n", "4")
    assert [r["epochs"] for r in f["summary"]] == [1, 2]  # the smoke profile trains 2 epochs
    first, second = f["summary"]
    assert second["steps"] == 2 * first["steps"]
    assert first["baseB move when doubled"] == pytest.approx(second["baseB"] - first["baseB"])
    assert second["baseB move when doubled"] is None  # no rung at twice the last
    unit = f["ladder"]["2"]["random0/seed0"]
    assert first["BnB+4 - baseB"] == pytest.approx(f["ladder"]["1"]["random0/seed0"]["BnB-ft/n4"]["top1_kbest"]
                                                   - f["ladder"]["1"]["random0/seed0"]["baseB"]["top1_kbest"])
    assert sorted(unit) == ["BnB-ft/n4", "baseA", "baseB"] and all(0 < r["top1_kbest"] <= 1 for r in unit.values())


@pytest.mark.slow  # a benchmark run end to end
def test_loader_benchmark(tmp_path):
    """The loader against its anchors, hot and cold, 1 and 2 threads, on a 400-image store of 64 px."""
    f = run_bench("loader", tmp_path, "--params", str(ROOT / "workflow" / "params" / "imagenet.yaml"))
    assert f["store"] == {**f["store"], "images": 400, "shape": [3, 64, 64]} and f["batch_size"] == 32
    for mode in ("hot", "cold"):
        for k in ("1", "2"):
            best, runs = f["best"][mode][k], f["images_per_s"][mode][k]
            assert best["anchor"] > 0 and best["new"] > 0 and best["new"] == max(runs["new"])
            assert f["ratios"][mode][k]["new/anchor"] == pytest.approx(best["new"] / best["anchor"])
            assert all(v > 0 for v in f["images_per_cpu_s"][mode][k]["new"])
        if f["before"]:  # today's loader beside the old one (from git), which had one thread
            assert f["best"][mode]["1"]["old"] > 0 and f["best"][mode]["2"]["old"] is None
    hot = f["best"]["hot"]
    assert f["scaling_2_vs_1"]["hot"]["new"] == pytest.approx(hot["2"]["new"] / hot["1"]["new"])
    copies = f["copies_per_batch"]
    assert copies["new"] == 1 and copies["new_numpy_batches_made"] < 0.25
    if f["before"]:
        assert copies["old_numpy_batches_made"] > 1.9  # a gathered temporary and the batch
    assert f["pinned"] == torch.cuda.is_available()
    assert len(f["resident_bytes_after_evict"]) == (5 if f["before"] else 4)  # a pass per cold loader


@pytest.mark.slow  # a benchmark run end to end
def test_random_filters_benchmark(tmp_path):
    """RnB built as the training stage builds it: the traced steps are training.train's (the same first
    evaluation, loss and top-1), and the prototxt's Gaussians leave the small net's random prefix constant."""
    f = run_bench("random_filters", tmp_path, "--n", "5", "6", "--settings", "default", "caffe", "--full", "default")
    runs = {(r["setting"], r["n"]): r for r in f["runs"]}
    assert sorted(runs) == [("caffe", 5), ("caffe", 6), ("default", 5), ("default", 6)]
    units = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    for (_, n), r in runs.items():
        assert list(r["prefix"]["layers"]) == units[:n]
        assert r["trace"]["steps"] == [0, 2, 5] and all(sorted(lv) == units[n:] for lv in r["trace"]["live"])
        assert all(0 <= v <= 1 for lv in r["trace"]["live"] for v in lv.values())
    for n in (5, 6):
        step, loss, top1 = runs[("default", n)]["full"]["curve"][0]
        first = runs[("default", n)]["trace"]["first_eval"]
        assert first["step"] == step and first["top1"] == top1
        assert first["train_loss"] == pytest.approx(loss, abs=1e-6)
        # Gaussians of std 0.01 and biases of 1 on 3x3 convolutions: every image gives the same input
        assert runs[("caffe", n)]["prefix"]["input_of_trained"]["common_share"] > 0.999
        assert runs[("default", n)]["prefix"]["input_of_trained"]["common_share"] < 0.95
