"""apot_jax.layers: APoTDense and APoTConv (linen and NNX) quantize their kernel
and input as their configs (or scheme strings) say; NNX equals linen bitwise."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from apot_common.config import (
    APoTConfig,
    LearnableAPoTConfig,
    SignMagnitudeConfig,
    UniformConfig,
)
from apot_jax import paper
from apot_jax.fake_quantize_module import (
    LearnableAPoTFakeQuantize,
    NNXLearnableAPoTFakeQuantize,
    UniformFakeQuantize,
)
from apot_jax.layers import APoTConv, APoTDense, NNXAPoTConv, NNXAPoTDense, input_config, weight_config
from tests.helpers import bits
from tests.jax.helpers import ref_fake_quant, sample

CONFIGS = [
    APoTConfig(b=4, k=2, signed=True),
    SignMagnitudeConfig(b=3, level_set="paper"),
    UniformConfig(b=4, signed=True),
    LearnableAPoTConfig(b=3, per_channel=True, level_set="paper"),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_a_config_layer_equals_the_string_layer(cfg):
    """A layer given the config computes what the scheme-string layer computes
    (linen and NNX), so the config is the same quantizer, not a new one."""
    strings = {
        APoTConfig: dict(weight_quant="apot", signed_weights=True, b=4, k=2),
        SignMagnitudeConfig: dict(weight_quant="sign-magnitude", b=3, level_set="paper"),
        UniformConfig: dict(weight_quant="uniform", signed_weights=True, b=4),
        LearnableAPoTConfig: dict(weight_quant="apot-paper", b=3, per_channel=True, level_set="paper"),
    }[type(cfg)]
    x = jax.random.normal(jax.random.key(0), (8, 6))
    by_cfg = APoTDense(5, weight_quant=cfg, input_quant=None)
    by_str = APoTDense(5, input_quant=None, **strings)
    variables = by_str.init(jax.random.key(1), x)
    y_str, _ = by_str.apply(variables, x, mutable=["quant_stats"])
    y_cfg, _ = by_cfg.apply(variables, x, mutable=["quant_stats"])
    np.testing.assert_array_equal(np.asarray(y_cfg), np.asarray(y_str))
    assert np.isfinite(np.asarray(y_cfg)).all()

    n_cfg = NNXAPoTDense(6, 5, weight_quant=cfg, input_quant=None, rngs=nnx.Rngs(1))
    n_str = NNXAPoTDense(6, 5, input_quant=None, rngs=nnx.Rngs(1), **strings)
    np.testing.assert_array_equal(np.asarray(n_cfg(x)), np.asarray(n_str(x)))


def test_the_paper_level_set_reaches_the_layer():
    """level_set='paper' changes the 4-bit weights' magnitudes (sign +
    build_power_value(3), not apot's (3, 1) table): the outputs differ."""
    x = jnp.linspace(-1.0, 1.0, 48, dtype=jnp.float32).reshape(8, 6)
    apot = APoTDense(5, b=4, weight_quant="sign-magnitude", input_quant=None)
    paper = APoTDense(5, b=4, weight_quant="sign-magnitude", input_quant=None, level_set="paper")
    variables = apot.init(jax.random.key(0), x)
    y_apot, _ = apot.apply(variables, x, mutable=["quant_stats"])
    y_paper, _ = paper.apply(variables, x, mutable=["quant_stats"])
    assert not np.array_equal(np.asarray(y_apot), np.asarray(y_paper))


def test_layer_refuses_a_bad_scheme_string():
    with pytest.raises(ValueError, match="weight_quant must be a quantizer config or one of"):
        APoTDense(4, weight_quant="apot4")
    with pytest.raises(ValueError, match="input_quant"):
        NNXAPoTDense(3, 4, input_quant="sign-magnitude", rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "weight_quant,input_quant",
    [("apot", "uniform"), ("apot", "apot"), ("uniform", "uniform"), ("apot", None), (None, None)],
)
def test_dense_quantizes_kernel_and_input(weight_quant, input_quant):
    layer = APoTDense(7, b=4, k=2, weight_quant=weight_quant, input_quant=input_quant, signed_weights=True)
    x = jnp.abs(sample(16, (5, 9)))
    variables = layer.init(jax.random.key(1), x)
    variables = {**variables, "params": {**variables["params"], "bias": jnp.arange(7, dtype=jnp.float32) / 10}}
    y, upd = layer.apply(variables, x, mutable=["quant_stats"])
    kernel = np.asarray(variables["params"]["kernel"])
    if weight_quant == "apot":
        kq = ref_fake_quant(kernel, kernel.min(), kernel.max(), 4, 2, True)
    elif weight_quant == "uniform":
        kq, _ = UniformFakeQuantize(4, True).apply(
            {"quant_stats": variables["quant_stats"]["weight_quant"]}, kernel, mutable=True
        )
    else:
        kq = kernel
    if input_quant == "apot":
        xq = ref_fake_quant(x, x.min(), x.max(), 4, 2, False)
    elif input_quant == "uniform":
        xq, _ = UniformFakeQuantize(4, False).apply(
            {"quant_stats": variables["quant_stats"]["input_quant"]}, x, mutable=True
        )
    else:
        xq = np.asarray(x)
    expected = np.asarray(xq, np.float64) @ np.asarray(kq, np.float64) + np.arange(7) / 10
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)
    if weight_quant is None and input_quant is None:
        assert "quant_stats" not in variables
    else:
        n_levels = len(np.unique(np.asarray(kq)))
        assert n_levels <= (39 if weight_quant == "apot" else 15)  # distinct levels of the table


def test_nnx_dense_and_conv_match_linen_bitwise():
    x = jnp.abs(sample(17, (3, 6, 6, 2)))
    linen_conv = APoTConv(4, (3, 3), strides=2, weight_quant="apot", input_quant="uniform", signed_weights=True)
    variables = linen_conv.init(jax.random.key(2), x)
    nnx_conv = NNXAPoTConv(
        2, 4, (3, 3), strides=2, weight_quant="apot", input_quant="uniform", signed_weights=True, rngs=nnx.Rngs(0)
    )
    nnx_conv.kernel[...] = variables["params"]["kernel"]
    nnx_conv.bias[...] = jnp.linspace(-1, 1, 4, dtype=jnp.float32)
    variables = {**variables, "params": {**variables["params"], "bias": nnx_conv.bias[...]}}
    y_linen, _ = linen_conv.apply(variables, x, mutable=["quant_stats"])
    y_nnx = nnx_conv(x)
    assert y_linen.shape == (3, 3, 3, 4)
    np.testing.assert_array_equal(bits(y_nnx), bits(y_linen))
    # Against a float convolution of the reference-quantized kernel.
    kernel = np.asarray(variables["params"]["kernel"])
    kq = ref_fake_quant(kernel, kernel.min(), kernel.max(), 4, 2, True)
    xq = np.asarray(
        UniformFakeQuantize(4, False).apply(
            {"quant_stats": variables["quant_stats"]["input_quant"]}, x, mutable=True
        )[0]
    )
    ref = lax.conv_general_dilated(
        jnp.asarray(xq, jnp.float32), jnp.asarray(kq), (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=lax.Precision.HIGHEST,
    ) + nnx_conv.bias[...]
    np.testing.assert_allclose(np.asarray(y_linen), np.asarray(ref), rtol=1e-5, atol=1e-5)

    x2 = jnp.abs(sample(18, (4, 5)))
    linen_dense = APoTDense(3, b=2, k=2, signed_weights=True)
    dv = linen_dense.init(jax.random.key(3), x2)
    nnx_dense = NNXAPoTDense(5, 3, b=2, k=2, signed_weights=True, rngs=nnx.Rngs(1))
    nnx_dense.kernel[...] = dv["params"]["kernel"]
    for _ in range(2):  # twice: the running statistics must agree too
        yl, upd = linen_dense.apply(dv, x2, mutable=["quant_stats"])
        dv = {**dv, **upd}
        np.testing.assert_array_equal(bits(nnx_dense(x2)), bits(yl))
        x2 = x2 * 1.5
    assert bits(nnx_dense.input_quant.max_val[...]) == bits(dv["quant_stats"]["input_quant"]["max_val"])


def test_dense_layers_with_the_paper_scheme():
    x = jnp.asarray(np.random.default_rng(6).uniform(0, 1, (4, 10)).astype(np.float32))
    layer = APoTDense(7, b=2, weight_quant="apot-paper", input_quant="apot", k=2, per_channel=True)
    variables = layer.init(jax.random.key(1), x)
    assert variables["params"]["weight_quant"]["alpha"].shape == (7,)
    twin = NNXAPoTDense(10, 7, b=2, k=2, weight_quant="apot-paper", per_channel=True, rngs=nnx.Rngs(0))
    twin.kernel[...] = variables["params"]["kernel"]
    assert isinstance(twin.weight_quant, NNXLearnableAPoTFakeQuantize)
    # ternary weights: every kernel entry is one of -s*alpha, 0, s*alpha per column
    kernel = LearnableAPoTFakeQuantize(2, 1, channel_axis=-1, alpha_init=3.0).apply(
        {"params": variables["params"]["weight_quant"]}, variables["params"]["kernel"]
    )
    assert all(np.unique(np.asarray(kernel)[:, j]).size <= 3 for j in range(7))
    conv = APoTConv(4, (3, 3), b=3, weight_quant="apot-paper", input_quant=None, per_channel=True)
    image = jnp.ones((1, 5, 5, 2))
    conv_vars = conv.init(jax.random.key(2), image)
    assert conv_vars["params"]["weight_quant"]["alpha"].shape == (4,)  # one per output channel
    conv_twin = NNXAPoTConv(2, 4, (3, 3), b=3, weight_quant="apot-paper", input_quant=None, per_channel=True,
                            rngs=nnx.Rngs(0))  # fmt: skip
    conv_twin.kernel[...] = conv_vars["params"]["kernel"]
    assert np.array_equal(bits(conv_twin(image)), bits(conv.apply(conv_vars, image)))
    with pytest.raises(ValueError, match="weight_quant"):
        APoTDense(7, weight_quant="apot-sm")
    with pytest.raises(ValueError, match="input_quant"):
        APoTDense(7, input_quant="apot-sm")
    with pytest.raises(ValueError, match="divide"):
        APoTDense(7, b=3, weight_quant="apot-paper", weight_k=3)


def test_layers_learn_the_activation_alpha():
    x = jnp.asarray(np.random.default_rng(9).uniform(0, 2, (8, 10)).astype(np.float32))
    layer = APoTDense(5, b=4, k=2, weight_quant="apot-paper", input_quant="apot-paper", input_alpha_init=1.5)
    variables = layer.init(jax.random.key(0), x)
    assert set(variables) == {"params"}  # learnt alphas only, no observer state
    assert float(variables["params"]["input_quant"]["alpha"]) == 1.5
    twin = NNXAPoTDense(10, 5, b=4, k=2, weight_quant="apot-paper", input_quant="apot-paper", input_alpha_init=1.5,
                        rngs=nnx.Rngs(0))  # fmt: skip
    twin.kernel[...] = variables["params"]["kernel"]
    assert np.array_equal(bits(layer.apply(variables, x)), bits(twin(x)))
    grads = jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, x) ** 2))(variables["params"])
    # x has entries above 1.5: the activation alpha gets a nonzero gradient
    assert float(grads["input_quant"]["alpha"]) != 0.0
    # the layer's input quant is the unsigned learnable fake quant itself
    quantized = paper.learnable_fake_quantize(x, jnp.float32(1.5), b=4, k=2, scheme="unsigned")
    kernel = paper.paper_weight_quant(
        variables["params"]["kernel"], variables["params"]["weight_quant"]["alpha"], b=4, k=1
    )
    expected = jnp.matmul(quantized, kernel) + variables["params"]["bias"]
    assert np.array_equal(bits(layer.apply(variables, x)), bits(expected))
    with pytest.raises(ValueError, match="multiple"):
        APoTDense(5, b=3, k=2, input_quant="apot-paper")


def test_scheme_strings_map_to_configs():
    assert weight_config("apot-paper", b=3, per_channel=True) == LearnableAPoTConfig(b=3, per_channel=True)
    assert weight_config("sign-magnitude", b=4, k=2) == SignMagnitudeConfig(b=4)  # k is the activations'
    assert input_config("apot", b=4, k=4, signed_inputs=True) == APoTConfig(b=4, k=4, signed=True)
    assert weight_config(None) is None and input_config(UniformConfig(b=4)) == UniformConfig(b=4)
