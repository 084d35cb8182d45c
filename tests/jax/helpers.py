"""Inputs and expected values shared by the apot_jax tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tests.reference import reference_qparams, reference_quantize


def ref_fake_quant(x, min_val, max_val, b, k, signed=False) -> np.ndarray:
    """Contract fake-quant forward of ``x`` with the given statistics."""
    alpha, _, levels, indices = reference_qparams(float(min_val), float(max_val), b, k, signed)
    _, values = reference_quantize(np.asarray(x, np.float32), alpha, levels, indices)
    return values.reshape(np.shape(x))


def sample(seed: int, shape=(4, 33), scale=1.0) -> jax.Array:
    """float32 normal sample of ``shape`` times ``scale``, from numpy's ``seed``."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


__all__ = ["ref_fake_quant", "sample"]
