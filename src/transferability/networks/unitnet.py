"""The network as the study sees it: named units applied in order, numbered 1..L, the classifier last.

Its own module so that every family's builder (models.py's AlexNet, backbones.py's timm families) and
what runs networks (transfer, training, prefix) import it without importing one another.
"""

from __future__ import annotations

import torch
from torch import nn


class UnitNet(nn.Module):
    """Named units applied in order; ``layer(k)`` is unit k (1-based), ``unit_names`` what people call them.

    Frozen units (``frozen``, set by transfer.freeze_layers) keep their BatchNorm layers in eval mode in
    training: a frozen unit is the source's unit, running statistics included, and it computes the same
    function every step (so the frozen-prefix cache is exact for it too). Dropout in a frozen unit
    still acts, as in Caffe."""

    def __init__(self, units: dict[str, nn.Module], names: tuple[str, ...], pooling: str = "map") -> None:
        super().__init__()
        self.pooling = pooling  # how features.py pools a unit's output: its family's (architecture.Family)
        self.layers = nn.ModuleDict(units)  # keys without dots (module names); names: layer1.0, blocks.3
        self.unit_names = tuple(names)
        self.frozen: tuple[int, ...] = ()

    @property
    def num_units(self) -> int:
        return len(self.layers)

    def layer(self, k: int) -> nn.Module:
        return self.layers[self.key(k)]

    def key(self, k: int) -> str:
        """Unit k's name in the state dict: ``layers.<key>.``"""
        return list(self.layers)[k - 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.layers.values():
            x = m(x)
        return x

    def train(self, mode: bool = True) -> UnitNet:
        super().train(mode)
        for k in self.frozen:
            for m in self.layer(k).modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self
