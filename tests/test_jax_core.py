"""apot_jax core: worked examples, NaN policy, transformations, bad input.

The sweep of every (b, k, signed) against the brute-force reference
(qparams, codes, quant_dequant, fake quant and gradient, seven statistics)
runs once per backend in ``parity_tests/test_core.py`` (jax-cpu included),
on the same adversarial inputs (``tests.reference.adversarial_inputs``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import apot_jax as aj
from apot_common.tables import level_table
from tests.reference import reference_qparams


def bits(a) -> np.ndarray:
    return np.asarray(a, np.float32).view(np.int32)


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


def test_gamma_correctly_rounded_on_many_alphas():
    """XLA's division is not IEEE; gamma must still be the exact quotient."""
    from fractions import Fraction

    from apot_jax.levels import gamma
    from tests.reference import round_rational_to_float32

    rng = np.random.default_rng(7)
    alphas = np.concatenate([
        rng.uniform(0, 10, 20000).astype(np.float32),
        np.exp(rng.uniform(-80, 80, 5000)).astype(np.float32),
        (np.arange(1, 2001, dtype=np.float32) * np.float32(3)),
    ])
    for n in (1, 2, 3, 4, 8):
        p_sum = 2 - 2.0 ** (1 - n)
        got = np.asarray(jax.jit(lambda a, p_sum=p_sum: gamma(a, p_sum))(alphas))
        pick = rng.choice(alphas.size, 3000, replace=False)
        exact = np.array(
            [round_rational_to_float32(Fraction(float(alphas[i])) / (2 - Fraction(2) ** (1 - n))) for i in pick],
            np.float32,
        )
        np.testing.assert_array_equal(bits(got[pick]), bits(exact), err_msg=f"n={n}")


def test_nan_policy_and_dequantize():
    qp = aj.calculate_qparams(-1.0, 2.0, b=4, k=2)
    x = jnp.array([jnp.nan, 0.3, jnp.inf, -jnp.inf])
    codes = aj.quantize(x, qp)
    assert int(codes[0]) == aj.NAN_CODE
    out = aj.quant_dequant(x, qp)
    assert np.isnan(out[0]) and float(out[2]) == float(qp.quantization_levels[-1])
    assert float(out[3]) == float(qp.quantization_levels[0])
    back = aj.dequantize(codes, qp)
    np.testing.assert_array_equal(bits(back[1:]), bits(out[1:]))
    assert np.isnan(back[0])
    assert np.isnan(aj.dequantize(jnp.array([16, -5]), qp)).all()


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


def test_vmap_over_qparams():
    mx = jnp.array([0.5, 1.0, 3.0])
    x = jnp.linspace(-3, 3, 101)
    f = jax.vmap(lambda m: aj.quant_dequant(x, aj.calculate_qparams(-m, m, b=8, k=2)))
    out = f(mx)
    for i, m in enumerate([0.5, 1.0, 3.0]):
        np.testing.assert_array_equal(bits(out[i]), bits(aj.quant_dequant(x, aj.calculate_qparams(-m, m, b=8, k=2))))


def test_sharded_equals_single_device():
    devices = jax.devices("cpu")
    if len(devices) < 8:
        pytest.skip("needs 8 host devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(devices[:8]), ("data",))
    x = jax.random.normal(jax.random.key(3), (64, 128))
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))

    @jax.jit
    def step(x):
        s = aj.observe(aj.init_observer_state(), x)
        qp = aj.calculate_qparams(s.min_val, s.max_val, b=8, k=2)
        y, vjp = jax.vjp(lambda v: aj.fake_quantize(v, qp), x)
        return s, aj.quantize(x, qp), y, vjp(jnp.ones_like(y))[0]

    single = step(x)
    sharded = step(xs)
    assert sharded[2].sharding.spec == P("data") or len(sharded[2].devices()) == 8
    for a, b_ in zip(jax.tree.leaves(single), jax.tree.leaves(sharded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b_))


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


def test_non_floating_input_is_refused():
    qp = aj.calculate_qparams(-1.0, 1.0, b=4, k=2)
    for f in (aj.quantize, aj.quant_dequant, aj.fake_quantize):
        with pytest.raises(TypeError, match="floating"):
            f(jnp.arange(4), qp)
    with pytest.raises(TypeError, match="floating"):
        aj.observe(aj.init_observer_state(), jnp.arange(4))
    with pytest.raises(TypeError, match="integer"):
        aj.dequantize(jnp.ones(3), qp)


def test_level_table_is_cached_and_read_only():
    assert level_table(8, 2) is level_table(8, 2)
    with pytest.raises(ValueError):
        level_table(8, 2).base_sum[0] = 1.0


def test_package_function_is_not_shadowed_by_the_flax_module():
    import apot_jax.fake_quantize_module  # noqa: F401  (importing it must not rebind the name)

    assert callable(aj.fake_quantize) and aj.fake_quantize.__module__ == "apot_jax.fake_quantize_function"


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


@pytest.mark.parametrize("b,k", [(4, 2), (6, 3), (8, 2), (8, 4)])
def test_signed_levels_near_float32_max_do_not_overflow(b, k):
    fmax = float(np.finfo(np.float32).max)
    _, _, ref_levels, _ = reference_qparams(0.0, fmax, b, k, True)
    assert np.isfinite(ref_levels).all()
    qp = aj.calculate_qparams(jnp.float32(0.0), jnp.float32(fmax), b=b, k=k, signed=True)
    np.testing.assert_array_equal(bits(qp.quantization_levels), bits(ref_levels))


def test_subnormal_inputs_count_as_zero_in_the_gradient_mask():
    qp = aj.calculate_qparams(jnp.float32(0.0), jnp.float32(0.0), b=4, k=2)
    x = jnp.array([1e-45, -1e-40, 0.0, 1e-30], jnp.float32)
    g = jax.grad(lambda v: aj.fake_quantize(v, qp).sum())(x)
    np.testing.assert_array_equal(np.asarray(g), [1.0, 1.0, 1.0, 0.0])
