"""apot_torch.paper: the paper recipe's functions (sign-magnitude qparams and
codes, ties, the reciprocal, the learnable alpha's gradient, per-channel,
weight normalization, ``fit_alpha``, wide integer codes) against
``tests/reference_paper.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import apot_torch.paper as tpaper
from apot_torch import paper
from apot_torch.fake_quantize_module import LearnableAPoTFakeQuantize
from tests.helpers import bits
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

CONFIGS = [(2, 1), (3, 2), (4, 1), (4, 3), (5, 2), (6, 1)]


ALPHAS = [1.0, 2.7182817, 3e-37, 2e38, 0.0]


@pytest.mark.parametrize("b, k", CONFIGS, ids=lambda v: str(v))
def test_qparams_codes_and_rounding_match_the_reference(b, k):
    rng = np.random.default_rng(b * 10 + k)
    for alpha in ALPHAS:
        gamma, levels, _ = reference_sign_magnitude(alpha, b, k)
        qp = paper.sign_magnitude_qparams(torch.tensor(alpha, dtype=torch.float32), b=b, k=k)
        assert bits(qp.gamma) == bits(gamma)
        assert np.array_equal(bits(qp.quantization_levels), bits(levels))
        x = adversarial_inputs(np.float32(alpha), levels, rng, n_random=300)
        ref_codes, ref_values = reference_sm_quantize(x, alpha, b, k)
        codes = paper.quantize(torch.from_numpy(x), qp)
        assert codes.dtype == torch.int32 and np.array_equal(codes.numpy(), ref_codes)
        assert np.array_equal(bits(paper.quant_dequant(torch.from_numpy(x), qp)), bits(ref_values))
        assert np.array_equal(bits(paper.dequantize(codes, qp)), bits(ref_values))


def test_ties_and_bad_configurations():
    qp = paper.sign_magnitude_qparams(torch.tensor(1.0), b=3, k=2)
    x = torch.tensor([-0.75, 0.75, -0.125, 0.125])
    assert paper.quant_dequant(x, qp).tolist() == [-1.0, 0.5, -0.25, 0.0]
    for b, k in [(1, 1), (4, 2), (3, 3)]:
        with pytest.raises(ValueError):
            LearnableAPoTFakeQuantize(b, k)
    with pytest.raises(TypeError):
        paper.dequantize(torch.zeros(3), qp)


def test_reciprocal_is_correctly_rounded():
    rng = np.random.default_rng(0)
    alpha = np.concatenate(
        [rng.uniform(0, 8, 3000), np.exp(rng.uniform(-80, 80, 3000)), [1.0, 3.0, 3e38]]
    ).astype(np.float32)
    assert np.array_equal(bits(paper.reciprocal(torch.from_numpy(alpha))), bits(reference_reciprocal(alpha)))


@pytest.mark.parametrize("b, k", [(2, 1), (3, 2), (5, 2)])
def test_alpha_gradient_is_the_reference_bit_for_bit(b, k):
    rng = np.random.default_rng(b)
    alpha = np.float32(0.83)
    _, levels, _ = reference_sign_magnitude(alpha, b, k)
    x = adversarial_inputs(alpha, levels, rng, n_random=500)
    x = x[np.isfinite(x)]
    dy = rng.normal(size=x.shape).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    at = torch.tensor(alpha, requires_grad=True)
    y = paper.learnable_fake_quantize(xt, at, b=b, k=k)
    (y * torch.from_numpy(dy)).sum().backward()
    g = reference_alpha_grad_elements(x, alpha, y.detach().numpy())
    assert np.array_equal(bits(paper.alpha_grad_elements(torch.from_numpy(x), at.detach(), y.detach())), bits(g))
    assert bits(at.grad) == bits(reference_pairwise_sum(dy * g))
    assert np.array_equal(bits(xt.grad), bits(np.where(np.abs(x) <= alpha, dy, 0)))


@pytest.mark.parametrize("b, k", [(3, 2), (5, 2), (8, 1)])
def test_per_channel_is_the_reference_on_every_channel(b, k):
    """The batched per-channel search against the reference, channel by
    channel, on adversarial inputs (midpoints, +-alpha, specials), with zero
    and negative (NaN levels) alphas among the channels, on a middle axis."""
    rng = np.random.default_rng(b)
    alphas = np.array([1.0, 2.7182817, 0.0, 3e-37, 0.01, -1.0], np.float32)
    rows = []
    for a in alphas:
        _, levels, _ = reference_sign_magnitude(max(float(a), 0.0), b, k)
        rows.append(adversarial_inputs(np.float32(abs(a)), levels, rng, n_random=50)[:200])
    n = min(r.size for r in rows) // 2 * 2
    x = np.stack([r[:n] for r in rows]).reshape(len(alphas), -1, 2)  # (C, n/2, 2)
    x = np.ascontiguousarray(np.moveaxis(x, 0, 1))  # channel axis 1
    qp = paper.sign_magnitude_qparams(torch.from_numpy(alphas), b=b, k=k)
    xt = torch.from_numpy(x)
    codes = paper.quantize(xt, qp, channel_axis=1)
    values = paper.quant_dequant(xt, qp, channel_axis=1)
    assert codes.shape == xt.shape and codes.dtype == torch.int32
    for c, a in enumerate(alphas):
        if a < 0:  # negative alpha: NaN levels, NaN code everywhere
            assert (codes[:, c] == -(2 ** (b - 1))).all() and torch.isnan(values[:, c]).all()
            continue
        ref_codes, ref_values = reference_sm_quantize(x[:, c].reshape(-1), float(a), b, k)
        assert np.array_equal(codes[:, c].numpy().reshape(-1), ref_codes)
        assert np.array_equal(bits(values[:, c]).reshape(-1), bits(ref_values))
        back = paper.dequantize(codes, qp, channel_axis=1)[:, c]
        assert np.array_equal(bits(back).reshape(-1), bits(ref_values))


def test_per_channel_and_normalization():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(5, 12)).astype(np.float32) * 0.1
    alpha = rng.uniform(0.5, 2.5, 5).astype(np.float32)
    qp = paper.sign_magnitude_qparams(torch.from_numpy(alpha), b=3, k=2)
    codes = paper.quantize(torch.from_numpy(w), qp, channel_axis=0)
    for c in range(5):
        assert np.array_equal(codes[c].numpy(), reference_sm_quantize(w[c], alpha[c], 3, 2)[0])
    w_hat, mean, std = paper.normalize_weight(torch.from_numpy(w))
    ref_hat, ref_mean, ref_std = reference_normalize(w)
    assert bits(mean[0, 0]) == bits(ref_mean) and bits(std[0, 0]) == bits(ref_std)
    assert np.array_equal(bits(w_hat), bits(ref_hat))
    hat_c = paper.normalize_weight(torch.from_numpy(w), channel_axis=0)[0]
    assert np.array_equal(bits(hat_c[2]), bits(reference_normalize(w[2])[0]))
    with pytest.raises(ValueError, match="per-channel alpha"):
        paper.quantize(torch.from_numpy(w), qp, channel_axis=1)


@pytest.mark.parametrize(
    "b, k, scheme", [(2, 1, "unsigned"), (4, 2, "unsigned"), (2, 1, "sign-magnitude"), (3, 2, "sign-magnitude")]
)
def test_fit_alpha_is_the_brute_force_least_squares_choice(b, k, scheme):
    x = np.random.default_rng(b + k).standard_t(3, size=(20, 30)).astype(np.float32)
    x = np.maximum(x, 0) if scheme == "unsigned" else x
    xt = torch.from_numpy(x.copy())
    alpha = paper.fit_alpha(xt, b=b, k=k, scheme=scheme, candidates=24)
    assert alpha.dtype == torch.float32 and alpha.shape == ()
    assert bits(alpha) == bits(reference_fit_alpha(x, b, k, scheme, 24))
    if b == 2:  # few levels: clipping the long tail pays
        assert 0 < float(alpha) < 0.75 * float(np.abs(x).max())
    assert np.array_equal(xt.numpy(), x)  # input untouched
    # seeding a learnable module's alpha with it
    module = LearnableAPoTFakeQuantize(b, k, scheme=scheme, normalize=False)
    with torch.no_grad():
        module.alpha.copy_(alpha)
    y = module(xt)
    expected = paper.learnable_fake_quantize(xt, alpha, b=b, k=k, scheme=scheme)
    assert np.array_equal(bits(y), bits(expected))


def test_fit_alpha_per_channel_is_the_per_tensor_fit_of_each_channel():
    weight = np.random.default_rng(4).standard_t(3, size=(6, 40)).astype(np.float32)
    weight[2] *= 50
    alpha = paper.fit_alpha(torch.from_numpy(weight), b=3, k=2, scheme="sign-magnitude", channel_axis=0, candidates=24)
    assert alpha.shape == (6,) and alpha.dtype == torch.float32
    for c in range(6):
        assert bits(alpha[c]) == bits(reference_fit_alpha(weight[c], 3, 2, "sign-magnitude", 24))
    with pytest.raises(ValueError, match="per-channel"):
        paper.fit_alpha(torch.from_numpy(weight), b=2, k=1, channel_axis=0)
    weight[4] = 0
    with pytest.raises(ValueError, match="positive magnitude"):
        paper.fit_alpha(torch.from_numpy(weight), b=2, k=1, scheme="sign-magnitude", channel_axis=0)


def test_fit_alpha_refuses_bad_input():
    x = torch.ones(4)
    for bad, match in [
        (torch.zeros(3), "positive value"),
        (-x, "positive value"),
        (torch.tensor([1.0, float("nan")]), "finite"),
        (torch.zeros(0), "non-empty"),
    ]:
        with pytest.raises(ValueError, match=match):
            paper.fit_alpha(bad, b=2, k=1)
    with pytest.raises(ValueError, match="candidates"):
        paper.fit_alpha(x, b=2, k=1, candidates=0)
    with pytest.raises(ValueError, match="scheme"):
        paper.fit_alpha(x, b=2, k=1, scheme="signed")
    with pytest.raises(TypeError, match="floating"):
        paper.fit_alpha(torch.ones(3, dtype=torch.int32), b=2, k=1)
    assert float(paper.fit_alpha(torch.tensor(2.5), b=2, k=1, candidates=1)) == 2.5


def test_wide_integer_codes_are_range_checked_before_any_cast():
    """Codes beyond int32 are out of range (NaN), not wrapped onto a valid code."""
    qp = tpaper.sign_magnitude_qparams(torch.tensor(1.0), b=3, k=2)
    codes = torch.tensor([1, 2**32 + 1, -(2**40)], dtype=torch.int64)
    out = tpaper.dequantize(codes, qp)
    assert out[0] == tpaper.dequantize(torch.tensor([1], dtype=torch.int32), qp)[0] and torch.isnan(out[1:]).all()
