"""The paper's own level sets (``build_power_value`` of yhhhli/APoT_Quantization,
``models/quant_layer.py``) as tables: ``apot_common.tables.paper_level_table``
and ``level_set="paper"`` / ``"paper-pot"`` of the paper functions in both
frameworks (``docs/numerics.md`` 9.8).

The transcription below is written from the paper's code independently of
the implementation (plain Python loops with fractions, the way the paper
appends its terms; the implementation uses a table of exponents), and so is
its float32 rounding (nearest of three float32 candidates by exact
comparison, ties to the even mantissa).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from apot_common.tables import (
    LEVEL_SETS,
    paper_level_table,
    sign_magnitude_table,
    unsigned_table,
)
from tests.reference import adversarial_inputs, reference_positions

jax = pytest.importorskip("jax")
torch = pytest.importorskip("torch")
import jax.numpy as jnp  # noqa: E402

import apot_jax.paper as jpaper  # noqa: E402
import apot_torch.paper as tpaper  # noqa: E402
from apot_jax import export as jexport  # noqa: E402
from apot_torch import export as texport  # noqa: E402

ADDITIVE_BITS = [2, 3, 4, 5, 6]
POT_BITS = [1, 2, 3, 4, 5, 6, 7]
TINY = np.finfo(np.float32).tiny


# --------------------------------------------------------------------------
# independent transcription


def my_raw_sums(B: int, additive: bool = True) -> set[Fraction]:
    """The set of sums ``a + b + c`` of the paper's ``build_power_value(B,
    additive)``, before its division by the max, in exact fractions."""
    base_a, base_b, base_c = [Fraction(0)], [Fraction(0)], [Fraction(0)]

    def two(e: int) -> Fraction:  # 2 ** e for a negative e
        return Fraction(1, 2 ** (-e))

    if additive:
        if B == 2:
            for i in range(3):
                base_a.append(two(-i - 1))
        elif B == 4:
            for i in range(3):
                base_a.append(two(-2 * i - 1))
                base_b.append(two(-2 * i - 2))
        elif B == 6:
            for i in range(3):
                base_a.append(two(-3 * i - 1))
                base_b.append(two(-3 * i - 2))
                base_c.append(two(-3 * i - 3))
        elif B == 3:
            for i in range(3):
                if i < 2:
                    base_a.append(two(-i - 1))
                else:
                    base_b.append(two(-i - 1))
                    base_a.append(two(-i - 2))
        elif B == 5:
            for i in range(3):
                if i < 2:
                    base_a.append(two(-2 * i - 1))
                    base_b.append(two(-2 * i - 2))
                else:
                    base_c.append(two(-2 * i - 1))
                    base_a.append(two(-2 * i - 2))
                    base_b.append(two(-2 * i - 3))
        else:
            raise AssertionError(B)
    else:
        for i in range(2**B - 1):
            base_a.append(two(-i - 1))
    values = set()
    for a in base_a:
        for b in base_b:
            for c in base_c:
                values.add(a + b + c)
    return values


def my_build_power_value(B: int, additive: bool = True) -> list[Fraction]:
    """``build_power_value(B, additive)`` exactly: the sorted distinct sums
    divided by the largest."""
    values = my_raw_sums(B, additive)
    top = max(values)
    return sorted(v / top for v in values)


def my_float32(q: Fraction) -> np.float32:
    """Nearest float32 to ``q`` (ties to even), by exact comparison of the
    neighbours of numpy's (possibly double-rounded) guess."""
    guess = np.float32(float(q))
    cands = [np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf))]
    best = min(cands, key=lambda c: (abs(Fraction(float(c)) - q), int(np.array(c).view(np.int32)) & 1))
    return np.float32(best)


def paper_float32_code(B: int, additive: bool) -> np.ndarray:
    """The paper's own float32 steps, literally: ``torch.Tensor(list(set(values)))``
    of the float64 sums (exact dyadics), then ``values.mul(1.0 /
    torch.max(values))``; sorted."""
    values = torch.Tensor(list({float(v) for v in my_raw_sums(B, additive)}))
    values = values.mul(1.0 / torch.max(values))
    return np.sort(values.numpy())


# --------------------------------------------------------------------------
# the tables


@pytest.mark.parametrize(
    "B, additive", [(B, True) for B in ADDITIVE_BITS] + [(B, False) for B in POT_BITS]
)
def test_table_equals_transcription(B, additive):
    expected = my_build_power_value(B, additive)
    table = paper_level_table(B, additive)
    assert list(table.values) == expected
    assert table.num_levels == len(expected) == 2**B
    want = np.array([my_float32(v) for v in expected], np.float32)
    assert table.base_sum.dtype == np.float32
    np.testing.assert_array_equal(table.base_sum.view(np.int32), want.view(np.int32))
    np.testing.assert_array_equal(table.level_indices, np.arange(2**B, dtype=np.int32))
    assert table.level_indices.dtype == np.int32
    rebuilt = table.sorted_mantissa.astype(np.float64) * 2.0 ** table.sorted_exponent.astype(np.float64)
    np.testing.assert_array_equal(rebuilt, table.base_sum.astype(np.float64))
    assert table.p_sum == 1.0 and table.base_sum[-1] == 1.0 and table.base_sum[0] == 0.0
    assert (np.diff(table.base_sum) > 0).all() and (table.base_sum[1:] >= TINY).all()
    assert table.level_set == ("paper" if additive else "paper-pot")
    assert unsigned_table(B, 1, table.level_set) is table


def test_known_values():
    # build_power_value(3): a in {0, 1/2, 1/4, 1/16}, b in {0, 1/8}, max 5/8
    assert paper_level_table(3).values == tuple(Fraction(n, 10) for n in (0, 1, 2, 3, 4, 6, 8, 10))
    # build_power_value(4) is the prototype's unsigned (4, 2) table (numerics 3's worked example)
    apot = unsigned_table(4, 2, "apot")
    np.testing.assert_array_equal(
        paper_level_table(4).base_sum, apot.base_sum[apot.level_indices] / np.float32(apot.p_sum)
    )
    assert paper_level_table(2).values == (0, Fraction(1, 4), Fraction(1, 2), 1)
    assert paper_level_table(1, additive=False).values == (0, 1)


@pytest.mark.parametrize("B, additive", [(B, True) for B in ADDITIVE_BITS] + [(B, False) for B in POT_BITS])
def test_paper_own_float32_steps_within_one_ulp(B, additive):
    """The paper's code rounds twice (float32 sums times ``fl(1 / max)``);
    ours is correctly rounded. Measured: they differ by one ulp in 5 of the
    32 levels of B = 5 and 20 of the 64 of B = 6, nowhere else."""
    theirs = paper_float32_code(B, additive)
    ours = paper_level_table(B, additive).base_sum
    ulps = np.abs(theirs.view(np.int32).astype(np.int64) - ours.view(np.int32).astype(np.int64))
    assert ulps.max() <= 1
    assert int((ulps != 0).sum()) == ({5: 5, 6: 20}.get(B, 0) if additive else 0)


@pytest.mark.parametrize("B", [0, 1, 7, 8, -2])
def test_unsupported_additive_bits(B):
    with pytest.raises(ValueError, match="additive"):
        paper_level_table(B)


@pytest.mark.parametrize("B", [0, 8, 16])
def test_unsupported_pot_bits(B):
    with pytest.raises(ValueError, match="non-additive"):
        paper_level_table(B, additive=False)


@pytest.mark.parametrize("bad", [3.0, True, "3"])
def test_non_integer_bits(bad):
    with pytest.raises(ValueError, match="integer"):
        paper_level_table(bad)


def test_sign_magnitude_tables():
    for b in range(3, 8):
        t = sign_magnitude_table(b, 99, "paper")  # k is not used
        assert t.magnitude is paper_level_table(b - 1) and t.k == 0 and t.level_set == "paper"
        n = 2 ** (b - 1)
        np.testing.assert_array_equal(t.code_by_position, np.arange(-(n - 1), n, dtype=np.int32))
        assert t.nan_code == -n and t.num_levels == 2**b - 1
    for b in range(2, 9):
        assert sign_magnitude_table(b, 1, "paper-pot").magnitude is paper_level_table(b - 1, additive=False)
    ternary = sign_magnitude_table(2, 1, "paper")  # the paper's 2-bit weights: {-alpha, 0, alpha}
    assert ternary.magnitude.values == (0, 1)
    for b, level_set in ((8, "paper"), (9, "paper-pot"), (1, "paper")):
        with pytest.raises(ValueError, match="b"):
            sign_magnitude_table(b, 1, level_set)
    with pytest.raises(ValueError, match="level_set"):
        sign_magnitude_table(3, 2, "Paper")
    with pytest.raises(ValueError, match="build_power_value"):
        unsigned_table(7, 1, "paper")
    assert LEVEL_SETS == jpaper.LEVEL_SETS == tpaper.LEVEL_SETS == ("apot", "paper", "paper-pot")


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


# --------------------------------------------------------------------------
# both frameworks, bitwise, and against a brute-force reference

WEIGHT_CONFIGS = [(b, "paper") for b in range(2, 8)] + [(b, "paper-pot") for b in (2, 4, 8)]
ACT_CONFIGS = [(b, "paper") for b in ADDITIVE_BITS] + [(b, "paper-pot") for b in (1, 3, 7)]


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
        v32 = my_float32(v)
        level = np.float32(0) if v32 == 0 else my_float32(Fraction(float(np.float32(alpha))) * Fraction(float(v32)))
        out.append(np.float32(0) if level < TINY else level)
    return np.array(out, np.float32)


@pytest.mark.parametrize("b, level_set", WEIGHT_CONFIGS, ids=lambda v: str(v))
def test_weights_bitwise_and_reference(b, level_set):
    alpha = 0.83
    # the transcription's values (b = 2: the paper's ternary weights, magnitudes {0, 1})
    values = [Fraction(0), Fraction(1)] if b == 2 else my_build_power_value(b - 1, level_set == "paper")
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
    levels = _reference_levels(alpha, my_build_power_value(b, level_set == "paper"))
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
    np.testing.assert_array_equal(j4p[7:], np.array([my_float32(v) for v in my_build_power_value(3)], np.float32))


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
