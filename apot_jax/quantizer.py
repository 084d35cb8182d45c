"""APoT quantize / dequantize / quant_dequant in JAX.

Mirrors ``apot_torch/quantizer.py``. The rounding rule is the one of
``docs/numerics.md`` section 5, bit for bit: see ``apot_jax/levels.py`` for
how it is turned into one comparison per element.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from apot_common.tables import level_table
from apot_jax import levels as _levels
from apot_jax._float32 import as_float32
from apot_jax.observer import APoTQParams

#: Code returned by ``quantize`` for NaN input (and for unobserved qparams).
NAN_CODE = -1


#: Up to this many levels, rounding is a chain of compare-and-selects against
#: scalar thresholds (vectorises, no gather); above it, a per-cell lookup.
SELECT_CHAIN_MAX_LEVELS = 16


def _lookup(x: jax.Array, qparams: APoTQParams, values: jax.Array, nan_value) -> jax.Array:
    """``values[p(x)]`` for the contract's chosen position ``p`` of each element.

    ``x`` is float32; ``values`` is indexed by sorted position (shape ``(N,)``).
    All three strategies compute ``p = count(thresholds < x)``; they differ
    only in speed (measured in ``benchmarks/bench_jax.py``).
    """
    theta = _levels.thresholds(qparams.quantization_levels, qparams.alpha)
    n = theta.shape[0]

    def select_chain(x):
        out = jnp.broadcast_to(values[0], x.shape)
        for j in range(n - 1):
            out = jnp.where(x > theta[j], values[j + 1], out)
        return out

    def binary_search(x):
        return values[jnp.searchsorted(theta, x, side="left")]

    if n <= SELECT_CHAIN_MAX_LEVELS:
        out = select_chain(x)
    else:
        grid = _levels.rounding_grid(theta, qparams.quantization_levels, qparams.alpha)
        cells = grid.threshold.shape[0]
        below, above = values[grid.lower], values[grid.upper]

        def one_comparison(x):
            c = _levels.grid_cell(x, grid.origin, grid.scale, cells)
            # grid_cell clips to [0, cells): skip the gathers' own bounds handling
            def get(table):
                return table.at[c].get(mode="promise_in_bounds")

            return jnp.where(x > get(grid.threshold), get(above), get(below))

        out = lax.cond(grid.exact, one_comparison, binary_search, x)
    invalid = jnp.isnan(x) | jnp.isnan(qparams.gamma)
    return jnp.where(invalid, jnp.asarray(nan_value, values.dtype), out)


def quantize(x: jax.Array, qparams: APoTQParams) -> jax.Array:
    """APoT codes of ``x``.

    Args:
      x: floating array, any shape (computed in float32).
      qparams: from ``calculate_qparams``.

    Returns:
      int32 array shaped like ``x``: the combination number of the chosen
      level; ``NAN_CODE`` (-1) for NaN input or unobserved qparams.

    >>> import jax.numpy as jnp, apot_jax as aj
    >>> qp = aj.calculate_qparams(-1.0, 1.0, b=4, k=2)
    >>> codes = aj.quantize(jnp.array([0.3, -0.7, 2.0, jnp.nan]), qp)   # unsigned: -0.7 -> 0
    >>> codes.tolist(), aj.dequantize(codes, qp).tolist()
    ([1, 0, 5, -1], [0.3333333432674408, 0.0, 1.0, nan])
    """
    x = as_float32(x, "quantize")
    return _lookup(x, qparams, qparams.level_indices.astype(jnp.int32), NAN_CODE)


def dequantize(codes: jax.Array, qparams: APoTQParams) -> jax.Array:
    """Level values of APoT ``codes`` (int array, any shape) as float32.

    ``NAN_CODE`` and codes outside ``[0, N)`` give NaN, whatever the integer
    dtype: host codes (numpy arrays, scalars, lists) of a dtype wider than
    int32 (int64, uint32, uint64) are range-checked in numpy before they are
    handed to JAX, which without ``jax_enable_x64`` would truncate them to
    32 bits silently (``2**32 + 1`` would become the valid code 1). A JAX
    array (traced or not) already holds its values in a dtype JAX supports
    (int32 without x64; with x64 the comparisons run in int64), so it is
    compared as it is, without a narrowing cast.

    Raises:
      TypeError: the codes are not integers (float, bool, complex).
    """
    if not isinstance(codes, jax.Array):
        host = np.asarray(codes)
        if not np.issubdtype(host.dtype, np.integer):
            raise TypeError(f"dequantize needs integer codes, got dtype {host.dtype}")
        if host.dtype.itemsize > 4 or host.dtype == np.uint32:
            n_levels = len(qparams.level_indices)
            # a new array (the caller's is not written); out of range -> NAN_CODE
            host = np.where((host >= 0) & (host < n_levels), host, NAN_CODE).astype(np.int32)
        codes = host
    codes = jnp.asarray(codes)
    if not jnp.issubdtype(codes.dtype, jnp.integer):
        raise TypeError(f"dequantize needs integer codes, got dtype {codes.dtype}")
    table = level_table(qparams.b, qparams.k, qparams.signed)
    position_of_code = np.argsort(table.level_indices).astype(np.int32)
    by_code = qparams.quantization_levels[position_of_code]
    n = by_code.shape[0]
    valid = (codes >= 0) & (codes < n)
    out = by_code[jnp.clip(codes, 0, n - 1)]
    return jnp.where(valid, out, jnp.float32(jnp.nan))


def quant_dequant(x: jax.Array, qparams: APoTQParams) -> jax.Array:
    """Nearest APoT level of each element of ``x``; same shape and dtype as ``x``.

    Equals ``dequantize(quantize(x))`` (NaN stays NaN).
    """
    dtype = jnp.asarray(x).dtype
    x32 = as_float32(x, "quant_dequant")
    return _lookup(x32, qparams, qparams.quantization_levels, jnp.nan).astype(dtype)


__all__ = [
    "NAN_CODE",
    "SELECT_CHAIN_MAX_LEVELS",
    "dequantize",
    "quant_dequant",
    "quantize",
]
