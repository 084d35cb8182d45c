"""APoT quantize / dequantize / quant_dequant in JAX.

Mirrors ``apot_torch/quantizer.py``. The rounding rule is the one of
``docs/numerics.md`` section 5, bit for bit: see ``apot_jax/levels.py`` for
how it is turned into one comparison per element.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from apot_common.tables import level_table
from apot_jax._float32 import as_float32
from apot_jax._lookup import SELECT_CHAIN_MAX_LEVELS, lookup  # SELECT_CHAIN_MAX_LEVELS: re-exported, in __all__
from apot_jax.observer import APoTQParams

#: Code returned by ``quantize`` for NaN input (and for unobserved qparams).
NAN_CODE = -1


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
    return lookup(x, qparams, qparams.level_indices.astype(jnp.int32), NAN_CODE)


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
    return lookup(x32, qparams, qparams.quantization_levels, jnp.nan).astype(dtype)


__all__ = [
    "NAN_CODE",
    "SELECT_CHAIN_MAX_LEVELS",
    "dequantize",
    "quant_dequant",
    "quantize",
]
