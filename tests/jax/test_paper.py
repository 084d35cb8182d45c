"""apot_jax.paper: the paper recipe's functions (sign-magnitude qparams and
codes, ties, the reciprocal, the learnable alpha's gradient, per-channel,
weight normalization, ``fit_alpha``) against ``tests/reference_paper.py``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apot_common.tables import sign_magnitude_table
from apot_jax import paper
from apot_jax.fake_quantize_module import LearnableAPoTFakeQuantize
from tests.helpers import bits, pad_to_bucket
from tests.reference import adversarial_inputs
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


FIT_CASES = [(2, 1, "unsigned"), (4, 2, "unsigned"), (2, 1, "sign-magnitude"), (3, 2, "sign-magnitude")]


def fit_inputs(seed: int, scheme: str) -> np.ndarray:
    """A long-tailed (Student t, 3 dof) sample, ReLU'd for activations."""
    x = np.random.default_rng(seed).standard_t(3, size=(20, 30)).astype(np.float32)
    return np.maximum(x, 0) if scheme == "unsigned" else x


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
        x = pad_to_bucket(adversarial_inputs(np.float32(alpha), levels, rng, n_random=300))
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
