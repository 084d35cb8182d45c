"""Typed quantizer configs (apot_common.config): validation at construction,
the scheme-string mapping, and the modules both frameworks build from them."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import apot_jax.fake_quantize_module as fqm
from apot_common.config import (
    APoTConfig,
    LearnableAPoTConfig,
    SignMagnitudeConfig,
    UniformConfig,
    check_config,
    from_scheme,
)
from apot_jax.layers import APoTDense, NNXAPoTDense, input_config, weight_config


@pytest.mark.parametrize("make, message", [
    (lambda: APoTConfig(b=4, k=3), "multiple of k"),
    (lambda: APoTConfig(b=0), "b must be an integer >= 1"),
    (lambda: APoTConfig(b=4.0), "b must be an integer"),
    (lambda: APoTConfig(b=64, k=1, signed=True), "level"),
    (lambda: SignMagnitudeConfig(b=1), "b must be an integer >= 2"),
    (lambda: SignMagnitudeConfig(b=4, k=2), "divide"),
    (lambda: SignMagnitudeConfig(b=3, level_set="bogus"), "level_set"),
    (lambda: LearnableAPoTConfig(b=3, alpha_init=0.0), "alpha_init"),
    (lambda: LearnableAPoTConfig(b=3, alpha_init=float("nan")), "alpha_init"),
    (lambda: LearnableAPoTConfig(b=3, signed=False), "normalize and per_channel are for weights"),
    (lambda: UniformConfig(b=17), "at most 16"),
    (lambda: UniformConfig(b=1, signed=True), "b >= 2"),
])
def test_bad_configs_are_refused_at_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_configs_are_frozen_and_typed():
    cfg = APoTConfig(b=4, k=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.b = 3
    with pytest.raises(TypeError, match="signed must be a bool"):
        APoTConfig(b=4, k=2, signed=1)
    with pytest.raises(TypeError, match="must be one of APoTConfig"):
        check_config("apot")
    with pytest.raises(TypeError):
        APoTConfig(4, 2)  # keyword-only, like torchao's configs


def test_default_magnitude_widths():
    assert SignMagnitudeConfig(b=3).magnitude_k == 2 and SignMagnitudeConfig(b=4).magnitude_k == 1
    assert LearnableAPoTConfig(b=3).magnitude_k == 2 and LearnableAPoTConfig(b=4).magnitude_k == 1
    unsigned = dict(signed=False, normalize=False)
    assert LearnableAPoTConfig(b=4, **unsigned).magnitude_k == 2
    assert LearnableAPoTConfig(b=3, **unsigned).magnitude_k == 1


def test_scheme_strings_map_to_configs():
    assert from_scheme("apot", b=4) == APoTConfig(b=4, k=2)
    assert from_scheme("apot", b=3, signed=True) == APoTConfig(b=3, k=1, signed=True)
    assert from_scheme("uniform", b=8) == UniformConfig(b=8)
    assert from_scheme("sign-magnitude", b=3, level_set="paper") == SignMagnitudeConfig(b=3, level_set="paper")
    assert from_scheme("apot-paper", b=4, k=2) == LearnableAPoTConfig(
        b=4, k=2, signed=False, normalize=False, alpha_init=8.0)
    with pytest.raises(ValueError, match="scheme must be one of"):
        from_scheme("apot2", b=4)
    assert weight_config("apot-paper", b=3, per_channel=True) == LearnableAPoTConfig(b=3, per_channel=True)
    assert weight_config("sign-magnitude", b=4, k=2) == SignMagnitudeConfig(b=4)  # k is the activations'
    assert input_config("apot", b=4, k=4, signed_inputs=True) == APoTConfig(b=4, k=4, signed=True)
    assert weight_config(None) is None and input_config(UniformConfig(b=4)) == UniformConfig(b=4)


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


def test_modules_built_from_configs():
    assert isinstance(fqm.linen_from_config(APoTConfig(b=4, k=2)), fqm.APoTFakeQuantize)
    sm = fqm.linen_from_config(SignMagnitudeConfig(b=3, level_set="paper"))
    assert isinstance(sm, fqm.SignMagnitudeFakeQuantize) and sm.level_set == "paper" and sm.k == 2
    act = fqm.nnx_from_config(LearnableAPoTConfig(b=4, k=2, signed=False, normalize=False, alpha_init=6.0))
    assert isinstance(act, fqm.NNXLearnableAPoTFakeQuantize) and act.scheme == "unsigned"
    assert float(act.alpha[...]) == 6.0
    with pytest.raises(ValueError, match="needs channels"):
        fqm.nnx_from_config(LearnableAPoTConfig(b=3, per_channel=True))
    with pytest.raises(TypeError):
        fqm.linen_from_config("apot")


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


torch = pytest.importorskip("torch", reason="the torch half of the config tests needs torch")


@pytest.mark.parametrize("cfg", [
    APoTConfig(b=4, k=2, signed=True),
    SignMagnitudeConfig(b=4, level_set="paper"),
    SignMagnitudeConfig(b=3),
    LearnableAPoTConfig(b=4, level_set="paper"),
    LearnableAPoTConfig(b=3, k=1, signed=False, normalize=False, alpha_init=2.0, level_set="paper"),
], ids=repr)
def test_one_config_gives_the_same_bits_in_both_frameworks(cfg):
    """The module each framework builds from one config computes the same
    bits on the same input (first call: observe, then fake-quantize)."""
    import apot_torch

    x = np.random.default_rng(3).normal(size=(16, 12)).astype(np.float32) * 2
    if isinstance(cfg, LearnableAPoTConfig) and not cfg.signed:
        x = np.abs(x)
    module = fqm.linen_from_config(cfg)
    variables = module.init(jax.random.key(0), jnp.asarray(x))
    y_jax, _ = module.apply(variables, jnp.asarray(x), mutable=["quant_stats"])
    y_torch = apot_torch.from_config(cfg)(torch.from_numpy(x.copy()))
    np.testing.assert_array_equal(np.asarray(y_jax).view(np.int32), y_torch.detach().numpy().view(np.int32))


def test_torch_qconfig_from_configs_trains_through_prepare_qat():
    from torch.ao.quantization import prepare_qat

    from apot_torch.qconfig import qconfig

    model = torch.nn.Sequential(torch.nn.Linear(6, 4))
    model.qconfig = qconfig(weight=SignMagnitudeConfig(b=3, level_set="paper"), activation=APoTConfig(b=4, k=2))
    prepared = prepare_qat(model.train())
    wfq = prepared[0].weight_fake_quant
    assert type(wfq).__name__ == "SignMagnitudeFakeQuantize" and wfq.level_set == "paper"
    prepared(torch.randn(5, 6)).sum().backward()
    assert prepared[0].weight.grad is not None
    with pytest.raises(ValueError, match="per-channel"):
        qconfig(weight=LearnableAPoTConfig(b=3, per_channel=True), activation=None)
    with pytest.raises(TypeError, match="weight must be one of"):
        qconfig(weight="apot", activation=None)


def test_torch_state_dict_records_the_level_set():
    import apot_torch

    paper = apot_torch.from_config(SignMagnitudeConfig(b=4, level_set="paper"))
    paper(torch.randn(50))
    other = apot_torch.from_config(SignMagnitudeConfig(b=4))
    with pytest.raises(RuntimeError, match="level_set"):
        other.load_state_dict(paper.state_dict())


def test_qwix_rule_takes_configs():
    """``ApotRule(weight=..., act=...)``: the provider quantizes an unmodified
    nnx.Linear exactly as an apot layer built from the same configs."""
    qwix = pytest.importorskip("qwix", reason="the Qwix provider needs the apot[qwix] extra")
    from apot_jax.qwix import ApotQatProvider, ApotRule

    w_cfg = SignMagnitudeConfig(b=4, level_set="paper")
    a_cfg = APoTConfig(b=4, k=2)
    x = jnp.abs(jax.random.normal(jax.random.key(2), (8, 6)))
    plain = nnx.Linear(6, 5, rngs=nnx.Rngs(0))
    layer = NNXAPoTDense(6, 5, weight_quant=w_cfg, input_quant=a_cfg, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(plain.kernel[...]), np.asarray(layer.kernel[...]))
    qm = qwix.quantize_model(plain, ApotQatProvider([ApotRule(weight=w_cfg, act=a_cfg)]), x)
    np.testing.assert_array_equal(np.asarray(qm(x)), np.asarray(layer(x)))
    with pytest.raises(ValueError, match="either weight="):
        ApotRule(weight=w_cfg, weight_scheme="paper")
    with pytest.raises(TypeError, match="act must be one of"):
        ApotRule(act="unsigned")


def test_qwix_rule_takes_configs_linen():
    """The linen path of the provider (quant_stats collection) with configs."""
    qwix = pytest.importorskip("qwix", reason="the Qwix provider needs the apot[qwix] extra")
    import flax.linen as nn

    from apot_jax.qwix import ApotQatProvider, ApotRule

    w_cfg = SignMagnitudeConfig(b=4, level_set="paper")
    a_cfg = APoTConfig(b=4, k=2)
    x = jnp.abs(jax.random.normal(jax.random.key(2), (8, 6)))
    qm = qwix.quantize_model(nn.Dense(5), ApotQatProvider([ApotRule(weight=w_cfg, act=a_cfg)]))
    q_vars = qm.init(jax.random.key(0), x)
    y_q, _ = qm.apply(q_vars, x, mutable=["quant_stats"])
    layer = APoTDense(5, weight_quant=w_cfg, input_quant=a_cfg)
    l_vars = layer.init(jax.random.key(1), x)
    l_vars = {**l_vars, "params": q_vars["params"]}
    y_l, _ = layer.apply(l_vars, x, mutable=["quant_stats"])
    np.testing.assert_array_equal(np.asarray(y_q), np.asarray(y_l))


def test_torchao_takes_typed_configs():
    """APoTQATConfig(weight=<typed config>) prepares the same modules as the
    torchao-path config it maps to, and refuses what that path cannot run."""
    pytest.importorskip("torchao", reason="the torchao path needs the apot[torchao] extra")
    from torchao.quantization import quantize_

    from apot_torch.torchao import APoTFakeQuantizeConfig, APoTQATConfig, is_linear_or_conv2d

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(6, 4))
    x = torch.randn(5, 6)
    a, b = torch.nn.Sequential(torch.nn.Linear(6, 4)), torch.nn.Sequential(torch.nn.Linear(6, 4))
    a.load_state_dict(base.state_dict())
    b.load_state_dict(base.state_dict())
    quantize_(a, APoTQATConfig(weight=LearnableAPoTConfig(b=3), activation=APoTConfig(b=3, k=1)),
              filter_fn=is_linear_or_conv2d)
    quantize_(b, APoTQATConfig(weight=APoTFakeQuantizeConfig(3, 2, "sign-magnitude", alpha="learnable",
                                                             normalize=True),
                               activation=APoTFakeQuantizeConfig(3, 1, "unsigned")),
              filter_fn=is_linear_or_conv2d)
    np.testing.assert_array_equal(a(x).detach().numpy(), b(x).detach().numpy())
    with pytest.raises(ValueError, match="level_set='apot' only"):
        APoTQATConfig(weight=SignMagnitudeConfig(b=3, level_set="paper"))
    with pytest.raises(ValueError, match="uniform"):
        APoTQATConfig(weight=UniformConfig(b=4))
