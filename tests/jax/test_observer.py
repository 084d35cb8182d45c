"""apot_jax.observer: running statistics and ``calculate_qparams`` (the
worked example of the numerics contract, NaN policy, zero signs, bad
configurations, ``vmap`` over statistics)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import apot_jax as aj
from tests.helpers import bits


def test_worked_example():
    qp = aj.calculate_qparams(-1.0, 1.0, b=4, k=2)
    expected = np.array(
        [0, 1 / 48, 1 / 24, 1 / 16, 1 / 12, 1 / 8, 1 / 6, 3 / 16, 1 / 4, 1 / 3, 3 / 8, 1 / 2, 2 / 3, 11 / 16, 3 / 4, 1],
        dtype=np.float32,
    )
    assert float(qp.gamma) == np.float32(2 / 3)
    np.testing.assert_array_equal(bits(qp.quantization_levels), bits(expected))
    np.testing.assert_array_equal(
        np.asarray(qp.level_indices), [0, 3, 12, 15, 2, 14, 8, 11, 10, 1, 13, 9, 4, 7, 6, 5]
    )


def test_unobserved_qparams_give_nan_not_numbers():
    state = aj.init_observer_state()
    qp = aj.calculate_qparams(state.min_val, state.max_val, b=4, k=2)
    assert np.isnan(qp.gamma)
    assert np.isnan(aj.quant_dequant(jnp.ones(3), qp)).all()
    assert (np.asarray(aj.quantize(jnp.ones(3), qp)) == aj.NAN_CODE).all()


def test_observer_ignores_non_finite_and_empty():
    s = aj.init_observer_state()
    s = aj.observe(s, jnp.array([1.0, -2.0, jnp.nan, jnp.inf, -jnp.inf, 1e-45]))
    assert float(s.min_val) == -2.0 and float(s.max_val) == 1.0
    s2 = aj.observe(s, jnp.zeros((0,)))
    assert float(s2.min_val) == -2.0 and float(s2.max_val) == 1.0
    s3 = aj.observe(s2, jnp.array([3.0], dtype=jnp.bfloat16))
    assert s3.max_val.dtype == jnp.float32 and float(s3.max_val) == 3.0


def test_vmap_over_qparams():
    mx = jnp.array([0.5, 1.0, 3.0])
    x = jnp.linspace(-3, 3, 101)
    f = jax.vmap(lambda m: aj.quant_dequant(x, aj.calculate_qparams(-m, m, b=8, k=2)))
    out = f(mx)
    for i, m in enumerate([0.5, 1.0, 3.0]):
        np.testing.assert_array_equal(bits(out[i]), bits(aj.quant_dequant(x, aj.calculate_qparams(-m, m, b=8, k=2))))


@pytest.mark.parametrize(
    "b,k,message",
    [(4, 3, "multiple"), (4, 0, ">= 1"), (0, 1, ">= 1"), (4.0, 2, "integer"), (32, 1, "limit"), (8, 8, None)],
)
def test_invalid_configurations(b, k, message):
    if message is None:
        aj.calculate_qparams(-1.0, 1.0, b=b, k=k)
        return
    with pytest.raises(ValueError, match=message):
        aj.calculate_qparams(-1.0, 1.0, b=b, k=k)


@pytest.mark.parametrize("mn,mx", [(0.0, 0.0), (-0.0, -0.0), (0.0, 1e-40), (-1e-39, 0.0)])
def test_alpha_of_zero_statistics_is_positive_zero(mn, mx):
    qp = aj.calculate_qparams(jnp.float32(mn), jnp.float32(mx), b=4, k=2)
    assert bits(qp.alpha) == bits(np.float32(0.0))
    assert (bits(qp.quantization_levels) == 0).all()


def test_observer_statistics_carry_no_sign_of_zero():
    s = aj.observe(aj.init_observer_state(), jnp.array([0.0, -0.0, 1.0, -1e-40], jnp.float32))
    assert bits(s.min_val) == bits(np.float32(0.0))
    s = aj.observe(aj.init_observer_state(), jnp.array([-0.0, -3.0], jnp.float32))
    assert bits(s.max_val) == bits(np.float32(0.0))
