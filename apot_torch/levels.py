"""APoT numerics in torch: gamma, the level values and the rounding rule.

Mirrors ``apot_jax/levels.py`` function for function (see that module and
``docs/numerics.md`` for the reasoning). Every function works on any device
and never modifies its inputs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

import apot_torch._float32 as _float32
from apot_common.tables import FLOAT32_TINY, UnsignedTable, grid_size

_LARGEST_SUBNORMAL = 0x007FFFFF
_INT32_MIN = -(2**31)


def flush_subnormal(x: torch.Tensor) -> torch.Tensor:
    """Subnormal float32 values become zero of the same sign (numerics 4)."""
    return torch.where(x.abs() < FLOAT32_TINY, x * 0, x)


def positive_zero(x: torch.Tensor) -> torch.Tensor:
    """Zeros and subnormals become ``+0.0`` (see ``apot_jax.levels.positive_zero``)."""
    return torch.where(x.abs() < FLOAT32_TINY, torch.zeros_like(x), x)


def gamma(alpha: torch.Tensor, p_sum: float) -> torch.Tensor:
    """Correctly rounded float32 ``alpha / p_sum``, flushed to zero if subnormal.

    Args:
      alpha: float32 tensor (any shape) of clipping values, ``>= 0``.
      p_sum: ``2 - 2**(1 - n)``.

    Returns:
      float32 tensor shaped like ``alpha``; NaN where ``alpha`` is negative or
      not finite.
    """
    alpha = flush_subnormal(alpha.to(torch.float32))
    valid = torch.isfinite(alpha) & (alpha >= 0)
    one = torch.ones_like(alpha)
    safe = torch.where(valid & (alpha > 0), alpha, one)
    bits = _float32.bits(safe)
    e = ((bits >> 23) & 0xFF) - 127
    m = _float32.from_bits((bits & 0x007FFFFF) | (127 << 23))
    q = m / p_sum
    inf = torch.full_like(q, float("inf"))
    candidates = torch.stack([torch.nextafter(q, -inf), q, torch.nextafter(q, inf)])
    # residual m - c * p_sum, exact (see apot_jax.levels.gamma)
    residual = (m - 2 * candidates) + candidates * (2.0 - p_sum)
    best = torch.gather(candidates, 0, residual.abs().argmin(dim=0, keepdim=True))[0]
    g = _float32.scale_by_power_of_two(best, e)
    g = torch.where(alpha > 0, g, torch.zeros_like(g))
    return torch.where(valid, g, torch.full_like(g, float("nan")))


def levels(gamma_value: torch.Tensor, table: UnsignedTable) -> torch.Tensor:
    """Sorted levels ``gamma * base_sum[level_indices]``: shape
    ``gamma_value.shape + (N,)``, float32, ascending; ``table`` an APoT
    ``LevelTable`` or the paper's ``PaperLevelTable``."""
    g = gamma_value.to(torch.float32)[..., None]
    device = g.device
    # mantissa / 2 for large gamma: see apot_jax.levels.levels
    halve = g.abs() >= 1
    mantissa = torch.where(halve, 0.5, 1.0) * torch.tensor(table.sorted_mantissa, device=device)
    exponent = torch.tensor(table.sorted_exponent, device=device) + halve.to(torch.int32)
    return _float32.scale_by_power_of_two(g * mantissa, exponent)


def _order_key(x: torch.Tensor) -> torch.Tensor:
    bits = _float32.bits(x)
    return torch.where(bits >= 0, bits, -(bits & 0x7FFFFFFF))


def _from_order_key(key: torch.Tensor) -> torch.Tensor:
    return _float32.from_bits(torch.where(key >= 0, key, (-key) | _INT32_MIN))


def _prefers_lower(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """Whether ``x`` rounds to ``lower`` rather than ``upper`` (numerics 5),
    with IEEE differences (scaled by 2**100 for tiny operands, exactly as in
    ``apot_jax``, so flushing hardware agrees)."""
    x = flush_subnormal(x)
    small = torch.maximum(lower.abs(), upper.abs()) < 2.0**-100
    scale = torch.where(small, 2.0**100, 1.0).to(torch.float32)
    x, lower, upper = x * scale, lower * scale, upper * scale
    return (x - lower) <= (upper - x)


def thresholds(level_values: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Decision thresholds: ``quantize`` chooses position ``count(thresholds < x)``.

    Args:
      level_values: ``(N,)`` float32, ascending; or ``(C, N)``, one row per
        channel.
      alpha: float32 scalar tensor; ``(C,)`` with ``(C, N)`` levels.

    Returns:
      float32 shaped like ``level_values``, non-decreasing along the last
      axis, whose last entry is ``+inf``.
    """
    n = level_values.shape[-1]
    inf = float("inf")
    above = torch.searchsorted(level_values, level_values, right=True)
    has_above = above < n
    lower = level_values
    upper = torch.gather(level_values, -1, above.clamp(max=n - 1))
    lo = _order_key(lower)
    hi = _order_key(torch.where(has_above, upper, lower))
    for _ in range(32):
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)
        ok = _prefers_lower(_from_order_key(mid), lower, upper)
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    theta = torch.where(has_above, _from_order_key(lo), inf)
    alpha = alpha.to(torch.float32).unsqueeze(-1)  # one alpha per row
    theta = torch.where(theta >= alpha, inf, torch.where(theta < -alpha, -inf, theta))
    small = theta.abs() < FLOAT32_TINY
    largest_subnormal = _float32.from_bits(torch.tensor(_LARGEST_SUBNORMAL, dtype=torch.int32, device=theta.device))
    theta = torch.where(small & (theta >= 0), largest_subnormal, theta)
    theta = torch.where(small & (theta < 0), -FLOAT32_TINY, theta)
    return theta


class RoundingGrid(NamedTuple):
    """Per-cell tables for one-comparison rounding (see ``rounding_grid``)."""

    origin: torch.Tensor
    scale: torch.Tensor
    threshold: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    exact: torch.Tensor


def grid_cell(x: torch.Tensor, origin: torch.Tensor, scale: torch.Tensor, cells: int) -> torch.Tensor:
    """Monotone cell index of ``x`` (int64); NaN maps to cell 0."""
    c = torch.nan_to_num(((x - origin) * scale).clamp(0, cells - 1), nan=0.0).floor()
    return c.to(torch.int64).clamp(0, cells - 1)


def rounding_grid(theta: torch.Tensor, level_values: torch.Tensor, alpha: torch.Tensor) -> RoundingGrid:
    """Cell tables so that ``count(theta < x)`` is
    ``where(x > threshold[c], upper[c], lower[c])`` with ``c = grid_cell(x)``;
    ``exact`` is False when some cell holds two distinct thresholds."""
    n = theta.shape[-1]
    cells = grid_size(n)
    alpha = alpha.to(torch.float32)
    origin = torch.where(level_values[0] < 0, -alpha, torch.zeros_like(alpha))
    scale = cells / (alpha - origin)
    cell_of = torch.where(
        theta == float("inf"),
        cells,
        torch.where(theta == float("-inf"), -1, grid_cell(theta, origin, scale, cells)),
    )
    distinct = theta[1:] != theta[:-1]
    exact = torch.all(~distinct | (cell_of[1:] > cell_of[:-1]))
    ids = torch.arange(cells, device=theta.device)
    lower = torch.searchsorted(cell_of, ids, right=False)
    upper = torch.searchsorted(cell_of, ids, right=True)
    threshold = torch.where(upper > lower, theta[lower.clamp(max=n - 1)], float("inf"))
    return RoundingGrid(origin, scale, threshold, lower, upper, exact)


__all__ = [
    "RoundingGrid",
    "flush_subnormal",
    "gamma",
    "grid_cell",
    "levels",
    "positive_zero",
    "rounding_grid",
    "thresholds",
]
