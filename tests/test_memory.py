"""Memory requests from params: the computation, its sizes against the built network, and real jobs."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml

from transferability import memory
from transferability import params as tparams
from transferability.features.activations import LayerTaps, unit_taps
from transferability.networks.models import build_model
from transferability.networks.prefix import split_prefix
from transferability.runs import FeatureJob, Network

from .conftest import ENV, ROOT

CAFFENET = {"arch": "caffenet", "init": "caffe", "dropout": 0.5}


@pytest.mark.parametrize("model, channels, side, classes", [
    ({"arch": "small", "width": 0.25, "init": "kaiming", "dropout": 0.5}, 1, 28, 5),
    ({"arch": "small", "width": 0.75, "init": "kaiming", "dropout": 0.0}, 3, 32, 7),
    (CAFFENET, 3, 227, 500)])
def test_sizes_computed_from_the_layer_specification_are_the_built_networks(model, channels, side, classes):
    net = build_model(model, channels, classes, side, seed=0).eval()
    outputs = []
    hooks = [m.register_forward_hook(lambda m, i, out: outputs.append(out[0].numel()))
             for m in net.modules() if not list(m.children())]
    tap = LayerTaps(unit_taps(net, list(range(1, 8))))
    x = torch.zeros(1, channels, side, side)
    with torch.no_grad():
        net(x)
        for h in hooks:
            h.remove()
        heads = {n: split_prefix(net, n)[0](x)[0].numel() for n in range(1, 8)}
    for n in range(8):
        got = memory._shapes(model, channels, side, classes, n)
        assert got == {"params": sum(p.numel() for p in net.parameters()), "activations": sum(outputs),
                       "width": sum(tap.outputs[k].shape[1] for k in tap.names), "head": heads.get(n, 0)}, n


def test_an_imagenet_training_request_holds_its_test_part_loader_and_checkpoint(tmp_path, monkeypatch):
    """Before prepare (no store yet: ILSVRC-12's 1300 and 50 images per class bound the half)."""
    monkeypatch.chdir(tmp_path)
    params = tparams.load(ROOT / "workflow/params/imagenet.yaml")
    parts = memory.train_parts(params, Network("random0", 0, "AnB", 3))
    image = 3 * 256 * 256
    caffenet_500 = 60_965_224 - 500 * 4096 - 500  # CaffeNet's parameters with a 500-way fc8
    assert parts == {"runtime": memory.RUNTIME + memory.CUDA_RUNTIME,
                     "images": 500 * 50 * image,  # the test part (4.6 GiB) is resident; the train part streamed
                     "labels": 8 * (3 * 500 * 1300 + 500 * 50),
                     "loader": 4 * 256 * image,
                     "checkpoint": 4 * 2 * caffenet_500 * 2}
    mb = memory.train_mb(params, Network("random0", 0, "AnB", 3))
    assert mb == -(-sum(parts.values()) * 5 // 4 // 2**20) and mb > 10_000  # the old fixed request: 4000
    params["compute"]["resident_gb"] = 0  # both parts streamed: no images held
    assert memory.train_parts(params, Network("random0", 0, "baseB"))["images"] == 0


def test_a_cpu_request_counts_model_activations_and_the_prefix_cache(tmp_path, monkeypatch, params):
    monkeypatch.chdir(tmp_path)
    base = memory.train_parts(params, Network("random0", 0, "baseB"))
    frozen = memory.train_parts(params, Network("random0", 0, "AnB", 1))
    shapes = memory._shapes(params["model"], 1, 28, 5, 1)
    assert base["model"] == 4 * 3 * shapes["params"] and "prefix_cache" not in base
    assert frozen["prefix_cache"] == 2 * 4 * shapes["head"] * (2 * 5 * 40 + 5 * 40)  # mirror: two views
    params["compute"]["prefix_cache_gb"] = 1e-9  # too large to cache: none built
    assert memory.train_parts(params, Network("random0", 0, "AnB", 1))["prefix_cache"] == 0


def peak_rss_mb(args: list[str], cwd) -> float:
    """The largest resident set of a job run alone in a fresh process (its only child)."""
    code = ("import resource, subprocess, sys\n"
            f"subprocess.run({args!r}, check=True, capture_output=True)\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=ENV, check=True, capture_output=True, text=True)
    return int(out.stdout) / 1024


@pytest.mark.slow
def test_the_requests_cover_real_jobs_of_the_default_profile(tmp_path, monkeypatch):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["epochs"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    for stage in (["prepare"], ["split", "--split", "random0"]):
        subprocess.run(["transferability", *stage], env=ENV, check=True, capture_output=True)
    p = tparams.load("params.yaml")
    train = ["transferability", "train", "--split", "random0", "--seed", "0", "--variant"]
    measured = {}
    for net, args in ((Network("random0", 0, "baseA"), ["baseA"]),
                      (Network("random0", 0, "AnB", 3), ["AnB", "--n", "3"])):
        measured[net.name] = peak_rss_mb(train + args, tmp_path), memory.train_mb(p, net)
    job = FeatureJob("random0", 0, "baseA", "B")
    measured["features"] = peak_rss_mb(["transferability", "features", "--split", "random0", "--seed", "0",
                                        "--network", "baseA", "--target", "B"], tmp_path), memory.features_mb(p, job)
    print(measured)
    for name, (peak, request) in measured.items():
        assert peak < request < 2 * peak, (name, peak, request)
