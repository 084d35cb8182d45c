"""Traced APoT numerics in JAX: gamma, the level values and the rounding rule.

Mirrors ``apot_torch/levels.py`` function for function. Every function here is
traceable (``jit``, ``grad``, ``vmap``) and follows ``docs/numerics.md``:

* ``gamma``: the correctly rounded float32 quotient ``alpha / p_sum``. XLA's
  float32 division is not correctly rounded, so the quotient is corrected
  with an exact residual.
* ``levels``: ``gamma * base_sum`` as one IEEE multiply, subnormal results
  flushed to zero, computed so that no backend's own subnormal handling can
  change a bit.
* ``thresholds``: for each level position ``j``, the largest float32 ``x``
  whose chosen position is ``<= j``. ``quantize`` is then
  ``count(thresholds < x)``, exactly the contract's first-minimum rule.
* ``rounding_grid``: a uniform grid over ``[-alpha, alpha]`` whose cells hold
  at most one distinct threshold, turning ``count(thresholds < x)`` into one
  comparison per element.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

import apot_jax._float32 as _float32
from apot_common.tables import FLOAT32_TINY, UnsignedTable, grid_size

_TINY = jnp.float32(FLOAT32_TINY)
_LARGEST_SUBNORMAL = 0x007FFFFF  # bit pattern of the largest subnormal float32


def flush_subnormal(x: jax.Array) -> jax.Array:
    """Subnormal float32 values become zero of the same sign (numerics 4)."""
    return jnp.where(jnp.abs(x) < _TINY, x * 0, x)


def positive_zero(x: jax.Array) -> jax.Array:
    """Zeros and subnormals become ``+0.0``: statistics and alpha carry no
    sign of zero, which ``min``/``max`` would otherwise pick per backend."""
    return jnp.where(jnp.abs(x) < _TINY, jnp.float32(0), x)


def gamma(alpha: jax.Array, p_sum: float) -> jax.Array:
    """Correctly rounded float32 ``alpha / p_sum``, flushed to zero if subnormal.

    Args:
      alpha: float32 array (any shape) of clipping values, ``>= 0``.
      p_sum: ``2 - 2**(1 - n)`` (exact in float32).

    Returns:
      float32 array shaped like ``alpha``; NaN where ``alpha`` is negative or
      not finite (for example an observer that has seen nothing).
    """
    alpha = flush_subnormal(jnp.asarray(alpha, jnp.float32))
    valid = jnp.isfinite(alpha) & (alpha >= 0)
    safe = jnp.where(valid & (alpha > 0), alpha, jnp.float32(1))
    # alpha = m * 2**e with m in [1, 2): divide the mantissa, where no operand
    # or residual can be subnormal, then put the exponent back exactly.
    bits = _float32.bits(safe)
    e = ((bits >> 23) & 0xFF) - 127
    m = _float32.from_bits((bits & 0x007FFFFF) | (127 << 23))
    p = jnp.float32(p_sum)
    q = m / p
    up = jnp.float32(jnp.inf)
    # One stacked array, not one expression per candidate: with q = m / p
    # inlined into each residual, XLA on CPU simplified the middle one into
    # an expression that rounds (tests/jax/test_levels.py caught it).
    candidates = jnp.stack([jnp.nextafter(q, -up), q, jnp.nextafter(q, up)])
    # residual m - c * p_sum, exact: p_sum = 2 - 2**(1-n), and both partial
    # differences below are exact by Sterbenz's lemma.
    residual = (m - 2 * candidates) + candidates * jnp.float32(2.0 - p_sum)
    best = _float32.nearest_candidate(list(candidates), list(residual))
    g = _float32.scale_by_power_of_two(best, e)
    g = jnp.where(alpha > 0, g, jnp.float32(0))
    return jnp.where(valid, g, jnp.float32(jnp.nan))


def levels(gamma_value: jax.Array, table: UnsignedTable) -> jax.Array:
    """Sorted quantization levels ``gamma * base_sum[level_indices]``.

    Args:
      gamma_value: float32 scalar (or array; the level axis is appended last).
      table: the static level table: an APoT ``LevelTable`` or the paper's
        ``PaperLevelTable`` (whose ``p_sum`` is 1, so ``gamma`` is alpha).

    Returns:
      float32 array of shape ``gamma_value.shape + (N,)``, ascending.
    """
    g = jnp.asarray(gamma_value, jnp.float32)[..., None]
    # Signed tables have mantissas above p_sum (1 - 1/8 = 1.75 * 2**-1), so
    # gamma * mantissa can overflow where the level itself does not. For
    # gamma >= 1 multiply by mantissa / 2 and add one to the exponent: the
    # product is normal either way, so it rounds identically.
    halve = jnp.abs(g) >= 1
    mantissa = jnp.where(halve, jnp.float32(0.5), jnp.float32(1)) * jnp.asarray(table.sorted_mantissa)
    exponent = jnp.asarray(table.sorted_exponent) + halve.astype(jnp.int32)
    return _float32.scale_by_power_of_two(g * mantissa, exponent)


def _order_key(x: jax.Array) -> jax.Array:
    """Monotone map float32 -> int32 (both zeros map to 0)."""
    bits = _float32.bits(x)
    return jnp.where(bits >= 0, bits, -(bits & 0x7FFFFFFF))


def _from_order_key(key: jax.Array) -> jax.Array:
    return _float32.from_bits(jnp.where(key >= 0, key, (-key) | jnp.int32(-(2**31))))


def _scaled_pair(lower: jax.Array, upper: jax.Array) -> jax.Array:
    """``stack([lower * s, upper * s, s])``: the operands of :func:`_prefers_lower`.

    The differences there are IEEE float32 differences with gradual
    underflow. Some backends (XLA on CPU and TPU) flush subnormal results, so
    operands below 2**-100 are first scaled by ``s = 2**100``: exact, and it
    keeps every difference normal without changing how it rounds. One stacked
    array computed once before the bisection (one kernel, where three loop
    invariants were three).
    """
    small = jnp.maximum(jnp.abs(lower), jnp.abs(upper)) < jnp.float32(2.0**-100)
    scale = jnp.where(small, jnp.float32(2.0**100), jnp.float32(1))
    return jnp.stack([lower * scale, upper * scale, scale])


def _prefers_lower(x: jax.Array, pair: jax.Array) -> jax.Array:
    """Whether ``x`` rounds to the lower rather than the upper level of
    ``pair = _scaled_pair(lower, upper)`` (numerics 5)."""
    x = flush_subnormal(x) * pair[2]
    return (x - pair[0]) <= (pair[1] - x)


#: Up to this many comparisons, a sorted search compares every pair (one
#: fused reduction); beyond, it bisects in a loop (several kernels: XLA's
#: compile time grows with their count, and a loop's iterations run one
#: after another). Both give the same positions.
COMPARE_ALL_MAX = 2**18


def search_sorted(sorted_values: jax.Array, queries: jax.Array, side: str) -> jax.Array:
    """``jnp.searchsorted(sorted_values, queries, side=side)`` (int32, shaped
    like ``queries``), by comparing every pair when that is small
    (``COMPARE_ALL_MAX``), else by bisection."""
    small = sorted_values.shape[-1] * queries.size <= COMPARE_ALL_MAX
    return jnp.searchsorted(sorted_values, queries, side=side, method="compare_all" if small else "scan")


def thresholds(level_values: jax.Array, alpha: jax.Array) -> jax.Array:
    """Decision thresholds of the rounding rule.

    ``quantize`` chooses position ``count(thresholds < x)`` for every non-NaN
    float32 ``x`` (clipping to ``[-alpha, alpha]`` and treating subnormal ``x``
    as zero are folded in).

    Args:
      level_values: ``(N,)`` float32, ascending.
      alpha: float32 scalar.

    Returns:
      ``(N,)`` float32, non-decreasing; the last entry is ``+inf``.
    """
    n = level_values.shape[-1]
    inf = jnp.float32(jnp.inf)
    # Next distinct value above each level (exact duplicates share it).
    above = search_sorted(level_values, level_values, side="right")
    has_above = above < n
    lower = level_values
    upper = level_values[jnp.minimum(above, n - 1)]

    # bounds[0] (lo): _prefers_lower holds there; bounds[1] (hi): it fails.
    # One (2, N) array so that the loop body is one kernel, not one per bound.
    bounds = jnp.stack([_order_key(lower), _order_key(jnp.where(has_above, upper, lower))])
    pair = _scaled_pair(lower, upper)

    def step(_, bounds):
        lo, hi = bounds[0], bounds[1]
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)
        ok = _prefers_lower(_from_order_key(mid), pair)
        return jnp.where(ok, jnp.stack([mid, hi]), jnp.stack([lo, mid]))

    lo = lax.fori_loop(0, 32, step, bounds)[0]
    theta = jnp.where(has_above, _from_order_key(lo), inf)
    alpha = jnp.asarray(alpha, jnp.float32)
    # Clipping x to [-alpha, alpha] first: thresholds at or above alpha are
    # never passed, those below -alpha always are.
    theta = jnp.where(theta >= alpha, inf, jnp.where(theta < -alpha, -inf, theta))
    # Subnormal x counts as zero: "x > t" for t in [0, tiny) must hold exactly
    # for x >= tiny, and for t in (-tiny, 0) exactly for x > -tiny. The largest
    # subnormal (resp. -tiny) does that whether or not the hardware itself
    # flushes subnormal operands.
    small = jnp.abs(theta) < _TINY
    theta = jnp.where(small & (theta >= 0), _float32.from_bits(jnp.int32(_LARGEST_SUBNORMAL)), theta)
    theta = jnp.where(small & (theta < 0), -_TINY, theta)
    return theta


class RoundingGrid(NamedTuple):
    """Per-cell tables for one-comparison rounding (see ``rounding_grid``)."""

    origin: jax.Array  # float32 scalar: left edge of cell 0
    scale: jax.Array  # float32 scalar: cells per unit
    threshold: jax.Array  # (G,) float32: the one distinct threshold in the cell
    lower: jax.Array  # (G,) int32: position chosen below/at it
    upper: jax.Array  # (G,) int32: position chosen above it
    exact: jax.Array  # bool scalar: every cell holds <= 1 distinct threshold


def grid_cell(x: jax.Array, origin: jax.Array, scale: jax.Array, cells: int) -> jax.Array:
    """Monotone cell index of ``x`` (NaN -> some valid cell; caller masks it)."""
    c = jnp.floor(jnp.clip((x - origin) * scale, 0, cells - 1))
    return jnp.clip(c.astype(jnp.int32), 0, cells - 1)


def rounding_grid(theta: jax.Array, level_values: jax.Array, alpha: jax.Array) -> RoundingGrid:
    """Cell tables so that ``count(theta < x)`` is
    ``where(x > threshold[c], upper[c], lower[c])`` with ``c = grid_cell(x)``.

    ``exact`` is False when some cell would need two comparisons (level
    spacing finer than the grid, or a degenerate alpha); callers then use a
    binary search instead.
    """
    n = theta.shape[-1]
    cells = grid_size(n)
    alpha = jnp.asarray(alpha, jnp.float32)
    origin = jnp.where(level_values[0] < 0, -alpha, jnp.float32(0))
    scale = jnp.float32(cells) / (alpha - origin)
    cell_of = jnp.where(
        theta == jnp.inf,
        cells,
        jnp.where(theta == -jnp.inf, -1, grid_cell(theta, origin, scale, cells)),
    )
    distinct = theta[1:] != theta[:-1]
    exact = jnp.all(~distinct | (cell_of[1:] > cell_of[:-1]))
    # cell_of is integer, so count(cell_of <= c) is count(cell_of < c + 1):
    # one search gives both ends of every cell
    ends = search_sorted(cell_of, jnp.arange(cells + 1, dtype=jnp.int32), side="left").astype(jnp.int32)
    lower, upper = ends[:-1], ends[1:]
    threshold = jnp.where(upper > lower, theta[jnp.minimum(lower, n - 1)], jnp.inf)
    return RoundingGrid(origin, scale, threshold, lower, upper, exact)


__all__ = [
    "COMPARE_ALL_MAX",
    "RoundingGrid",
    "flush_subnormal",
    "gamma",
    "grid_cell",
    "levels",
    "positive_zero",
    "rounding_grid",
    "search_sorted",
    "thresholds",
]
