"""SGD with momentum and weight decay: torch.optim.SGD's arithmetic, without torch.optim.

``torch.optim.Optimizer.__init__`` imports torch._dynamo (2.5 s on this machine) the first time
any optimizer is built: a tenth of a small network's whole training, paid by every job. This
class applies the same tensor operations in the same order as torch's multi-tensor SGD
(``_multi_tensor_sgd``): one ``torch._foreach_*`` call per operation over a group's parameters,
a handful of kernel launches on a GPU where a loop over parameters makes ~64. On the CPU the
foreach ops run each tensor's own op, so every update is the same bit for bit as torch's
single-tensor SGD and as this class's former per-parameter loop (tests/test_sgd.py).
"""

from __future__ import annotations

from typing import Any

import torch


class SGD:
    """Parameter groups with ``lr``, ``weight_decay`` and any extra keys; ``momentum`` for all."""

    def __init__(self, groups: list[dict[str, Any]], lr: float, momentum: float) -> None:
        self.param_groups = [{"lr": lr, "weight_decay": 0.0, **g, "params": list(g["params"])} for g in groups]
        self.momentum = momentum
        self.buffers: list[list[torch.Tensor | None]] = [[None] * len(g["params"]) for g in self.param_groups]

    @torch.no_grad()
    def step(self) -> None:
        for group, buffers in zip(self.param_groups, self.buffers, strict=True):
            live = [i for i, p in enumerate(group["params"]) if p.grad is not None]
            if not live:
                continue
            params = [group["params"][i] for i in live]
            grads = [p.grad for p in params]
            if group["weight_decay"] != 0:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            if self.momentum != 0:
                grads = self._momentum(buffers, live, grads)
            torch._foreach_add_(params, grads, alpha=-group["lr"])

    def _momentum(self, buffers: list[torch.Tensor | None], live: list[int],
                  grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """buf = momentum * buf + grad, a buffer's first value a copy of its gradient (torch's order)."""
        bufs = [buffers[i] for i in live]
        if all(b is not None for b in bufs):
            torch._foreach_mul_(bufs, self.momentum)
            torch._foreach_add_(bufs, grads, alpha=1)
            return bufs
        for j, i in enumerate(live):  # the first step (or a parameter's first gradient)
            if buffers[i] is None:
                buffers[i] = torch.clone(grads[j]).detach()
            else:
                buffers[i].mul_(self.momentum).add_(grads[j], alpha=1)
        return [buffers[i] for i in live]

    def state_dict(self) -> dict[str, Any]:
        return {"momentum_buffers": self.buffers, "lr": [g["lr"] for g in self.param_groups]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take the buffers onto their parameters' devices: a checkpoint is loaded on the CPU, and a
        buffer left there would fail the first step of a run resumed on a GPU."""
        self.buffers = [[None if b is None else b.to(p.device, copy=True)
                         for b, p in zip(bufs, g["params"], strict=True)]
                        for bufs, g in zip(state["momentum_buffers"], self.param_groups, strict=True)]
        for g, lr in zip(self.param_groups, state["lr"], strict=True):
            g["lr"] = lr
