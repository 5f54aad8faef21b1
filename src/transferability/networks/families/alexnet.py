"""The study's AlexNet family: ``caffenet`` (BVLC reference CaffeNet, 227x227) and ``small`` (the same
eight layers for 28x28 inputs, ``model.width`` scaling its channels), built by models.py.

The only family the study's published numbers apply to, and the only one memory.py sizes by
arithmetic over its layer table rather than by building it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from transferability.networks.architecture import ALEXNET_UNITS, ConvTable, Family, pooled_side, register

if TYPE_CHECKING:
    from transferability.networks.unitnet import UnitNet

# (out channels, kernel, stride, padding, groups, pool kernel or 0, lrn after pool)
CAFFENET_CONVS: ConvTable = ((96, 11, 4, 0, 1, 3, True), (256, 5, 1, 2, 2, 3, True), (384, 3, 1, 1, 1, 0, False),
                             (384, 3, 1, 1, 2, 0, False), (256, 3, 1, 1, 2, 3, False))
CAFFENET_FC = 4096


def small_convs(width: float) -> ConvTable:
    def ch(c: int) -> int:
        return max(2, 2 * round(c * width / 2))  # even, for the two groups

    return ((ch(32), 3, 1, 1, 1, 2, True), (ch(64), 3, 1, 1, 2, 2, True), (ch(96), 3, 1, 1, 1, 0, False),
            (ch(96), 3, 1, 1, 2, 0, False), (ch(64), 3, 1, 1, 2, 2, False))


def layers(model: dict[str, Any]) -> tuple[ConvTable, int]:
    """The conv layers' table and the width of fc6/fc7 of ``model.arch``."""
    if model["arch"] == "caffenet":
        return CAFFENET_CONVS, CAFFENET_FC
    width = model.get("width", 1.0)
    return small_convs(width), max(2, round(256 * width))


def smallest_input(model: dict[str, Any]) -> int:
    """The least side whose conv5 output is not empty (CaffeNet: 67; the small net: 8)."""
    convs, _ = layers(model)
    size = 1
    while not pooled_side(convs, size):
        size += 1
    return size


def build(model: dict[str, Any], in_channels: int, num_classes: int, side: int, fast_lrn: bool = True) -> UnitNet:
    from transferability.networks.models import build_alexnet

    return build_alexnet(model, in_channels, num_classes, side, fast_lrn)


register(Family("alexnet", ("small", "caffenet"), lambda model: ALEXNET_UNITS, smallest_input, build,
                layers=layers, published=True, inits=("kaiming", "caffe"), keys=()))
