"""apot_torch's paper recipe (``apot_torch.paper``, ``apot_torch.export``,
``LearnableAPoTFakeQuantize`` and the paper qconfigs) against the brute-force
reference of ``tests/reference_paper.py``, bit for bit (matmuls excepted)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.ao.quantization import prepare_qat

from apot_torch import export, paper, qconfig
from apot_torch.fake_quantize_module import LearnableAPoTFakeQuantize, SignMagnitudeFakeQuantize
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

CONFIGS = [(2, 1), (3, 2), (4, 1), (4, 3), (5, 2), (6, 1)]
ALPHAS = [1.0, 2.7182817, 3e-37, 2e38, 0.0]


def bits(a) -> np.ndarray:
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a
    return np.asarray(a, np.float32).view(np.int32)


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


def test_learnable_module_in_a_qat_model():
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU())
    model.train()
    model.qconfig = qconfig.apot_paper_qconfig_3bit
    qat = prepare_qat(model)
    fq = qat[0].weight_fake_quant
    assert isinstance(fq, LearnableAPoTFakeQuantize) and fq.b == 3 and fq.k == 2
    assert "0.weight_fake_quant.alpha" in dict(qat.named_parameters())
    act = qat[0].activation_post_process  # the paper learns the activations' alpha too
    assert isinstance(act, LearnableAPoTFakeQuantize) and (act.b, act.k, act.scheme) == (3, 1, "unsigned")
    out = qat(torch.rand(4, 16) * 8)
    out.sum().backward()
    assert fq.alpha.grad is not None and torch.isfinite(fq.alpha.grad)
    assert act.alpha.grad is not None and torch.isfinite(act.alpha.grad)
    assert torch.unique(qat[0](torch.rand(64, 16) * 8)).numel() <= 8  # 3-bit unsigned levels
    # 2-bit: ternary weights
    weights = LearnableAPoTFakeQuantize(2, 1, alpha_init=1.0)(torch.randn(64, 3))
    assert torch.unique(weights).numel() <= 3
    per_channel = LearnableAPoTFakeQuantize(3, 2, channel_axis=0, channels=8)
    assert per_channel.alpha.shape == (8,) and per_channel(torch.randn(8, 16)).shape == (8, 16)
    per_channel.disable_fake_quant()
    x = torch.randn(8, 16)
    assert per_channel(x) is x
    state = per_channel.state_dict()
    assert set(state) >= {"alpha", "fake_quant_enabled", "observer_enabled"}
    with pytest.raises(ValueError, match="channels"):
        LearnableAPoTFakeQuantize(3, 2, channel_axis=0)


@pytest.mark.parametrize("b, k", [(3, 2), (2, 1), (5, 2)])
def test_observed_sign_magnitude_module_matches_the_reference(b, k):
    rng = np.random.default_rng(b)
    fq = SignMagnitudeFakeQuantize(b, k)
    first = rng.normal(size=(40, 9)).astype(np.float32)
    fq(torch.from_numpy(first))
    alpha = np.float32(np.abs(first).max())
    assert bits(fq.alpha) == bits(alpha)
    x = rng.normal(size=(300,)).astype(np.float32) * 1.5  # inside and beyond alpha
    x[:4] = [np.nan, -np.inf, 1e-40, -alpha]
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    fq.disable_observer()  # keep alpha: the reference needs it fixed
    y = fq(xt)
    _, ref_values = reference_sm_quantize(x, float(alpha), b, k)
    assert np.array_equal(bits(y), bits(ref_values))
    assert np.array_equal(xt.detach().numpy().view(np.int32), x.view(np.int32))  # input untouched
    dy = torch.from_numpy(rng.normal(size=x.shape).astype(np.float32))
    y.backward(dy)
    mag = np.where(np.abs(x) < np.finfo(np.float32).tiny, 0, np.abs(x))
    assert np.array_equal(xt.grad.numpy(), np.where(mag <= alpha, dy.numpy(), 0).astype(np.float32))
    # qparams and state
    qp = fq.calculate_qparams()
    _, ref_levels, _ = reference_sign_magnitude(float(alpha), b, k)
    assert np.array_equal(bits(qp.quantization_levels), bits(ref_levels))
    twin = SignMagnitudeFakeQuantize(b, k)
    twin.load_state_dict(fq.state_dict())
    assert np.array_equal(bits(twin(torch.from_numpy(x))), bits(ref_values))
    with pytest.raises(RuntimeError, match="no qparams"):
        fresh = SignMagnitudeFakeQuantize(b, k)
        fresh.disable_observer()
        fresh(torch.ones(3))
    with pytest.raises(ValueError):
        SignMagnitudeFakeQuantize(4, 2)


def test_sign_magnitude_qconfig_prepares_a_qat_model():
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU())
    model.train()
    model.qconfig = qconfig.apot_sign_magnitude_qconfig_3bit
    qat = prepare_qat(model)
    fq = qat[0].weight_fake_quant
    assert isinstance(fq, SignMagnitudeFakeQuantize) and (fq.b, fq.k) == (3, 2)
    qat(torch.rand(4, 16)).sum().backward()
    w = fq(qat[0].weight.detach())
    assert torch.unique(w).numel() <= 7 and bool((w < 0).any())  # signed, 3 bits
    assert qat[0].weight.grad is not None


@pytest.mark.parametrize("b, k, per_channel", [(3, 2, False), (2, 1, True), (5, 2, True)])
def test_export_matches_the_fake_quant_layer(b, k, per_channel):
    rng = np.random.default_rng(b)
    weight = torch.from_numpy(rng.normal(size=(6, 20)).astype(np.float32) * 0.1)
    alpha = torch.from_numpy(rng.uniform(0.8, 2.5, 6 if per_channel else ()).astype(np.float32))
    bias = torch.from_numpy(rng.normal(size=6).astype(np.float32))
    fq = paper.paper_weight_quant(weight, alpha, b=b, k=k, channel_axis=0 if per_channel else None)
    exported = export.export_weight(weight, alpha, b=b, k=k, per_channel=per_channel, bias=bias)
    assert exported.codes.dtype == torch.int8 and exported.code_bytes() == -(-120 * b // 8)
    assert torch.equal(export.dequantize_weight(exported), fq)
    x = torch.from_numpy(rng.normal(size=(3, 20)).astype(np.float32))
    assert torch.equal(export.linear_from_codes(x, exported), torch.nn.functional.linear(x, fq, bias))
    x_int = torch.from_numpy(rng.integers(-50, 50, size=(3, 20)))
    integer, d = export.integer_weights(exported)
    assert torch.equal(export.shift_add_matmul(x_int, exported), x_int @ integer.T)
    with pytest.raises(ValueError, match="NaN"):
        export.export_weight(weight.index_put((torch.tensor(0), torch.tensor(0)), torch.tensor(float("nan"))),
                             alpha, b=b, k=k, normalize=False, per_channel=per_channel)  # fmt: skip


@pytest.mark.parametrize("per_channel", [False, True])
def test_conv_export_matches_the_fake_quant_conv(per_channel):
    rng = np.random.default_rng(8)
    weight = torch.from_numpy(rng.normal(size=(4, 3, 3, 3)).astype(np.float32) * 0.2)
    alpha = torch.from_numpy(rng.uniform(0.8, 2.5, 4 if per_channel else ()).astype(np.float32))
    bias = torch.from_numpy(rng.normal(size=4).astype(np.float32))
    fq = paper.paper_weight_quant(weight, alpha, b=3, k=2, channel_axis=0 if per_channel else None)
    exported = export.export_weight(weight, alpha, b=3, k=2, per_channel=per_channel, bias=bias)
    assert exported.codes.shape == (4, 3, 3, 3) and exported.codes.dtype == torch.int8
    assert tuple(exported.scale.shape) == ((4, 1, 1, 1) if per_channel else (1, 1, 1, 1))
    assert torch.equal(export.dequantize_weight(exported), fq)
    x = torch.from_numpy(rng.normal(size=(2, 3, 6, 6)).astype(np.float32))
    expected = torch.nn.functional.conv2d(x, fq, bias, stride=2, padding=1)
    assert torch.equal(export.conv_from_codes(x, exported, stride=2, padding=1), expected)
    with pytest.raises(ValueError, match="2-D"):
        export.linear_from_codes(x, exported)
    with pytest.raises(ValueError, match="3-D to 5-D"):
        export.conv_from_codes(x, export.export_weight(weight[:, :, 0, 0], alpha, b=3, k=2, per_channel=per_channel))


@pytest.mark.parametrize("b, k", [(4, 2), (3, 1), (2, 2), (8, 2)])
def test_learnable_activation_alpha_is_the_reference(b, k):
    rng = np.random.default_rng(20 + b)
    alpha = np.float32(1.37)
    _, _, levels, indices = reference_qparams(0.0, alpha, b, k, False)
    x = adversarial_inputs(alpha, levels, rng, n_random=500)
    x = np.concatenate([x, -x[:200]])
    x = np.where(np.isfinite(x), x, 0).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    _, ref_y = reference_quantize(x, alpha, levels, indices)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    at = torch.tensor(alpha, requires_grad=True)
    y = paper.learnable_fake_quantize(xt, at, b=b, k=k, scheme="unsigned")
    assert np.array_equal(bits(y), bits(ref_y))
    y.backward(torch.from_numpy(dy))
    ref_g = reference_alpha_grad_elements(x, alpha, ref_y, unsigned=True)
    g = paper.alpha_grad_elements(torch.from_numpy(x), torch.tensor(alpha), torch.from_numpy(ref_y), "unsigned")
    assert np.array_equal(bits(g), bits(ref_g))
    mag = np.where(np.abs(x) < np.finfo(np.float32).tiny, 0, np.abs(x))
    assert np.array_equal(bits(xt.grad), bits(np.where(mag <= alpha, dy, 0)))
    assert bits(at.grad) == bits(reference_pairwise_sum(dy * ref_g))
    # the module
    module = LearnableAPoTFakeQuantize(b, k, scheme="unsigned", normalize=False, alpha_init=float(alpha))
    assert np.array_equal(bits(module(torch.from_numpy(x))), bits(ref_y))
    assert np.array_equal(bits(module.calculate_qparams()[2]), bits(levels))
    with pytest.raises(ValueError, match="normalize"):
        LearnableAPoTFakeQuantize(b, k, scheme="unsigned")


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
