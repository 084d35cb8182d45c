"""apot_torch.quantizer: codes, dequantize and quant_dequant (a large input
against the brute-force reference, NaN policy, shapes and dtypes, inputs
never modified, bad qparams and inputs refused, CUDA equals CPU). The
every-(b, k) sweep against the reference is ``parity_tests/test_core.py``,
run on every backend (torch-cpu and torch-cuda among them); the lookup's
strategies are ``tests/torch/test_lookup.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import apot_torch as at
from tests.helpers import bits
from tests.reference import adversarial_inputs, reference_qparams, reference_quantize
from tests.torch.helpers import STATS, check_against_reference, observed_qparams, qparams, requires_cuda


def _special_inputs() -> torch.Tensor:
    x = torch.randn(1000, generator=torch.Generator().manual_seed(1)) * 2
    return torch.cat([x, torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-45, 5.0, -5.0])])


def test_large_input_matches_reference():
    """More elements than one chunk of the real size, not a multiple of it."""
    ref = reference_qparams(-2.0, 2.0, 4, 2, False)
    x = np.random.default_rng(12).normal(size=3 * 2**16 + 5).astype(np.float32) * 2
    x[::1000] = np.nan
    check_against_reference(x, qparams(-2.0, 2.0, 4, 2), ref)


def test_nan_policy_and_dequantize():
    qp = qparams(-1.0, 2.0, 4, 2)
    levels = qp[2]
    x = torch.tensor([float("nan"), 0.3, float("inf"), -float("inf"), -float("nan")])
    apot = at.quantize_APoT(x, *qp)
    codes = apot.int_repr()
    assert codes[0] == at.NAN_CODE == -1 and codes[4] == -1
    out = at.quant_dequant_APoT(x, *qp)
    assert torch.isnan(out[0]) and torch.isnan(out[4])
    assert out[2] == levels[-1] == 2.0 and out[3] == levels[0] == 0.0
    back = at.dequantize_APoT(apot)
    np.testing.assert_array_equal(bits(back), bits(out))
    bad_codes = at.TensorAPoT(apot.quantizer, torch.tensor([-1, 16, -5, 3], dtype=torch.int32))
    deq = at.dequantize_APoT(bad_codes)
    assert torch.isnan(deq[:3]).all() and deq[3] == levels[qp[3].tolist().index(3)]


def test_shapes_layouts_and_empty_input():
    qp = qparams(-2.0, 2.0, 8, 2)
    x = torch.randn(6, 7, generator=torch.Generator().manual_seed(0))
    flat = at.quant_dequant_APoT(x.reshape(-1), *qp)
    np.testing.assert_array_equal(bits(at.quant_dequant_APoT(x.t(), *qp)), bits(flat.reshape(6, 7).t()))
    assert at.quant_dequant_APoT(x[0, 0], *qp).shape == ()
    assert at.quantize_APoT(torch.empty(0, 3), *qp).int_repr().shape == (0, 3)
    assert at.quant_dequant_APoT(torch.empty(0), *qp).shape == (0,)


def test_inputs_are_never_modified():
    qp = qparams(-1.0, 1.0, 8, 2)
    x = _special_inputs()
    before = bits(x).copy()
    at.quantize_APoT(x, *qp)
    at.quant_dequant_APoT(x, *qp)
    xr = x.clone().requires_grad_()
    at.fake_quantize_function.apply(xr, *qp).sum().backward()
    at.APoTObserver(b=8, k=2)(x)
    qp_before = [t.clone() for t in qp]
    np.testing.assert_array_equal(bits(x), before)
    np.testing.assert_array_equal(bits(xr.detach()), before)
    for got, want in zip(qp, qp_before):
        assert torch.equal(got.view(torch.int32) if got.is_floating_point() else got,
                           want.view(torch.int32) if want.is_floating_point() else want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_output_dtype_is_input_dtype(dtype):
    qp = qparams(-1.0, 1.0, 4, 2)
    x = _special_inputs().to(dtype)
    # reference: the float32 value of each input, rounded once to the dtype
    _, ref_values = reference_quantize(x.to(torch.float32).numpy(), np.float32(1.0), qp[2].numpy(), qp[3].numpy())
    expected = torch.from_numpy(ref_values).to(dtype)
    for out in (at.quant_dequant_APoT(x, *qp), at.fake_quantize_function.apply(x, *qp),
                at.dequantize_APoT(at.quantize_APoT(x, *qp))):
        assert out.dtype == dtype and out.shape == x.shape
        assert torch.equal(torch.isnan(out), torch.isnan(expected))
        assert torch.equal(torch.nan_to_num(out), torch.nan_to_num(expected))


def test_non_floating_input_is_refused():
    qp = qparams(-1.0, 1.0, 4, 2)
    ints = torch.arange(4)
    for f in (at.quantize_APoT, at.quant_dequant_APoT, at.fake_quantize_function.apply):
        with pytest.raises(TypeError, match="floating"):
            f(ints, *qp)
    with pytest.raises(TypeError, match="floating"):
        at.APoTObserver(b=4, k=2)(ints)
    with pytest.raises(TypeError, match="Tensor"):
        at.quant_dequant_APoT([0.5], *qp)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize(
    "b,k,signed", [(4, 2, False), (4, 2, True), (8, 2, False), (8, 2, True), (6, 3, False), (8, 8, False)]
)
def test_cuda_matches_cpu_bitwise(b, k, signed):
    rng = np.random.default_rng(b + k)
    for mn, mx in STATS:
        cpu = qparams(mn, mx, b, k, signed)
        gpu = qparams(mn, mx, b, k, signed, device="cuda")
        for c, g in zip(cpu[:3], gpu[:3]):
            np.testing.assert_array_equal(bits(c), bits(g))
        assert torch.equal(cpu[3], gpu[3].cpu())
        x = torch.from_numpy(adversarial_inputs(cpu[0].numpy(), cpu[2].numpy(), rng, n_random=400))
        xg = x.cuda()
        assert torch.equal(at.quantize_APoT(x, *cpu).int_repr(), at.quantize_APoT(xg, *gpu).int_repr().cpu())
        np.testing.assert_array_equal(bits(at.quant_dequant_APoT(x, *cpu)), bits(at.quant_dequant_APoT(xg, *gpu)))
        xr, xgr = x.clone().requires_grad_(), xg.clone().requires_grad_()
        y, yg = at.fake_quantize_function.apply(xr, *cpu), at.fake_quantize_function.apply(xgr, *gpu)
        np.testing.assert_array_equal(bits(y), bits(yg))
        y.backward(torch.ones_like(y))
        yg.backward(torch.ones_like(yg))
        np.testing.assert_array_equal(bits(xr.grad), bits(xgr.grad))


def test_complex_inputs_are_refused_in_torch():
    qp = observed_qparams()
    z = torch.tensor([0.5 + 1j])
    for fn in (lambda: at.quantize_APoT(z, *qp), lambda: at.quant_dequant_APoT(z, *qp),
               lambda: at.fake_quantize_function.apply(z, *qp), lambda: at.APoTObserver(4, 2)(z),
               lambda: at.LinearAPoT(torch.rand(3, 2), 4, 2)(torch.ones(1, 2, dtype=torch.complex64))):
        with pytest.raises(TypeError, match="complex|floating|real"):
            fn()
    with pytest.raises(TypeError, match="real floating"):
        at.quantize_APoT(torch.ones(2), qp[0].to(torch.complex64), *qp[1:])


def test_float64_qparams_work_when_exact_and_are_refused_otherwise():
    qp = observed_qparams()
    x = torch.linspace(-2, 2, 41)
    as64 = tuple(t.double() if t.is_floating_point() else t for t in qp)
    assert torch.equal(at.quantize_APoT(x, *as64).int_repr(), at.quantize_APoT(x, *qp).int_repr())
    levels = qp[2].double().clone()
    levels[3] += 1e-12  # not a float32 value
    with pytest.raises(ValueError, match="quantization_levels of dtype torch.float64 holds"):
        at.quantize_APoT(x, qp[0], qp[1], levels, qp[3])
    with pytest.raises(TypeError, match="level_indices must be an integer"):
        at.quantize_APoT(x, qp[0], qp[1], qp[2], qp[3].float())
    with pytest.raises(ValueError, match="alpha must hold one value"):
        at.quantize_APoT(x, qp[0].repeat(2), *qp[1:])


def test_float64_and_one_element_qparams_in_torch_dequantize():
    alpha, gamma, levels, indices = observed_qparams()
    codes = torch.tensor([0, 5, 15, -1])
    expected = at.APoTQuantizer(alpha, gamma, levels, indices).dequantize(at.TensorAPoT(None, codes))
    for qp in ((alpha.double(), gamma.double(), levels.double(), indices.long()),
               (alpha.reshape(1), gamma.reshape(1), levels.reshape(1, -1), indices)):  # fmt: skip
        q = at.APoTQuantizer(*qp)
        got = q.dequantize(at.TensorAPoT(q, codes))
        assert got.dtype == torch.float32 and torch.equal(got[:3], expected[:3]) and torch.isnan(got[3])
    with pytest.raises(ValueError, match="alpha must hold one value"):
        at.APoTQuantizer(alpha.repeat(2), gamma, levels, indices)
