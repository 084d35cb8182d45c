"""Fake quantization with a clipped straight-through gradient (``jax.custom_vjp``).

Mirrors ``apot_torch/fake_quantize_function.py``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from apot_common.tables import FLOAT32_TINY
from apot_jax._float32 import as_float32
from apot_jax.observer import APoTQParams
from apot_jax.quantizer import quant_dequant


def ste_mask(x: jax.Array, alpha: jax.Array) -> jax.Array:
    """``-alpha <= x <= alpha`` with explicit comparisons; subnormal ``x`` counts
    as zero, NaN and +-inf get False (also for an infinite ``alpha``)."""
    magnitude = jnp.abs(x.astype(jnp.float32))
    magnitude = jnp.where(magnitude < jnp.float32(FLOAT32_TINY), jnp.float32(0), magnitude)
    return magnitude <= jnp.minimum(alpha, jnp.finfo(jnp.float32).max)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _fake_quantize(x, alpha, gamma, levels, level_indices, config):
    b, k, signed = config
    return quant_dequant(x, APoTQParams(alpha, gamma, levels, level_indices, b, k, signed))


def _forward(x, alpha, gamma, levels, level_indices, config):
    y = _fake_quantize(x, alpha, gamma, levels, level_indices, config)
    return y, (ste_mask(x, alpha), alpha, gamma, levels, level_indices)


def _backward(config, residuals, dy):
    mask, alpha, gamma, levels, level_indices = residuals
    dx = jnp.where(mask, dy, jnp.zeros_like(dy))
    zero_int = np.zeros(level_indices.shape, dtype=jax.dtypes.float0)
    return dx, jnp.zeros_like(alpha), jnp.zeros_like(gamma), jnp.zeros_like(levels), zero_int


_fake_quantize.defvjp(_forward, _backward)
# one program per shape and configuration also when called eagerly (see
# apot_jax._lookup.lookup); nested in a traced function it is inlined
_fake_quantize_jit = jax.jit(_fake_quantize, static_argnums=(5,))


def fake_quantize(x: jax.Array, qparams: APoTQParams) -> jax.Array:
    """``quant_dequant(x)`` forward; gradient ``dy * (-alpha <= x <= alpha)``.

    Args:
      x: floating array (f32, bf16, f16), any shape.
      qparams: from ``calculate_qparams``; it receives zero cotangents.

    Returns:
      Array shaped and typed like ``x``.

    >>> import jax, jax.numpy as jnp, apot_jax as aj
    >>> qp = aj.calculate_qparams(-1.0, 1.0, b=4, k=2)
    >>> x = jnp.array([0.3, -0.7, 2.0])
    >>> aj.fake_quantize(x, qp).tolist(), jax.grad(lambda v: aj.fake_quantize(v, qp).sum())(x).tolist()
    ([0.3333333432674408, 0.0, 1.0], [1.0, 1.0, 0.0])
    """
    as_float32(x, "fake_quantize")  # dtype check at trace time
    return _fake_quantize_jit(
        x,
        qparams.alpha,
        qparams.gamma,
        qparams.quantization_levels,
        qparams.level_indices,
        (qparams.b, qparams.k, qparams.signed),
    )


__all__ = [
    "fake_quantize",
    "ste_mask",
]
