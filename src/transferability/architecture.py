"""Each architecture's units and size arithmetic, without torch: the AlexNet family's layer tables and
the timm backbones' unit names.

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
    """The least input side ``model.arch`` takes (CaffeNet: 67; the small net: 8; a ViT: its patch):
    anything smaller fails when the network is built, so params are checked against this first."""
    if model["arch"] in TIMM_ARCHS:
        return model.get("patch_size", 16) if TIMM_ARCHS[model["arch"]][0] == "vit" else 1
    convs, _ = architecture(model)
    size = 1
    while not pooled_side(convs, size):
        size += 1
    return size


# timm's backbones, by the name timm builds them under: their family and how many blocks each stage
# holds (ResNets) or how many transformer blocks there are (ViTs). backbones.py builds them with timm.
TIMM_ARCHS: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet18": ("resnet", (2, 2, 2, 2)),
    "resnet50": ("resnet", (3, 4, 6, 3)),
    "vit_tiny_patch16_224": ("vit", (12,)),
    "vit_small_patch16_224": ("vit", (12,)),
}
ALEXNET_UNITS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")


def unit_names(model: dict[str, Any]) -> tuple[str, ...]:
    """The transferable units of ``model.arch`` in order, the classifier last: what the study's n counts.

    AlexNet: its eight layers. ResNet: the stem, each residual block (``layer1.0``), the head (pool, fc).
    ViT: the patch embedding (with the class token and position embedding), each block, the head."""
    arch = model["arch"]
    if arch not in TIMM_ARCHS:
        return ALEXNET_UNITS
    family, depths = TIMM_ARCHS[arch]
    if family == "resnet":
        blocks = [f"layer{s}.{b}" for s, depth in enumerate(depths, start=1) for b in range(depth)]
        return ("stem", *blocks, "head")
    return ("embed", *(f"blocks.{b}" for b in range(depths[0])), "head")


def transferable(model: dict[str, Any]) -> int:
    """How many units can be copied: every one but the classifier (n = 1..L-1)."""
    return len(unit_names(model)) - 1


def is_alexnet(model: dict[str, Any]) -> bool:
    """The study's own family: its published numbers and Table 1 apply only to it."""
    return model["arch"] not in TIMM_ARCHS


def network_input(model: dict[str, Any], side: int) -> int:
    """The side the network sees: ``model.input_size`` (images are resized inside the first unit) or the images'."""
    return model.get("input_size") or side
