"""timm's Vision Transformers: ``embed`` (patch embedding, class token, position embedding), each
block, ``head`` (final norm, class-token pooling, classifier); ``model.patch_size`` sets the patch,
``model.input_size`` the image side timm builds for. A unit's tokens pool to the class token and the
mean of the patch tokens."""

from __future__ import annotations

from typing import Any

from transferability.networks.architecture import TIMM_KEYS, Timm, network_input, register
from transferability.networks.families import timm_family

BLOCKS = {"vit_tiny_patch16_224": 12, "vit_small_patch16_224": 12}  # transformer blocks, by timm's name


def units(model: dict[str, Any]) -> tuple[str, ...]:
    return ("embed", *(f"blocks.{b}" for b in range(BLOCKS[model["arch"]])), "head")


def regroup(net: Any, resize: Any) -> list:
    from transferability.networks.backbones import ViTEmbed, ViTHead

    return [ViTEmbed(net, resize), *net.blocks, ViTHead(net)]


def kwargs(model: dict[str, Any], side: int) -> dict[str, Any]:
    return {"img_size": network_input(model, side), "patch_size": model.get("patch_size", 16)}


register(timm_family("vit", tuple(BLOCKS), units, Timm(regroup, kwargs), lambda model: model.get("patch_size", 16),
                     pooling="tokens", keys=(*TIMM_KEYS, "patch_size")))
