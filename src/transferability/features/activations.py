"""Per-layer activations of a trained network, dumped once so classifiers can reuse them.

Every unit is tapped at its output. Conv maps (AlexNet's conv1..5, a ResNet's stem and blocks) are
average-pooled over space, one value per channel; fc6 and fc7 are taken after their ReLU (dropout is
off in eval mode); a ViT's token sequence gives its class token and the mean of its patch tokens.
The dump is one float matrix (images x features) with an index of which columns belong to which
layer, so the Full-Network Embedding and any single-layer baseline slice the same file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transferability import progress
from transferability.data.loader import Rows
from transferability.errors import UserError
from transferability.files.checkpoints import load_weights
from transferability.networks.architecture import ALEXNET_UNITS

DIGITS_SIZE = 28
# torchvision's ImageNet normalisation, in 0..255 units, and its input side
IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]
TORCHVISION_SIDE = 224


@dataclass
class Target:
    """Images to embed: uint8 (N, C, H, W), labels, and which are the fixed training part."""

    name: str
    images: np.ndarray | Rows  # a half of the store is read a slice at a time
    labels: np.ndarray
    is_train: np.ndarray  # bool; all True where the embed stage draws its own splits
    class_names: list[str]


def digits(channels: int, size: int = DIGITS_SIZE) -> Target:
    """scikit-learn's bundled handwritten digits (8x8, 0..16), resized to the network's input."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) * (255.0 / 16.0))[:, None]
    x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8).expand(-1, channels, -1, -1)
    return Target("digits", x.contiguous().numpy(), d.target.astype(np.int64),
                  np.ones(len(d.target), dtype=bool), [str(i) for i in range(10)])


def _pool_map(out: torch.Tensor) -> torch.Tensor:
    """A conv map (N, C, H, W) averaged over space, one value per channel; a vector as it is."""
    return out.mean(dim=(2, 3)) if out.dim() == 4 else out


def _pool_tokens(out: torch.Tensor) -> torch.Tensor:
    """A token sequence (N, tokens, D): the class token, then the mean of the patch tokens; a vector as it is."""
    return torch.cat([out[:, 0], out[:, 1:].mean(dim=1)], dim=1) if out.dim() == 3 else out


# how a unit's output becomes a vector, by the name a family gives (architecture.Family.pooling)
POOLINGS = {"map": _pool_map, "tokens": _pool_tokens}


class LayerTaps:
    """Forward hooks that collect the units' outputs, pooled to vectors as their family says."""

    def __init__(self, modules: dict[str, nn.Module], pooling: str = "map") -> None:
        self.names = list(modules)
        self.outputs: dict[str, torch.Tensor] = {}
        self.pool = POOLINGS[pooling]
        self.hooks = [m.register_forward_hook(self._keep(name)) for name, m in modules.items()]

    def _keep(self, name: str):
        def hook(module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
            self.outputs[name] = self.pool(out.float())
        return hook

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def unit_taps(net: nn.Module, layers: list[int] | None = None) -> dict[str, nn.Module]:
    """Units of one of our networks by name (AlexNet's unit is the whole layer: conv, ReLU, pool, LRN /
    fc, ReLU, dropout; a ResNet's or a ViT's a block): ``layers`` (1-based), or all, the classifier last."""
    ks = layers or range(1, net.num_units + 1)
    return {net.unit_names[k - 1]: net.layer(k) for k in ks}


def torchvision_alexnet_taps(net: nn.Module, layers: list[int]) -> dict[str, nn.Module]:
    """torchvision's AlexNet: the ReLU after each conv and after fc6, fc7 (fc8 is the classifier)."""
    relus = [net.features[i] for i in (1, 4, 7, 9, 11)] + [net.classifier[i] for i in (2, 5)]
    taps = {ALEXNET_UNITS[k - 1]: relus[k - 1] for k in layers if k <= 7}
    if 8 in layers:
        taps["fc8"] = net.classifier[6]
    return taps


def load_torchvision(arch: str, weights: str | Path) -> nn.Module:
    """A torchvision model from weights already on disk; nothing is downloaded."""
    import torchvision

    weights = Path(weights)
    if not weights.exists():
        raise UserError(f"weights file {weights} not found: download the {arch} weights once (e.g. from "
                        "torchvision's model zoo) and give their path; nothing is fetched at run time")
    net = getattr(torchvision.models, arch)(weights=None)
    net.load_state_dict(load_weights(weights, f"download the {arch} weights again"))
    return net


@torch.no_grad()
def extract(net: nn.Module, taps: dict[str, nn.Module], images: np.ndarray, mean: list[float],
            std: list[float], batch_size: int, label: str = "features",
            input_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Run ``images`` through ``net`` in eval mode, on the network's device; return (N, D) float32
    (on the host) and the column index.

    ``input_shape`` (channels, side) adapts images to a network made for other inputs (a torchvision
    model on 28x28 grayscale): channels are repeated and the side resized, after normalisation."""
    net.eval()
    device = next(net.parameters()).device  # a batch goes where the network is; activations come back
    tap = LayerTaps(taps, getattr(net, "pooling", "map"))  # a torchvision model's maps: "map"
    c = input_shape[0] if input_shape else images.shape[1]
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    chunks: list[np.ndarray] = []
    index: list[dict[str, Any]] = []
    bar = progress.bar(len(images), label, "img", unit_scale=True)
    try:
        for i in range(0, len(images), batch_size):
            # uint8 to the device, a quarter of float32's bytes; converted there
            x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).to(device).float()
            if input_shape:
                x = nn.functional.interpolate(x.expand(-1, c, -1, -1), size=input_shape[1], mode="bilinear",
                                              align_corners=False)
            net((x - m) / s)
            chunks.append(torch.cat([tap.outputs[n] for n in tap.names], dim=1).cpu().numpy())
            if not index:
                start = 0
                for n in tap.names:
                    width = tap.outputs[n].shape[1]
                    index.append({"layer": n, "start": start, "stop": start + width})
                    start += width
            bar.update(len(x))
    finally:
        bar.close()
        tap.remove()
    return np.concatenate(chunks), index
