"""The paper's own level sets (``level_set="paper"`` / ``"paper-pot"``,
``docs/numerics.md`` 9.8) through the paper functions of both frameworks:
weights, activations, per-channel, ``fit_alpha`` and export, bitwise between
JAX and torch and equal to the transcription in ``tests/reference_paper.py``.
The tables themselves are tested in ``tests/common/test_tables.py``."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from apot_common.tables import LEVEL_SETS
from tests.reference import adversarial_inputs, reference_positions
from tests.reference_paper import PAPER_ADDITIVE_BITS, build_power_value, nearest_float32

jax = pytest.importorskip("jax", reason="paper-level parity needs jax")
torch = pytest.importorskip("torch", reason="paper-level parity needs torch")
import jax.numpy as jnp  # noqa: E402

import apot_jax.paper as jpaper  # noqa: E402
import apot_torch.paper as tpaper  # noqa: E402
from apot_jax import export as jexport  # noqa: E402
from apot_torch import export as texport  # noqa: E402

TINY = np.finfo(np.float32).tiny


WEIGHT_CONFIGS = [(b, "paper") for b in range(2, 8)] + [(b, "paper-pot") for b in (2, 4, 8)]


ACT_CONFIGS = [(b, "paper") for b in PAPER_ADDITIVE_BITS] + [(b, "paper-pot") for b in (1, 3, 7)]


def _bits(a) -> np.ndarray:
    a = np.asarray(a)
    return a.view(np.int32) if a.dtype == np.float32 else a


def _assert_bitwise(name, j, t):
    j, t = np.asarray(j), np.asarray(t)
    assert j.shape == t.shape and j.dtype == t.dtype, (name, j.shape, t.shape, j.dtype, t.dtype)
    np.testing.assert_array_equal(_bits(j), _bits(t), err_msg=name)


def _inputs(seed: int, n: int, alpha: float, lo: float = -1.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.uniform(lo, 1.3, n) * alpha).astype(np.float32)
    x[:8] = [0.0, -0.0, alpha, -alpha, 1e-40, -3 * alpha, np.nan, np.inf]
    return x


def _reference_levels(alpha: float, values) -> np.ndarray:
    """``fl(alpha * fl(v))`` by exact rationals (alpha normal), flushed to
    +0 below the normal range."""
    out = []
    for v in values:
        v32 = nearest_float32(v)
        exact = Fraction(float(np.float32(alpha))) * Fraction(float(v32))
        level = np.float32(0) if v32 == 0 else nearest_float32(exact)
        out.append(np.float32(0) if level < TINY else level)
    return np.array(out, np.float32)


def test_bad_level_set_in_the_paper_functions():
    x = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="level_set"):
        jpaper.learnable_fake_quantize(jnp.asarray(x), jnp.float32(1), b=3, k=2, level_set="nope")
    with pytest.raises(ValueError, match="level_set"):
        tpaper.learnable_fake_quantize(torch.tensor(x), torch.tensor(1.0), b=3, k=2, level_set="nope")
    with pytest.raises(ValueError, match="build_power_value"):
        jpaper.check_learnable(7, 1, "unsigned", False, None, "paper")
    with pytest.raises(ValueError, match="build_power_value"):
        tpaper.check_learnable(8, 1, "sign-magnitude", True, None, "paper")
    assert jpaper.LEVEL_SETS == tpaper.LEVEL_SETS == LEVEL_SETS


@pytest.mark.parametrize("b, level_set", WEIGHT_CONFIGS, ids=lambda v: str(v))
def test_weights_bitwise_and_reference(b, level_set):
    alpha = 0.83
    # the transcription's values (b = 2: the paper's ternary weights, magnitudes {0, 1})
    values = [Fraction(0), Fraction(1)] if b == 2 else build_power_value(b - 1, level_set == "paper")
    mags = _reference_levels(alpha, values)
    levels = np.concatenate([-mags[:0:-1], mags])
    x = _inputs(b, 513, alpha)
    x[8:10] = [-np.inf, 0.5 * alpha]
    # levels, midpoints and their float32 neighbours: the near ties
    x = np.concatenate(
        [x, adversarial_inputs(np.float32(alpha), levels, np.random.default_rng(b), 200)]
    ).astype(np.float32)
    dy = np.random.default_rng(100 + b).normal(size=x.shape).astype(np.float32)

    @jax.jit
    def run(x, a, dy):
        qp = jpaper.sign_magnitude_qparams(a, b=b, k=1, level_set=level_set)
        y, vjp = jax.vjp(lambda v, s: jpaper.learnable_fake_quantize(v, s, b=b, k=1, level_set=level_set), x, a)
        dx, da = vjp(dy)
        codes = jpaper.quantize(x, qp)
        return (
            qp.quantization_levels, codes, jpaper.dequantize(codes, qp), y, dx, da, jpaper.alpha_grad_elements(x, a, y)
        )

    jl, jc, jdq, jy, jdx, jda, jel = run(jnp.asarray(x), jnp.float32(alpha), jnp.asarray(dy))
    xt = torch.tensor(x, requires_grad=True)
    at = torch.tensor(alpha, dtype=torch.float32, requires_grad=True)
    tq = tpaper.sign_magnitude_qparams(at.detach(), b=b, k=1, level_set=level_set)
    yt = tpaper.learnable_fake_quantize(xt, at, b=b, k=1, level_set=level_set)
    yt.backward(torch.tensor(dy))
    tc = tpaper.quantize(xt.detach(), tq)
    _assert_bitwise("levels", jl, tq.quantization_levels.numpy())
    _assert_bitwise("codes", jc, tc.numpy())
    _assert_bitwise("dequantize", jdq, tpaper.dequantize(tc, tq).numpy())
    _assert_bitwise("fake_quant", jy, yt.detach().numpy())
    _assert_bitwise("grad_x", jdx, xt.grad.numpy())
    _assert_bitwise(
        "alpha_grad_elements", jel, tpaper.alpha_grad_elements(xt.detach(), at.detach(), yt.detach()).numpy()
    )
    _assert_bitwise("grad_alpha", jda, at.grad.numpy())
    # reference: levels alpha * value, the contract's first-nearest rule on the symmetric set
    _assert_bitwise("reference levels", jl, levels)
    p = reference_positions(x, np.float32(alpha), levels)
    codes = np.arange(-(len(mags) - 1), len(mags))
    np.testing.assert_array_equal(np.asarray(jc), np.where(p >= 0, codes[np.maximum(p, 0)], -(2 ** (b - 1))))
    _assert_bitwise(
        "reference fake quant", jy, np.where(p >= 0, levels[np.maximum(p, 0)], np.float32(np.nan)).astype(np.float32)
    )


@pytest.mark.parametrize("b, level_set", ACT_CONFIGS, ids=lambda v: str(v))
def test_activations_bitwise_and_reference(b, level_set):
    alpha = 2.7
    levels = _reference_levels(alpha, build_power_value(b, level_set == "paper"))
    x = _inputs(20 + b, 401, alpha, lo=-0.4)
    x = np.concatenate(
        [x, adversarial_inputs(np.float32(alpha), levels, np.random.default_rng(b), 200)]
    ).astype(np.float32)
    dy = np.random.default_rng(200 + b).normal(size=x.shape).astype(np.float32)

    @jax.jit
    def run(x, a, dy):
        f = lambda v, s: jpaper.learnable_fake_quantize(v, s, b=b, k=1, scheme="unsigned", level_set=level_set)  # noqa: E731
        y, vjp = jax.vjp(f, x, a)
        dx, da = vjp(dy)
        qp = jpaper.unsigned_qparams(a, b=b, k=1, level_set=level_set)
        return qp.quantization_levels, qp.level_indices, y, dx, da, jpaper.alpha_grad_elements(x, a, y, "unsigned")

    jl, ji, jy, jdx, jda, jel = run(jnp.asarray(x), jnp.float32(alpha), jnp.asarray(dy))
    xt = torch.tensor(x, requires_grad=True)
    at = torch.tensor(alpha, dtype=torch.float32, requires_grad=True)
    yt = tpaper.learnable_fake_quantize(xt, at, b=b, k=1, scheme="unsigned", level_set=level_set)
    yt.backward(torch.tensor(dy))
    _, _, tl, ti = tpaper.unsigned_qparams(at, b=b, k=1, level_set=level_set)
    _assert_bitwise("levels", jl, tl.numpy())
    np.testing.assert_array_equal(np.asarray(ji), ti.numpy())
    _assert_bitwise("fake_quant", jy, yt.detach().numpy())
    _assert_bitwise("grad_x", jdx, xt.grad.numpy())
    _assert_bitwise(
        "alpha_grad_elements",
        jel,
        tpaper.alpha_grad_elements(xt.detach(), at.detach(), yt.detach(), "unsigned").numpy(),
    )
    _assert_bitwise("grad_alpha", jda, at.grad.numpy())
    _assert_bitwise("reference levels", jl, levels)
    p = reference_positions(x, np.float32(alpha), levels)
    _assert_bitwise(
        "reference fake quant", jy, np.where(p >= 0, levels[np.maximum(p, 0)], np.float32(np.nan)).astype(np.float32)
    )


@pytest.mark.parametrize("level_set", ["paper", "paper-pot"])
def test_per_channel_weights_and_fit_alpha(level_set):
    rng = np.random.default_rng(5)
    kernel = (rng.normal(size=(29, 4)) * 0.2).astype(np.float32)  # Flax (in, out); torch gets (out, in)
    alpha = rng.uniform(0.5, 2.0, 4).astype(np.float32)
    dy = rng.normal(size=kernel.shape).astype(np.float32)
    b = 4

    @jax.jit
    def run(w, a, dy):
        f = lambda v, s: jpaper.paper_weight_quant(v, s, b=b, k=1, channel_axis=-1, level_set=level_set)  # noqa: E731
        y, vjp = jax.vjp(f, w, a)
        return (y,) + vjp(dy)

    jy, jdw, jda = run(jnp.asarray(kernel), jnp.asarray(alpha), jnp.asarray(dy))
    wt = torch.tensor(kernel.T.copy(), requires_grad=True)
    at = torch.tensor(alpha, requires_grad=True)
    yt = tpaper.paper_weight_quant(wt, at, b=b, k=1, channel_axis=0, level_set=level_set)
    yt.backward(torch.tensor(dy.T.copy()))
    _assert_bitwise("fake_quant", jy, yt.detach().numpy().T)
    _assert_bitwise("grad_w", jdw, wt.grad.numpy().T)
    _assert_bitwise("grad_alpha", jda, at.grad.numpy())
    for scheme, data, bits in (("sign-magnitude", kernel, 3), ("unsigned", np.maximum(kernel, 0), 3)):
        ja = jpaper.fit_alpha(jnp.asarray(data), b=bits, k=1, scheme=scheme, level_set=level_set, candidates=32)
        ta = tpaper.fit_alpha(torch.tensor(data), b=bits, k=1, scheme=scheme, level_set=level_set, candidates=32)
        _assert_bitwise(f"fit_alpha {scheme}", ja, ta.numpy())
    ja = jpaper.fit_alpha(jnp.asarray(kernel), b=5, k=1, scheme="sign-magnitude", channel_axis=-1, level_set=level_set)
    ta = tpaper.fit_alpha(
        torch.tensor(kernel.T.copy()), b=5, k=1, scheme="sign-magnitude", channel_axis=0, level_set=level_set
    )
    _assert_bitwise("fit_alpha per channel", ja, ta.numpy())


def test_apot_default_unchanged():
    """``level_set="apot"`` is the default and the former behaviour."""
    x = _inputs(1, 200, 1.0)
    a = jnp.float32(1.0)
    same = jpaper.learnable_fake_quantize(jnp.asarray(x), a, b=3, k=2)
    np.testing.assert_array_equal(
        np.asarray(same), np.asarray(jpaper.learnable_fake_quantize(jnp.asarray(x), a, b=3, k=2, level_set="apot"))
    )
    assert jpaper.sign_magnitude_qparams(a, b=3, k=2).level_set == "apot"
    assert tpaper.sign_magnitude_qparams(torch.tensor(1.0), b=3, k=2).level_set == "apot"
    # the paper's 3-bit weight set differs from apot's (3, 2) one: {0, 1/4, 1/2, 1} vs build_power_value(2)
    # (equal here), and at 4 bits: apot (3, 1) {0, 1/4, 1/2, 1} * ... vs build_power_value(3)
    j4a = np.asarray(jpaper.sign_magnitude_qparams(a, b=4, k=1).quantization_levels)
    j4p = np.asarray(jpaper.sign_magnitude_qparams(a, b=4, k=1, level_set="paper").quantization_levels)
    assert not np.array_equal(j4a, j4p)
    np.testing.assert_array_equal(j4p[7:], np.array([nearest_float32(v) for v in build_power_value(3)], np.float32))


@pytest.mark.parametrize("per_channel", [False, True])
def test_export_paper_levels(per_channel):
    rng = np.random.default_rng(9)
    kernel = (rng.normal(size=(16, 3)) * 0.3).astype(np.float32)
    alpha = rng.uniform(0.8, 2.0, 3 if per_channel else ()).astype(np.float32)
    ej = jexport.export_kernel(
        jnp.asarray(kernel), jnp.asarray(alpha), b=4, k=1, per_channel=per_channel, level_set="paper"
    )
    et = texport.export_weight(torch.tensor(kernel.T.copy()), torch.tensor(alpha), b=4, k=1, per_channel=per_channel,
                               level_set="paper")
    assert ej.level_set == et.level_set == "paper" and ej.k == et.k == 0 and ej.codes.dtype == np.int8
    np.testing.assert_array_equal(ej.codes, et.codes.numpy().T)
    axis = -1 if per_channel else None
    fq = jpaper.paper_weight_quant(
        jnp.asarray(kernel), jnp.asarray(alpha), b=4, k=1, channel_axis=axis, level_set="paper"
    )
    _assert_bitwise("dequantized = fake quant", jexport.dequantize_kernel(ej), fq)
    _assert_bitwise("torch dequantized", jexport.dequantize_kernel(ej), texport.dequantize_weight(et).numpy().T)
    with pytest.raises(ValueError, match="shift-and-add"):
        jexport.integer_weights(ej)
    with pytest.raises(ValueError, match="shift-and-add"):
        jexport.shift_add_matmul(np.ones((2, 16), np.int32), ej)
    with pytest.raises(ValueError, match="shift-and-add"):
        texport.integer_weights(et)
    with pytest.raises(ValueError, match="shift-and-add"):
        texport.shift_add_matmul(torch.ones((2, 16), dtype=torch.int32), et)
