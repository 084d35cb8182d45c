"""apot_jax.export: exported Dense and Conv kernels (integer codes plus
alpha/gamma) give the fake-quant kernel and the fake-quant layer's outputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apot_jax import export, paper
from apot_jax.layers import APoTConv
from tests.helpers import bits


@pytest.mark.parametrize("b, k, per_channel", [(3, 2, False), (2, 1, True), (5, 2, True)])
def test_export_gives_the_fake_quant_kernel_and_outputs(b, k, per_channel):
    rng = np.random.default_rng(b)
    kernel = jnp.asarray(rng.normal(size=(20, 6)).astype(np.float32) * 0.1)
    alpha = jnp.asarray(rng.uniform(0.8, 2.5, 6 if per_channel else ()).astype(np.float32))
    bias = jnp.asarray(rng.normal(size=6).astype(np.float32))
    axis = -1 if per_channel else None
    fq = jax.jit(lambda w, a: paper.paper_weight_quant(w, a, b=b, k=k, channel_axis=axis))(kernel, alpha)
    exported = export.export_kernel(kernel, alpha, b=b, k=k, per_channel=per_channel, bias=bias)
    assert exported.codes.dtype == np.int8 and exported.codes.shape == (20, 6)
    assert np.abs(exported.codes).max() < 2 ** (b - 1)
    assert exported.code_bytes() == -(-120 * b // 8)
    assert np.array_equal(bits(export.dequantize_kernel(exported)), bits(fq))  # bitwise, jit or not
    x = jnp.asarray(rng.normal(size=(3, 20)).astype(np.float32))
    assert np.array_equal(bits(export.dense_from_codes(x, exported)), bits(jnp.matmul(x, fq) + bias))
    # shift-add: exact integer product, and the same layer output to float32 rounding
    x_int = rng.integers(-50, 50, size=(3, 20))
    integer, d = export.integer_weights(exported)
    assert np.array_equal(export.shift_add_matmul(x_int, exported), x_int @ integer)
    gamma = exported.gamma if per_channel else exported.gamma[None]
    y_shift = export.shift_add_matmul(x_int, exported) * (gamma.astype(np.float64) * 2.0**-d) * exported.scale
    y_float = np.asarray(jnp.matmul(jnp.asarray(x_int, jnp.float32), fq), np.float64)
    np.testing.assert_allclose(y_shift, y_float, rtol=1e-5, atol=1e-5 * np.abs(y_float).max())
    with pytest.raises(ValueError, match="NaN"):
        export.export_kernel(kernel.at[0, 0].set(jnp.nan), alpha, b=b, k=k, normalize=False, per_channel=per_channel)


@pytest.mark.parametrize("per_channel", [False, True])
def test_conv_export_gives_the_fake_quant_layer_output(per_channel):
    rng = np.random.default_rng(7)
    image = jnp.asarray(rng.normal(size=(2, 6, 6, 3)).astype(np.float32))
    conv = APoTConv(4, (3, 3), strides=2, b=3, weight_quant="apot-paper", input_quant=None, per_channel=per_channel)
    variables = conv.init(jax.random.key(3), image)
    params = variables["params"]
    alpha = params["weight_quant"]["alpha"] * 0.7  # not the initial value
    params = {**params, "weight_quant": {"alpha": alpha}, "bias": jnp.asarray(rng.normal(size=4).astype(np.float32))}
    expected = conv.apply({"params": params}, image)
    exported = export.export_kernel(
        params["kernel"], alpha, b=3, k=2, per_channel=per_channel, bias=params["bias"]
    )
    assert exported.codes.shape == (3, 3, 3, 4) and exported.codes.dtype == np.int8
    assert exported.scale.shape == ((1, 1, 1, 4) if per_channel else (1, 1, 1, 1))
    assert exported.code_bytes() == -(-3 * 3 * 3 * 4 * 3 // 8)
    kernel = paper.paper_weight_quant(params["kernel"], alpha, b=3, k=2, channel_axis=-1 if per_channel else None)
    assert np.array_equal(bits(export.dequantize_kernel(exported)), bits(kernel))
    assert np.array_equal(bits(export.conv_from_codes(image, exported, strides=2)), bits(expected))
    with pytest.raises(ValueError, match="2-D"):
        export.dense_from_codes(image, exported)
    with pytest.raises(ValueError, match="2-D"):
        export.shift_add_matmul(np.ones((2, 3), np.int64), exported)
