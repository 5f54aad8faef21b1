"""Frozen-prefix execution: exact ways to spend less compute on layers 1..n that never change.

Three modes, chosen by ``compute.frozen_prefix``; all train the same numbers:

- ``full``: the reference. Frozen layers stay in the autograd graph; their gradients are computed
  and thrown away (they are not in the optimizer).
- ``no_grad``: frozen parameters do not require grad, so autograd stops at the first trainable
  layer: no backward through the prefix, no stored activations for it.
- ``cache``: when the prefix's input is one of a fixed finite set of views (no random crop; the
  image or its mirror image), the prefix's output is computed once per view and training reads
  it instead of recomputing it every epoch. The cache ends at the prefix's first stochastic
  module (dropout in fc6), so every dropout mask is still drawn in training, in the same order
  from the same stream: the result is the same as ``no_grad``'s, bit for bit on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from transferability.data.loader import LEAST_BATCH, HalfData, chunks, make_batch, to_device
from transferability.networks.unitnet import UnitNet

MODES = ("full", "no_grad", "cache")


def _flat(net: UnitNet) -> list[tuple[int, nn.Module]]:
    """Every unit's top-level modules in order (a unit that is not a Sequential is one module: a
    residual or transformer block, whose inner dropout is off in our backbones)."""
    return [(k, m) for k in range(1, net.num_units + 1)
            for m in (net.layer(k) if isinstance(net.layer(k), nn.Sequential) else [net.layer(k)])]


def split_prefix(net: UnitNet, n: int) -> tuple[nn.Sequential, nn.Sequential]:
    """The deterministic head of layers 1..n (up to the first dropout) and the modules after it."""
    flat = _flat(net)
    cut = 0
    while cut < len(flat) and flat[cut][0] <= n and not (isinstance(flat[cut][1], nn.Dropout)
                                                          and flat[cut][1].p > 0):
        cut += 1
    return nn.Sequential(*(m for _, m in flat[:cut])), nn.Sequential(*(m for _, m in flat[cut:]))


@dataclass
class PrefixCache:
    """The head's output for every training view and every test image, and the modules after it."""

    rest: nn.Sequential
    train_views: torch.Tensor  # (views * N, ...): view v of image i at v * N + i
    test: torch.Tensor
    num_train: int

    def batch(self, idx: torch.Tensor, data: HalfData, mirror: bool, gen: torch.Generator) -> torch.Tensor:
        """The head's output for a training batch, drawing the flips exactly as ``make_batch`` does."""
        if mirror:
            flip = to_device(torch.rand(len(idx), generator=gen) < 0.5, idx.device)
            idx = idx + self.num_train * flip.long()
        return self.train_views[idx]

    @property
    def nbytes(self) -> int:
        return (self.train_views.numel() + self.test.numel()) * self.train_views.element_size()


@torch.no_grad()
def _head_outputs(head: nn.Module, x: torch.Tensor, data: HalfData, flip: bool, channels_last: bool,
                  batch: int) -> torch.Tensor:
    out = []
    for start, stop in chunks(len(x), batch):
        b = make_batch(x[start:stop], data, None, False, None, False)
        b = b.flip(-1) if flip else b
        out.append(head(b.contiguous(memory_format=torch.channels_last) if channels_last else b))
    return torch.cat(out)


def cache_bytes(net: UnitNet, data: HalfData, mirror: bool) -> int:
    """Memory the cache would take: the head's output size times every training view and test image."""
    head, _ = split_prefix(net, max(net.frozen))
    with torch.no_grad():
        per_image = head(make_batch(data.x_train[:1], data, None, False, None)).numel()
    return 4 * per_image * ((2 if mirror else 1) * len(data.x_train) + len(data.x_test))


def cacheable(net: UnitNet, data: HalfData, train: dict[str, Any], compute: dict[str, Any]) -> bool:
    """True when layers are frozen, their input is one of a finite set of views and the cache fits.

    An epoch whose last batch is smaller than LEAST_BATCH is not cached: its images could take
    other bits through the frozen layers than they do in the cache's full batches. Nor is a head with
    a 1x1 convolution (a ResNet's shortcut): on this CPU a pointwise convolution in channels_last gives
    an image other bits in a batch of 8 or 12 than in one of 60, so a ResNet-18's cache missed ``full``
    by one bit; training runs such a head ``no_grad`` instead, which is exact."""
    crop, n = train.get("crop"), len(data.x_train)
    if not net.frozen or (crop and crop < data.x_train.shape[-1]) or 0 < n % train["batch_size"] < LEAST_BATCH:
        return False
    head, _ = split_prefix(net, max(net.frozen))
    if any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in head.modules()):
        return False
    return cache_bytes(net, data, train.get("mirror", False)) <= compute.get("prefix_cache_gb", 4) * 2**30


def build_cache(net: UnitNet, data: HalfData, mirror: bool, channels_last: bool,
                batch: int) -> PrefixCache:
    """Run the frozen head once over every view of the training images and over the test images."""
    head, rest = split_prefix(net, max(net.frozen))
    was = net.training
    net.eval()  # the head has no mode-dependent module; eval only documents that
    views = [_head_outputs(head, data.x_train, data, f, channels_last, batch) for f in ((False, True) if mirror
                                                                                      else (False,))]
    test = _head_outputs(head, data.x_test, data, False, channels_last, batch)
    net.train(was)
    fmt = torch.channels_last if views[0].dim() == 4 and channels_last else torch.contiguous_format
    return PrefixCache(rest, torch.cat(views).contiguous(memory_format=fmt), test, len(data.x_train))
