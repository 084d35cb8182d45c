"""apot_jax.quantizer: codes, dequantize and quant_dequant (NaN policy, dtype
checks, sharded equals single device). The every-(b, k) sweep against the
brute-force reference is ``parity_tests/test_core.py``, run on every backend."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import apot_jax as aj
from tests.helpers import bits


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


def test_non_floating_input_is_refused():
    qp = aj.calculate_qparams(-1.0, 1.0, b=4, k=2)
    for f in (aj.quantize, aj.quant_dequant, aj.fake_quantize):
        with pytest.raises(TypeError, match="floating"):
            f(jnp.arange(4), qp)
    with pytest.raises(TypeError, match="floating"):
        aj.observe(aj.init_observer_state(), jnp.arange(4))
    with pytest.raises(TypeError, match="integer"):
        aj.dequantize(jnp.ones(3), qp)


def test_complex_inputs_are_refused_in_jax():
    import apot_jax as aj

    qp = aj.calculate_qparams(jnp.float32(-1), jnp.float32(1), b=4, k=2)
    z = jnp.asarray([0.5 + 1j], jnp.complex64)
    for fn in (lambda: aj.quantize(z, qp), lambda: aj.quant_dequant(z, qp), lambda: aj.fake_quantize(z, qp),
               lambda: aj.observe(aj.init_observer_state(), z)):
        with pytest.raises(TypeError):
            fn()
