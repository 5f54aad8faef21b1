"""timm's ConvNeXts: ``stem`` (the 4x4 patchify conv and its norm), each ConvNeXt block (``stages.1.0``;
a stage's first unit begins with its downsampling), ``head`` (timm's norm_pre, global pool, norm, fc).

Three downsamplings by 2 after the stride-4 stem: an input under 32x32 leaves a stage empty, so
params refuse it before anything is built (set ``model.input_size`` to resize small images).
"""

from __future__ import annotations

from typing import Any

from transferability.networks.architecture import Timm, register
from transferability.networks.families import timm_family

DEPTHS = {"convnext_atto": (2, 2, 6, 2)}  # blocks per stage, by timm's name


def units(model: dict[str, Any]) -> tuple[str, ...]:
    blocks = [f"stages.{s}.{b}" for s, depth in enumerate(DEPTHS[model["arch"]]) for b in range(depth)]
    return ("stem", *blocks, "head")


def regroup(net: Any, resize: Any) -> list:
    from torch import nn

    blocks = [nn.Sequential(stage.downsample, block) if b == 0 else block
              for stage in net.stages for b, block in enumerate(stage.blocks)]
    stem = nn.Sequential(resize, net.stem) if resize else net.stem
    return [stem, *blocks, nn.Sequential(net.norm_pre, net.head)]


register(timm_family("convnext", tuple(DEPTHS), units, Timm(regroup), lambda model: 32))
