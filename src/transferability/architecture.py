"""The AlexNet family's layer tables and their size arithmetic, without torch.

models.py builds the networks from these tables; params.py checks an input side against them, so
``transferability check`` and Snakemake's start (which load params, not torch: 0.6 s against 7 s
on a busy 2-core machine) refuse an input a network cannot take before any stage runs.
"""

from __future__ import annotations

from typing import Any

# (out channels, kernel, stride, padding, groups, pool kernel or 0, lrn after pool)
CAFFENET_CONVS = ((96, 11, 4, 0, 1, 3, True), (256, 5, 1, 2, 2, 3, True), (384, 3, 1, 1, 1, 0, False),
                  (384, 3, 1, 1, 2, 0, False), (256, 3, 1, 1, 2, 3, False))
CAFFENET_FC = 4096


def small_convs(width: float) -> tuple[tuple[int, int, int, int, int, int, bool], ...]:
    def ch(c: int) -> int:
        return max(2, 2 * round(c * width / 2))  # even, for the two groups

    return ((ch(32), 3, 1, 1, 1, 2, True), (ch(64), 3, 1, 1, 2, 2, True), (ch(96), 3, 1, 1, 1, 0, False),
            (ch(96), 3, 1, 1, 2, 0, False), (ch(64), 3, 1, 1, 2, 2, False))


def architecture(model: dict[str, Any]) -> tuple[tuple, int]:
    """The conv layers' table and the width of fc6/fc7 of ``model.arch``."""
    if model["arch"] == "caffenet":
        return CAFFENET_CONVS, CAFFENET_FC
    width = model.get("width", 1.0)
    return small_convs(width), max(2, round(256 * width))


def pooled_side(convs: tuple, size: int) -> int:
    """The side of conv5's output for a square input of ``size``, by the conv and pooling arithmetic
    (torch's floor rounding); 0 if some layer's output would be empty."""
    for _, kernel, stride, pad, _, pool, _ in convs:
        size = (size + 2 * pad - kernel) // stride + 1
        if pool and size >= 1:
            size = (size - pool) // 2 + 1
        if size < 1:
            return 0
    return size


def smallest_input(model: dict[str, Any]) -> int:
    """The least input side ``model.arch`` takes (CaffeNet: 67; the small net: 8): anything smaller
    fails when the network is built, so params are checked against this first."""
    convs, _ = architecture(model)
    size = 1
    while not pooled_side(convs, size):
        size += 1
    return size
