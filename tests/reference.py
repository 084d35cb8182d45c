"""Brute-force reference of the numerics contract, written independently of
both implementations: exact rationals for gamma and the levels, a full scan
over all levels for rounding. Slow by design; used only by the tests.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np

TINY = Fraction(2) ** -126


def round_rational_to_float32(q: Fraction) -> np.float32:
    """Nearest float32 to ``q`` (ties to even, 24-bit significand, unbounded
    exponent), then zero if below the normal range."""
    if q == 0:
        return np.float32(0.0)
    sign = -1 if q < 0 else 1
    q = abs(q)
    e = q.numerator.bit_length() - q.denominator.bit_length()
    if Fraction(2) ** e > q:
        e -= 1
    # q in [2**e, 2**(e+1)): significand has 24 bits -> unit 2**(e-23)
    scaled = q / Fraction(2) ** (e - 23)
    m = scaled.numerator // scaled.denominator
    rem = scaled - m
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and m % 2 == 1):
        m += 1
    value = Fraction(m) * Fraction(2) ** (e - 23)
    if value < TINY:
        return np.float32(0.0) * np.float32(sign)
    return np.float32(sign * float(value))


def exact_terms(b: int, k: int, signed: bool) -> list[list[Fraction]]:
    n = b // k
    sets = []
    for i in range(n):
        terms = [Fraction(0)]
        for j in range(2**k - 1):
            t = Fraction(1, 2 ** (i + j * n))
            terms.append(t)
            if signed:
                terms.append(-t)
        if signed:
            terms.sort(reverse=True)
        sets.append(terms)
    return sets


def reference_qparams(min_val: float, max_val: float, b: int, k: int, signed: bool):
    """(alpha, gamma, levels, level_indices) as numpy float32/int64."""
    n = b // k
    alpha = np.maximum(-np.float32(min_val), np.float32(max_val)).astype(np.float32)
    if abs(alpha) < np.finfo(np.float32).tiny:
        alpha = np.float32(0.0)  # zero and subnormal alpha: +0.0
    alpha_exact = Fraction(float(alpha))
    p_sum = 2 - Fraction(2) ** (1 - n)
    gamma = round_rational_to_float32(alpha_exact / p_sum)
    sums = [sum(c) for c in itertools.product(*exact_terms(b, k, signed))]
    base = [round_rational_to_float32(s) for s in sums]
    order = sorted(range(len(sums)), key=sums.__getitem__)
    def level(c: int) -> np.float32:
        if gamma == 0 or base[c] == 0 or not np.isfinite(gamma):
            return np.float32(gamma) * base[c]  # IEEE signed zero / NaN
        return round_rational_to_float32(Fraction(float(gamma)) * Fraction(float(base[c])))

    levels = np.array([level(c) for c in order], dtype=np.float32)
    return alpha, gamma, levels, np.array(order, dtype=np.int64)


def _ftz(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    return np.where(np.abs(a) < np.finfo(np.float32).tiny, np.float32(0), a)


def reference_positions(x: np.ndarray, alpha: np.float32, levels: np.ndarray) -> np.ndarray:
    """First position minimising |fl32(level - x)| (numerics 5); -1 for NaN."""
    x = _ftz(np.asarray(x, np.float32).ravel())
    nan = np.isnan(x)
    xc = np.clip(np.where(nan, 0, x), -alpha, alpha).astype(np.float32)
    out = np.empty(xc.shape, np.int64)
    for start in range(0, xc.size, 4096):
        chunk = xc[start : start + 4096]
        with np.errstate(over="ignore", invalid="ignore"):
            d = np.abs(levels[None, :] - chunk[:, None])  # IEEE, gradual underflow
        out[start : start + 4096] = np.argmin(d, axis=1)  # argmin returns the first
    out[nan] = -1
    return out


def reference_quantize(x, alpha, levels, level_indices):
    """(codes, quant_dequant values) for float32 ``x`` (flattened)."""
    p = reference_positions(x, alpha, levels)
    codes = np.where(p >= 0, level_indices[np.maximum(p, 0)], -1)
    values = np.where(p >= 0, levels[np.maximum(p, 0)], np.float32(np.nan)).astype(np.float32)
    return codes, values


def adversarial_inputs(alpha: np.float32, levels: np.ndarray, rng: np.random.Generator, n_random: int = 2000):
    """Levels, midpoints and their float32 neighbours, +-alpha and beyond, zeros,
    subnormals, infinities, NaN, and random values at several scales."""
    f32 = np.float32
    levels = levels.astype(np.float32)
    uniq = np.unique(levels)
    mids = ((uniq[:-1].astype(np.float64) + uniq[1:].astype(np.float64)) / 2).astype(f32)
    base = np.concatenate([uniq, mids, [alpha, -alpha, alpha * f32(1.5), -alpha * f32(3)]]).astype(f32)
    pts = [base]
    for _ in range(3):
        pts.append(np.nextafter(pts[-1], f32(np.inf)))
    down = [base]
    for _ in range(3):
        down.append(np.nextafter(down[-1], f32(-np.inf)))
    tiny = np.finfo(f32).tiny
    special = np.array(
        [0.0, -0.0, tiny, -tiny, tiny / 2, -tiny / 2, np.nextafter(f32(0), f32(1)),
         np.nextafter(tiny, f32(0)), np.inf, -np.inf, np.nan, 1e30, -1e30],
        dtype=f32,
    )
    scale = f32(alpha) if alpha > 0 else f32(1)
    rand = np.concatenate([
        rng.normal(size=n_random).astype(f32) * scale,
        rng.uniform(-1.2, 1.2, size=n_random).astype(f32) * scale,
        rng.normal(size=n_random // 4).astype(f32) * scale * f32(1e-3),
    ])
    allx = np.concatenate(pts + down[1:] + [special, -base, rand]).astype(f32)
    return allx


def all_configs(max_b: int = 8):
    """Every (b, k) with b <= max_b and k | b, both signed settings."""
    return [(b, k, s) for b in range(1, max_b + 1) for k in range(1, b + 1) if b % k == 0 for s in (False, True)]
