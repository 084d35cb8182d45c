"""Flax fake-quant modules, quantized layers and torch state conversion.

Expected values come from ``tests/reference.py`` (exact rationals, full scan)
or from numpy, never from the modules under test.
"""

from __future__ import annotations

import importlib.util

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.core import FrozenDict
from jax import lax

from apot_jax.convert import TORCH_KEYS, flax_to_torch_state_dict, torch_state_dict_to_flax
from apot_jax.fake_quantize_module import (
    APoTFakeQuantize,
    NNXAPoTFakeQuantize,
    NNXUniformFakeQuantize,
    QuantStat,
    UniformFakeQuantize,
    set_flags,
)
from apot_jax.layers import APoTConv, APoTDense, NNXAPoTConv, NNXAPoTDense
from tests.reference import reference_qparams, reference_quantize


def ref_fake_quant(x, min_val, max_val, b, k, signed=False) -> np.ndarray:
    """Contract fake-quant forward of ``x`` with the given statistics."""
    alpha, _, levels, indices = reference_qparams(float(min_val), float(max_val), b, k, signed)
    _, values = reference_quantize(np.asarray(x, np.float32), alpha, levels, indices)
    return values.reshape(np.shape(x))


def bits(a) -> np.ndarray:
    """float32 bit patterns, so that comparisons are bitwise (NaN == NaN)."""
    return np.asarray(a, np.float32).view(np.int32)


def sample(seed: int, shape=(4, 33), scale=1.0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


# --------------------------------------------------------------------------
# linen APoTFakeQuantize


def test_linen_initial_state_and_init_does_not_observe():
    fq = APoTFakeQuantize(4, 2)
    variables = fq.init(jax.random.key(0), sample(0))
    stats = variables["quant_stats"]
    assert set(stats) == {"min_val", "max_val", "observer_enabled", "fake_quant_enabled"}
    assert stats["min_val"].dtype == jnp.float32 and stats["min_val"] == np.inf
    assert stats["max_val"].dtype == jnp.float32 and stats["max_val"] == -np.inf
    for flag in ("observer_enabled", "fake_quant_enabled"):
        assert stats[flag].dtype == jnp.int32 and stats[flag].shape == () and stats[flag] == 1
    assert "params" not in variables


@pytest.mark.parametrize("b,k,signed", [(4, 2, False), (4, 2, True), (3, 1, False), (2, 2, True)])
def test_linen_observes_and_matches_reference(b, k, signed):
    fq = APoTFakeQuantize(b, k, signed)
    x1 = np.asarray(sample(1)).copy()
    x1[0, :3] = [np.nan, np.inf, -np.inf]  # must not reach the statistics
    x2 = sample(2, scale=3.0)
    variables = fq.init(jax.random.key(0), x1)
    y1, upd = fq.apply(variables, x1, mutable=["quant_stats"])
    finite = x1[np.isfinite(x1)]
    assert upd["quant_stats"]["min_val"] == np.float32(finite.min())
    assert upd["quant_stats"]["max_val"] == np.float32(finite.max())
    np.testing.assert_array_equal(bits(y1), bits(ref_fake_quant(x1, finite.min(), finite.max(), b, k, signed)))
    assert np.isnan(y1[0, 0]) and y1[0, 1] == np.nanmax(y1) and y1[0, 2] == np.nanmin(y1)
    # Running statistics: the second call folds x2 into the first call's range.
    y2, upd2 = fq.apply({**variables, **upd}, x2, mutable=["quant_stats"])
    lo, hi = min(finite.min(), float(x2.min())), max(finite.max(), float(x2.max()))
    assert upd2["quant_stats"]["min_val"] == np.float32(lo) and upd2["quant_stats"]["max_val"] == np.float32(hi)
    np.testing.assert_array_equal(bits(y2), bits(ref_fake_quant(x2, lo, hi, b, k, signed)))


def test_linen_immutable_collection_uses_but_does_not_store_statistics():
    fq = APoTFakeQuantize(4, 2)
    x = sample(3)
    variables = fq.init(jax.random.key(0), x)
    y = fq.apply(variables, x)  # quant_stats immutable: no error, nothing stored
    np.testing.assert_array_equal(bits(y), bits(ref_fake_quant(x, x.min(), x.max(), 4, 2)))
    y_again, upd = fq.apply(variables, x, mutable=["quant_stats"])
    np.testing.assert_array_equal(bits(y_again), bits(y))
    assert variables["quant_stats"]["min_val"] == np.inf  # the input tree is untouched
    assert upd["quant_stats"]["min_val"] == x.min()


def test_linen_observer_disabled_freezes_statistics():
    fq = APoTFakeQuantize(4, 2)
    calib = jnp.linspace(-0.5, 1.0, 50, dtype=jnp.float32)
    variables = fq.init(jax.random.key(0), calib)
    _, upd = fq.apply(variables, calib, mutable=["quant_stats"])
    frozen = set_flags({**variables, **upd}, observer=False)
    x = jnp.asarray([-3.0, 0.3, 0.5, 2.5, 7.0], jnp.float32)
    y, upd2 = fq.apply(frozen, x, mutable=["quant_stats"])
    assert upd2["quant_stats"]["min_val"] == np.float32(-0.5) and upd2["quant_stats"]["max_val"] == np.float32(1.0)
    np.testing.assert_array_equal(bits(y), bits(ref_fake_quant(x, -0.5, 1.0, 4, 2)))
    assert y[3] == 1.0 and y[4] == 1.0  # clipped to alpha = 1, the calibrated range
    # Clipped straight-through gradient: 0 outside [-alpha, alpha] = [-1, 1].
    grad = jax.grad(lambda v: fq.apply(frozen, v).sum())(x)
    np.testing.assert_array_equal(np.asarray(grad), [0.0, 1.0, 1.0, 0.0, 0.0])


def test_linen_fake_quant_disabled_is_identity_but_still_observes():
    fq = APoTFakeQuantize(4, 2)
    x = sample(4)
    variables = set_flags(fq.init(jax.random.key(0), x), fake_quant=False)
    y, upd = fq.apply(variables, x, mutable=["quant_stats"])
    np.testing.assert_array_equal(bits(y), bits(x))
    assert upd["quant_stats"]["max_val"] == x.max()
    grad = jax.grad(lambda v: fq.apply(variables, v).sum())(x * 100)
    np.testing.assert_array_equal(np.asarray(grad), np.ones(x.shape, np.float32))


def test_linen_before_any_observation_output_is_nan():
    """Documented behaviour: observer disabled before anything was observed
    -> qparams NaN -> fake-quant output NaN everywhere (torch raises)."""
    fq = APoTFakeQuantize(4, 2)
    x = sample(5)
    variables = set_flags(fq.init(jax.random.key(0), x), observer=False)
    y, upd = fq.apply(variables, x, mutable=["quant_stats"])
    assert np.isnan(np.asarray(y)).all()
    assert upd["quant_stats"]["min_val"] == np.inf  # still unobserved
    grad = jax.grad(lambda v: fq.apply(variables, v).sum())(x)
    np.testing.assert_array_equal(np.asarray(grad), np.zeros(x.shape, np.float32))  # mask is empty


def test_flags_can_be_traced_under_jit():
    fq = APoTFakeQuantize(4, 2)
    x = sample(6)
    variables = fq.init(jax.random.key(0), x)

    @jax.jit
    def run(variables, observer, fake_quant):
        variables = dict(variables)
        stats = dict(variables["quant_stats"], observer_enabled=observer, fake_quant_enabled=fake_quant)
        return fq.apply({"quant_stats": stats}, x, mutable=["quant_stats"])

    y_on, upd = run(variables, jnp.int32(1), jnp.int32(1))
    y_off, upd_off = run(variables, jnp.int32(0), jnp.int32(0))
    np.testing.assert_array_equal(bits(y_on), bits(ref_fake_quant(x, x.min(), x.max(), 4, 2)))
    np.testing.assert_array_equal(bits(y_off), bits(x))
    assert upd["quant_stats"]["min_val"] == x.min() and upd_off["quant_stats"]["min_val"] == np.inf


def test_invalid_configuration_is_refused_at_construction():
    with pytest.raises(ValueError, match="multiple"):
        APoTFakeQuantize(5, 2)
    with pytest.raises(ValueError, match="multiple"):
        NNXAPoTFakeQuantize(5, 2)
    with pytest.raises(ValueError, match="weight_quant"):
        APoTDense(4, weight_quant="log")


# --------------------------------------------------------------------------
# set_flags


def test_set_flags_walks_nested_trees_without_modifying_the_input():
    model = APoTDense(3)
    variables = model.init(jax.random.key(0), sample(7, (2, 5)))
    assert set(variables["quant_stats"]) == {"input_quant", "weight_quant"}
    off = set_flags(variables, observer=False)
    for name in ("input_quant", "weight_quant"):
        assert off["quant_stats"][name]["observer_enabled"] == 0
        assert off["quant_stats"][name]["fake_quant_enabled"] == 1  # None: left alone
        assert variables["quant_stats"][name]["observer_enabled"] == 1
    np.testing.assert_array_equal(off["params"]["kernel"], variables["params"]["kernel"])
    frozen = set_flags(FrozenDict(variables), fake_quant=False)
    assert isinstance(frozen, FrozenDict) and isinstance(frozen["quant_stats"]["input_quant"], FrozenDict)
    assert frozen["quant_stats"]["weight_quant"]["fake_quant_enabled"] == 0


# --------------------------------------------------------------------------
# NNX


class _LinenChain(nn.Module):
    @nn.compact
    def __call__(self, x):
        return UniformFakeQuantize(4, name="u")(APoTFakeQuantize(4, 2, True, name="a")(x))


class _NNXChain(nnx.Module):
    def __init__(self):
        self.a = NNXAPoTFakeQuantize(4, 2, True)
        self.u = NNXUniformFakeQuantize(4)

    def __call__(self, x):
        return self.u(self.a(x))


def test_nnx_and_linen_agree_bitwise_on_outputs_and_state():
    linen_model, nnx_model = _LinenChain(), _NNXChain()
    variables = linen_model.init(jax.random.key(0), sample(0))
    inputs = [sample(10), sample(11, scale=2.0), sample(12, scale=0.5), sample(13, scale=4.0)]
    flags = [(True, True), (True, True), (False, True), (True, False)]
    for x, (observer, fake_quant) in zip(inputs, flags):
        variables = set_flags(variables, observer=observer, fake_quant=fake_quant)
        set_flags(nnx_model, observer=observer, fake_quant=fake_quant)
        y_linen, upd = linen_model.apply(variables, x, mutable=["quant_stats"])
        variables = {**variables, **upd}
        y_nnx = nnx_model(x)
        np.testing.assert_array_equal(bits(y_nnx), bits(y_linen))
        for name in ("a", "u"):
            stats, module = variables["quant_stats"][name], getattr(nnx_model, name)
            for key in ("min_val", "max_val"):
                assert bits(getattr(module, key)[...]) == bits(stats[key])
            for key in ("observer_enabled", "fake_quant_enabled"):
                assert int(getattr(module, key)[...]) == int(stats[key])
    # The frozen third call must not have moved the statistics of the second.
    expected_max = float(max(np.max(inputs[0]), np.max(inputs[1]), np.max(inputs[3])))
    assert float(nnx_model.a.max_val[...]) == np.float32(expected_max)


def test_nnx_methods_state_filter_and_updates_under_jit_and_grad():
    model = _NNXChain()
    state = nnx.state(model, QuantStat)
    leaves = jax.tree_util.tree_leaves(state)
    assert len(leaves) == 8  # 2 modules x (min, max, two flags), nothing else

    model.a.disable_fake_quant()
    assert int(model.a.fake_quant_enabled[...]) == 0
    model.a.enable_fake_quant()
    x = sample(14)

    @nnx.jit
    def loss_and_grad(model, x):
        return nnx.value_and_grad(lambda m, v: m(v).sum(), argnums=1)(model, x)

    _, grad = loss_and_grad(model, x)
    # Statistics updated through jit + grad (outside the custom_vjp) ...
    assert float(model.a.min_val[...]) == float(x.min()) and float(model.a.max_val[...]) == float(x.max())
    # ... and the gradient is the straight-through 1 inside the observed range.
    np.testing.assert_array_equal(np.asarray(grad), np.ones(x.shape, np.float32))
    model.a.disable_observer()
    model(x * 10)
    assert float(model.a.max_val[...]) == float(x.max())
    model.a.enable_observer()
    model(x * 10)
    assert float(model.a.max_val[...]) == float(x.max() * 10)


# --------------------------------------------------------------------------
# Uniform fake quant


@pytest.mark.parametrize("b,signed", [(4, True), (3, False), (2, True)])
def test_uniform_fake_quant_levels_and_rounding(b, signed):
    fq = UniformFakeQuantize(b, signed)
    x = jnp.asarray(np.random.default_rng(15).permutation(np.linspace(-4, 4, 1001)), jnp.float32)
    variables = fq.init(jax.random.key(0), x)
    y, _ = fq.apply(variables, x, mutable=["quant_stats"])
    y = np.asarray(y, np.float64)
    xn = np.asarray(x, np.float64)
    alpha = max(-xn.min(), xn.max())
    qmax = 2 ** (b - 1) - 1 if signed else 2**b - 1
    scale = alpha / qmax
    q = y / scale
    np.testing.assert_allclose(q, np.round(q), atol=1e-4)  # on the grid
    assert np.round(q).min() >= (-qmax if signed else 0) and np.round(q).max() <= qmax
    target = np.clip(xn, -alpha if signed else 0.0, alpha)
    assert np.all(np.abs(y - target) <= scale / 2 * (1 + 1e-5))  # nearest level
    assert len(np.unique(np.round(q))) == (2 * qmax + 1 if signed else qmax + 1)


# --------------------------------------------------------------------------
# Layers


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


# --------------------------------------------------------------------------
# torch <-> flax conversion


def _observed_linen_stats(b=4, k=2, signed=False):
    fq = APoTFakeQuantize(b, k, signed)
    x = sample(19, (64,), scale=2.0)
    variables = fq.init(jax.random.key(0), x)
    _, upd = fq.apply(variables, x, mutable=["quant_stats"])
    return fq, x, set_flags(upd["quant_stats"], observer=False)


def test_flax_to_torch_layout_and_values_numpy_only():
    _, x, stats = _observed_linen_stats()
    sd = flax_to_torch_state_dict(stats, 4, 2, as_numpy=True)
    assert tuple(sd) == TORCH_KEYS
    assert sd["fake_quant_enabled"].dtype == np.uint8 and sd["fake_quant_enabled"].shape == (1,)
    assert list(sd["observer_enabled"]) == [0] and list(sd["fake_quant_enabled"]) == [1]
    alpha, gamma, levels, indices = reference_qparams(float(x.min()), float(x.max()), 4, 2, False)
    assert bits(sd["alpha"]) == bits(alpha) and bits(sd["gamma"]) == bits(gamma)
    np.testing.assert_array_equal(bits(sd["quantization_levels"]), bits(levels))
    assert sd["level_indices"].dtype == np.int32
    np.testing.assert_array_equal(sd["level_indices"], indices)
    assert sd["activation_post_process.min_val"].shape == () and sd["activation_post_process.min_val"] == x.min()
    back = torch_state_dict_to_flax(sd, b=4, k=2)
    for key in stats:
        assert back[key].dtype == stats[key].dtype and bits(back[key]) == bits(stats[key])
    with pytest.raises(ValueError, match="does not match"):
        torch_state_dict_to_flax(sd, b=4, k=2, signed=True)  # the stored levels are unsigned
    with pytest.raises(KeyError, match="min_val"):
        torch_state_dict_to_flax({k: v for k, v in sd.items() if "min_val" not in k})


def test_nnx_module_converts_like_linen():
    _, x, stats = _observed_linen_stats(4, 2, True)
    module = NNXAPoTFakeQuantize(4, 2, True)
    module(x)
    module.disable_observer()
    a = flax_to_torch_state_dict(module, 4, 2, True, as_numpy=True)
    b = flax_to_torch_state_dict(stats, 4, 2, True, as_numpy=True)
    for key in TORCH_KEYS:
        np.testing.assert_array_equal(np.atleast_1d(a[key]).view(np.uint8), np.atleast_1d(b[key]).view(np.uint8))


def test_unobserved_state_converts_to_a_fresh_torch_modules_buffers():
    stats = APoTFakeQuantize(4, 2).init(jax.random.key(0), sample(0))["quant_stats"]
    sd = flax_to_torch_state_dict(stats, 4, 2, as_numpy=True)
    assert np.isnan(sd["alpha"]) and np.isnan(sd["gamma"]) and np.isnan(sd["quantization_levels"]).all()
    np.testing.assert_array_equal(sd["level_indices"], np.zeros(16, np.int32))
    assert sd["activation_post_process.min_val"] == np.inf and sd["activation_post_process.max_val"] == -np.inf
    back = torch_state_dict_to_flax(sd, b=4, k=2)  # consistent with itself: no error
    assert back["min_val"] == np.inf and back["observer_enabled"] == 1


_HAS_TORCH_FQ = (
    importlib.util.find_spec("torch") is not None
    and importlib.util.find_spec("apot_torch.fake_quantize_module") is not None
)


@pytest.mark.skipif(
    not _HAS_TORCH_FQ, reason="apot_torch.fake_quantize_module (torch APoTFakeQuantize) is not available"
)
@pytest.mark.parametrize("signed", [False, True])
def test_round_trip_with_the_torch_module_bitwise(signed):
    import torch

    from apot_torch.fake_quantize_module import APoTFakeQuantize as TorchAPoTFakeQuantize

    # A fresh module's state_dict (nothing observed) matches the converter's.
    untouched = TorchAPoTFakeQuantize(b=4, k=2, signed=signed).state_dict()
    stats0 = APoTFakeQuantize(4, 2, signed).init(jax.random.key(0), jnp.zeros(3))["quant_stats"]
    for key, value in flax_to_torch_state_dict(stats0, 4, 2, signed).items():
        assert value.dtype == untouched[key].dtype and value.shape == untouched[key].shape, key
        np.testing.assert_array_equal(
            np.atleast_1d(value.numpy()).view(np.uint8), np.atleast_1d(untouched[key].numpy()).view(np.uint8)
        )

    torch_fq = TorchAPoTFakeQuantize(b=4, k=2, signed=signed)
    calib = np.random.default_rng(20).normal(size=(8, 16)).astype(np.float32) * 1.7
    torch_fq(torch.from_numpy(calib))
    torch_fq.disable_observer()
    sd = torch_fq.state_dict()
    assert set(sd) == set(TORCH_KEYS)

    # torch -> flax: the linen module then fake-quantizes exactly like torch.
    stats = torch_state_dict_to_flax(sd, b=4, k=2, signed=signed)
    assert stats["observer_enabled"] == 0 and stats["fake_quant_enabled"] == 1
    x = np.random.default_rng(21).normal(size=(5, 40)).astype(np.float32) * 2.5
    y_torch = torch_fq(torch.from_numpy(x)).detach().numpy()
    y_flax = APoTFakeQuantize(4, 2, signed).apply({"quant_stats": stats}, jnp.asarray(x))
    np.testing.assert_array_equal(bits(y_flax), bits(y_torch))
    np.testing.assert_array_equal(bits(y_flax), bits(ref_fake_quant(x, calib.min(), calib.max(), 4, 2, signed)))

    # flax -> torch: a fresh torch module loads it and agrees bitwise.
    fresh = TorchAPoTFakeQuantize(b=4, k=2, signed=signed)
    fresh.load_state_dict(flax_to_torch_state_dict(stats, 4, 2, signed))
    for key, value in fresh.state_dict().items():
        assert value.dtype == sd[key].dtype and value.shape == sd[key].shape, key
        np.testing.assert_array_equal(
            np.atleast_1d(value.numpy()).view(np.uint8), np.atleast_1d(sd[key].numpy()).view(np.uint8)
        )
    np.testing.assert_array_equal(bits(fresh(torch.from_numpy(x)).detach().numpy()), bits(y_flax))


@pytest.mark.skipif(
    not _HAS_TORCH_FQ, reason="apot_torch.fake_quantize_module (torch SignMagnitudeFakeQuantize) is not available"
)
def test_sign_magnitude_state_round_trip_with_the_torch_module():
    import torch

    from apot_jax.convert import SIGN_MAGNITUDE_TORCH_KEYS
    from apot_jax.fake_quantize_module import SignMagnitudeFakeQuantize
    from apot_torch.fake_quantize_module import SignMagnitudeFakeQuantize as TorchSignMagnitude

    fresh = TorchSignMagnitude(3, 2).state_dict()
    linen = SignMagnitudeFakeQuantize(3, 2)
    stats0 = linen.init(jax.random.key(0), jnp.zeros(3))["quant_stats"]
    sd0 = flax_to_torch_state_dict(stats0, 3, 2, sign_magnitude=True)
    assert tuple(sd0) == SIGN_MAGNITUDE_TORCH_KEYS == tuple(fresh)
    for key, value in sd0.items():  # nothing observed: a fresh module's buffers
        assert value.dtype == fresh[key].dtype and value.shape == fresh[key].shape, key
        np.testing.assert_array_equal(
            np.atleast_1d(value.numpy()).view(np.uint8), np.atleast_1d(fresh[key].numpy()).view(np.uint8)
        )

    x = np.random.default_rng(21).normal(size=(8, 16)).astype(np.float32)
    _, upd = linen.apply({"quant_stats": stats0}, x, mutable=["quant_stats"])
    stats = set_flags(upd["quant_stats"], observer=False)
    torch_fq = TorchSignMagnitude(3, 2)
    torch_fq.load_state_dict(flax_to_torch_state_dict(stats, 3, 2, sign_magnitude=True))  # strict
    assert bits(torch_fq.alpha) == bits(np.float32(np.abs(x).max()))
    probe = np.random.default_rng(22).normal(size=(50,)).astype(np.float32) * 2
    assert np.array_equal(bits(torch_fq(torch.from_numpy(probe))), bits(linen.apply({"quant_stats": stats}, probe)))
    back = torch_state_dict_to_flax(torch_fq.state_dict(), b=3, k=2, sign_magnitude=True)
    for key in stats:
        assert bits(back[key]) == bits(stats[key])
    tampered = {**torch_fq.state_dict(), "alpha": torch_fq.alpha * 2}
    with pytest.raises(ValueError, match="does not match"):
        torch_state_dict_to_flax(tampered, b=3, k=2, sign_magnitude=True)
    with pytest.raises(ValueError, match="signed"):
        flax_to_torch_state_dict(stats, 3, 2, True, sign_magnitude=True)
