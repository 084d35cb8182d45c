"""apot_torch._lookup, the rounding lookup: its strategies (select chain,
chunked exact grid, the grid as a compiled kernel, the ``apot::`` operators
inside a compiled graph, forward and gradient) against the brute-force
reference on adversarial inputs (every level, midpoint and their float32
neighbours, NaN, +-inf, subnormals), and its table cache (recomputed when
qparams change in place, bounded)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import apot_torch as at
import apot_torch._lookup as lk
from apot_common.tables import num_combinations
from apot_torch.quantizer import SELECT_CHAIN_MAX_LEVELS
from tests.helpers import bits
from tests.reference import adversarial_inputs, all_configs, reference_qparams, reference_quantize
from tests.torch.helpers import STATS, check_against_reference, qparams

CONFIGS = [(8, 2, False), (8, 2, True), (6, 3, True), (8, 1, False), (6, 2, False)]


def _check_eager(x: np.ndarray, qp, alpha, levels, indices) -> None:
    """Codes and fake-quant values of the eager lookup against the exact
    reference for these (possibly inconsistent) qparams."""
    xt = torch.from_numpy(x)
    ref_codes, ref_values = reference_quantize(x, np.float32(alpha), levels, indices)
    np.testing.assert_array_equal(at.quantize_APoT(xt, *qp).int_repr().numpy(), ref_codes)
    np.testing.assert_array_equal(bits(at.quant_dequant_APoT(xt, *qp)), bits(ref_values))
    fq = at.fake_quantize_function.apply(xt, *qp)
    np.testing.assert_array_equal(bits(fq), bits(ref_values))


@pytest.mark.parametrize("b,k,signed", [c for c in all_configs() if num_combinations(*c) <= SELECT_CHAIN_MAX_LEVELS])
def test_select_chain_matches_reference(b, k, signed, monkeypatch):
    """The compare-and-select chain only runs under torch.compile; force it
    in eager mode to check it against the reference on its own."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    rng = np.random.default_rng(7 * b + k)
    for mn, mx in STATS:
        ref = reference_qparams(mn, mx, b, k, signed)
        x = adversarial_inputs(ref[0], ref[2], rng, n_random=200)
        check_against_reference(x, qparams(mn, mx, b, k, signed), ref)


@pytest.mark.parametrize("b,k,signed", [(4, 2, False), (8, 2, True), (8, 1, False)])
def test_chunked_lookup_matches_reference(b, k, signed, monkeypatch):
    """On CPU the one-comparison lookup runs in chunks; use tiny ones so that
    the adversarial inputs span many, the last one partial."""
    monkeypatch.setattr(lk, "_CPU_CHUNK", 97)
    rng = np.random.default_rng(11 * b + k)
    for mn, mx in STATS[:3]:
        ref = reference_qparams(mn, mx, b, k, signed)
        x = adversarial_inputs(ref[0], ref[2], rng, n_random=400)
        assert x.size > 3 * 97
        check_against_reference(x, qparams(mn, mx, b, k, signed), ref)


@pytest.mark.parametrize("b,k,signed", CONFIGS)
def test_grid_lookup_matches_reference(b, k, signed, monkeypatch):
    """Force the grid kernel (normally compiled) to run eagerly in place of
    ``_one_comparison``, and compare with the exact reference."""
    monkeypatch.setattr(lk, "_compiled_grid_lookup", lambda: lk._grid_lookup)
    calls = []
    real = lk._eager_lookup

    def inductor_lookup(x, alpha, gamma, levels, values, nan_value, inductor):
        calls.append(1)
        return real(x, alpha, gamma, levels, values, nan_value, True)

    monkeypatch.setattr(lk, "_eager_lookup", inductor_lookup)
    rng = np.random.default_rng(31 * b + k)
    for mn, mx in STATS:
        ref = reference_qparams(mn, mx, b, k, signed)
        x = adversarial_inputs(ref[0], ref[2], rng, n_random=300)
        check_against_reference(x, qparams(mn, mx, b, k, signed), ref)
    assert calls


@pytest.mark.parametrize("b,k,signed", [(4, 2, False), (8, 2, False), (8, 2, True), (8, 4, False)])
def test_compiled_fake_quant_matches_eager(b, k, signed):
    """The compiled fake quant (forward, gradient) and codes equal the eager
    ones bitwise; with unobserved qparams (NaN gamma) every output is NaN and
    every code NAN_CODE, also compiled (where the select chain applies it
    last). The qparams are arguments, as a module's buffers are, so both
    qparams run the same compiled graphs."""
    torch._logging.set_logs(dynamo=logging.ERROR)
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(b + k)
    x = torch.randn(10_000, generator=g) * 3
    x[::97] = float("nan")
    x[1], x[2], x[3] = float("inf"), -float("inf"), 1e-40
    qp = at.calculate_qparams(torch.tensor(-2.5), torch.tensor(2.0), b, k, signed)

    def f(v, *q):
        return at.fake_quantize_function.apply(v, *q)

    def codes_of(v, *q):
        return at.quantize_APoT(v, *q).int_repr()

    compiled, compiled_codes = torch.compile(f), torch.compile(codes_of)
    leaf_e, leaf_c = x.clone().requires_grad_(), x.clone().requires_grad_()
    ye, yc = f(leaf_e, *qp), compiled(leaf_c, *qp)
    assert torch.equal(ye.isnan(), yc.isnan())
    assert torch.equal(ye.nan_to_num().view(torch.int32), yc.nan_to_num().view(torch.int32))
    dy = torch.randn(x.shape, generator=g)
    (ge,) = torch.autograd.grad(ye, leaf_e, dy)
    (gc,) = torch.autograd.grad(yc, leaf_c, dy)
    assert torch.equal(ge.view(torch.int32), gc.view(torch.int32))
    assert torch.equal(compiled_codes(x, *qp), codes_of(x, *qp))
    unobserved = at.calculate_qparams(torch.tensor(float("inf")), torch.tensor(float("-inf")), b, k, signed)
    assert torch.isnan(unobserved[1]) and torch.isnan(compiled(leaf_c, *unobserved)).all()
    assert (compiled_codes(x, *unobserved) == at.NAN_CODE).all()


@pytest.mark.parametrize("b,k", [(4, 2), (8, 2)])
def test_table_cache_follows_qparams_changed_in_place(b, k):
    """The eager rounding tables are cached on the bits of (levels, alpha):
    the same qparam tensors changed in place (alpha alone, then levels
    alone, then both, then back) must give the reference's result each time."""
    lk._TABLE_CACHE.clear()
    rng = np.random.default_rng(b)
    qp = qparams(-3.0, 3.0, b, k)
    alpha0, _, levels0, indices = reference_qparams(-3.0, 3.0, b, k, False)
    x = adversarial_inputs(alpha0, levels0, rng, n_random=500)
    _check_eager(x, qp, alpha0, levels0, indices)
    assert len(lk._TABLE_CACHE) == 1
    _check_eager(x, qp, alpha0, levels0, indices)  # a hit
    assert len(lk._TABLE_CACHE) == 1
    qp[0].fill_(1.25)  # alpha alone: clips inside the levels
    _check_eager(x, qp, 1.25, levels0, indices)
    _, _, levels1, _ = reference_qparams(-0.7, 0.7, b, k, False)
    qp[0].fill_(3.0)
    qp[2].copy_(torch.from_numpy(levels1))  # the levels alone
    _check_eager(x, qp, 3.0, levels1, indices)
    new = qparams(-0.1, 0.4, b, k)  # everything, in place
    for mine, theirs in zip(qp, new):
        mine.copy_(theirs)
    alpha2, _, levels2, _ = reference_qparams(-0.1, 0.4, b, k, False)
    _check_eager(x, qp, alpha2, levels2, indices)
    for mine, theirs in zip(qp, qparams(-3.0, 3.0, b, k)):
        mine.copy_(theirs)
    _check_eager(x, qp, alpha0, levels0, indices)
    assert len(lk._TABLE_CACHE) == 4


def test_table_cache_is_bounded():
    lk._TABLE_CACHE.clear()
    x = torch.linspace(-2, 2, 101)
    for i in range(lk._TABLE_CACHE_SIZE + 5):
        mx = 1.0 + i / 64
        qp = qparams(-mx, mx, 4, 2)
        alpha, _, levels, indices = reference_qparams(-mx, mx, 4, 2, False)
        _check_eager(x.numpy(), qp, alpha, levels, indices)
    assert len(lk._TABLE_CACHE) == lk._TABLE_CACHE_SIZE


@pytest.mark.parametrize(
    "b,k,signed,op", [(4, 2, False, "apot.thresholds"), (8, 2, False, "apot.grid_or_search")]
)  # the select chain's thresholds (16 levels), the whole lookup (more)
def test_compiled_graph_reads_the_tables_through_operators(b, k, signed, op):
    """A compiled fake quant is one graph that gets the rounding tables from
    the ``apot::`` operators (the select chain's thresholds, or the whole
    lookup), not from the 32-step threshold bisection traced into it: that
    was some 600 Inductor nodes in every graph that rounds, and most of its
    compile time. The graph is captured before Inductor, so nothing compiles."""
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    qp = at.calculate_qparams(torch.tensor(-2.5), torch.tensor(2.0), b, k, signed)
    x = torch.randn(1000, generator=torch.Generator().manual_seed(b))
    compiled = torch.compile(lambda v, *q: at.fake_quantize_function.apply(v, *q), backend=capture, fullgraph=True)
    np.testing.assert_array_equal(bits(compiled(x, *qp)), bits(at.fake_quantize_function.apply(x, *qp)))
    (gm,) = graphs
    targets = [str(node.target) for node in gm.graph.nodes if node.op == "call_function"]
    assert any(op in target for target in targets), targets
    assert len(gm.graph.nodes) < 100, len(gm.graph.nodes)
