"""lrn.py's LocalResponseNorm gives torch's numbers bit for bit, forward and backward."""

from __future__ import annotations

import json

import pytest
import torch

from transferability import stages
from transferability.networks.lrn import LocalResponseNorm
from transferability.networks.models import build_model

from .test_sgd import Ops


@pytest.mark.parametrize("shape", [(64, 24, 14, 14), (32, 48, 7, 7), (3, 5, 2, 3), (2, 1, 4, 4)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("size, alpha, beta, k", [(5, 1e-4, 0.75, 1.0), (4, 1e-2, 0.5, 2.0), (3, 0.5, 0.9, 0.3)])
def test_outputs_and_gradients_are_torchs_bit_for_bit(shape, layout, size, alpha, beta, k):
    gen = torch.Generator().manual_seed(sum(shape) + size)
    x = (torch.randn(shape, generator=gen) * 20).contiguous(memory_format=layout)
    grad = torch.randn(shape, generator=gen).contiguous(memory_format=layout)
    outs = []
    for module in (torch.nn.LocalResponseNorm(size, alpha, beta, k), LocalResponseNorm(size, alpha, beta, k)):
        xi = x.clone().requires_grad_()
        y = module(xi)
        y.backward(grad)
        outs.append((y, xi.grad))
    (y_ref, g_ref), (y, g) = outs
    assert torch.equal(y, y_ref) and torch.equal(g, g_ref)
    assert y.is_contiguous(memory_format=layout) and g.is_contiguous(memory_format=layout)


@pytest.mark.usefixtures("workspace")
def test_a_trained_network_is_the_same_with_either_implementation(tmp_path, params):
    run = tmp_path / "data/runs/random0/seed0/baseB"
    files = {}
    for fast in (False, True):
        params["compute"]["fast_lrn"] = fast
        (tmp_path / "data/checkpoints/random0/seed0/baseB.pt").unlink(missing_ok=True)
        stages.train_network(params, "random0", 0, "baseB", None)
        files[fast] = (run / "metrics.json").read_bytes(), (run / "model.pt").read_bytes()
    assert files[False] == files[True]
    assert len(json.loads(files[True][0])["evals"]) == params["train"]["epochs"]


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_bfloat16_under_autocast_is_computed_in_float32(fast, layout):
    """The denominator is float32 (in bfloat16 it moves in steps of ~0.8%, LRN's whole effect), and
    output and gradient are the float32 computation on the bfloat16 input, rounded once to bfloat16."""
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(8, 24, 9, 9, generator=gen) * 20).to(torch.bfloat16).contiguous(memory_format=layout)
    grad = torch.randn(8, 24, 9, 9, generator=gen).to(torch.bfloat16).contiguous(memory_format=layout)
    module = LocalResponseNorm(5, 1e-4, 0.75, 1.0) if fast else build_model(
        {"arch": "small", "width": 0.25, "init": "kaiming", "dropout": 0.5}, 1, 10, 28, seed=0,
        fast_lrn=False).layer(1)[-1]  # the module a network gets with compute.fast_lrn: false
    xi = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16), Ops() as ops:
        y = module(xi)
    y.backward(grad)
    powers = [d for n, d in zip(ops.names, ops.dtypes, strict=True) if n == "pow"]
    assert powers and set(powers) == {torch.float32}  # the denominator (and the squares, for torch's)
    xf = x.float().requires_grad_()
    y_ref = torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)(xf)
    y_ref.backward(grad.float())
    assert y.dtype == xi.grad.dtype == torch.bfloat16
    assert torch.equal(y, y_ref.to(torch.bfloat16)) and torch.equal(xi.grad, xf.grad.to(torch.bfloat16))
