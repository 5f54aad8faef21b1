"""Transfer surgery, checked on real training: copied, frozen, fine-tuned and re-initialised layers."""

from __future__ import annotations

import pytest
import torch

from transferability.data.loader import half_data
from transferability.data.splits import make_split
from transferability.networks.transfer import layer_prefix, make_network
from transferability.runs import Network
from transferability.training.loop import train

LAYERS = range(1, 9)


def layer_state(net, k):
    return {name: t.clone() for name, t in net.state_dict().items() if name.startswith(layer_prefix(net, k))}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def setting(fmnist_store, smoke_params):
    split = make_split("random0", {"method": "random", "seed": 0}, fmnist_store.classes)
    data = half_data(fmnist_store, split, "B", 30, 20)
    base = make_network(Network("random0", 0, "baseA"), smoke_params["model"], 1, 5, 28, seed=1)
    return {"data": data, "base": base.state_dict(), "params": smoke_params}


def build(setting, variant, n, seed=2):
    return make_network(Network("random0", 0, variant, n), setting["params"]["model"], 1, 5, 28, seed,
                        setting["base"])


def fit(setting, net, tmp_path):
    train(net, setting["data"], setting["params"], seed=3, checkpoint=tmp_path / "ckpt.pt", tag="t",
          label="test")


@pytest.mark.parametrize("n", [1, 3, 5, 7])
def test_copied_layers_equal_the_base_and_the_rest_are_fresh(setting, n):
    net = build(setting, "AnB", n)
    fresh = make_network(Network("random0", 0, "baseB"), setting["params"]["model"], 1, 5, 28, seed=2)
    for k in LAYERS:
        mine = layer_state(net, k)
        base = {name: setting["base"][name] for name in mine}
        if k <= n:
            assert same(mine, base), f"layer {k} should be copied"
        else:
            assert not same(mine, base), f"layer {k} should be re-initialised"
            assert same(mine, layer_state(fresh, k)), f"layer {k} should be initialised as a fresh net"


@pytest.mark.parametrize(("variant", "n"), [("AnB", 3), ("BnB", 5), ("RnB", 2), ("AnB", 7)])
def test_frozen_layers_are_bit_identical_after_training(setting, tmp_path, variant, n):
    net = build(setting, variant, n)
    before = {k: layer_state(net, k) for k in LAYERS}
    fit(setting, net, tmp_path)
    for k in LAYERS:
        if k <= n:
            assert same(layer_state(net, k), before[k]), f"frozen layer {k} changed"
        else:
            assert not same(layer_state(net, k), before[k]), f"layer {k} did not train"


def test_fine_tuned_variants_change_every_layer(setting, tmp_path):
    net = build(setting, "AnB-ft", 4)
    before = {k: layer_state(net, k) for k in LAYERS}
    fit(setting, net, tmp_path)
    for k in LAYERS:
        assert not same(layer_state(net, k), before[k]), f"layer {k} of A4B+ did not train"


def test_random_control_keeps_its_own_random_filters(setting):
    net = build(setting, "RnB", 3)
    fresh = make_network(Network("random0", 0, "baseB"), setting["params"]["model"], 1, 5, 28, seed=2)
    assert same(layer_state(net, 1), layer_state(fresh, 1))
    assert not same(layer_state(net, 1), {k: setting["base"][k] for k in layer_state(net, 1)})
    assert [p.requires_grad for p in net.layer(3).parameters()] == [False, False]
    assert all(p.requires_grad for p in net.layer(4).parameters())
