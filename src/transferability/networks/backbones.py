"""timm's families (ResNets, ViTs, ConvNeXts: families/), cut into the units the study's surgery copies.

The networks are timm's own (architecture, initialisation, weights files); each family's file
regroups a built model's modules into ordered units (architecture.Timm), so ``UnitNet`` runs them
one after another and transfer copies, freezes and caches them as it does AlexNet's layers. This
module builds them and holds the ViT's embedding and head units (timm's own code, regrouped).

Forward through the units is timm's forward, bit for bit (tests/test_backbones.py). Inputs of another
side are resized to ``model.input_size`` inside the first unit (bilinear), so the first unit is still
a function of the stored image and the frozen-prefix cache holds. A base can also be a weights file
(``load_pretrained``): a timm or torchvision-style state dict of the same architecture, read from
disk, never downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import adapt_input_conv, get_pretrained_cfg
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from transferability.errors import UserError
from transferability.files.checkpoints import load_weights
from transferability.networks.architecture import family, network_input, unit_names
from transferability.networks.unitnet import UnitNet


class ViTEmbed(nn.Module):
    """Patch embedding, then the class token and position embedding, by timm's own ``_pos_embed``."""

    _pos_embed = VisionTransformer._pos_embed

    def __init__(self, vit: VisionTransformer, resize: nn.Module | None) -> None:
        super().__init__()
        self.resize = resize or nn.Identity()
        self.patch_embed, self.pos_drop, self.patch_drop, self.norm_pre = (
            vit.patch_embed, vit.pos_drop, vit.patch_drop, vit.norm_pre)
        self.cls_token, self.reg_token, self.pos_embed = vit.cls_token, vit.reg_token, vit.pos_embed
        self.dynamic_img_size, self.no_embed_class = vit.dynamic_img_size, vit.no_embed_class
        self.num_prefix_tokens = vit.num_prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._pos_embed(self.patch_embed(self.resize(x)))
        return self.norm_pre(self.patch_drop(x))


class ViTHead(nn.Module):
    """The final norm, token pooling and classifier, by timm's own ``pool`` and ``forward_head``."""

    pool = VisionTransformer.pool
    forward_head = VisionTransformer.forward_head

    def __init__(self, vit: VisionTransformer) -> None:
        super().__init__()
        self.norm, self.attn_pool, self.fc_norm, self.head_drop, self.head = (
            vit.norm, vit.attn_pool, vit.fc_norm, vit.head_drop, vit.head)
        self.global_pool, self.num_prefix_tokens = vit.global_pool, vit.num_prefix_tokens
        self.pool_include_prefix = getattr(vit, "pool_include_prefix", False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.norm(x))


def _resize(model: dict[str, Any], side: int) -> nn.Module | None:
    size = network_input(model, side)
    return None if size == side else nn.Upsample(size=(size, size), mode="bilinear", align_corners=False)


def units(net: nn.Module, model: dict[str, Any], side: int) -> UnitNet:
    """A built timm model of ``model.arch`` as a UnitNet, regrouped by its family; modules are shared, not copied."""
    fam = family(model)
    names = unit_names(model)
    mods = fam.timm.regroup(net, _resize(model, side))
    if len(mods) != len(names):
        raise ValueError(f"{model['arch']}: {len(mods)} units built, its family names {len(names)}")
    return UnitNet({name.replace(".", "_"): m for name, m in zip(names, mods, strict=True)}, names, fam.pooling)


def timm_kwargs(model: dict[str, Any], in_channels: int, num_classes: int, side: int) -> dict[str, Any]:
    """What timm is asked to build: the classes, channels and dropout, and what the family adds (a
    ResNet's width, a ViT's input and patch)."""
    kw: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_channels, "drop_rate": model["dropout"]}
    return {**kw, **family(model).timm.kwargs(model, side)}


def build_backbone(model: dict[str, Any], in_channels: int, num_classes: int, side: int) -> UnitNet:
    """A fresh network with timm's own initialisation (the caller seeds torch)."""
    net = timm.create_model(model["arch"], pretrained=False, **timm_kwargs(model, in_channels, num_classes, side))
    return units(net, model, side)


def load_pretrained(model: dict[str, Any], weights: str | Path, in_channels: int, side: int) -> UnitNet:
    """A base from a weights file on disk: timm's model of ``model.arch`` with the file's classifier,
    its first convolution adapted to ``in_channels`` by timm (summed for grayscale), as units."""
    path = Path(weights)
    if not path.exists():
        raise UserError(f"pretrained weights {path} not found: put the {model['arch']} weights file there "
                        "(timm or torchvision format) or fix model.pretrained; nothing is downloaded")
    fix = f"replace {path} with a good copy of the {model['arch']} weights"
    if path.suffix == ".safetensors":  # timm's hub format; a safe format of tensors only, as torch.load here
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(path)
        except (SafetensorError, OSError) as exc:
            raise UserError(f"cannot load {path}: {str(exc).splitlines()[0]}; {fix}") from exc
    else:
        state = load_weights(path, fix)
    state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    cfg = get_pretrained_cfg(model["arch"])  # timm's record of the first conv and the classifier
    first, classifier = cfg.first_conv, cfg.classifier
    if f"{classifier}.weight" not in state or f"{first}.weight" not in state:
        raise UserError(f"{path} is not a {model['arch']} state dict (no {classifier}.weight or {first}.weight)")
    state[f"{first}.weight"] = adapt_input_conv(in_channels, state[f"{first}.weight"])
    net = timm.create_model(model["arch"], pretrained=False,
                            **timm_kwargs(model, in_channels, state[f"{classifier}.weight"].shape[0], side))
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"{path} does not fit model.arch {model['arch']} as params build it "
                        f"(width, input_size, patch_size): {str(exc).splitlines()[1].strip()}") from exc
    return units(net, model, side)
