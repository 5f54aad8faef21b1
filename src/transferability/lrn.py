"""Local response normalisation, bit for bit torch's ``nn.LocalResponseNorm``, three to four times faster.

torch computes the channel window's sum of squares with ``avg_pool3d`` over a padded 5-D view,
which on CPU costs more than the convolutions around it in the small AlexNet (a third of a
training step). The same floating-point operations, in the same order, done as a handful of
channel-slice additions give identical outputs and identical gradients:

- forward: ``avg = (((sq[c-2] + sq[c-1]) + sq[c]) + sq[c+1]) + sq[c+2]) / size`` (zeros outside,
  which add nothing), then ``x / (avg * alpha + k) ** beta``, as ``F.local_response_norm``;
- backward: autograd's formulas for each of those ops, with ``avg_pool3d``'s backward replayed as
  its kernel runs it (each output's share ``grad / size`` added to its window, outputs in order).

tests/test_lrn.py checks equality bit for bit, forward and backward, in both memory layouts.
"""

from __future__ import annotations

import torch
from torch import nn


def _window_sum(t: torch.Tensor, size: int, before: int) -> torch.Tensor:
    """out[:, c] = t[:, c - before] + ... + t[:, c - before + size - 1], added in that order, zeros outside."""
    c = t.shape[1]
    out = torch.zeros_like(t)
    for j in range(size):
        off = j - before
        lo, hi = max(0, -off), min(c, c - off)
        out[:, lo:hi] += t[:, lo + off : hi + off]
    return out


def _layout(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class _LocalResponseNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
        layout = _layout(x)
        x = x.contiguous()  # channel slices of NCHW are contiguous blocks; the values do not depend on it
        base = _window_sum(x * x, size, size // 2) / size * alpha + k
        div = base.pow(beta)
        out = x / div
        ctx.save_for_backward(x, base, div, out)
        ctx.config = (size, alpha, beta, layout)
        return out.contiguous(memory_format=layout)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, base, div, out = ctx.saved_tensors
        size, alpha, beta, layout = ctx.config
        grad = grad.contiguous()
        grad_base = (-grad * (out / div)) * (beta * base.pow(beta - 1))  # DivBackward, then PowBackward
        share = grad_base * alpha / size
        grad_sq = _window_sum(share, size, (size - 1) // 2)  # avg_pool3d's backward, outputs in order
        half = grad_sq * x  # x * x: both factors get grad_sq * x
        return ((grad / div + half) + half).contiguous(memory_format=layout), None, None, None, None


class LocalResponseNorm(nn.LocalResponseNorm):
    """Drop-in for ``nn.LocalResponseNorm`` (same arguments, same numbers) on 4-D inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return super().forward(x)
        return _LocalResponseNorm.apply(x, self.size, self.alpha, self.beta, self.k)
