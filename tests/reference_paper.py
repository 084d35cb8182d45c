"""Brute-force reference of the paper recipe's numerics (``docs/numerics.md``
section 9), independent of both implementations: exact rationals for gamma,
the levels and the reciprocal, the signed codes from the combination order,
a full scan over the levels for rounding, numpy float32 for the gradients.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np

from tests.reference import (
    exact_terms,
    reference_positions,
    reference_qparams,
    reference_quantize,
    round_rational_to_float32,
)


def reference_sign_magnitude(alpha: float, b: int, k: int):
    """``(gamma, levels, codes)`` of the sign-magnitude scheme for a finite
    alpha >= 0: float32 ``levels`` ascending (``2**b - 1``) and int64 ``codes``
    (``-c`` / ``+c`` for the negative / non-negative level of magnitude code
    ``c``, the combination number in the unsigned ``(b - 1, k)`` table)."""
    m = b - 1
    n = m // k
    alpha = np.float32(alpha)
    if abs(alpha) < np.finfo(np.float32).tiny:
        alpha = np.float32(0.0)
    p_sum = 2 - Fraction(2) ** (1 - n)
    gamma = round_rational_to_float32(Fraction(float(alpha)) / p_sum)
    sums = [sum(c) for c in itertools.product(*exact_terms(m, k, False))]
    order = sorted(range(len(sums)), key=sums.__getitem__)  # magnitude codes, ascending

    def level(c: int) -> np.float32:
        base = round_rational_to_float32(sums[c])
        if gamma == 0 or base == 0:
            return np.float32(gamma) * base
        return round_rational_to_float32(Fraction(float(gamma)) * Fraction(float(base)))

    mags = [level(c) for c in order]
    levels = [-v for v in reversed(mags[1:])] + mags
    codes = [-c for c in reversed(order[1:])] + order
    return gamma, np.array(levels, np.float32), np.array(codes, np.int64)


def reference_sm_quantize(x: np.ndarray, alpha: float, b: int, k: int):
    """``(codes, values)`` of float32 ``x`` (flattened): first level minimising
    ``|fl32(level - x)|`` over the whole symmetric set; NaN -> code
    ``-2**(b-1)`` and NaN."""
    _, levels, codes = reference_sign_magnitude(alpha, b, k)
    p = reference_positions(x, np.float32(alpha), levels)
    out_codes = np.where(p >= 0, codes[np.maximum(p, 0)], -(2 ** (b - 1)))
    values = np.where(p >= 0, levels[np.maximum(p, 0)], np.float32(np.nan)).astype(np.float32)
    return out_codes, values


def reference_reciprocal(alpha: np.ndarray) -> np.ndarray:
    """Correctly rounded float32 ``1 / alpha`` for positive normal alpha (a
    subnormal result is 0), by exact rationals."""
    return np.array([round_rational_to_float32(1 / Fraction(float(a))) for a in np.ravel(alpha)], np.float32)


def _ftz(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float32)
    return np.where(np.abs(a) < np.finfo(np.float32).tiny, a * np.float32(0), a).astype(np.float32)


def reference_alpha_grad_elements(x: np.ndarray, alpha: float, y: np.ndarray, unsigned: bool = False) -> np.ndarray:
    """Per-element ``dy/dalpha`` in numpy float32 (gradual underflow, then
    flushed): ``sign(x)`` outside ``[-alpha, alpha]``, ``fl(fl(y - x) * fl(1/alpha))``
    inside, 0 for NaN; ``unsigned``: 0 for every ``x < 0`` (``y`` is 0 there)."""
    x = _ftz(np.asarray(x, np.float32))
    alpha = np.float32(alpha)
    r = reference_reciprocal(np.array([alpha]))[0] if alpha > 0 else np.float32(0)
    with np.errstate(invalid="ignore", over="ignore"):
        inside = _ftz(_ftz(np.asarray(y, np.float32) - x) * r)
        is_inside = np.abs(x) <= alpha
    g = np.where(is_inside, inside, np.where(x > 0, np.float32(1), np.float32(-1))).astype(np.float32)
    if unsigned:
        g = np.where(x < 0, np.float32(0), g)
    return np.where(np.isnan(x), np.float32(0), g)


def reference_pairwise_sum(x: np.ndarray) -> np.float32:
    """Fixed-order float32 sum of ``x`` (flattened): ``(0 + 1), (2 + 3), ...``
    with a zero appended to an odd count, repeatedly, subnormals flushed."""
    v = _ftz(np.ravel(np.asarray(x, np.float32)))
    while v.size > 1:
        if v.size % 2:
            v = np.append(v, np.float32(0))
        v = _ftz(v[0::2] + v[1::2])
    return np.float32(v[0]) if v.size else np.float32(0)


def reference_normalize(w: np.ndarray):
    """``(w_hat, mean, std)`` over the whole of float32 ``w`` by the rule of
    ``docs/numerics.md`` 9 (pairwise sums, host-rounded 1/count, correctly
    rounded sqrt and reciprocal), in numpy."""
    w = np.asarray(w, np.float32)
    count = w.size
    mean = _ftz(reference_pairwise_sum(w) * np.float32(1 / count))
    var = reference_pairwise_sum(np.square(w - mean)) * np.float32(1 / (count - 1))
    std = np.float32(np.sqrt(np.float64(var)))
    r = reference_reciprocal(np.array([std]))[0] if std > 0 else np.float32(0)
    return _ftz((w - mean) * r), mean, std


def reference_fit_alpha(x: np.ndarray, b: int, k: int, scheme: str, candidates: int) -> np.float32:
    """``fit_alpha`` by brute force: every grid alpha ``fl(top * fl(i / C))``,
    its fake quant by the full level scan, ``reference_pairwise_sum`` of the
    squared errors, the first minimum."""
    x = np.ravel(np.asarray(x, np.float32))
    top = np.abs(x).max() if scheme == "sign-magnitude" else x.max()
    grid = top * (np.arange(1, candidates + 1, dtype=np.float32) / np.float32(candidates))
    errors = []
    for alpha in grid:
        if scheme == "sign-magnitude":
            _, y = reference_sm_quantize(x, alpha, b, k)
        else:
            _, _, levels, indices = reference_qparams(0.0, alpha, b, k, False)
            _, y = reference_quantize(x, alpha, levels, indices)
        d = (y - x).astype(np.float32)
        errors.append(reference_pairwise_sum(d * d))
    return np.float32(grid[int(np.argmin(errors))])


# --------------------------------------------------------------------------
# the paper's own level sets: build_power_value of yhhhli/APoT_Quantization
# (models/quant_layer.py), transcribed from the paper's code independently of
# the implementation (plain loops with fractions, the way the paper appends
# its terms; apot_common.tables uses a table of exponents)

#: The bit widths of the paper's additive level sets.
PAPER_ADDITIVE_BITS = [2, 3, 4, 5, 6]


def build_power_value_sums(B: int, additive: bool = True) -> set[Fraction]:
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


def build_power_value(B: int, additive: bool = True) -> list[Fraction]:
    """``build_power_value(B, additive)`` exactly: the sorted distinct sums
    divided by the largest."""
    values = build_power_value_sums(B, additive)
    top = max(values)
    return sorted(v / top for v in values)


def nearest_float32(q: Fraction) -> np.float32:
    """Nearest float32 to ``q`` (ties to even), by exact comparison of the
    neighbours of numpy's (possibly double-rounded) guess."""
    guess = np.float32(float(q))
    cands = [np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf))]
    best = min(cands, key=lambda c: (abs(Fraction(float(c)) - q), int(np.array(c).view(np.int32)) & 1))
    return np.float32(best)
