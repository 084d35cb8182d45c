"""Expected results, from the brute-force reference (``tests/reference.py``:
exact rationals, a full scan over the levels), independent of both frameworks.

Every backend of both frameworks is compared to these bit for bit, so passing
means JAX and torch agree with each other on every backend tested. The inputs
are the reference's adversarial set (levels, midpoints and float32 neighbours,
+-alpha and beyond, zeros, subnormals, +-inf, NaN, random values at several
scales) and, for three of the statistics, bfloat16 and float16 sets built the
same way in those dtypes.
"""

from __future__ import annotations

import dataclasses
import functools
from fractions import Fraction

import numpy as np

from apot_common.tables import level_table
from apot_parity import Elementwise, QParams, golden
from tests.reference import adversarial_inputs, reference_qparams, reference_quantize, round_rational_to_float32

F32 = np.float32
TINY = float(np.finfo(F32).tiny)

#: Statistics of the element cases (the golden files use the same seven).
STATS = golden.STATS
#: Statistics whose cases also get bfloat16 and float16 inputs.
LOW_PRECISION_STATS = (0, 1, 2)
CONFIGS = golden.CONFIGS


def config_id(config) -> str:
    b, k, s = config
    return f"b{b}k{k}{'s' if s else 'u'}"


@functools.lru_cache(maxsize=None)
def qparams(b: int, k: int, signed: bool, min_val: float, max_val: float) -> QParams:
    """Reference qparams; unobserved statistics give alpha -inf and NaN.

    ``alpha = max(-min_val, max_val)``, and a zero or subnormal alpha (of
    either sign) is ``+0.0`` (docs/numerics.md section 2); a negative normal
    or non-finite alpha gives NaN gamma and levels.
    """
    table = level_table(b, k, signed)
    alpha = np.maximum(-F32(min_val), F32(max_val)).astype(F32)
    if abs(alpha) < TINY:
        alpha = F32(0.0)  # +0.0, not -0.0 and not a subnormal
    if not np.isfinite(alpha) or alpha < 0:
        nan = np.full(table.num_levels, np.nan, F32)
        return QParams(alpha, F32(np.nan), nan, table.level_indices.astype(np.int64))
    a, g, levels, indices = reference_qparams(min_val, max_val, b, k, signed)
    assert F32(a).tobytes() == alpha.tobytes(), (a, alpha)
    return QParams(alpha, F32(g), levels, indices)


def elementwise(x: np.ndarray, dy: np.ndarray, qp: QParams) -> Elementwise:
    """Reference codes, quant_dequant, fake quant (input dtype) and gradient
    ``where(-alpha <= x <= alpha, dy, 0)``: IEEE comparisons on x in float32,
    where a subnormal x counts as zero (docs/numerics.md section 6, so with
    alpha = 0 a subnormal x gets mask 1) and non-finite x gets 0."""
    shape = np.shape(x)
    x32 = np.asarray(x).astype(F32).ravel()
    alpha = F32(qp.alpha)
    if np.isfinite(alpha) and alpha >= 0:
        codes, values = reference_quantize(x32, alpha, qp.levels, qp.indices)
    else:
        codes = np.full(x32.shape, -1, np.int64)
        values = np.full(x32.shape, np.nan, F32)
    with np.errstate(invalid="ignore"):
        x_mask = np.where(np.abs(x32) < TINY, F32(0), x32)
        mask = (x_mask >= -alpha) & (x_mask <= alpha) & np.isfinite(x_mask)
    y = values.astype(np.asarray(x).dtype).reshape(shape)
    dy = np.asarray(dy)
    grad = np.where(mask.reshape(shape), dy, np.zeros_like(dy)).astype(dy.dtype)
    return Elementwise(codes.astype(np.int32).reshape(shape), y, y, grad)


@dataclasses.dataclass
class Case:
    key: str
    config: tuple
    min_val: np.float32
    max_val: np.float32
    qparams: QParams
    inputs: dict  # dtype -> (x, dy)
    expected: dict  # dtype -> Elementwise


@functools.lru_cache(maxsize=None)
def case(b: int, k: int, signed: bool, stats_index: int) -> Case:
    """One (configuration, statistics) case, computed once for all backends."""
    mn, mx = STATS[stats_index]
    qp = qparams(b, k, signed, mn, mx)
    seed = 1000 * b + 10 * k + int(signed) + 100_000 * stats_index
    if np.isfinite(qp.alpha):
        x32 = adversarial_inputs(F32(qp.alpha), qp.levels, np.random.default_rng(seed), n_random=400)
    else:
        x32, _ = golden.float32_inputs(qp.alpha, qp.levels, seed)
    inputs = {"float32": (x32, golden.dy_pattern(x32.size, F32))}
    if stats_index in LOW_PRECISION_STATS:
        for j, name in enumerate(("bfloat16", "float16")):
            x = golden.low_precision_inputs(qp.alpha, qp.levels, name, seed + 17 * (j + 1))
            inputs[name] = (x, golden.dy_pattern(x.size, x.dtype))
    expected = {name: elementwise(x, dy, qp) for name, (x, dy) in inputs.items()}
    key = f"element b={b} k={k} {'signed' if signed else 'unsigned'} stats={stats_index}"
    return Case(key, (b, k, signed), F32(mn), F32(mx), qp, inputs, expected)


def exact_gamma(alpha: np.ndarray, n: int) -> np.ndarray:
    """Correctly rounded ``alpha / (2 - 2**(1-n))`` per element (exact
    rationals); subnormal alpha and results count as zero, invalid alpha NaN."""
    p_sum = 2 - Fraction(2) ** (1 - n)
    out = np.empty(alpha.shape, F32)
    for i, a in enumerate(np.asarray(alpha, F32).ravel()):
        if not np.isfinite(a) or a < 0:
            out.flat[i] = np.nan
        elif a < TINY:
            out.flat[i] = 0.0
        else:
            out.flat[i] = round_rational_to_float32(Fraction(float(a)) / p_sum)
    return out


def observer_states(batches) -> list[tuple[np.float32, np.float32]]:
    """min/max after each batch: finite values only, zeros and subnormals
    count as ``+0.0`` (docs/numerics.md section 2, so a zero statistic is
    always ``+0.0``), empty and all-non-finite batches change nothing."""
    mn, mx = F32(np.inf), F32(-np.inf)
    out = []
    for batch in batches:
        x = np.asarray(batch).astype(F32).ravel()
        with np.errstate(invalid="ignore"):
            x = np.where(np.abs(x) < TINY, F32(0.0), x).astype(F32)
        finite = x[np.isfinite(x)]
        if finite.size:
            mn = min(mn, F32(finite.min()))
            mx = max(mx, F32(finite.max()))
        out.append((F32(mn), F32(mx)))
    return out
