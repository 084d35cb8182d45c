"""The lookup strategies used under torch.compile, against the exact reference.

``_grid_lookup`` (the exact grid's comparison as plain tensor code, which
Inductor fuses) is checked here run eagerly on adversarial inputs (every
level, midpoint and their float32 neighbours, NaN, +-inf, subnormals), and
the whole compiled fake quant (``apot::lookup`` operator inside a compiled
graph, forward and gradient) against the eager one, bitwise.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import apot_torch as at
import apot_torch.quantizer as aq
from tests.test_torch_core import STATS, adversarial_inputs, check_against_reference, qparams, reference_qparams

CONFIGS = [(8, 2, False), (8, 2, True), (6, 3, True), (8, 1, False), (6, 2, False)]


@pytest.mark.parametrize("b,k,signed", CONFIGS)
def test_grid_lookup_matches_reference(b, k, signed, monkeypatch):
    """Force the grid kernel (normally compiled) to run eagerly in place of
    ``_one_comparison``, and compare with the exact reference."""
    monkeypatch.setattr(aq, "_compiled_grid_lookup", lambda: aq._grid_lookup)
    calls = []
    real = aq._eager_lookup

    def inductor_lookup(x, alpha, gamma, levels, values, nan_value, inductor):
        calls.append(1)
        return real(x, alpha, gamma, levels, values, nan_value, True)

    monkeypatch.setattr(aq, "_eager_lookup", inductor_lookup)
    rng = np.random.default_rng(31 * b + k)
    for mn, mx in STATS:
        ref = reference_qparams(mn, mx, b, k, signed)
        x = adversarial_inputs(ref[0], ref[2], rng, n_random=300)
        check_against_reference(x, qparams(mn, mx, b, k, signed), ref)
    assert calls


@pytest.mark.parametrize("b,k,signed", [(4, 2, False), (8, 2, False), (8, 2, True), (8, 4, False)])
def test_compiled_fake_quant_matches_eager(b, k, signed):
    torch._logging.set_logs(dynamo=logging.ERROR)
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(b + k)
    x = torch.randn(10_000, generator=g) * 3
    x[::97] = float("nan")
    x[1], x[2], x[3] = float("inf"), -float("inf"), 1e-40
    qp = at.calculate_qparams(torch.tensor(-2.5), torch.tensor(2.0), b, k, signed)

    def f(v):
        return at.fake_quantize_function.apply(v, *qp)

    compiled = torch.compile(f)
    leaf_e, leaf_c = x.clone().requires_grad_(), x.clone().requires_grad_()
    ye, yc = f(leaf_e), compiled(leaf_c)
    assert torch.equal(ye.isnan(), yc.isnan())
    assert torch.equal(ye.nan_to_num().view(torch.int32), yc.nan_to_num().view(torch.int32))
    dy = torch.randn(x.shape, generator=g)
    (ge,) = torch.autograd.grad(ye, leaf_e, dy)
    (gc,) = torch.autograd.grad(yc, leaf_c, dy)
    assert torch.equal(ge.view(torch.int32), gc.view(torch.int32))
    codes = torch.compile(lambda v: at.quantize_APoT(v, *qp).int_repr())(x)
    assert torch.equal(codes, at.quantize_APoT(x, *qp).int_repr())
