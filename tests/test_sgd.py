"""Our SGD updates parameters exactly as torch.optim.SGD does, bit for bit, and resumes from its state."""

from __future__ import annotations

import torch

from transferability.sgd import SGD


def test_updates_are_torchs_bit_for_bit_and_survive_a_state_round_trip():
    gen = torch.Generator().manual_seed(0)
    shapes = [(16, 8), (8,), (4, 4, 3, 3), (4,)]
    start = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(6)]

    def groups(params: list[torch.Tensor]) -> list[dict]:
        return [{"params": params[0::2], "weight_decay": 5e-4, "lr_mult": 1.0},
                {"params": params[1::2], "weight_decay": 0.0, "lr_mult": 2.0}]

    ours_p = [p.clone().requires_grad_() for p in start]
    ref_p = [p.clone().requires_grad_() for p in start]
    ours = SGD(groups(ours_p), lr=0.01, momentum=0.9)
    ref = torch.optim.SGD(groups(ref_p), lr=0.01, momentum=0.9)
    for step, gs in enumerate(grads):
        for opt, params in ((ours, ours_p), (ref, ref_p)):
            for g in opt.param_groups:
                g["lr"] = (0.01 if step < 3 else 0.001) * g["lr_mult"]
            for p, g in zip(params, gs, strict=True):
                p.grad = g.clone()
            opt.step()
        if step == 2:  # a checkpoint: continue in a fresh optimizer from the saved state
            state = ours.state_dict()
            ours = SGD(groups(ours_p), lr=0.01, momentum=0.9)
            ours.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(ours_p, ref_p, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(ours_p, start, strict=True))


def test_parameters_without_a_gradient_are_left_alone():
    p, q = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    opt = SGD([{"params": [p, q]}], lr=0.1, momentum=0.9)
    p.grad = torch.ones(3)
    opt.step()
    assert torch.equal(q, torch.ones(3)) and torch.allclose(p, torch.full((3,), 0.9))
