"""timm's ResNets: the stem (conv1, bn1, act1, maxpool), each residual block (``layer1.0``), the head
(global pool, fc); ``model.width`` scales timm's channels and stem."""

from __future__ import annotations

from typing import Any

from transferability.networks.architecture import Timm, register
from transferability.networks.families import timm_family

DEPTHS = {"resnet18": (2, 2, 2, 2), "resnet50": (3, 4, 6, 3)}  # blocks per stage, by timm's name
CHANNELS = (64, 128, 256, 512)  # timm's ResNet defaults; the stem is as wide as the first stage


def units(model: dict[str, Any]) -> tuple[str, ...]:
    blocks = [f"layer{s}.{b}" for s, depth in enumerate(DEPTHS[model["arch"]], start=1) for b in range(depth)]
    return ("stem", *blocks, "head")


def regroup(net: Any, resize: Any) -> list:
    from collections import OrderedDict

    from torch import nn

    stem = OrderedDict(([("resize", resize)] if resize else []) + [
        ("conv1", net.conv1), ("bn1", net.bn1), ("act1", net.act1), ("maxpool", net.maxpool)])
    blocks = [b for stage in (net.layer1, net.layer2, net.layer3, net.layer4) for b in stage]
    drop = [("drop", nn.Dropout(net.drop_rate))] if net.drop_rate else []  # timm's F.dropout before fc
    head = nn.Sequential(OrderedDict([("global_pool", net.global_pool), *drop, ("fc", net.fc)]))
    return [nn.Sequential(stem), *blocks, head]


def kwargs(model: dict[str, Any], side: int) -> dict[str, Any]:
    """timm's channels and stem, scaled by ``model.width``."""
    if model.get("width", 1.0) == 1.0:
        return {}
    return {"channels": tuple(max(1, round(c * model["width"])) for c in CHANNELS),
            "stem_width": max(1, round(CHANNELS[0] * model["width"]))}


register(timm_family("resnet", tuple(DEPTHS), units, Timm(regroup, kwargs)))
