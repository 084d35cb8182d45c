"""apot_torch core against the brute-force reference: bitwise, every (b, k).

Mirrors tests/test_jax_core.py, plus the torch-only parts of the contract:
dtypes, input immutability, the observer module and the autograd function.
"""

from __future__ import annotations

from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import apot_torch as at
from apot_common.tables import num_combinations
from apot_torch.levels import gamma as torch_gamma
from apot_torch.quantizer import SELECT_CHAIN_MAX_LEVELS
from tests.reference import (
    adversarial_inputs,
    all_configs,
    reference_qparams,
    reference_quantize,
    round_rational_to_float32,
)

# Same statistics as tests/test_jax_core.py: ordinary, odd, alpha where a level
# product rounds across the normal range for k = 8, tiny, huge, all-zero.
STATS = [(-1.0, 1.0), (-0.3, 0.7371), (0.0, 0.5 - 2**-25), (-1e-30, 3e-31), (-3e37, 2.0), (0.0, 0.0)]

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def bits(a) -> np.ndarray:
    """float32 bit patterns, so that NaN == NaN and -0.0 != 0.0."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().to(torch.float32).numpy()
    return np.asarray(a, np.float32).view(np.int32)


def qparams(mn: float, mx: float, b: int, k: int, signed: bool = False, device: str = "cpu"):
    return at.calculate_qparams(torch.tensor(mn, device=device), torch.tensor(mx, device=device), b, k, signed)


def check_against_reference(x: np.ndarray, qp, ref) -> None:
    alpha, gamma, levels, indices = ref
    xt = torch.from_numpy(x)
    apot = at.quantize_APoT(xt, *qp)
    codes = apot.int_repr()
    values = at.quant_dequant_APoT(xt, *qp)
    ref_codes, ref_values = reference_quantize(x, alpha, levels, indices)
    assert codes.dtype == torch.int32
    np.testing.assert_array_equal(codes.numpy(), ref_codes)
    np.testing.assert_array_equal(bits(values), bits(ref_values))
    np.testing.assert_array_equal(bits(at.dequantize_APoT(apot)), bits(ref_values))


@pytest.mark.parametrize("b,k,signed", all_configs())
def test_matches_reference_bitwise(b, k, signed):
    rng = np.random.default_rng(1000 * b + 10 * k + signed)
    for mn, mx in STATS:
        ref = reference_qparams(mn, mx, b, k, signed)
        alpha, gamma, levels, indices = ref
        qp = qparams(mn, mx, b, k, signed)
        if alpha == 0:  # the sign of a zero alpha: test_alpha_of_zero_statistics_is_positive_zero
            assert qp[0] == 0
        else:
            assert bits(qp[0]) == bits(alpha)
        assert bits(qp[1]) == bits(gamma), (mn, mx)
        np.testing.assert_array_equal(bits(qp[2]), bits(levels))
        np.testing.assert_array_equal(qp[3].numpy(), indices)
        check_against_reference(adversarial_inputs(alpha, levels, rng, n_random=400), qp, ref)


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


@pytest.mark.parametrize("mn,mx", [(0.0, 0.0), (-0.0, -0.0), (0.0, 1e-40), (-1e-39, 0.0)])
def test_alpha_of_zero_statistics_is_positive_zero(mn, mx):
    alpha, gamma, levels, _ = qparams(mn, mx, 4, 2)
    assert bits(alpha) == bits(np.float32(0.0))
    assert (bits(levels.numpy()) == 0).all()


@pytest.mark.parametrize("b,k,signed", [(4, 2, False), (8, 2, True), (8, 1, False)])
def test_chunked_lookup_matches_reference(b, k, signed, monkeypatch):
    """On CPU the one-comparison lookup runs in chunks; use tiny ones so that
    the adversarial inputs span many, the last one partial."""
    import apot_torch._lookup

    monkeypatch.setattr(apot_torch._lookup, "_CPU_CHUNK", 97)
    rng = np.random.default_rng(11 * b + k)
    for mn, mx in STATS[:3]:
        ref = reference_qparams(mn, mx, b, k, signed)
        x = adversarial_inputs(ref[0], ref[2], rng, n_random=400)
        assert x.size > 3 * 97
        check_against_reference(x, qparams(mn, mx, b, k, signed), ref)


def test_large_input_matches_reference():
    """More elements than one chunk of the real size, not a multiple of it."""
    ref = reference_qparams(-2.0, 2.0, 4, 2, False)
    x = np.random.default_rng(12).normal(size=3 * 2**16 + 5).astype(np.float32) * 2
    x[::1000] = np.nan
    check_against_reference(x, qparams(-2.0, 2.0, 4, 2), ref)


def test_observer_qparams_match_reference():
    rng = np.random.default_rng(3)
    for b, k, signed in [(4, 2, False), (4, 2, True), (8, 2, False), (6, 3, True)]:
        obs = at.APoTObserver(b=b, k=k)
        data = rng.normal(size=(3, 500)).astype(np.float32)
        for row in data:
            obs(torch.from_numpy(row))
        ref = reference_qparams(float(data.min()), float(data.max()), b, k, signed)
        qp = obs.calculate_qparams(signed)
        for got, want in zip(qp[:3], ref[:3]):
            np.testing.assert_array_equal(bits(got), bits(want))
        np.testing.assert_array_equal(qp[3].numpy(), ref[3])


def test_worked_example():
    alpha, gamma, levels, indices = qparams(-1.0, 1.0, 4, 2)
    expected = np.array(
        [0, 1 / 48, 1 / 24, 1 / 16, 1 / 12, 1 / 8, 1 / 6, 3 / 16, 1 / 4, 1 / 3, 3 / 8, 1 / 2, 2 / 3, 11 / 16, 3 / 4, 1],
        dtype=np.float32,
    )
    assert float(alpha) == 1.0
    assert bits(gamma) == bits(np.float32(2 / 3))
    np.testing.assert_array_equal(bits(levels), bits(expected))
    assert indices.tolist() == [0, 3, 12, 15, 2, 14, 8, 11, 10, 1, 13, 9, 4, 7, 6, 5]
    # 23/32, exactly midway between 11/16 and 3/4, ties to the lower level;
    # the next float32 up goes up; beyond alpha clips to 1, negatives go to 0
    mid = np.float32(23 / 32)
    x = torch.tensor([mid, np.nextafter(mid, np.float32(1)), 0.9, 7.0, -0.5])
    np.testing.assert_array_equal(
        bits(at.quant_dequant_APoT(x, alpha, gamma, levels, indices)), bits(expected[[13, 14, 15, 15, 0]])
    )
    assert at.quantize_APoT(x, alpha, gamma, levels, indices).int_repr().tolist() == [7, 6, 5, 5, 0]


def test_gamma_correctly_rounded_on_many_alphas():
    rng = np.random.default_rng(7)
    alphas = np.concatenate([
        rng.uniform(0, 10, 20000).astype(np.float32),
        np.exp(rng.uniform(-80, 80, 5000)).astype(np.float32),
        np.arange(1, 2001, dtype=np.float32) * np.float32(3),
    ])
    for n in (1, 2, 3, 4, 8):
        p_sum = 2 - 2.0 ** (1 - n)
        got = torch_gamma(torch.from_numpy(alphas), p_sum).numpy()
        pick = rng.choice(alphas.size, 3000, replace=False)
        exact = np.array(
            [round_rational_to_float32(Fraction(float(alphas[i])) / (2 - Fraction(2) ** (1 - n))) for i in pick],
            np.float32,
        )
        np.testing.assert_array_equal(bits(got[pick]), bits(exact), err_msg=f"n={n}")


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


def test_unobserved_qparams_give_nan_not_numbers():
    qp = qparams(float("inf"), float("-inf"), 4, 2)
    assert qp[0] == -float("inf") and torch.isnan(qp[1]) and torch.isnan(qp[2]).all()
    assert torch.isnan(at.quant_dequant_APoT(torch.ones(3), *qp)).all()
    assert (at.quantize_APoT(torch.ones(3), *qp).int_repr() == at.NAN_CODE).all()
    with pytest.raises(RuntimeError, match="not observed"):
        at.APoTObserver(b=4, k=2).calculate_qparams(signed=False)


def test_shapes_layouts_and_empty_input():
    qp = qparams(-2.0, 2.0, 8, 2)
    x = torch.randn(6, 7, generator=torch.Generator().manual_seed(0))
    flat = at.quant_dequant_APoT(x.reshape(-1), *qp)
    np.testing.assert_array_equal(bits(at.quant_dequant_APoT(x.t(), *qp)), bits(flat.reshape(6, 7).t()))
    assert at.quant_dequant_APoT(x[0, 0], *qp).shape == ()
    assert at.quantize_APoT(torch.empty(0, 3), *qp).int_repr().shape == (0, 3)
    assert at.quant_dequant_APoT(torch.empty(0), *qp).shape == (0,)


def test_quant_dequant_is_differentiable_in_the_levels():
    """A gather keeps the graph to the level values: d sum / d level[p] is the
    number of elements rounded to position p (the fake quant gives none)."""
    alpha, gamma, levels, indices = qparams(-1.0, 1.0, 8, 2)
    levels = levels.clone().requires_grad_()
    x = torch.randn(2**16 + 5000, generator=torch.Generator().manual_seed(4)) * 0.7  # two chunks
    out = at.quant_dequant_APoT(x, alpha, gamma, levels, indices)
    np.testing.assert_array_equal(bits(out), bits(at.quant_dequant_APoT(x, alpha, gamma, levels.detach(), indices)))
    out.sum().backward()
    codes, _ = reference_quantize(x.numpy(), np.float32(1.0), levels.detach().numpy(), indices.numpy())
    positions = np.argsort(indices.numpy())[codes]
    np.testing.assert_array_equal(levels.grad.numpy(), np.bincount(positions, minlength=levels.numel()))


def _special_inputs() -> torch.Tensor:
    x = torch.randn(1000, generator=torch.Generator().manual_seed(1)) * 2
    return torch.cat([x, torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-45, 5.0, -5.0])])


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


def test_observer_statistics():
    obs = at.APoTObserver(b=4, k=2)
    assert set(obs.state_dict()) == {"min_val", "max_val"}
    assert obs.min_val == float("inf") and obs.max_val == -float("inf")
    out = obs(torch.tensor([1.0, -2.0, float("nan"), float("inf"), -float("inf"), 1e-45]))
    assert out.shape == (6,)
    assert obs.min_val == -2.0 and obs.max_val == 1.0
    obs(torch.empty(0))
    obs(torch.tensor([float("nan"), float("inf")]))
    assert obs.min_val == -2.0 and obs.max_val == 1.0
    obs(torch.tensor([3.0], dtype=torch.bfloat16))
    assert obs.max_val.dtype == torch.float32 and obs.max_val == 3.0
    # subnormals count as zero
    tiny = at.APoTObserver(b=4, k=2)
    tiny(torch.tensor([1e-45, -1e-40]))
    assert tiny.min_val == 0.0 and tiny.max_val == 0.0
    fresh = at.APoTObserver(b=4, k=2)
    fresh.load_state_dict(obs.state_dict())
    np.testing.assert_array_equal(bits(fresh.calculate_qparams(False)[2]), bits(obs.calculate_qparams(False)[2]))


def test_observer_all_non_finite_input_keeps_it_unobserved():
    obs = at.APoTObserver(b=4, k=2)
    obs(torch.tensor([float("nan"), float("inf")]))
    with pytest.raises(RuntimeError, match="not observed"):
        obs.calculate_qparams(signed=False)


@pytest.mark.parametrize(
    "b,k,message",
    [(4, 3, "multiple"), (4, 0, ">= 1"), (0, 1, ">= 1"), (-2, 1, ">= 1"), (4.0, 2, "integer"), (32, 1, "limit"),
     (16, 2, None), (8, 8, None)],
)
def test_invalid_configurations(b, k, message):
    if message is None:
        assert at.calculate_qparams(torch.tensor(-1.0), torch.tensor(1.0), b, k)[2].numel() == 2**b
        at.APoTObserver(b=b, k=k)
        return
    with pytest.raises(ValueError, match=message):
        at.calculate_qparams(torch.tensor(-1.0), torch.tensor(1.0), b, k)
    with pytest.raises(ValueError, match=message):
        at.APoTObserver(b=b, k=k)


def test_oversized_signed_table_is_refused():
    with pytest.raises(ValueError, match="limit"):
        at.calculate_qparams(torch.tensor(-1.0), torch.tensor(1.0), 12, 2, signed=True)  # 7**6 > 2**16


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


# --- fake_quantize_function: forward and the clipped straight-through gradient


def test_fake_quantize_function_forward_and_backward():
    qp = qparams(-1.0, 1.0, 4, 2)
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.3, 1.0, 1.5, float("nan"), float("inf"), -float("inf")])
    xr = x.clone().requires_grad_()
    y = at.fake_quantize_function.apply(xr, *qp)
    np.testing.assert_array_equal(bits(y), bits(at.quant_dequant_APoT(x, *qp)))
    dy = torch.arange(1.0, 11.0)
    y.backward(dy)
    # dy where -alpha <= x <= alpha (boundaries included), 0 outside and for
    # NaN/inf; the mask is of the original x: -2 and 1.5 quantize to levels
    # inside [-alpha, alpha] but get no gradient
    assert xr.grad.tolist() == [0, 2, 3, 4, 5, 6, 0, 0, 0, 0]


def test_fake_quantize_function_no_gradient_to_qparams():
    alpha, gamma, levels, indices = (t.clone() for t in qparams(-1.0, 1.0, 4, 2))
    for t in (alpha, gamma, levels):
        t.requires_grad_()
    x = torch.tensor([0.2, 0.7], requires_grad=True)
    at.fake_quantize_function.apply(x, alpha, gamma, levels, indices).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0]
    assert alpha.grad is None and gamma.grad is None and levels.grad is None


def test_fake_quantize_function_float64():
    qp = qparams(-1.0, 1.0, 8, 2)
    x = torch.tensor([-1.5, -0.3, 0.0, 0.25, 0.99, 1.0 + 1e-12], dtype=torch.float64, requires_grad=True)
    y = at.fake_quantize_function.apply(x, *qp)
    assert y.dtype == torch.float64
    expected = at.quant_dequant_APoT(x.detach().to(torch.float32), *qp).to(torch.float64)
    assert torch.equal(y.detach(), expected)
    y.backward(torch.full_like(y, 0.5))
    assert x.grad.dtype == torch.float64
    # x is taken in float32 (docs/numerics.md, 5): 1 + 1e-12 is 1.0 = alpha there
    assert x.grad.tolist() == [0.0, 0.5, 0.5, 0.5, 0.5, 0.5]


class _ClampWithSTEBackward(torch.autograd.Function):
    """``clamp(x, -alpha, alpha)`` whose backward is fake_quantize_function's.

    The fake quant forward is a step function, so finite differences cannot
    check its straight-through gradient; the clamp is the function that
    gradient is the exact derivative of (docs/numerics.md, 6).
    """

    @staticmethod
    def forward(ctx, x, alpha):
        ctx.save_for_backward(at.ste_mask(x, alpha))
        return x.clamp(-alpha.to(x.dtype), alpha.to(x.dtype))

    @staticmethod
    def backward(ctx, grad_output):
        saved = SimpleNamespace(saved_tensors=ctx.saved_tensors)
        grad_x = at.fake_quantize_function.backward(saved, grad_output)[0]
        return grad_x, None


def test_gradcheck_of_the_straight_through_backward():
    alpha = torch.tensor(1.0)
    # keep clear of the kinks at +-alpha, where finite differences are undefined
    x = torch.tensor([-3.0, -1.5, -0.99, -0.4, 0.0, 0.25, 0.7, 0.98, 1.02, 2.5], dtype=torch.float64)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda v: _ClampWithSTEBackward.apply(v, alpha), (x,), eps=1e-6, atol=1e-7)
    wide = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 2
    wide = wide[(wide.abs() - 1).abs() > 1e-3].requires_grad_()
    assert torch.autograd.gradcheck(lambda v: _ClampWithSTEBackward.apply(v, alpha), (wide,), eps=1e-6, atol=1e-7)


# --- CUDA: bitwise equal to the CPU results


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


@pytest.mark.gpu
@requires_cuda
def test_cuda_observer_matches_cpu():
    x = torch.randn(10000, generator=torch.Generator().manual_seed(5))
    cpu, gpu = at.APoTObserver(b=8, k=2), at.APoTObserver(b=8, k=2).cuda()
    cpu(x)
    gpu(x.cuda())
    for c, g in zip(cpu.calculate_qparams(True), gpu.calculate_qparams(True)):
        assert torch.equal(c, g.cpu())


def test_observer_statistics_carry_no_sign_of_zero():
    obs = at.APoTObserver(4, 2)
    obs(torch.tensor([0.0, -0.0, 1.0, -1e-40]))
    assert bits(obs.min_val) == bits(np.float32(0.0))
    obs = at.APoTObserver(4, 2)
    obs(torch.tensor([-0.0, -3.0]))
    assert bits(obs.max_val) == bits(np.float32(0.0))


@pytest.mark.parametrize("b,k", [(4, 2), (6, 3), (8, 2), (8, 4)])
def test_signed_levels_near_float32_max_do_not_overflow(b, k):
    fmax = float(np.finfo(np.float32).max)
    _, _, ref_levels, _ = reference_qparams(0.0, fmax, b, k, True)
    assert np.isfinite(ref_levels).all()
    np.testing.assert_array_equal(bits(qparams(0.0, fmax, b, k, True)[2].numpy()), bits(ref_levels))


def test_subnormal_inputs_count_as_zero_in_the_gradient_mask():
    alpha, gamma, levels, indices = qparams(0.0, 0.0, 4, 2)
    x = torch.tensor([1e-45, -1e-40, 0.0, 1e-30], requires_grad=True)
    at.fake_quantize_function.apply(x, alpha, gamma, levels, indices).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 1.0, 1.0, 0.0])
