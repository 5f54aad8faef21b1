"""The AlexNet family: the study's CaffeNet exactly, and the small net with the same 8 layers."""

from __future__ import annotations

import torch
from torch import nn

from transferability.models import LAYER_NAMES, build_model, forward_flops

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
        assert [type(m).__name__ for m in net.layer(k)] == ["Conv2d", "ReLU", "MaxPool2d", "LocalResponseNorm"]
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
