"""Networks as the study sees them (unitnet.UnitNet: units applied in order, numbered 1..L, the
classifier last), built by their family (architecture.py's registry).

Unit k is what transfer copies. The 8-layer AlexNet family is built here: conv_k with its pooling,
ReLU and LRN for k <= 5; fc_k with its ReLU and dropout for k = 6, 7; fc8 is the classifier.
``caffenet`` is the study's network (BVLC reference CaffeNet: pooling before LRN, conv2/4/5 in two
groups); ``small`` keeps the same eight layers for 28x28 inputs (families/alexnet.py). ResNets, ViTs
and ConvNeXts come from timm, cut into units by their family files and backbones.py.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from transferability.networks.architecture import ALEXNET_UNITS, family
from transferability.networks.lrn import LocalResponseNorm, TorchLocalResponseNorm
from transferability.networks.unitnet import UnitNet

LAYER_NAMES = ALEXNET_UNITS

# The study's prototxt: Gaussian std and constant bias per layer.
CAFFE_INIT = {"conv1": (0.01, 0.0), "conv2": (0.01, 1.0), "conv3": (0.01, 0.0), "conv4": (0.01, 1.0),
              "conv5": (0.01, 1.0), "fc6": (0.005, 1.0), "fc7": (0.005, 1.0), "fc8": (0.01, 0.0)}


class AlexNetFamily(UnitNet):
    """Eight named layers applied in order; ``layer(k)`` is the study's layer k."""

    def __init__(self, convs: tuple, fc: int, in_channels: int, num_classes: int, input_size: int,
                 dropout: float, fast_lrn: bool = True) -> None:
        layers: dict[str, nn.Module] = {}
        c = in_channels
        for k, (out, kernel, stride, pad, groups, pool, lrn) in enumerate(convs, start=1):
            # ReLU after max pooling: the two commute exactly (ReLU is monotonic; windows that lose
            # to the ReLU pass no gradient either way), and the pooled map is a quarter of the size
            mods: list[nn.Module] = [nn.Conv2d(c, out, kernel, stride, pad, groups=groups)]
            if pool:
                mods.append(nn.MaxPool2d(pool, stride=2))
            mods.append(nn.ReLU(inplace=True))
            if lrn:
                lrn_class = LocalResponseNorm if fast_lrn else TorchLocalResponseNorm  # float32 under autocast
                mods.append(lrn_class(5, alpha=1e-4, beta=0.75, k=1.0))
            layers[f"conv{k}"] = nn.Sequential(*mods)
            c = out
        with torch.no_grad():
            x = torch.zeros(1, in_channels, input_size, input_size)
            for m in layers.values():
                x = m(x)
        flat = x.numel()
        layers["fc6"] = nn.Sequential(nn.Flatten(), nn.Linear(flat, fc), nn.ReLU(inplace=True),
                                      nn.Dropout(dropout))
        layers["fc7"] = nn.Sequential(nn.Linear(fc, fc), nn.ReLU(inplace=True), nn.Dropout(dropout))
        layers["fc8"] = nn.Sequential(nn.Linear(fc, num_classes))
        super().__init__(layers, LAYER_NAMES)


def _weighted(layer: nn.Module) -> nn.Conv2d | nn.Linear:
    return next(m for m in layer.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def init_layer(net: AlexNetFamily, k: int, scheme: str) -> None:
    """Initialise layer k as a fresh network would (``caffe``: the study's Gaussians)."""
    m = _weighted(net.layer(k))
    name = LAYER_NAMES[k - 1]
    with torch.no_grad():
        if scheme == "caffe":
            std, bias = CAFFE_INIT[name]
            m.weight.normal_(0.0, std)
            m.bias.fill_(bias)
        elif name == "fc8":
            m.weight.normal_(0.0, 0.01)
            m.bias.zero_()
        else:
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            m.bias.zero_()


def build_alexnet(model: dict[str, Any], in_channels: int, num_classes: int, input_size: int,
                  fast_lrn: bool = True) -> AlexNetFamily:
    """A fresh network of the AlexNet family, initialised by ``model.init`` (the caller seeds torch)."""
    convs, fc = family(model).layers(model)
    net = AlexNetFamily(convs, fc, in_channels, num_classes, input_size, model["dropout"], fast_lrn)
    for k in range(1, 9):
        init_layer(net, k, model["init"])
    return net


def build_model(model: dict[str, Any], in_channels: int, num_classes: int, input_size: int,
                seed: int, fast_lrn: bool = True) -> UnitNet:
    """Build and initialise a network by its family; the same seed gives the same weights.

    ``input_size`` is the images' side (a timm backbone resizes them to ``model.input_size`` itself);
    ``fast_lrn`` swaps torch's LocalResponseNorm for lrn.py's (same numbers, bit for bit)."""
    build = family(model).build  # an unknown model.arch fails here, before torch's random state is touched
    with torch.random.fork_rng(devices=[]):  # leave the caller's random stream untouched
        torch.manual_seed(seed)
        return build(model, in_channels, num_classes, input_size, fast_lrn)


def forward_flops(net: nn.Module, in_channels: int, input_size: int) -> int:
    """Multiply-adds x 2 of one forward pass for one image (convs and linears only)."""
    flops = 0
    hooks = []

    def count(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        nonlocal flops
        if isinstance(mod, nn.Conv2d):
            k = mod.in_channels // mod.groups * math.prod(mod.kernel_size)
            flops += 2 * out.numel() * k
        elif isinstance(mod, nn.Linear):
            flops += 2 * mod.in_features * mod.out_features

    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(count))
    with torch.no_grad():
        was = net.training
        net.eval()
        net(torch.zeros(1, in_channels, input_size, input_size))
        net.train(was)
    for h in hooks:
        h.remove()
    return flops
