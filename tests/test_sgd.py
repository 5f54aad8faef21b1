"""Our SGD updates parameters exactly as torch.optim.SGD does, bit for bit, and resumes from its state;
it does so with one multi-tensor op per operation, whatever the number of parameters."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from transferability.training.sgd import SGD


def groups(params: list[torch.Tensor]) -> list[dict]:
    """Weights with weight decay, biases without at twice the lr, and a group that never gets a gradient."""
    return [{"params": params[0:4:2], "weight_decay": 5e-4, "lr_mult": 1.0},
            {"params": params[1:4:2], "weight_decay": 0.0, "lr_mult": 2.0},
            {"params": params[4:], "weight_decay": 5e-4, "lr_mult": 1.0}]


@pytest.mark.parametrize("foreach", [False, True])
def test_updates_are_torchs_bit_for_bit_and_survive_a_state_round_trip(foreach):
    """torch's single-tensor SGD (the path this class took before) and its multi-tensor one: same bits."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(16, 8), (8,), (4, 4, 3, 3), (4,), (5, 3)]
    start = [torch.randn(s, generator=gen) * 3 for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes[:4]] for _ in range(8)]

    ours_p = [p.clone().requires_grad_() for p in start]
    ref_p = [p.clone().requires_grad_() for p in start]
    ours = SGD(groups(ours_p), lr=0.01, momentum=0.9)
    ref = torch.optim.SGD(groups(ref_p), lr=0.01, momentum=0.9, foreach=foreach)
    for step, gs in enumerate(grads):
        for opt, params in ((ours, ours_p), (ref, ref_p)):
            for g in opt.param_groups:
                g["lr"] = (0.01 if step < 3 else 0.001 if step < 6 else 0.0003) * g["lr_mult"]
            for i, (p, g) in enumerate(zip(params, gs, strict=False)):
                # the third parameter's first gradient comes at step 1: one group mixes new and old buffers
                p.grad = None if (i == 2 and step == 0) else g.clone()
            opt.step()
        if step == 2:  # a checkpoint: continue in a fresh optimizer from the saved state
            state = ours.state_dict()
            assert set(state) == {"momentum_buffers", "lr"} and state["momentum_buffers"][2] == [None]
            ours = SGD(groups(ours_p), lr=0.01, momentum=0.9)
            ours.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(ours_p, ref_p, strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(ours_p[:4], start[:4], strict=True))
    assert torch.equal(ours_p[4], start[4])  # no gradient, no update (not even weight decay)


def test_parameters_without_a_gradient_are_left_alone():
    p, q = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    opt = SGD([{"params": [p, q]}], lr=0.1, momentum=0.9)
    p.grad = torch.ones(3)
    opt.step()
    assert torch.equal(q, torch.ones(3)) and torch.allclose(p, torch.full((3,), 0.9))


class Ops(TorchDispatchMode):
    """The aten ops dispatched (on a GPU, one kernel launch or one multi-tensor launch each), and
    the dtype of each one's (first) tensor output."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        self.dtypes: list[torch.dtype | None] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.names.append(func.overloadpacket.__name__)
        first = out[0] if isinstance(out, (tuple, list)) and out else out
        self.dtypes.append(first.dtype if isinstance(first, torch.Tensor) else None)
        return out


def test_a_step_is_a_few_multi_tensor_ops_whatever_the_parameter_count():
    """Before: weight decay, momentum and the update were 4 ops per parameter (70 for these 20)."""
    params = [torch.zeros(7, requires_grad=True) for _ in range(20)]
    opt = SGD([{"params": params[:10], "weight_decay": 5e-4}, {"params": params[10:]}], lr=0.1, momentum=0.9)
    for _ in range(2):  # the first step makes the momentum buffers
        for p in params:
            p.grad = torch.ones(7)
        with Ops() as ops:
            opt.step()
    # per group: weight decay (the first only), buffer *= momentum, buffer += grad, param -= lr * buffer
    assert ops.names == ["_foreach_add", "_foreach_mul_", "_foreach_add_", "_foreach_add_",
                         "_foreach_mul_", "_foreach_add_", "_foreach_add_"]
