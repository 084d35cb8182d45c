"""The paper's own level sets (``level_set="paper"`` / ``"paper-pot"``,
``docs/numerics.md`` 9.8) through the paper functions of both frameworks,
every pair of JAX and torch backends: weights (qparams, codes, dequantize,
fake quant, the x and alpha gradients, per tensor and per channel with
normalization), activations (float32 and bfloat16), ``fit_alpha`` and the
export, bitwise between JAX and torch and equal to the transcription in
``tests/reference_paper.py`` (levels, codes, fake quant). The tables
themselves are tested in ``tests/common/test_tables.py``."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from apot_common.tables import LEVEL_SETS
from apot_parity import compare
from tests.helpers import pad_to_bucket
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


def _reference_fake_quant(x: np.ndarray, alpha: float, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions, fake quant) by the contract's first-nearest rule; -1 / NaN for NaN."""
    p = reference_positions(x, np.float32(alpha), levels)
    return p, np.where(p >= 0, levels[np.maximum(p, 0)], np.float32(np.nan)).astype(np.float32)


@pytest.mark.parametrize("b, level_set", WEIGHT_CONFIGS, ids=lambda v: str(v))
def test_weights(jax_backend, torch_backend, b, level_set, parity):
    """Sign + ``build_power_value(b - 1)`` weights (ternary at b = 2)."""
    tb = torch_backend
    # the transcription's values (b = 2: the paper's ternary weights, magnitudes {0, 1})
    values = [Fraction(0), Fraction(1)] if b == 2 else build_power_value(b - 1, level_set == "paper")

    @jax.jit
    def run(x, a, dy):
        qp = jpaper.sign_magnitude_qparams(a, b=b, k=1, level_set=level_set)
        y, vjp = jax.vjp(lambda v, s: jpaper.learnable_fake_quantize(v, s, b=b, k=1, level_set=level_set), x, a)
        dx, da = vjp(dy)
        codes = jpaper.quantize(x, qp)
        elements = jpaper.alpha_grad_elements(x, a, y)
        return qp.gamma, qp.quantization_levels, codes, jpaper.dequantize(codes, qp), y, dx, da, elements

    for alpha in (0.83, 0.37, 1.0, 2.5e-3):
        mags = _reference_levels(alpha, values)
        levels = np.concatenate([-mags[:0:-1], mags])
        x = _inputs(b, 513, alpha)
        x[8:10] = [-np.inf, 0.5 * alpha]
        # levels, midpoints and their float32 neighbours: the near ties
        x = pad_to_bucket(np.concatenate([x, adversarial_inputs(np.float32(alpha), levels,
                                                                np.random.default_rng(b), 200)]).astype(np.float32))
        dy = np.random.default_rng(100 + b).normal(size=x.shape).astype(np.float32)
        with jax.default_device(jax_backend.device):
            jg, jl, jc, jdq, jy, jdx, jda, jel = run(
                jax.device_put(x, jax_backend.device), jnp.float32(alpha), jax.device_put(dy, jax_backend.device)
            )
        xt = tb.to_torch(x).requires_grad_(True)
        at = torch.tensor(alpha, dtype=torch.float32, device=tb.device, requires_grad=True)
        tq = tpaper.sign_magnitude_qparams(at.detach(), b=b, k=1, level_set=level_set)
        yt = tpaper.learnable_fake_quantize(xt, at, b=b, k=1, level_set=level_set)
        yt.backward(tb.to_torch(dy))
        tc = tpaper.quantize(xt.detach(), tq)
        tel = tpaper.alpha_grad_elements(xt.detach(), at.detach(), yt.detach())
        p, ref_y = _reference_fake_quant(x, alpha, levels)
        codes = np.arange(-(len(mags) - 1), len(mags))
        ref_codes = np.where(p >= 0, codes[np.maximum(p, 0)], -(2 ** (b - 1)))
        comps = [
            compare("gamma", np.asarray(jg), tb.to_numpy(tq.gamma)),
            compare("levels", np.asarray(jl), tb.to_numpy(tq.quantization_levels)),
            compare("codes", np.asarray(jc), tb.to_numpy(tc)),
            compare("dequantize", np.asarray(jdq), tb.to_numpy(tpaper.dequantize(tc, tq))),
            compare("fake_quant", np.asarray(jy), tb.to_numpy(yt)),
            compare("grad_x", np.asarray(jdx), tb.to_numpy(xt.grad)),
            compare("alpha_grad_elements", np.asarray(jel), tb.to_numpy(tel)),
            compare("grad_alpha", np.asarray(jda), tb.to_numpy(at.grad)),
            # the transcription: levels alpha * value, the contract's first-nearest rule on the symmetric set
            compare("reference_levels", np.asarray(jl), levels),
            compare("reference_codes", np.asarray(jc).astype(np.int64), ref_codes.astype(np.int64)),
            compare("reference_fake_quant", np.asarray(jy), ref_y),
        ]
        parity.record(f"{jax_backend.name}~{tb.name}", f"{level_set} weights b={b} alpha={alpha}", comps)
    # per channel, normalized (JAX kernel (in, out) along -1, torch (out, in) along 0)
    rng = np.random.default_rng(50 + b)
    kernel = (rng.normal(size=(37, 6)) * 0.2).astype(np.float32)
    alphas = rng.uniform(0.3, 2.0, 6).astype(np.float32)
    dy = rng.normal(size=kernel.shape).astype(np.float32)

    @jax.jit
    def run_channels(w, a, dy):
        f = lambda v, s: jpaper.paper_weight_quant(v, s, b=b, k=1, channel_axis=-1, level_set=level_set)  # noqa: E731
        y, vjp = jax.vjp(f, w, a)
        return (y,) + vjp(dy)

    with jax.default_device(jax_backend.device):
        jy, jdw, jda = run_channels(*(jax.device_put(v, jax_backend.device) for v in (kernel, alphas, dy)))
    wt = tb.to_torch(kernel.T.copy()).requires_grad_(True)
    at = tb.to_torch(alphas).requires_grad_(True)
    yt = tpaper.paper_weight_quant(wt, at, b=b, k=1, channel_axis=0, level_set=level_set)
    yt.backward(tb.to_torch(dy.T.copy()))
    comps = [
        compare("fake_quant", np.asarray(jy), tb.to_numpy(yt).T),
        compare("grad_w", np.asarray(jdw), tb.to_numpy(wt.grad).T),
        compare("grad_alpha", np.asarray(jda), tb.to_numpy(at.grad)),
    ]
    parity.record(f"{jax_backend.name}~{tb.name}", f"{level_set} weights b={b} per-channel normalized", comps)


@pytest.mark.parametrize("b, level_set", ACT_CONFIGS, ids=lambda v: str(v))
def test_activations(jax_backend, torch_backend, b, level_set, parity):
    """Unsigned ``build_power_value(b)`` activations with a learnt alpha, in
    float32 (also against the transcription) and bfloat16, and the fitted
    starting alpha."""
    tb = torch_backend
    values = build_power_value(b, level_set == "paper")

    @jax.jit
    def run(x, a, dy):
        f = lambda v, s: jpaper.learnable_fake_quantize(v, s, b=b, k=1, scheme="unsigned", level_set=level_set)  # noqa: E731
        y, vjp = jax.vjp(f, x, a)
        dx, da = vjp(dy.astype(x.dtype))
        qp = jpaper.unsigned_qparams(a, b=b, k=1, level_set=level_set)
        elements = jpaper.alpha_grad_elements(x.astype(jnp.float32), a, y.astype(jnp.float32), "unsigned")
        return qp.quantization_levels, qp.level_indices, y, dx, da, elements

    for alpha, dtype in ((2.7, "float32"), (0.37, "float32"), (2.5, "float32"), (1.0, "bfloat16")):
        levels = _reference_levels(alpha, values)
        x = _inputs(20 + b, 401, alpha, lo=-0.4)
        x = pad_to_bucket(np.concatenate([x, adversarial_inputs(np.float32(alpha), levels,
                                                                np.random.default_rng(b), 200)]).astype(np.float32))
        dy = np.random.default_rng(200 + b).normal(size=x.shape).astype(np.float32)
        x_in = x.astype(jnp.bfloat16) if dtype == "bfloat16" else x
        with jax.default_device(jax_backend.device):
            jl, ji, jy, jdx, jda, jel = run(
                jax.device_put(x_in, jax_backend.device), jnp.float32(alpha), jax.device_put(dy, jax_backend.device)
            )
        xt = tb.to_torch(np.asarray(x_in, np.float32))
        xt = (xt.to(torch.bfloat16) if dtype == "bfloat16" else xt).requires_grad_(True)
        at = torch.tensor(alpha, dtype=torch.float32, device=tb.device, requires_grad=True)
        yt = tpaper.learnable_fake_quantize(xt, at, b=b, k=1, scheme="unsigned", level_set=level_set)
        yt.backward(tb.to_torch(dy).to(yt.dtype))
        tel = tpaper.alpha_grad_elements(xt.detach().float(), at.detach(), yt.detach().float(), "unsigned")
        _, _, tl, ti = tpaper.unsigned_qparams(at, b=b, k=1, level_set=level_set)
        comps = [
            compare("levels", np.asarray(jl), tb.to_numpy(tl)),
            compare("level_indices", np.asarray(ji).astype(np.int64), tb.to_numpy(ti).astype(np.int64)),
            compare("fake_quant", np.asarray(jy, np.float32), tb.to_numpy(yt.float())),
            compare("grad_x", np.asarray(jdx, np.float32), tb.to_numpy(xt.grad.float())),
            compare("alpha_grad_elements", np.asarray(jel), tb.to_numpy(tel)),
            compare("grad_alpha", np.asarray(jda), tb.to_numpy(at.grad)),
            compare("reference_levels", np.asarray(jl), levels),
        ]
        if dtype == "float32":
            comps.append(compare("reference_fake_quant", np.asarray(jy), _reference_fake_quant(x, alpha, levels)[1]))
        parity.record(f"{jax_backend.name}~{tb.name}", f"{level_set} activations b={b} alpha={alpha} {dtype}", comps)
    data = np.maximum(np.random.default_rng(70 + b).standard_t(3, size=(48, 40)), 0).astype(np.float32)
    with jax.default_device(jax_backend.device):
        ja = jpaper.fit_alpha(jax.device_put(data, jax_backend.device), b=b, k=1, level_set=level_set)
    ta = tpaper.fit_alpha(tb.to_torch(data), b=b, k=1, level_set=level_set)
    parity.record(
        f"{jax_backend.name}~{tb.name}",
        f"{level_set} fit_alpha b={b}",
        [compare("fit_alpha", np.asarray(ja), tb.to_numpy(ta))],
    )


@pytest.mark.parametrize("level_set", ["paper", "paper-pot"])
def test_fit_alpha(level_set):
    """The fitted starting alpha with the paper's sets: sign-magnitude and
    unsigned per tensor, sign-magnitude per channel (the activations' fit at
    each b is in ``test_activations``)."""
    kernel = (np.random.default_rng(5).normal(size=(29, 4)) * 0.2).astype(np.float32)  # Flax (in, out)
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
def test_export(jax_backend, torch_backend, per_channel, parity):
    """Export with the paper's 4-bit weights (sign + build_power_value(3)):
    codes, gamma and the dequantized kernel, bitwise; the integer
    shift-and-add path refuses (no exact integer form)."""
    tb = torch_backend
    rng = np.random.default_rng(13)
    kernel = (rng.normal(size=(24, 5)) * 0.1).astype(np.float32)
    alpha = rng.uniform(0.8, 2.0, 5 if per_channel else ()).astype(np.float32)
    with jax.default_device(jax_backend.device):
        ej = jexport.export_kernel(
            jax.device_put(kernel, jax_backend.device), jnp.asarray(alpha), b=4, k=1, per_channel=per_channel,
            level_set="paper",
        )  # fmt: skip
        jk = np.asarray(jexport.dequantize_kernel(ej))
        fq = np.asarray(jpaper.paper_weight_quant(
            jax.device_put(kernel, jax_backend.device), jnp.asarray(alpha), b=4, k=1,
            channel_axis=-1 if per_channel else None, level_set="paper",
        ))  # fmt: skip
    et = texport.export_weight(
        tb.to_torch(kernel.T.copy()), tb.to_torch(alpha), b=4, k=1, per_channel=per_channel, level_set="paper"
    )
    assert ej.level_set == et.level_set == "paper" and ej.k == et.k == 0 and ej.codes.dtype == np.int8
    comps = [
        compare("codes", ej.codes, tb.to_numpy(et.codes).T),
        compare("export_gamma", ej.gamma, tb.to_numpy(et.gamma)),
        compare("dequantized_kernel", jk, tb.to_numpy(texport.dequantize_weight(et)).T),
        compare("dequantized_is_fake_quant", jk, fq),
    ]
    parity.record(f"{jax_backend.name}~{tb.name}", f"paper export b=4 per_channel={per_channel}", comps)
    with pytest.raises(ValueError, match="shift-and-add"):
        texport.shift_add_matmul(torch.ones((2, 24), dtype=torch.int32, device=tb.device), et)
