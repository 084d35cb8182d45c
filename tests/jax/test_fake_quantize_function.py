"""apot_jax.fake_quantize_function: fake quant keeps the input dtype and has
the straight-through gradient (``jax.custom_vjp``) under jit, vmap and grad."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import apot_jax as aj
from tests.helpers import bits


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_fake_quantize_dtype_and_gradient(dtype):
    qp = aj.calculate_qparams(-1.0, 1.0, b=4, k=2)
    x = jnp.array([-2.0, -1.0, -0.5, 0.0, 0.3, 1.0, 1.5, jnp.nan, jnp.inf], dtype=dtype)
    y = aj.fake_quantize(x, qp)
    assert y.dtype == dtype and y.shape == x.shape
    expected = aj.quant_dequant(x.astype(jnp.float32), qp).astype(dtype)
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(expected, np.float32))
    g = jax.grad(lambda v: jnp.nansum(aj.fake_quantize(v, qp).astype(jnp.float32) * 3.0))(x)
    assert g.dtype == dtype
    np.testing.assert_array_equal(np.asarray(g, np.float32), [0, 3, 3, 3, 3, 3, 0, 0, 0])


def test_fake_quantize_no_gradient_to_qparams():
    def loss(mx, x):
        qp = aj.calculate_qparams(-mx, mx, b=4, k=2)
        return aj.fake_quantize(x, qp).sum()

    assert float(jax.grad(loss)(1.0, jnp.array([0.2, 0.7]))) == 0.0


def test_jit_vmap_grad_agree():
    qp = aj.calculate_qparams(-1.0, 1.0, b=8, k=2)
    x = jax.random.normal(jax.random.key(0), (4, 300))
    eager = aj.fake_quantize(x, qp)
    jitted = jax.jit(aj.fake_quantize)(x, qp)
    vmapped = jax.vmap(aj.fake_quantize, in_axes=(0, None))(x, qp)
    np.testing.assert_array_equal(bits(eager), bits(jitted))
    np.testing.assert_array_equal(bits(eager), bits(vmapped))
    g = jax.vmap(jax.grad(lambda v: aj.fake_quantize(v, qp).sum()))(x)
    np.testing.assert_array_equal(np.asarray(g), np.asarray((jnp.abs(x) <= 1.0).astype(jnp.float32)))


def test_package_function_is_not_shadowed_by_the_flax_module():
    import apot_jax.fake_quantize_module  # noqa: F401  (importing it must not rebind the name)

    assert callable(aj.fake_quantize) and aj.fake_quantize.__module__ == "apot_jax.fake_quantize_function"


def test_subnormal_inputs_count_as_zero_in_the_gradient_mask():
    qp = aj.calculate_qparams(jnp.float32(0.0), jnp.float32(0.0), b=4, k=2)
    x = jnp.array([1e-45, -1e-40, 0.0, 1e-30], jnp.float32)
    g = jax.grad(lambda v: aj.fake_quantize(v, qp).sum())(x)
    np.testing.assert_array_equal(np.asarray(g), [1.0, 1.0, 1.0, 0.0])
