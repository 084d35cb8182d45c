"""apot_jax.fake_quantize_module: the linen modules (state in the
``quant_stats`` collection) and NNX modules (``QuantStat`` variables), built
from configs; observation, flags, the uniform baseline, the paper's
sign-magnitude and learnable modules, and state of another configuration
refused. Expected values come from ``tests/reference.py`` and
``tests/reference_paper.py``, never from the modules under test."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.core import FrozenDict

import apot_jax.fake_quantize_module as fqm
from apot_common.config import (
    APoTConfig,
    LearnableAPoTConfig,
    SignMagnitudeConfig,
)
from apot_jax import paper
from apot_jax.fake_quantize_module import (
    QUANT_STATS,
    APoTFakeQuantize,
    LearnableAPoTFakeQuantize,
    NNXAPoTFakeQuantize,
    NNXLearnableAPoTFakeQuantize,
    NNXSignMagnitudeFakeQuantize,
    NNXUniformFakeQuantize,
    QuantStat,
    SignMagnitudeFakeQuantize,
    UniformFakeQuantize,
    set_flags,
    uniform_quantizer,
)
from apot_jax.layers import APoTDense, NNXAPoTDense
from tests.helpers import bits
from tests.jax.helpers import ref_fake_quant, sample
from tests.reference import adversarial_inputs, reference_qparams, reference_quantize
from tests.reference_paper import (
    reference_alpha_grad_elements,
    reference_pairwise_sum,
    reference_sm_quantize,
)


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


def test_linen_and_nnx_modules_agree_and_train_alpha():
    rng = np.random.default_rng(5)
    w = jnp.asarray(rng.normal(size=(12, 6)).astype(np.float32) * 0.1)
    linen = LearnableAPoTFakeQuantize(3, 2, channel_axis=-1, alpha_init=1.5)
    variables = linen.init(jax.random.key(0), w)
    assert variables["params"]["alpha"].shape == (6,)
    module = NNXLearnableAPoTFakeQuantize(3, 2, channel_axis=-1, channels=6, alpha_init=1.5)
    y = linen.apply(variables, w)
    assert np.array_equal(bits(y), bits(module(w)))
    expected = paper.paper_weight_quant(w, jnp.full((6,), 1.5), b=3, k=2, channel_axis=-1)
    assert np.array_equal(bits(y), bits(expected))
    grads = jax.grad(lambda p: jnp.sum(linen.apply({"params": p}, w) ** 2))(variables["params"])
    assert np.all(np.isfinite(grads["alpha"])) and np.any(grads["alpha"] != 0)
    with pytest.raises(ValueError, match="channels"):
        NNXLearnableAPoTFakeQuantize(3, 2, channel_axis=-1)


@pytest.mark.parametrize("b, k", [(3, 2), (2, 1), (5, 2)])
def test_observed_sign_magnitude_modules_match_the_reference(b, k):
    rng = np.random.default_rng(b)
    first = rng.normal(size=(40, 9)).astype(np.float32)
    linen = SignMagnitudeFakeQuantize(b, k)
    variables = linen.init(jax.random.key(0), first)
    _, updates = linen.apply(variables, first, mutable=[QUANT_STATS])
    variables = set_flags(updates, observer=False)
    alpha = np.float32(np.abs(first).max())
    x = rng.normal(size=(300,)).astype(np.float32) * 1.5
    x[:4] = [np.nan, -np.inf, 1e-40, -alpha]
    dy = rng.normal(size=x.shape).astype(np.float32)
    y, vjp = jax.vjp(lambda v: linen.apply(variables, v), jnp.asarray(x))
    _, ref_values = reference_sm_quantize(x, float(alpha), b, k)
    assert np.array_equal(bits(y), bits(ref_values))
    mag = np.where(np.abs(x) < np.finfo(np.float32).tiny, 0, np.abs(x))
    assert np.array_equal(np.asarray(vjp(jnp.asarray(dy))[0]), np.where(mag <= alpha, dy, 0).astype(np.float32))
    module = NNXSignMagnitudeFakeQuantize(b, k)
    module(jnp.asarray(first))
    module.disable_observer()
    assert np.array_equal(bits(module(jnp.asarray(x))), bits(ref_values))
    # a fresh module with the observer off has nothing to quantize with: NaN
    fresh = set_flags(linen.init(jax.random.key(0), first), observer=False)
    assert np.isnan(np.asarray(linen.apply(fresh, jnp.asarray(x)))).all()
    layer = APoTDense(5, b=b, weight_quant="sign-magnitude", input_quant=None, weight_k=k)
    layer_vars = layer.init(jax.random.key(1), first)
    assert set(layer_vars[QUANT_STATS]["weight_quant"]) == {
        "min_val", "max_val", "observer_enabled", "fake_quant_enabled"
    }
    twin = NNXAPoTDense(9, 5, b=b, weight_quant="sign-magnitude", input_quant=None, weight_k=k, rngs=nnx.Rngs(0))
    twin.kernel[...] = layer_vars["params"]["kernel"]
    assert isinstance(twin.weight_quant, NNXSignMagnitudeFakeQuantize)
    out, _ = layer.apply(layer_vars, first, mutable=[QUANT_STATS])
    assert np.array_equal(bits(out), bits(twin(jnp.asarray(first))))
    with pytest.raises(ValueError):
        SignMagnitudeFakeQuantize(4, 2)
    with pytest.raises(ValueError, match="input_quant"):
        APoTDense(5, input_quant="sign-magnitude")


@pytest.mark.parametrize("b, k", [(4, 2), (3, 1), (2, 2), (8, 2)])
def test_learnable_activation_alpha_is_the_reference(b, k):
    """The unsigned (activation) scheme: forward, x gradient, per-element and
    summed alpha gradient against the rational reference, bit for bit."""
    rng = np.random.default_rng(20 + b)
    alpha = np.float32(1.37)
    _, _, levels, indices = reference_qparams(0.0, alpha, b, k, False)
    x = adversarial_inputs(alpha, levels, rng, n_random=500)
    x = np.concatenate([x, -x[:200]])  # negative inputs: 0, and no alpha gradient
    x = np.where(np.isfinite(x), x, 0).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    _, ref_y = reference_quantize(x, alpha, levels, indices)
    qp = paper.unsigned_qparams(alpha, b=b, k=k)
    assert np.array_equal(bits(qp.quantization_levels), bits(levels))
    y = jax.jit(lambda v, a: paper.learnable_fake_quantize(v, a, b=b, k=k, scheme="unsigned"))(
        jnp.asarray(x), jnp.float32(alpha)
    )
    assert np.array_equal(bits(y), bits(ref_y))
    ref_g = reference_alpha_grad_elements(x, alpha, ref_y, unsigned=True)
    g = paper.alpha_grad_elements(jnp.asarray(x), alpha, jnp.asarray(ref_y), "unsigned")
    assert np.array_equal(bits(g), bits(ref_g))
    assert (ref_g[x < 0] == 0).all() and (ref_g[x > alpha] == 1).all()

    def loss(v, a):
        return jnp.sum(paper.learnable_fake_quantize(v, a, b=b, k=k, scheme="unsigned") * dy)

    dx, dalpha = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(x), jnp.float32(alpha))
    mag = np.where(np.abs(x) < np.finfo(np.float32).tiny, 0, np.abs(x))
    assert np.array_equal(bits(dx), bits(np.where(mag <= alpha, dy, 0)))
    assert bits(dalpha) == bits(reference_pairwise_sum(dy * ref_g))
    with pytest.raises(ValueError, match="multiple"):
        paper.learnable_fake_quantize(jnp.asarray(x), alpha, b=3, k=2, scheme="unsigned")
    with pytest.raises(ValueError, match="scheme"):
        paper.learnable_fake_quantize(jnp.asarray(x), alpha, b=3, k=2, scheme="signed")
    with pytest.raises(ValueError, match="per-channel"):
        paper.learnable_fake_quantize(
            jnp.asarray(x).reshape(-1, 1), jnp.ones(1), b=4, k=2, channel_axis=1, scheme="unsigned"
        )


def test_flax_quant_stats_of_another_configuration_are_refused():
    import jax

    from apot_jax.fake_quantize_module import APoTFakeQuantize, LearnableAPoTFakeQuantize

    x = jnp.linspace(-2, 2, 12).reshape(3, 4)
    module = APoTFakeQuantize(4, 2)
    _, updates = module.apply(module.init(jax.random.key(0), x), x, mutable=["quant_stats"])
    stats = dict(updates["quant_stats"])
    module.apply({"quant_stats": stats}, x)
    for bad, match, error in (
        ({"observer_enabled": jnp.ones((1,), jnp.int32)}, "observer_enabled must be a scalar", ValueError),
        ({"min_val": jnp.zeros(4)}, "min_val must be a scalar \\(shape \\(\\)\\), got shape \\(4,\\)", ValueError),
        ({"quantization_levels": jnp.zeros(49)}, "unexpected entries \\['quantization_levels'\\]", ValueError),
        ({"max_val": jnp.int32(1)}, "max_val must be a real floating scalar", TypeError),
    ):  # fmt: skip
        with pytest.raises(error, match="quant_stats of .*" + match):
            module.apply({"quant_stats": {**stats, **bad}}, x)
    with pytest.raises(ValueError, match="missing entries \\['max_val'\\]"):
        module.apply({"quant_stats": {k: v for k, v in stats.items() if k != "max_val"}}, x, mutable=["quant_stats"])
    learn = LearnableAPoTFakeQuantize(3, 2, normalize=False, channel_axis=-1)
    params = learn.init(jax.random.key(0), x)
    with pytest.raises(Exception, match='"alpha".*shape \\(5,\\).*shape \\(4,\\)'):
        learn.apply(params, jnp.zeros((3, 5)))  # Flax's own check names the parameter


def test_nnx_state_of_another_configuration_is_refused():
    from apot_jax.fake_quantize_module import NNXAPoTFakeQuantize, NNXLearnableAPoTFakeQuantize, QuantStat

    x = jnp.linspace(-2, 2, 12).reshape(3, 4)
    module = NNXAPoTFakeQuantize(4, 2)
    module(x)
    module.min_val = QuantStat(jnp.zeros(4))
    with pytest.raises(ValueError, match="NNXAPoTFakeQuantize QuantStat: min_val must be a scalar"):
        module(x)
    learn = NNXLearnableAPoTFakeQuantize(3, 2, normalize=False, channel_axis=-1, channels=4)
    learn(x)
    with pytest.raises(ValueError, match="alpha has shape \\(4,\\), expected \\(5,\\)"):
        learn(jnp.zeros((3, 5)))


def test_uniform_bit_width_range():
    for b, signed in ((0, True), (1, True), (17, False), (10**6, True)):
        with pytest.raises(ValueError, match=f"b={b}|got {b}"):
            uniform_quantizer(b, signed)
        with pytest.raises(ValueError):
            UniformFakeQuantize(b, signed)
    uniform_quantizer(16, False)
    uniform_quantizer(1, False)
