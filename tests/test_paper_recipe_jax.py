"""apot_jax's paper recipe (``apot_jax.paper``, ``apot_jax.export``, the
learnable fake-quant modules and layers) against the brute-force reference
of ``tests/reference_paper.py``: bitwise for levels, codes, rounding, the
reciprocal and per-element alpha gradients; stated tolerances for sums."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from apot_common.tables import sign_magnitude_table
from apot_jax import export, paper
from apot_jax.fake_quantize_module import (
    QUANT_STATS,
    LearnableAPoTFakeQuantize,
    NNXLearnableAPoTFakeQuantize,
    NNXSignMagnitudeFakeQuantize,
    SignMagnitudeFakeQuantize,
    set_flags,
)
from apot_jax.layers import APoTConv, APoTDense, NNXAPoTConv, NNXAPoTDense
from tests.reference import adversarial_inputs, reference_qparams, reference_quantize
from tests.reference_paper import (
    reference_alpha_grad_elements,
    reference_fit_alpha,
    reference_normalize,
    reference_pairwise_sum,
    reference_reciprocal,
    reference_sign_magnitude,
    reference_sm_quantize,
)

# (b, k): ternary, the paper's 3-bit (powers of two), k = 1 and 3 at 4 bits, 5 and 6 bits
CONFIGS = [(2, 1), (3, 1), (3, 2), (4, 1), (4, 3), (5, 2), (5, 4), (6, 1)]
ALPHAS = [1.0, 2.7182817, 0.013, 3e-37, 2e38, 0.0]


def bits(a) -> np.ndarray:
    return np.asarray(a, np.float32).view(np.int32)


def test_sign_magnitude_table_has_2_to_the_b_minus_1_symmetric_levels():
    for b, k in CONFIGS:
        t = sign_magnitude_table(b, k)
        assert t.num_levels == 2**b - 1 and t.nan_code == -(2 ** (b - 1))
        assert sorted(t.code_by_position.tolist()) == list(range(-(2 ** (b - 1)) + 1, 2 ** (b - 1)))
        qp = paper.sign_magnitude_qparams(jnp.float32(1.5), b=b, k=k)
        lv = np.asarray(qp.quantization_levels)
        assert np.unique(lv).size == 2**b - 1 and np.array_equal(lv, -lv[::-1])
    ternary = paper.sign_magnitude_qparams(jnp.float32(0.75), b=2, k=1)
    assert np.asarray(ternary.quantization_levels).tolist() == [-0.75, 0.0, 0.75]


@pytest.mark.parametrize("b, k", [(1, 1), (4, 2), (6, 2), (3, 3), (3.0, 1)])
def test_bad_sign_magnitude_configurations_are_refused(b, k):
    with pytest.raises(ValueError):
        sign_magnitude_table(b, k)
    with pytest.raises(ValueError):
        LearnableAPoTFakeQuantize(b, k)


@pytest.mark.parametrize("b, k", CONFIGS, ids=lambda v: str(v))
def test_qparams_codes_and_rounding_match_the_reference(b, k):
    rng = np.random.default_rng(b * 10 + k)
    for alpha in ALPHAS:
        gamma, levels, codes = reference_sign_magnitude(alpha, b, k)
        qp = paper.sign_magnitude_qparams(jnp.float32(alpha), b=b, k=k)
        assert bits(qp.gamma) == bits(gamma)
        assert np.array_equal(bits(qp.quantization_levels), bits(levels))
        x = adversarial_inputs(np.float32(alpha), levels, rng, n_random=300)
        ref_codes, ref_values = reference_sm_quantize(x, alpha, b, k)
        got_codes = np.asarray(paper.quantize(x, qp))
        got_values = np.asarray(paper.quant_dequant(x, qp))
        assert np.array_equal(got_codes, ref_codes)
        assert np.array_equal(bits(got_values), bits(ref_values))
        # dequantize(quantize(x)) == quant_dequant(x), NaN code -> NaN
        assert np.array_equal(bits(paper.dequantize(got_codes, qp)), bits(got_values))


def test_ties_go_to_the_lower_level_on_both_sides():
    # b=3, k=2, alpha=1: levels -1, -1/2, -1/4, 0, 1/4, 1/2, 1. The midpoint
    # -3/4 ties between -1 and -1/2: the lower level is -1 (away from zero),
    # while +3/4 goes to +1/2 (towards zero): the rule is not sign-symmetric.
    qp = paper.sign_magnitude_qparams(jnp.float32(1.0), b=3, k=2)
    x = np.float32([-0.75, 0.75, -0.125, 0.125, -0.375, 0.375])
    assert np.asarray(paper.quant_dequant(x, qp)).tolist() == [-1.0, 0.5, -0.25, 0.0, -0.5, 0.25]
    assert np.asarray(paper.quantize(x, qp)).tolist() == [-1, 2, -3, 0, -2, 3]


def test_reciprocal_is_correctly_rounded():
    rng = np.random.default_rng(0)
    alpha = np.concatenate(
        [
            rng.uniform(0, 8, 3000),
            np.exp(rng.uniform(-80, 80, 3000)),
            [1.0, 2.0, 0.5, 3.0, 1.5, np.nextafter(np.float32(2), 0), np.finfo(np.float32).tiny, 3e38],
        ]
    ).astype(np.float32)
    assert np.array_equal(bits(jax.jit(paper.reciprocal)(alpha)), bits(reference_reciprocal(alpha)))
    special = np.float32([0.0, 1e-40, np.inf, -1.0, np.nan])
    got = np.asarray(paper.reciprocal(special))
    assert got[:3].tolist() == [0.0, 0.0, 0.0] and np.isnan(got[3:]).all()


@pytest.mark.parametrize("b, k", [(2, 1), (3, 2), (4, 1), (5, 2)])
def test_alpha_gradient_elements_and_sums(b, k):
    rng = np.random.default_rng(b)
    alpha = np.float32(1.37)
    _, levels, _ = reference_sign_magnitude(alpha, b, k)
    x = adversarial_inputs(alpha, levels, rng, n_random=500)
    x = x[np.isfinite(x) | np.isnan(x)]  # +-inf have sign +-1 too; keep the sum finite
    x = np.where(np.isnan(x), 0, x).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    y = np.asarray(paper.quant_dequant(x, paper.sign_magnitude_qparams(alpha, b=b, k=k)))
    g = np.asarray(paper.alpha_grad_elements(jnp.asarray(x), alpha, jnp.asarray(y)))
    ref = reference_alpha_grad_elements(x, alpha, y)
    assert np.array_equal(bits(g), bits(ref))

    def loss(x, a):
        return jnp.sum(paper.learnable_fake_quantize(x, a, b=b, k=k) * dy)

    dx, dalpha = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(x), jnp.float32(alpha))
    assert np.array_equal(bits(dx), bits(np.where(np.abs(x) <= alpha, dy, 0)))
    # the fixed-order float32 sum, bit for bit
    assert bits(dalpha) == bits(reference_pairwise_sum(dy * ref))


def test_alpha_gradient_matches_finite_differences_of_the_expected_loss():
    # The paper's gradient is that of x_hat = alpha * Pi(x / alpha) with the
    # projection Pi held fixed; a central difference of alpha * Pi_fixed(x/alpha)
    # is exactly Pi - x/alpha inside and sign(x) outside.
    x = np.float32([-3.0, -0.9, -0.2, 0.05, 0.33, 0.7, 2.5])
    alpha = np.float32(1.2)
    y = np.asarray(paper.quant_dequant(x, paper.sign_magnitude_qparams(alpha, b=3, k=2)))
    pi = np.clip(y / alpha, -1, 1).astype(np.float64)
    expected = np.where(np.abs(x) <= alpha, pi - x / np.float64(alpha), np.sign(x))
    got = np.asarray(paper.alpha_grad_elements(jnp.asarray(x), alpha, jnp.asarray(y)))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_per_channel_equals_per_tensor_on_each_channel():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(4, 9, 5)).astype(np.float32)
    alpha = rng.uniform(0.3, 2.5, 9).astype(np.float32)
    qp = paper.sign_magnitude_qparams(alpha, b=4, k=3)
    y = np.asarray(paper.quant_dequant(w, qp, channel_axis=1))
    codes = np.asarray(paper.quantize(w, qp, channel_axis=1))
    dy = rng.normal(size=w.shape).astype(np.float32)
    dalpha = jax.jit(
        jax.grad(lambda a: jnp.sum(paper.learnable_fake_quantize(w, a, b=4, k=3, channel_axis=1) * dy))
    )(alpha)
    for c in range(9):
        ref_codes, ref_values = reference_sm_quantize(w[:, c], alpha[c], 4, 3)
        assert np.array_equal(codes[:, c].ravel(), ref_codes)
        assert np.array_equal(bits(y[:, c].ravel()), bits(ref_values))
        g = reference_alpha_grad_elements(w[:, c].ravel(), alpha[c], ref_values)
        assert bits(dalpha[c]) == bits(reference_pairwise_sum(dy[:, c].ravel() * g))
    assert np.array_equal(bits(paper.dequantize(codes, qp, channel_axis=1)), bits(y))
    with pytest.raises(ValueError, match="per-channel alpha"):
        paper.quant_dequant(w, qp, channel_axis=0)
    with pytest.raises(ValueError, match="scalar alpha"):
        paper.quant_dequant(w, qp)


def test_normalize_weight():
    rng = np.random.default_rng(4)
    w = (rng.normal(size=(64, 16)) * 0.05 + 0.01).astype(np.float32)
    w_hat, mean, std = jax.jit(paper.normalize_weight)(jnp.asarray(w))
    ref_hat, ref_mean, ref_std = reference_normalize(w)
    assert bits(mean[0, 0]) == bits(ref_mean) and bits(std[0, 0]) == bits(ref_std)
    assert np.array_equal(bits(w_hat), bits(ref_hat))
    # and the statistics are what they claim to be
    np.testing.assert_allclose(float(mean[0, 0]), w.astype(np.float64).mean(), rtol=1e-5)
    np.testing.assert_allclose(float(std[0, 0]), w.astype(np.float64).std(ddof=1), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(w_hat), (w - w.mean()) / w.std(ddof=1), atol=1e-5)
    hat_c, mean_c, std_c = paper.normalize_weight(jnp.asarray(w), channel_axis=-1)
    assert mean_c.shape == (1, 16)
    assert np.array_equal(bits(hat_c[:, 5]), bits(reference_normalize(w[:, 5])[0]))
    np.testing.assert_allclose(np.asarray(std_c)[0], w.astype(np.float64).std(axis=0, ddof=1), rtol=1e-5)
    # statistics are constants for the gradient: d w_hat / d w = 1 / std
    grad = jax.jit(jax.grad(lambda v: jnp.sum(paper.normalize_weight(v)[0])))(jnp.asarray(w))
    assert np.array_equal(bits(grad), bits(np.broadcast_to(paper.reciprocal(std), w.shape)))
    assert np.array_equal(np.asarray(paper.normalize_weight(jnp.ones((3, 3)))[0]), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        paper.normalize_weight(jnp.ones((3, 1)), channel_axis=0)


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


FIT_CASES = [(2, 1, "unsigned"), (4, 2, "unsigned"), (2, 1, "sign-magnitude"), (3, 2, "sign-magnitude")]


def fit_inputs(seed: int, scheme: str) -> np.ndarray:
    """A long-tailed (Student t, 3 dof) sample, ReLU'd for activations."""
    x = np.random.default_rng(seed).standard_t(3, size=(20, 30)).astype(np.float32)
    return np.maximum(x, 0) if scheme == "unsigned" else x


@pytest.mark.parametrize("b, k, scheme", FIT_CASES)
def test_fit_alpha_is_the_brute_force_least_squares_choice(b, k, scheme):
    x = fit_inputs(b + k, scheme)
    alpha = paper.fit_alpha(jnp.asarray(x), b=b, k=k, scheme=scheme, candidates=24)
    assert alpha.dtype == jnp.float32 and alpha.shape == ()
    assert bits(alpha) == bits(reference_fit_alpha(x, b, k, scheme, 24))
    if b == 2:  # few levels: clipping the long tail pays, alpha is well below the largest value
        assert 0 < float(alpha) < 0.75 * float(np.abs(x).max())
    assert bits(paper.fit_alpha(jnp.asarray(x, jnp.bfloat16), b=b, k=k, scheme=scheme, candidates=24)) == bits(
        reference_fit_alpha(np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32), b, k, scheme, 24)
    )


def test_fit_alpha_per_channel_is_the_per_tensor_fit_of_each_channel():
    kernel = np.random.default_rng(4).standard_t(3, size=(40, 6)).astype(np.float32)
    kernel[:, 2] *= 50  # channels of very different scales
    alpha = paper.fit_alpha(jnp.asarray(kernel), b=3, k=2, scheme="sign-magnitude", channel_axis=-1, candidates=24)
    assert alpha.shape == (6,) and alpha.dtype == jnp.float32
    for c in range(6):
        assert bits(alpha[c]) == bits(reference_fit_alpha(kernel[:, c], 3, 2, "sign-magnitude", 24))
    with pytest.raises(ValueError, match="per-channel"):
        paper.fit_alpha(jnp.asarray(kernel), b=2, k=1, channel_axis=-1)
    with pytest.raises(ValueError, match="out of range"):
        paper.fit_alpha(jnp.asarray(kernel), b=2, k=1, scheme="sign-magnitude", channel_axis=2)
    kernel[:, 4] = 0
    with pytest.raises(ValueError, match="positive magnitude"):
        paper.fit_alpha(jnp.asarray(kernel), b=2, k=1, scheme="sign-magnitude", channel_axis=1)


def test_fit_alpha_refuses_bad_input():
    x = jnp.ones((4,), jnp.float32)
    for bad, match in [
        (jnp.zeros((3,)), "positive value"),
        (-x, "positive value"),
        (jnp.array([1.0, jnp.nan]), "finite"),
        (jnp.array([1.0, jnp.inf]), "finite"),
        (jnp.zeros((0,)), "non-empty"),
    ]:
        with pytest.raises(ValueError, match=match):
            paper.fit_alpha(bad, b=2, k=1)
    with pytest.raises(ValueError, match="positive magnitude"):
        paper.fit_alpha(jnp.zeros((3,)), b=3, k=2, scheme="sign-magnitude")
    with pytest.raises(ValueError, match="candidates"):
        paper.fit_alpha(x, b=2, k=1, candidates=0)
    with pytest.raises(ValueError, match="scheme"):
        paper.fit_alpha(x, b=2, k=1, scheme="signed")
    with pytest.raises(TypeError, match="floating"):
        paper.fit_alpha(jnp.ones((3,), jnp.int32), b=2, k=1)
    # one candidate: top itself, even for a scalar
    assert float(paper.fit_alpha(jnp.float32(2.5), b=2, k=1, candidates=1)) == 2.5


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
