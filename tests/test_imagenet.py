"""The ImageNet profiles: the study's protocol planned whole by both DAGs, and CaffeNet trained for a
step on CPU through the same path a GPU takes (streamed 256x256 store, 227 crops, mean only)."""

from __future__ import annotations

import re

import pytest
import yaml

from transferability import params as tparams
from transferability import runs

from .conftest import ROOT, make_workspace, sh
from .test_workflow import snakemake_jobs

PROFILES = ROOT / "workflow" / "params"


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
    assert sorted(re.findall(r"^> (.*)$", dry, re.M)) == sorted(j["cmd"] for j in jobs)


def test_imagenet_profile_reads_the_studys_lists(tmp_path):
    params = yaml.safe_load((PROFILES / "imagenet.yaml").read_text())
    assert params["splits"]["natman"]["A"] == {"file": "half_nat_idx.txt"}
    assert params["experiment"]["dissimilar"]["splits"] == ["natman"]
    assert [params["splits"][f"random{s}"]["seed"] for s in range(4)] == [0, 1, 2, 3]
