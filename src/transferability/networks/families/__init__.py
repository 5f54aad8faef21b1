"""One file per architecture family, each registering itself with architecture.register.

architecture.py imports every module here on first use: a new family is a new file (and its names
in the params schema's ``model.arch`` enum), nothing else. The timm families share ``timm_family``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from transferability.networks.architecture import Family, Model, Timm

if TYPE_CHECKING:
    from transferability.networks.unitnet import UnitNet


def _build_timm(model: Model, in_channels: int, num_classes: int, side: int, fast_lrn: bool = True) -> UnitNet:
    from transferability.networks.backbones import build_backbone

    return build_backbone(model, in_channels, num_classes, side)


def timm_family(name: str, archs: tuple[str, ...], units: Callable[[Model], tuple[str, ...]], timm: Timm,
                smallest_input: Callable[[Model], int] = lambda model: 1, **more: Any) -> Family:
    """A family timm builds (backbones.build_backbone), with ``pretrained=False``: nothing is downloaded."""
    return Family(name, archs, units, smallest_input, _build_timm, timm=timm, **more)
