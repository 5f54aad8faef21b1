"""Transfer surgery: copy units 1..n from a source base, re-initialise the rest, freeze or not.

A transfer network starts as a fresh network built with its own seed (so units n+1..L are
initialised exactly as a new network's would be, by our AlexNet init or by timm's own); units 1..n
are then overwritten with the source base's weights (AnB, BnB), BatchNorm running statistics
included, or kept random (RnB, the random-filter control). Frozen units are listed in ``net.frozen``
and left out of the optimizer: no update, no weight decay; their BatchNorm layers stay in eval mode,
so the source's running statistics are kept bit for bit (models.UnitNet.train). With ``stop_grad``
(every mode but the ``full`` reference, see prefix.py) they also get ``requires_grad=False``, so
autograd never runs backward through them. Dropout in frozen fc6/fc7 still acts, as in Caffe.
"""

from __future__ import annotations

from typing import Any

import torch

from transferability.networks.models import build_model
from transferability.networks.unitnet import UnitNet
from transferability.runs import Network


def layer_prefix(net: UnitNet, k: int) -> str:
    """Unit k's keys in a state dict start with this."""
    return f"layers.{net.key(k)}."


def copy_layers(net: UnitNet, source_state: dict[str, torch.Tensor], n: int) -> None:
    """Overwrite units 1..n of ``net`` with the matching tensors of a base's state dict."""
    own = net.state_dict()
    prefixes = tuple(layer_prefix(net, k) for k in range(1, n + 1))
    copied = {k: v for k, v in source_state.items() if k.startswith(prefixes)}
    for key, value in copied.items():
        if own[key].shape != value.shape:
            raise ValueError(f"cannot copy {key}: base has {tuple(value.shape)}, net has {tuple(own[key].shape)}")
    own.update(copied)
    net.load_state_dict(own)


def freeze_layers(net: UnitNet, layers: list[int], stop_grad: bool = True) -> None:
    net.frozen = tuple(layers)
    net.train(net.training)  # their BatchNorm to eval mode
    for k in layers:
        for p in net.layer(k).parameters():
            p.requires_grad_(not stop_grad)


def make_network(network: Network, model: dict[str, Any], in_channels: int, num_classes: int,
                 input_size: int, seed: int,
                 source_state: dict[str, torch.Tensor] | None = None, stop_grad: bool = True,
                 fast_lrn: bool = True) -> UnitNet:
    """The network to train for ``network``: fresh, then copied layers, then frozen layers."""
    net = build_model(model, in_channels, num_classes, input_size, seed, fast_lrn)
    if network.source in ("A", "B"):
        if source_state is None:
            raise ValueError(f"{network.name} copies layers from base{network.source}: give its weights")
        copy_layers(net, source_state, network.n)
    freeze_layers(net, network.frozen_layers, stop_grad)
    return net
