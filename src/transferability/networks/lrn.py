"""Local response normalisation, bit for bit torch's ``nn.LocalResponseNorm``, three to four times faster.

torch computes the channel window's sum of squares with ``avg_pool3d`` over a padded 5-D view,
which on CPU costs more than the convolutions around it in the small AlexNet (a third of a
training step). The same floating-point operations, in the same order, done as a handful of
channel-slice additions give identical outputs and identical gradients:

- forward: ``avg = (((sq[c-2] + sq[c-1]) + sq[c]) + sq[c+1]) + sq[c+2]) / size`` (zeros outside,
  which add nothing), then ``x / (avg * alpha + k) ** beta``, as ``F.local_response_norm``;
- backward: autograd's formulas for each of those ops, with ``avg_pool3d``'s backward replayed as
  its kernel runs it (each output's share ``grad / size`` added to its window, outputs in order).

In-place operations replace torch's temporaries (same roundings, fewer allocations). The powers
are taken in NCHW order, as torch takes them; everything else runs in the input's layout (one
copy of each power into it), so no elementwise operation mixes channels_last and NCHW strides.

Under bfloat16 (or float16) autocast both this and torch's module are computed in float32 and
the output cast back: in bfloat16 the denominator ``(k + alpha * avg) ** beta`` moves in steps of
about 0.8%, the size of LRN's whole effect with CaffeNet's alpha. A float32 input is computed as
before, to the bit.

tests/test_lrn.py checks equality bit for bit, forward and backward, in both memory layouts, and
the float32 computation of a bfloat16 input under autocast.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def _window_sum(t: torch.Tensor, size: int, before: int, layout: torch.memory_format) -> torch.Tensor:
    """out[:, c] = t[:, c - before] + ... + t[:, c - before + size - 1], added in that order, zeros outside."""
    c = t.shape[1]
    out = torch.zeros_like(t, memory_format=layout)
    for j in range(size):
        off = j - before
        lo, hi = max(0, -off), min(c, c - off)
        out[:, lo:hi] += t[:, lo + off : hi + off]
    return out


def _like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """t's values laid out as ref is: operations between the two then read both contiguously."""
    return t if t.stride() == ref.stride() else torch.empty_like(ref).copy_(t)


class _LocalResponseNorm(torch.autograd.Function):
    """In-place where torch allocates: the same roundings, in either memory layout."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
        # base in NCHW order, as torch's avg_pool3d returns it: pow's vector and scalar paths round
        # differently, so which elements fall in the scalar tail must be the same as torch's
        base = _window_sum((x * x).contiguous(), size, size // 2, torch.contiguous_format)
        base.div_(size).mul_(alpha).add_(k)
        div = _like(base.pow(beta), x)
        out = x / div
        ctx.save_for_backward(x, base, div, out)
        ctx.config = (size, alpha, beta)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, base, div, out = ctx.saved_tensors
        size, alpha, beta = ctx.config
        share = (-grad).mul_(out / div)  # DivBackward: -grad * ((x / div) / div)
        share.mul_(_like(base.pow(beta - 1).mul_(beta), x)).mul_(alpha).div_(size)  # PowBackward, Mul, avg_pool
        grad_sq = _window_sum(share, size, (size - 1) // 2, torch.preserve_format)  # avg_pool3d's backward
        half = grad_sq.mul_(x)  # x * x: both factors get grad_sq * x
        return (grad / div).add_(half).add_(half), None, None, None, None


LOW_PRECISION = (torch.bfloat16, torch.float16)


def in_float32(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``forward(x)`` computed in float32, autocast off, when x is low-precision or autocast is on;
    the output in x's dtype. Plain float32 calls ``forward(x)`` alone: the same bits as before."""
    if x.dtype not in LOW_PRECISION and not torch.is_autocast_enabled(x.device.type):
        return forward(x)
    with torch.autocast(x.device.type, enabled=False):
        return forward(x.float()).to(x.dtype)


class TorchLocalResponseNorm(nn.LocalResponseNorm):
    """torch's own ``nn.LocalResponseNorm`` (compute.fast_lrn: false), in float32 under autocast."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return in_float32(super().forward, x)


class LocalResponseNorm(nn.LocalResponseNorm):
    """Drop-in for ``nn.LocalResponseNorm`` (same arguments, same numbers) on 4-D inputs, in float32
    under autocast."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return in_float32(super().forward, x)
        return in_float32(lambda t: _LocalResponseNorm.apply(t, self.size, self.alpha, self.beta, self.k), x)
