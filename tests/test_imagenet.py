"""The ImageNet profiles: the study's protocol planned whole by both DAGs, and CaffeNet trained for a
step on CPU through the same path a GPU takes (streamed 256x256 store, 227 crops, mean only)."""

from __future__ import annotations

import json
import re

import pytest

from transferability import params as tparams
from transferability import runs

from .conftest import ROOT, make_workspace, sh
from .test_workflow import snakemake_jobs, stage_command

PROFILES = ROOT / "workflow" / "params"


@pytest.mark.slow  # Snakemake plans a thousand-class DAG
@pytest.mark.parametrize("profile", ["imagenet.yaml", "imagenet-day.yaml"])
def test_imagenet_profiles_plan_every_network_on_one_gpu_each(tmp_path, profile):
    params = tparams.load(PROFILES / profile)
    assert params["model"] == {"arch": "caffenet", "init": "caffe", "dropout": 0.5}
    tr = params["train"]
    assert (tr["batch_size"], tr["lr"], tr["momentum"], tr["weight_decay"], tr["crop"]) == (256, 0.01, 0.9, 5e-4, 227)
    assert tr["normalise"] == "mean" and tr["mirror"] and params["dataset"]["image_size"] == 256
    iterations = round(tr["epochs"] * 645_000 / 256, -3)  # a half of ILSVRC-2012 holds ~645k images
    assert iterations == {"imagenet.yaml": 451_000, "imagenet-day.yaml": 45_000}[profile]
    ws = make_workspace(tmp_path / "ws", PROFILES / profile)
    jobs = snakemake_jobs(ws, "--resources", "gpu=4")
    train = [j for j in jobs if j["rule"].startswith("train")]
    assert len(train) == len(runs.networks(params)) == 37 + 16  # random0; natman: bases, AnB and BnA
    assert all("gpu=1" in j["resources"] for j in train)
    dry = sh(["dvc", "repro", "--dry", "--force"], ws).stdout
    assert sorted(stage_command(c) for c in re.findall(r"^> (.*)$", dry, re.M)) == sorted(j["cmd"] for j in jobs)


def test_imagenet_profile_reads_the_studys_lists(tmp_path):
    params = tparams.resolve(PROFILES / "imagenet.yaml")
    assert params["splits"]["natman"]["A"] == {"file": "half_nat_idx.txt"}
    assert params["experiment"]["dissimilar"]["splits"] == ["natman"]
    assert [params["splits"][f"random{s}"]["seed"] for s in range(4)] == [0, 1, 2, 3]


@pytest.mark.slow  # CaffeNet trained on a 227 px tree
def test_caffenet_trains_on_an_imagenet_shaped_tree_on_cpu(tmp_path, monkeypatch):
    """The imagenet profile end to end at toy scale: a flat val folder, the bad-file kinds, 256x256
    store, streamed halves, 227 crops, mean subtraction, CaffeNet base and a transfer network."""
    from transferability import stages

    from .test_prepare_imagenet import WNIDS, make_imagenet

    make_imagenet(tmp_path / "ilsvrc", flat_val=True)
    params = tparams.load(PROFILES / "imagenet.yaml")
    params["dataset"]["root"] = str(tmp_path / "ilsvrc")
    params["splits"]["tiny"] = {"method": "lists", "A": WNIDS[:2], "B": WNIDS[2:]}
    params["train"].update(epochs=1, batch_size=4)
    params["evaluate"].update(evals=2, k_best=1)
    params["compute"].update(device="cpu", threads=2, precision="float32", compile=False, resident_gb=0)
    tparams.validate(params)
    monkeypatch.chdir(tmp_path)
    stages.prepare(params)
    stages.split(params, "tiny")
    for variant, n in (("baseA", None), ("AnB", 5)):
        net = stages.train_network(params, "tiny", 0, variant, n)
        metrics = json.loads(net.file("metrics.json").read_text())
        assert metrics["params"]["model"]["arch"] == "caffenet" and metrics["params"]["train"]["crop"] == 227
        assert metrics["num_test"] == 4 and len(metrics["evals"]) == 2  # two val images per class, flat folder
        assert 0 <= metrics["top1_kbest"] <= 1
    assert metrics["frozen_layers"] == [1, 2, 3, 4, 5] and metrics["num_train"] == 7  # 3 + 4 images of half B
