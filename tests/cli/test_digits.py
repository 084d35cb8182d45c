"""apot_cli.digits, the digits job of ``apot qat``: the fixed stratified split,
QuantConfig's choices and checks, the paper CNN's 8-bit first and last
layers, parameter names shared by the float and APoT models, the paper's
optimizer."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apot_cli import digits as D


def test_digits_split_is_fixed_and_stratified():
    x_tr, y_tr, x_te, y_te = D.load_digits_split()
    assert x_tr.shape == (1347, 64) and x_te.shape == (450, 64)
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int32
    assert x_tr.min() == 0.0 and x_tr.max() == 1.0
    assert set(np.unique(y_te)) == set(range(10)) and np.bincount(y_te).min() >= 40
    again = D.load_digits_split()
    np.testing.assert_array_equal(again[0], x_tr)
    np.testing.assert_array_equal(again[3], y_te)


def test_quant_config_selects_the_fake_quants():
    x = jnp.zeros((2, 64))
    for quantize, expected in (
        ("weights", {"weight_quant"}),
        ("activations", {"input_quant"}),
        ("both", {"weight_quant", "input_quant"}),
    ):
        # eval_shape: only the variable tree is needed, not an eager init.
        model = D.MLP(hidden=(32,), quant=D.QuantConfig(bits=4, k=2, quantize=quantize), quantize_input=True)
        variables = jax.eval_shape(model.init, jax.random.key(0), x)
        assert set(variables["quant_stats"]["dense0"]) == expected
    assert "quant_stats" not in jax.eval_shape(D.MLP(hidden=(8,)).init, jax.random.key(0), x)
    with pytest.raises(ValueError, match="quantize"):
        D.QuantConfig(bits=4, quantize="all")
    with pytest.raises(ValueError, match="level_set"):
        D.QuantConfig(bits=3, recipe="paper", level_set="other")


def test_paper_cnn_keeps_first_and_last_layers_at_8_bits_with_float_input():
    """The paper variant's layer precision: conv0 and dense0 uniform 8-bit
    weights (observed), conv0's input float, dense0's input uniform 8-bit; the
    middle conv the paper's learnt sets (alphas as params)."""
    quant = D.QuantConfig(bits=3, k=1, recipe="paper", learn_activation_alpha=True, level_set="paper",
                          first_last_bits=8)  # fmt: skip
    variables = jax.eval_shape(D.CNN(channels=(4, 8), quant=quant).init, jax.random.key(0), jnp.zeros((2, 64)))
    stats, params = variables["quant_stats"], variables["params"]
    assert set(stats["conv0"]) == {"weight_quant"} and set(stats["dense0"]) == {"weight_quant", "input_quant"}
    assert "conv1" not in stats and set(params["conv1"]) == {"kernel", "bias", "weight_quant", "input_quant"}
    layers = {name: D.QuantConfig.layer_kwargs(quant, i, 3) for i, name in enumerate(("conv0", "conv1", "dense0"))}
    assert layers["conv0"] == dict(b=8, k=1, weight_quant="uniform", input_quant=None, signed_weights=True)
    assert layers["dense0"]["b"] == 8 and layers["dense0"]["input_quant"] == "uniform"
    assert layers["conv1"]["b"] == 3 and layers["conv1"]["level_set"] == "paper"


def test_plain_models_have_the_apot_models_parameter_names():
    """The Qwix path loads the float weights by name: the nn.Dense / nn.Conv
    networks have exactly the APoT networks' parameter trees (names, shapes)."""
    x = jnp.zeros((2, 64))
    for name in D.MODELS:
        sizes = dict(hidden=(32,), channels=(4, 8))
        apot = jax.eval_shape(D.make_model(name, D.QuantConfig(), **sizes).init, jax.random.key(0), x)["params"]
        plain = jax.eval_shape(D.plain_model(name, **sizes).init, jax.random.key(0), x)["params"]
        assert jax.tree_util.tree_map(lambda a: a.shape, apot) == jax.tree_util.tree_map(lambda a: a.shape, plain)


def test_paper_optimizer_is_sgd_momentum_with_decay_on_the_alphas_only():
    job = D.Job(lr=1e-3, qat_lr=3e-4, paper_optimizer="sgd", paper_lr=0.1, paper_alpha_decay=0.5)
    quant = D.QuantConfig(bits=3, k=1, recipe="paper")
    tx = D.optimizer(job, quant, steps=10)
    params = {"dense0": {"kernel": jnp.ones((2,)), "weight_quant": {"alpha": jnp.full((), 2.0)}}}
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, state = tx.update(zero, tx.init(params), params)
    assert float(updates["dense0"]["kernel"][0]) == 0.0  # no decay on the weights
    assert float(updates["dense0"]["weight_quant"]["alpha"]) == pytest.approx(-0.1 * 0.5 * 2.0)
    updates, _ = tx.update(zero, state, params)  # momentum 0.9 carries the first step, cosine lr
    lr1 = 0.1 * 0.5 * (1 + np.cos(np.pi * 1 / 10))
    assert float(updates["dense0"]["weight_quant"]["alpha"]) == pytest.approx(-lr1 * (0.9 + 1.0) * 0.5 * 2.0, rel=1e-5)
    assert D.optimizer(dataclasses.replace(job, paper_optimizer="adam"), quant, 10) is not None


def test_run_job_refuses_a_first_row_that_is_not_float():
    with pytest.raises(ValueError, match="rows\\[0\\] must be the float model"):
        D.run_job(D.Job(), [D.Row(variant="APoT", quant=D.QuantConfig(bits=4, k=2))])


def test_quant_config_checks_every_bit_width():
    for kw, match in ((dict(bits=0), "bits must be None or an integer >= 1, got 0"), (dict(bits=4.0), "got 4.0"),
                      (dict(bits=4, k=0), "k must be an integer >= 1, got 0"), (dict(bits=4, k=3), "multiple of k"),
                      (dict(bits=17, k=1), "limit of 65536"),
                      (dict(bits=17, k=1, scheme="uniform"), "at most 16 bits, got b=17"),
                      (dict(bits=3, recipe="paper", weight_k=0), "weight_k must be an integer >= 1, got 0"),
                      (dict(bits=1, recipe="paper"), "b >= 2"),
                      (dict(bits=6, k=4, quantize="activations"), "multiple of k")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            D.QuantConfig(**kw)
    D.QuantConfig(bits=16, k=1, quantize="activations", scheme="uniform")
