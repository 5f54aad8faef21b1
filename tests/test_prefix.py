"""Frozen-prefix savings are exact: every mode writes the same metrics file as the reference."""

from __future__ import annotations

import json

import pytest
import torch

from transferability import stages
from transferability.data.loader import half_data
from transferability.networks.models import build_model
from transferability.networks.prefix import cache_bytes, cacheable, split_prefix
from transferability.networks.transfer import freeze_layers

SMALL = {"arch": "small", "width": 0.25, "init": "kaiming", "dropout": 0.5}


@pytest.mark.parametrize("n, head_ends_with", [(1, "LocalResponseNorm"), (5, "ReLU"), (6, "ReLU"),
                                               (7, "ReLU")])
def test_the_cached_head_stops_before_the_first_dropout(n, head_ends_with):
    net = build_model(SMALL, 1, 5, 28, seed=0)
    head, rest = split_prefix(net, n)
    assert type(head[-1]).__name__ == head_ends_with
    assert not any(isinstance(m, torch.nn.Dropout) for m in head)
    assert len(head) + len(rest) == sum(len(net.layer(k)) for k in range(1, 9))
    x = torch.randn(4, 1, 28, 28)
    net.eval()
    assert torch.equal(rest(head(x)), net(x))
    if n >= 6:  # fc6's dropout belongs to the trained part, where its masks are drawn
        assert isinstance(rest[0], torch.nn.Dropout)


def test_no_grad_mode_stops_autograd_at_the_prefix():
    def conv_backward_nodes(stop_grad: bool) -> int:
        net = build_model(SMALL, 1, 5, 28, seed=0)
        freeze_layers(net, [1, 2, 3], stop_grad)
        loss = net(torch.randn(2, 1, 28, 28)).sum()
        seen, todo, count = set(), [loss.grad_fn], 0
        while todo:
            node = todo.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            count += "Convolution" in type(node).__name__
            todo += [f for f, _ in node.next_functions]
        return count

    assert conv_backward_nodes(stop_grad=False) == 5
    assert conv_backward_nodes(stop_grad=True) == 2  # conv4 and conv5 only


@pytest.mark.parametrize("variant, n", [("AnB", 1), ("AnB", 4), ("RnB", 6), ("AnB", 7)])
@pytest.mark.usefixtures("workspace")
def test_every_frozen_prefix_mode_writes_the_same_metrics_file(tmp_path, params, variant, n):
    params["train"]["images_per_class"] = 41  # 205 images: a last batch of 13 as well as full ones
    stages.train_network(params, "random0", 0, "baseA", None)
    run = tmp_path / f"data/runs/random0/seed0/{variant}/n{n}"
    files, timings = {}, {}
    for mode in ("full", "no_grad", "cache"):
        params["compute"]["frozen_prefix"] = mode
        for f in (run / "metrics.json", tmp_path / f"data/checkpoints/random0/seed0/{variant}/n{n}.pt"):
            f.unlink(missing_ok=True)
        stages.train_network(params, "random0", 0, variant, n)
        files[mode] = (run / "metrics.json").read_bytes(), (run / "model.pt").read_bytes()
        timings[mode] = json.loads((run / "timing.json").read_text())
    assert files["full"] == files["no_grad"] == files["cache"]
    assert [timings[m]["frozen_prefix"] for m in ("full", "no_grad", "cache")] == ["full", "no_grad", "cache"]
    assert timings["cache"]["prefix_cache_s"] > 0


def test_random_crops_and_unfrozen_nets_are_not_cached(fmnist_store, params):
    split = {h: {"indices": idx, "names": [str(i) for i in idx]} for h, idx in (("A", [0, 1]), ("B", [2, 3]))}
    data = half_data(fmnist_store, split, "B", 10, 10)
    net = build_model(SMALL, 1, 2, 28, seed=0)
    train, compute = {"crop": None, "mirror": True, "batch_size": 5}, {"prefix_cache_gb": 1}

    def ok(**change: object) -> bool:
        return cacheable(net, data, {**train, **change}, compute)

    assert not ok()  # nothing frozen
    freeze_layers(net, [1, 2])
    assert ok() and ok(crop=28)  # a crop of the whole image is no crop
    assert not ok(crop=24)
    assert not ok(batch_size=19)  # 20 images: a last batch of 1
    assert ok(batch_size=12)  # a last batch of 8
    assert cache_bytes(net, data, True) == 4 * 16 * 7 * 7 * (2 * 20 + 20)  # conv2: 16 channels at 7x7


@pytest.mark.usefixtures("workspace")
def test_an_oversized_cache_falls_back_to_no_grad(tmp_path, params):
    stages.train_network(params, "random0", 0, "baseA", None)
    run = tmp_path / "data/runs/random0/seed0/AnB/n2"
    params["compute"]["prefix_cache_gb"] = 1e-6
    stages.train_network(params, "random0", 0, "AnB", 2)
    assert json.loads((run / "timing.json").read_text())["frozen_prefix"] == "no_grad"
