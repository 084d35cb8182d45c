"""apot_jax.nnx and apot_jax.linen: the same class names in both namespaces,
NNX layers with ``nnx.Linear``'s signature, ``eval()``/``train()`` freezing
the observers, and ``nnx.bridge`` both ways."""

from __future__ import annotations

import doctest
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.nnx import bridge

import apot_jax
from apot_jax import linen as aln
from apot_jax import nnx as anx

X = jnp.linspace(-1.0, 2.0, 12, dtype=jnp.float32).reshape(4, 3)


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8))
    )


def test_same_names_in_both_namespaces_and_old_aliases():
    names = ["APoTDense", "APoTConv", "APoTFakeQuantize", "SignMagnitudeFakeQuantize", "UniformFakeQuantize",
             "LearnableAPoTFakeQuantize"]  # fmt: skip
    for name in names:
        assert issubclass(getattr(anx, name), nnx.Module), name
        assert not issubclass(getattr(aln, name), nnx.Module), name
        assert getattr(aln, name) is getattr(apot_jax, name)
        assert getattr(anx, name) is getattr(apot_jax, "NNX" + name)
    assert apot_jax.nnx is anx and apot_jax.linen is aln


def test_nnx_layer_takes_nnx_linear_signature():
    layer = anx.APoTDense(in_features=3, out_features=2, rngs=nnx.Rngs(0))
    assert layer.kernel[...].shape == (3, 2) and (layer.in_features, layer.out_features) == (3, 2)
    conv = anx.APoTConv(3, 5, (3, 3), strides=1, padding="SAME", rngs=nnx.Rngs(0))
    assert conv.kernel[...].shape == (3, 3, 3, 5) and conv.kernel_size == (3, 3)


def test_eval_freezes_and_train_resumes_observers():
    layer = anx.APoTDense(3, 2, rngs=nnx.Rngs(0))
    layer(X)
    assert float(layer.input_quant.max_val[...]) == 2.0
    layer.eval()
    y_eval = layer(X * 10)  # would move the statistics
    assert float(layer.input_quant.max_val[...]) == 2.0 and int(layer.input_quant.observer_enabled[...]) == 1
    frozen = anx.APoTDense(3, 2, rngs=nnx.Rngs(0))
    frozen(X)
    anx.set_flags(frozen, observer=False)
    assert same_bits(y_eval, frozen(X * 10))  # eval() is exactly "observer off"
    layer.train()
    layer(X * 10)
    assert float(layer.input_quant.max_val[...]) == 20.0


def test_bridge_linen_to_nnx_matches_linen():
    linen_layer = aln.APoTDense(features=2, b=4, k=2)
    wrapped = bridge.ToNNX(linen_layer, rngs=nnx.Rngs(0))
    bridge.lazy_init(wrapped, X)
    variables = dict(linen_layer.init(jax.random.key(0), X))
    variables["params"] = nnx.to_pure_dict(nnx.state(wrapped, nnx.Param))  # the wrapped layer's own init
    y_ref, updates = linen_layer.apply(variables, X, mutable=["quant_stats"])
    y = wrapped(X, mutable=["quant_stats"])  # ToNNX stores a collection only when asked, as linen does
    assert same_bits(y, y_ref)
    stats = nnx.state(wrapped, anx.QuantStat)
    assert same_bits(stats["input_quant"]["max_val"][...], updates["quant_stats"]["input_quant"]["max_val"])


def test_bridge_nnx_to_linen_gives_the_quant_stats_collection():
    wrapped = bridge.ToLinen(anx.APoTDense, args=(3, 2), kwargs=dict(b=4, k=2))
    variables = wrapped.init(jax.random.key(0), X)
    assert set(variables) == {"params", "quant_stats"}
    assert set(variables["quant_stats"]["weight_quant"]) == {
        "min_val", "max_val", "observer_enabled", "fake_quant_enabled"
    }
    y, updates = wrapped.apply(variables, X, mutable=["quant_stats"])
    native = anx.APoTDense(3, 2, b=4, k=2, rngs=nnx.Rngs(1))
    native.kernel[...] = variables["params"]["kernel"]
    native.bias[...] = variables["params"]["bias"]
    assert same_bits(y, native(X))
    assert same_bits(updates["quant_stats"]["weight_quant"]["min_val"], native.weight_quant.min_val[...])


@pytest.mark.parametrize("name", ["apot_jax.nnx", "apot_jax.linen", "apot_jax.qwix"])
def test_doctests(name):
    if name == "apot_jax.qwix":
        pytest.importorskip("qwix")  # optional third-party extra
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0
