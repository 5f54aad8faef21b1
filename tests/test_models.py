"""The AlexNet family: the study's CaffeNet exactly, and the small net with the same 8 layers."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transferability.networks.models import LAYER_NAMES, build_model, forward_flops

CAFFENET = {"arch": "caffenet", "init": "caffe", "dropout": 0.5}
SMALL = {"arch": "small", "width": 0.75, "init": "kaiming", "dropout": 0.5}


def test_caffenet_is_the_studys_network():
    net = build_model(CAFFENET, 3, 500, 227, seed=0)
    assert list(net.layers) == list(LAYER_NAMES)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [96, 256, 384, 384, 256]
    assert [c.groups for c in convs] == [1, 2, 1, 2, 2]
    assert net.layer(6)[1].in_features == 6 * 6 * 256 and net.layer(6)[1].out_features == 4096
    assert net.layer(8)[0].out_features == 500
    # conv1 and conv2: pooling then LRN, as CaffeNet (AlexNet proper normalises first)
    for k in (1, 2):
        assert [type(m).__name__ for m in net.layer(k)] == ["Conv2d", "MaxPool2d", "ReLU", "LocalResponseNorm"]
    # CaffeNet has 60,965,224 parameters with 1000 classes; a half has 500 fc8 units fewer
    assert sum(p.numel() for p in net.parameters()) == 60_965_224 - 500 * 4096 - 500
    # Caffe's initialisation: Gaussian std 0.01 (fc6/fc7 0.005), biases 1 in conv2/4/5 and fc6/7
    assert abs(net.layer(1)[0].weight.std().item() - 0.01) < 5e-4
    assert abs(net.layer(6)[1].weight.std().item() - 0.005) < 1e-4
    assert net.layer(2)[0].bias.eq(1).all() and net.layer(3)[0].bias.eq(0).all()
    assert abs(forward_flops(net, 3, 227) / 1e9 - 1.45) < 0.05  # ~0.72 G multiply-adds
    assert net(torch.zeros(2, 3, 227, 227)).shape == (2, 500)


def test_small_net_has_the_same_eight_layers():
    net = build_model(SMALL, 1, 5, 28, seed=0)
    assert list(net.layers) == list(LAYER_NAMES)
    assert net(torch.zeros(4, 1, 28, 28)).shape == (4, 5)
    assert isinstance(net.layer(6)[-1], nn.Dropout) and isinstance(net.layer(7)[-1], nn.Dropout)


def test_same_seed_same_weights_and_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = build_model(SMALL, 1, 5, 28, seed=7).state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    b = build_model(SMALL, 1, 5, 28, seed=7).state_dict()
    c = build_model(SMALL, 1, 5, 28, seed=8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layers.conv1.0.weight"], c["layers.conv1.0.weight"])


def relu_before_pooling(net: torch.nn.Module) -> torch.nn.Module:
    """The same weights with each conv layer's ReLU before its pooling, as Caffe's prototxt orders them."""
    ref = copy.deepcopy(net)
    for k in range(1, 6):
        mods = list(ref.layer(k))
        if isinstance(mods[1], nn.MaxPool2d):
            mods[1], mods[2] = mods[2], mods[1]
            ref.layers[LAYER_NAMES[k - 1]] = nn.Sequential(*mods)
    return ref


@pytest.mark.parametrize("model, channels, size, batch", [(SMALL, 1, 28, 16),     # 2x2 windows
                                                          (CAFFENET, 3, 227, 2)])  # overlapping 3x3 windows
def test_relu_after_pooling_trains_bit_for_bit_as_relu_before(model, channels, size, batch):
    net = build_model(model, channels, 5, size, seed=0)
    ref = relu_before_pooling(net)
    assert [type(m).__name__ for m in ref.layer(1)][:3] == ["Conv2d", "ReLU", "MaxPool2d"]
    gen = torch.Generator().manual_seed(0)
    for step in range(3):
        # a coarse grid of values: ties inside pooling windows, exact zeros and negatives
        x = torch.randint(-4, 5, (batch, channels, size, size), generator=gen).float() / 4
        y = torch.randint(0, 5, (batch,), generator=gen)
        for m in (net, ref):
            torch.manual_seed(step)  # the same dropout masks
            F.cross_entropy(m(x), y).backward()
            with torch.no_grad():
                for p in m.parameters():
                    p -= 0.01 * p.grad
                    p.grad = None
    for (name, a), b in zip(net.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
