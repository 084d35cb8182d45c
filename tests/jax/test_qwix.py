"""The Qwix provider (``apot_jax.qwix``) on off-the-shelf Flax models.

Each model is an unmodified linen or NNX model (``Linear``/``Dense`` MLP,
``Conv`` CNN, a transformer block with multi-head attention) quantized with
``qwix.quantize_model(model, ApotQatProvider(rules), ...)``. The reference is
the same network built from apot's own layers (MLP, CNN) or, for attention,
the float model run on operands fake-quantized by apot's own pure step. Both
are trained for several optax steps; losses, gradients, params and
statistics must agree bit for bit. ``ApotRule`` also takes the typed configs.
"""

from __future__ import annotations

import unittest.mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from apot_common.config import APoTConfig, SignMagnitudeConfig
from apot_jax import linen as aln
from apot_jax import nnx as anx
from apot_jax.fake_quantize_module import apot_quantizer, fake_quant_step, set_flags
from apot_jax.layers import APoTDense, NNXAPoTDense

qwix = pytest.importorskip("qwix")  # third-party optional extra apot[qwix]

from apot_jax.qwix import ApotQatProvider, ApotRule  # noqa: E402  (imports qwix)

STEPS = 3
STATS = ("min_val", "max_val", "observer_enabled", "fake_quant_enabled")


def assert_bitwise(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} vs {b.shape}"
    assert a.dtype == b.dtype, f"{what}: dtypes {a.dtype} vs {b.dtype}"
    assert np.array_equal(
        a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)
    ), f"{what}: not bitwise equal\n{a}\n{b}"


def data(shape, seed=0, classes=10):
    # numpy, not jax.random: each new shape would compile a sampler (about 1 s)
    rng = np.random.default_rng(seed)
    xs = jnp.asarray(rng.standard_normal((STEPS,) + shape, np.float32))
    ys = jnp.asarray(rng.integers(0, classes, (STEPS, shape[0])), jnp.int32)
    return xs, ys


def ce(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


# --------------------------------------------------------------------------
# rules and the apot-layer options that mean the same


#: (rules kwargs for hidden layers, apot layer kwargs): the first layer keeps
#: a float input in both (rule without act_bits / input_quant=None).
SCHEMES = {
    "signed": (dict(weight_bits=4, weight_k=2), dict(b=4, k=2, weight_quant="apot", signed_weights=True)),
    "unsigned-3bit": (
        dict(weight_bits=3, weight_k=1, weight_scheme="unsigned"),
        dict(b=3, k=1, weight_quant="apot", signed_weights=False),
    ),
    "sign-magnitude": (
        dict(weight_bits=4, weight_scheme="sign-magnitude"),
        dict(b=4, k=2, weight_quant="sign-magnitude"),
    ),
    "paper": (
        dict(weight_bits=4, weight_scheme="paper", weight_per_channel=True, act_scheme="paper"),
        dict(b=4, k=2, weight_quant="apot-paper", per_channel=True, input_quant="apot-paper"),
    ),
}


def rules_for(scheme, first):
    weight, layer = SCHEMES[scheme]
    # apot's layers quantize their input with the layer's (b, k)
    act = {"act_bits": layer["b"], "act_k": layer["k"]} | ({"act_scheme": "paper"} if scheme == "paper" else {})
    weight = {key: v for key, v in weight.items() if key != "act_scheme"}
    return [ApotRule(module_path=first, **weight), ApotRule(module_path=".*", **weight, **act)]


def layer_kwargs(scheme, first):
    _, kwargs = SCHEMES[scheme]
    kwargs = dict(kwargs)
    act = kwargs.pop("input_quant", "apot")
    return kwargs | {"input_quant": None if first else act}


# --------------------------------------------------------------------------
# NNX models


class NNXMLP(nnx.Module):
    def __init__(self, rngs):
        self.l0 = nnx.Linear(12, 16, rngs=rngs)
        self.l1 = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x):
        return self.l1(nnx.relu(self.l0(x)))


class ApotNNXMLP(nnx.Module):
    def __init__(self, scheme, rngs):
        self.l0 = anx.APoTDense(12, 16, **layer_kwargs(scheme, True), rngs=rngs)
        self.l1 = anx.APoTDense(16, 10, **layer_kwargs(scheme, False), rngs=rngs)

    def __call__(self, x):
        return self.l1(nnx.relu(self.l0(x)))


class NNXCNN(nnx.Module):
    def __init__(self, rngs):
        self.c0 = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.c1 = nnx.Conv(4, 6, (3, 3), strides=2, rngs=rngs)
        self.head = nnx.Linear(4 * 4 * 6, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.c1(nnx.relu(self.c0(x))))
        return self.head(x.reshape(x.shape[0], -1))


class ApotNNXCNN(nnx.Module):
    def __init__(self, scheme, rngs):
        self.c0 = anx.APoTConv(1, 4, (3, 3), **layer_kwargs(scheme, True), rngs=rngs)
        self.c1 = anx.APoTConv(4, 6, (3, 3), strides=2, **layer_kwargs(scheme, False), rngs=rngs)
        self.head = anx.APoTDense(4 * 4 * 6, 10, **layer_kwargs(scheme, False), rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.c1(nnx.relu(self.c0(x))))
        return self.head(x.reshape(x.shape[0], -1))


def copy_params(src, dst, names):
    for name in names:
        getattr(dst, name).kernel[...] = getattr(src, name).kernel[...]
        getattr(dst, name).bias[...] = getattr(src, name).bias[...]


def train_nnx(model, xs, ys):
    """STEPS adam steps with nnx.Optimizer + nnx.jit; (losses, first grads)."""
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, x, y):
        loss, grads = nnx.value_and_grad(lambda m: ce(m(x), y))(model)
        opt.update(model, grads)
        return loss, grads

    losses, first = [], None
    for x, y in zip(xs, ys):
        loss, grads = step(model, opt, x, y)
        losses.append(loss)
        first = grads if first is None else first
    return losses, first


def nnx_pairs(qm, ref, layers, scheme):
    """(what, provider value, reference value) for params, grads-able alphas, stats."""
    out = []
    for i, name in enumerate(layers):
        q, r = getattr(qm, name), getattr(ref, name)
        out += [(f"{name}.kernel", q.kernel[...], r.kernel[...]), (f"{name}.bias", q.bias[...], r.bias[...])]
        op = "conv_general_dilated0" if isinstance(q, nnx.Conv) else "dot_general0"
        sides = [("rhs", "weight_quant")] + ([] if i == 0 else [("lhs", "input_quant")])
        for side, sub in sides:
            qs, rs = getattr(q, f"{op}_{side}"), getattr(r, sub)
            if scheme == "paper":
                out.append((f"{name}.{sub}.alpha", qs.alpha[...], rs.alpha[...]))
            else:
                out += [(f"{name}.{sub}.{s}", getattr(qs, s)[...], getattr(rs, s)[...]) for s in STATS]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("scheme", list(SCHEMES))
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_nnx_model_through_provider_equals_apot_layers(arch, scheme):
    if arch == "mlp":
        model, ref, layers, shape = NNXMLP(nnx.Rngs(0)), ApotNNXMLP(scheme, nnx.Rngs(1)), ["l0", "l1"], (8, 12)
    else:
        model, ref, layers, shape = (
            NNXCNN(nnx.Rngs(0)), ApotNNXCNN(scheme, nnx.Rngs(1)), ["c0", "c1", "head"], (4, 8, 8, 1)
        )
    copy_params(model, ref, layers)
    xs, ys = data(shape)
    before = jax.tree.map(np.asarray, nnx.state(model))
    qm = qwix.quantize_model(model, ApotQatProvider(rules_for(scheme, layers[0])), xs[0])
    jax.tree.map(
        lambda a, b: assert_bitwise(a, b, "caller's model"), before, jax.tree.map(np.asarray, nnx.state(model))
    )
    if scheme != "paper":  # the quantize_model call created the state but observed nothing
        assert float(
            qm.l0.dot_general0_rhs.max_val[...] if arch == "mlp" else qm.c0.conv_general_dilated0_rhs.max_val[...]
        ) == -np.inf

    q_losses, q_grads = train_nnx(qm, xs, ys)
    r_losses, r_grads = train_nnx(ref, xs, ys)
    for i, (a, b) in enumerate(zip(q_losses, r_losses)):
        assert_bitwise(a, b, f"loss {i}")
    for name in layers:
        assert_bitwise(q_grads[name]["kernel"][...], r_grads[name]["kernel"][...], f"{name} kernel grad")
    for what, a, b in nnx_pairs(qm, ref, layers, scheme):
        assert_bitwise(a, b, what)

    # evaluation: eval() freezes the observers of both, train() resumes them
    qm.eval(), ref.eval()
    x = xs[0] * 3.0  # a batch that would move the statistics
    assert_bitwise(qm(x), ref(x), "eval logits")
    for what, a, b in nnx_pairs(qm, ref, layers, scheme):
        assert_bitwise(a, b, f"{what} after eval")
    if scheme != "paper":
        layer = qm.l1.dot_general0_lhs if arch == "mlp" else qm.c1.conv_general_dilated0_lhs
        frozen = float(layer.max_val[...])
        qm.train(), ref.train()
        assert_bitwise(qm(x), ref(x), "train logits")
        assert float(layer.max_val[...]) > frozen  # the 3x batch moved the resumed observer
        for what, a, b in nnx_pairs(qm, ref, layers, scheme):
            assert_bitwise(a, b, f"{what} after train")


# --------------------------------------------------------------------------
# linen models


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10, name="l1")(nn.relu(nn.Dense(16, name="l0")(x)))


class ApotLinenMLP(nn.Module):
    scheme: str

    @nn.compact
    def __call__(self, x):
        x = nn.relu(aln.APoTDense(16, **layer_kwargs(self.scheme, True), name="l0")(x))
        return aln.APoTDense(10, **layer_kwargs(self.scheme, False), name="l1")(x)


class LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), name="c0")(x))
        x = nn.relu(nn.Conv(6, (3, 3), strides=2, name="c1")(x))
        return nn.Dense(10, name="head")(x.reshape(x.shape[0], -1))


class ApotLinenCNN(nn.Module):
    scheme: str

    @nn.compact
    def __call__(self, x):
        x = nn.relu(aln.APoTConv(4, (3, 3), **layer_kwargs(self.scheme, True), name="c0")(x))
        x = nn.relu(aln.APoTConv(6, (3, 3), strides=2, **layer_kwargs(self.scheme, False), name="c1")(x))
        return aln.APoTDense(10, **layer_kwargs(self.scheme, False), name="head")(x.reshape(x.shape[0], -1))


def train_linen(model, variables, xs, ys):
    """STEPS adam steps of a linen model, jitted; (losses, first grads, params, stats)."""
    tx = optax.adam(1e-2)
    params, stats = variables["params"], variables.get("quant_stats", {})
    opt_state = tx.init(params)

    @jax.jit
    def step(params, stats, opt_state, x, y):
        def loss_fn(p):
            logits, upd = model.apply({"params": p, "quant_stats": stats}, x, mutable=["quant_stats"])
            return ce(logits, y), upd["quant_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return loss, grads, optax.apply_updates(params, updates), stats, opt_state

    losses, first = [], None
    for x, y in zip(xs, ys):
        loss, grads, params, stats, opt_state = step(params, stats, opt_state, x, y)
        losses.append(loss)
        first = grads if first is None else first
    return losses, first, params, stats


def linen_pairs(q_params, q_stats, r_params, r_stats, layers, op, scheme):
    out = []
    for i, name in enumerate(layers):
        layer_op = "dot_general0" if name.startswith(("l", "head")) else op
        out += [(f"{name}/{p}", q_params[name][p], r_params[name][p]) for p in ("kernel", "bias")]
        sides = [("rhs", "weight_quant")] + ([] if i == 0 else [("lhs", "input_quant")])
        for side, sub in sides:
            if scheme == "paper":
                out.append(
                    (f"{name}/{sub}/alpha", q_params[name][f"{layer_op}_{side}"]["alpha"], r_params[name][sub]["alpha"])
                )
            else:
                q, r = q_stats[name][f"{layer_op}_{side}"], r_stats[name][sub]
                out += [(f"{name}/{sub}/{s}", q[s], r[s]) for s in STATS]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["signed", "paper"])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_linen_model_through_provider_equals_apot_layers(arch, scheme):
    if arch == "mlp":
        model, ref, layers, shape = LinenMLP(), ApotLinenMLP(scheme), ["l0", "l1"], (8, 12)
    else:
        model, ref, layers, shape = LinenCNN(), ApotLinenCNN(scheme), ["c0", "c1", "head"], (4, 8, 8, 1)
    xs, ys = data(shape)
    qm = qwix.quantize_model(model, ApotQatProvider(rules_for(scheme, layers[0])))
    q_vars = jax.jit(qm.init)(jax.random.key(0), xs[0])
    r_vars = jax.jit(ref.init)(jax.random.key(1), xs[0])
    r_vars = dict(r_vars)
    r_params = {
        name: {
            **r_vars["params"][name],
            "kernel": q_vars["params"][name]["kernel"],
            "bias": q_vars["params"][name]["bias"],
        }
        for name in layers
    }
    r_vars["params"] = r_params
    assert all(
        float(s["max_val"]) == -np.inf for layer in q_vars.get("quant_stats", {}).values() for s in layer.values()
    )

    q_losses, q_grads, q_params, q_stats = train_linen(qm, q_vars, xs, ys)
    r_losses, r_grads, r_params, r_stats = train_linen(ref, r_vars, xs, ys)
    for i, (a, b) in enumerate(zip(q_losses, r_losses)):
        assert_bitwise(a, b, f"loss {i}")
    for name in layers:
        assert_bitwise(q_grads[name]["kernel"], r_grads[name]["kernel"], f"{name} kernel grad")
    op = "conv_general_dilated0"
    for what, a, b in linen_pairs(q_params, q_stats, r_params, r_stats, layers, op, scheme):
        assert_bitwise(a, b, what)

    # evaluation with frozen observers: set_flags on either layout, read-only apply
    x = xs[0] * 3.0
    q_eval = qm.apply(set_flags({"params": q_params, "quant_stats": q_stats}, observer=False), x)
    r_eval = ref.apply(set_flags({"params": r_params, "quant_stats": r_stats}, observer=False), x)
    assert_bitwise(q_eval, r_eval, "eval logits")


# --------------------------------------------------------------------------
# A transformer block with multi-head attention (the einsum path)


class NNXBlock(nnx.Module):
    def __init__(self, rngs):
        # dropout_rate > 0 (off with deterministic=True) selects Flax's einsum
        # attention instead of jax.nn.dot_product_attention
        self.attn = nnx.MultiHeadAttention(2, 8, qkv_features=8, dropout_rate=0.1, decode=False, rngs=rngs)
        self.mlp = nnx.Linear(8, 8, rngs=rngs)
        self.head = nnx.Linear(8, 10, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(x, deterministic=True)
        x = x + nnx.relu(self.mlp(x))
        return self.head(x.mean(axis=1))


class LinenBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = x + nn.MultiHeadDotProductAttention(2, qkv_features=8, dropout_rate=0.1, name="attn")(
            x, x, deterministic=True
        )
        x = x + nn.relu(nn.Dense(8, name="mlp")(x))
        return nn.Dense(10, name="head")(x.mean(axis=1))


BLOCK_RULES = [
    ApotRule(module_path=".*", op_names=("einsum",), weight_bits=None, act_bits=4, act_scheme="signed"),
    ApotRule(module_path=".*", op_names=("dot_general",), weight_bits=4, weight_k=2),
]
SIGNED_4 = apot_quantizer(4, 2, True)


def _fq(x, stats, name):
    """apot's pure step with observer and fake quant on; records the new stats."""
    mn, mx = stats.get(name, (jnp.float32(jnp.inf), jnp.float32(-jnp.inf)))
    y, mn, mx = fake_quant_step(x, mn, mx, 1, 1, SIGNED_4)
    stats[name] = (mn, mx)
    return y


def reference_block_loss(apply_float, params, stats, x, y):
    """The float model on apot-fake-quantized kernels (every dot_general's
    param) and attention einsum operands; returns (loss, new stats)."""
    new = dict(stats)
    real_einsum = jnp.einsum
    count = [0]

    def einsum(spec, a, b, **kwargs):
        n = count[0]
        count[0] += 1
        return real_einsum(spec, _fq(a, new, f"einsum{n}_lhs"), _fq(b, new, f"einsum{n}_rhs"), **kwargs)

    qparams = jax.tree_util.tree_map_with_path(
        lambda path, p: _fq(p, new, jax.tree_util.keystr(path)) if path[-1].key == "kernel" else p, params
    )
    with unittest.mock.patch.object(jnp, "einsum", einsum):
        loss = ce(apply_float(qparams, x), y)
    return loss, new


def train_reference(apply_float, params, xs, ys):
    """STEPS jitted adam steps of the reference (jitted like the provider's:
    XLA fuses differently from op-by-op dispatch)."""
    tx = optax.adam(1e-2)

    @jax.jit
    def step(params, stats, opt_state, x, y):
        (loss, stats), grads = jax.value_and_grad(
            lambda p: reference_block_loss(apply_float, p, stats, x, y), has_aux=True
        )(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return loss, optax.apply_updates(params, updates), stats, opt_state

    # every statistic from the start, unobserved (what _fq assumes for a new
    # name): the stats keep one structure, so the step compiles once
    _, names = jax.eval_shape(lambda p: reference_block_loss(apply_float, p, {}, xs[0], ys[0]), params)
    stats = {name: (jnp.float32(jnp.inf), jnp.float32(-jnp.inf)) for name in names}
    opt_state, losses = tx.init(params), []
    for x, y in zip(xs, ys):
        loss, params, stats, opt_state = step(params, stats, opt_state, x, y)
        losses.append(loss)
    return losses, params, stats


@pytest.mark.slow
def test_nnx_transformer_block_einsum_path():
    model = NNXBlock(nnx.Rngs(0))
    xs, ys = data((2, 5, 8))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    float_params = jax.tree.map(jnp.asarray, nnx.to_pure_dict(params))

    def apply_float(p, x):
        state = nnx.State(jax.tree.map(lambda v: v, params))
        nnx.replace_by_pure_dict(state, p)
        return nnx.merge(graphdef, state, rest)(x)

    r_losses, r_params, r_stats = train_reference(apply_float, float_params, xs, ys)
    qm = qwix.quantize_model(model, ApotQatProvider(BLOCK_RULES), xs[0])
    q_losses, _ = train_nnx(qm, xs, ys)
    for i, (a, b) in enumerate(zip(q_losses, r_losses)):
        assert_bitwise(a, b, f"loss {i}")
    # Params are not compared after several steps: the two programs fuse
    # adam's update differently (1-2 ulp apart, measured); every loss above
    # depends on the previous steps' params and is bitwise equal.
    for n in range(2):  # both attention einsums, both operands (activations)
        for side in ("lhs", "rhs"):
            sub = getattr(qm.attn, f"einsum{n}_{side}")
            mn, mx = r_stats[f"einsum{n}_{side}"]
            assert_bitwise(sub.min_val[...], mn, f"einsum{n}_{side} min")
            assert_bitwise(sub.max_val[...], mx, f"einsum{n}_{side} max")
    assert_bitwise(
        qm.attn.query.dot_general0_rhs.max_val[...], r_stats["['attn']['query']['kernel']"][1], "query kernel max"
    )


@pytest.mark.slow
def test_linen_transformer_block_einsum_path():
    model = LinenBlock()
    xs, ys = data((2, 5, 8))
    params = jax.jit(model.init)(jax.random.key(0), xs[0])["params"]
    r_losses, r_params, r_stats = train_reference(lambda p, x: model.apply({"params": p}, x), params, xs, ys)
    qm = qwix.quantize_model(model, ApotQatProvider(BLOCK_RULES))
    q_vars = jax.jit(qm.init)(jax.random.key(0), xs[0])
    jax.tree.map(lambda a, b: assert_bitwise(a, b, "init params"), q_vars["params"], params)
    q_losses, _, q_params, q_stats = train_linen(qm, q_vars, xs, ys)
    for i, (a, b) in enumerate(zip(q_losses, r_losses)):
        assert_bitwise(a, b, f"loss {i}")
    for n in range(2):
        for side in ("lhs", "rhs"):
            mn, mx = r_stats[f"einsum{n}_{side}"]
            assert_bitwise(q_stats["attn"][f"einsum{n}_{side}"]["min_val"], mn, f"einsum{n}_{side} min")
            assert_bitwise(q_stats["attn"][f"einsum{n}_{side}"]["max_val"], mx, f"einsum{n}_{side} max")


# --------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(weight_bits=0), "b must be an integer >= 1"),
        (dict(weight_bits=4, weight_k=3), "multiple of k"),
        (dict(weight_bits=4, weight_scheme="nf4"), "weight_scheme"),
        (dict(weight_bits=None, act_bits=4, act_scheme="sign-magnitude"), "act_scheme"),
        (dict(weight_bits=4, weight_scheme="sign-magnitude", weight_k=2), "k"),
        (dict(weight_bits=4, weight_per_channel=True), "weight_per_channel"),
        (dict(weight_bits=None), "quantizes something"),
        (dict(weight_bits=4, act_bits=2.5), "integer"),
        (dict(weight_bits=4, weight_qtype=jnp.int8), "weight_qtype"),
        (dict(weight_bits=4, op_names=("ragged_dot",)), "op_names"),
        (dict(weight_bits=True), "integer"),
    ],
)
def test_bad_rule_is_refused_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ApotRule(**kwargs)


def test_provider_refuses_foreign_rules():
    with pytest.raises(TypeError, match="ApotRule"):
        ApotQatProvider([qwix.QtRule(weight_qtype=jnp.int8)])


def test_integer_operand_is_refused_with_its_op():
    class IntDot(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones((3, 2), jnp.float32))

        def __call__(self, x):
            return jax.lax.dot_general(x, self.w[...].astype(jnp.int32), (((1,), (0,)), ((), ())))

    provider = ApotQatProvider([ApotRule(weight_bits=4)])
    with pytest.raises(TypeError, match="dot_general operand of dtype int32"):
        qwix.quantize_model(IntDot(), provider, jnp.ones((1, 3), jnp.int32))


def test_three_operand_einsum_is_refused():
    class Tri(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones((3, 3)))

        def __call__(self, x):
            return jnp.einsum("ij,jk,kl->il", x, self.w[...], self.w[...])

    with pytest.raises(ValueError, match="two operands"):
        qwix.quantize_model(Tri(), ApotQatProvider([ApotRule(weight_bits=4)]), jnp.ones((2, 3)))


def test_state_of_another_configuration_is_refused():
    x = jnp.ones((2, 4))
    qm = qwix.quantize_model(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), ApotQatProvider([ApotRule(weight_bits=4)]), x)
    with pytest.raises(ValueError, match="another configuration"):
        qwix.quantize_model(qm, ApotQatProvider([ApotRule(weight_bits=2, weight_k=1)]), x)


def test_linen_stats_of_another_layout_are_refused():
    model = qwix.quantize_model(LinenMLP(), ApotQatProvider([ApotRule(weight_bits=4)]))
    x = jnp.ones((2, 12))
    variables = model.init(jax.random.key(0), x)
    bad = jax.tree.map(lambda v: v, dict(variables))
    bad["quant_stats"] = {"l0": {"dot_general0_rhs": {"min_val": jnp.float32(0)}}, "l1": variables["quant_stats"]["l1"]}
    with pytest.raises(ValueError, match="dot_general0_rhs has entries"):
        model.apply(bad, x)


def test_qwix_rule_takes_configs():
    """``ApotRule(weight=..., act=...)``: the provider quantizes an unmodified
    nnx.Linear exactly as an apot layer built from the same configs."""

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
