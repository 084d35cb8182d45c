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


def as_float32(x: jax.Array, what: str) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{what} needs a floating-point input, got dtype {x.dtype}")
    return x.astype(jnp.float32)


__all__ = [
    "as_float32",
    "bits",
    "from_bits",
    "scale_by_power_of_two",
]
