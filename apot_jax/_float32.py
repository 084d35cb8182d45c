"""Bit-level float32 helpers shared by the JAX modules: the bit pattern of a
float32 array and back, exact scaling by a power of two, and the float32
input check. Internal, not public API (mirrors ``apot_torch/_float32.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def bits(x: jax.Array) -> jax.Array:
    return lax.bitcast_convert_type(x, jnp.int32)


def from_bits(bits: jax.Array) -> jax.Array:
    return lax.bitcast_convert_type(bits, jnp.float32)


def scale_by_power_of_two(x: jax.Array, e: jax.Array) -> jax.Array:
    """``x * 2**e`` for normal ``x`` and ``e <= 1``, exact; zero where the result
    would be subnormal, +-inf where it overflows. Done on the exponent bits so
    no backend rounds."""
    x_bits = bits(x)
    biased = ((x_bits >> 23) & 0xFF) + e
    scaled = from_bits(x_bits + (e << 23))
    keep = (biased >= 1) & (x != 0)
    scaled = jnp.where(keep, scaled, x * 0)
    scaled = jnp.where(biased >= 255, x * jnp.float32(jnp.inf), scaled)
    return jnp.where(jnp.isfinite(x), scaled, x)


def nearest_candidate(candidates: list[jax.Array], residuals: list[jax.Array]) -> jax.Array:
    """The candidate whose residual is smallest in magnitude, the first on ties
    (``argmin``'s rule), elementwise over same-shaped arrays (for example the
    rows of one stacked array).

    A chain of compare-and-selects rather than ``stack``/``argmin``/gather: it
    fuses with its operands into one kernel, where the reduction and the
    gather were kernels of their own (each one more for XLA to compile).
    """
    best, best_residual = candidates[0], jnp.abs(residuals[0])
    for candidate, residual in zip(candidates[1:], residuals[1:]):
        residual = jnp.abs(residual)
        closer = residual < best_residual
        best = jnp.where(closer, candidate, best)
        best_residual = jnp.where(closer, residual, best_residual)
    return best


def as_float32(x: jax.Array, what: str) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{what} needs a floating-point input, got dtype {x.dtype}")
    return x.astype(jnp.float32)


__all__ = [
    "as_float32",
    "bits",
    "from_bits",
    "nearest_candidate",
    "scale_by_power_of_two",
]
