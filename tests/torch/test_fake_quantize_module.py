"""apot_torch.fake_quantize_module: APoTFakeQuantize (buffers, observation,
flags, ``state_dict``, deepcopy, ``.to``/casts, torch.compile), the paper's
SignMagnitudeFakeQuantize and LearnableAPoTFakeQuantize, and modules built
from the typed configs. Expected values come from ``tests/reference.py`` and
``tests/reference_paper.py``."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.ao.quantization import prepare_qat

import apot_torch as at
from apot_common.config import SignMagnitudeConfig
from apot_torch import paper, qconfig
from apot_torch.fake_quantize_module import LearnableAPoTFakeQuantize, SignMagnitudeFakeQuantize
from tests.helpers import bits
from tests.reference import adversarial_inputs, reference_qparams, reference_quantize
from tests.reference_paper import (
    reference_alpha_grad_elements,
    reference_pairwise_sum,
    reference_sign_magnitude,
    reference_sm_quantize,
)
from tests.torch.helpers import data

# torch.ao.quantization warns that it is deprecated; that must not fail a run.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


STATE_KEYS = [
    "fake_quant_enabled",
    "observer_enabled",
    "alpha",
    "gamma",
    "quantization_levels",
    "level_indices",
    "activation_post_process.min_val",
    "activation_post_process.max_val",
]


def assert_buffers_match_reference(fq: at.APoTFakeQuantize, mn: float, mx: float, signed: bool) -> None:
    obs = fq.activation_post_process
    alpha, gamma, levels, indices = reference_qparams(mn, mx, obs.b, obs.k, signed)
    assert bits(fq.alpha) == bits(alpha) and bits(fq.gamma) == bits(gamma)
    np.testing.assert_array_equal(bits(fq.quantization_levels), bits(levels))
    np.testing.assert_array_equal(fq.level_indices.numpy(), indices)


def test_torch_state_dict_records_the_level_set():
    import apot_torch

    paper = apot_torch.from_config(SignMagnitudeConfig(b=4, level_set="paper"))
    paper(torch.randn(50))
    other = apot_torch.from_config(SignMagnitudeConfig(b=4))
    with pytest.raises(RuntimeError, match="level_set"):
        other.load_state_dict(paper.state_dict())


@pytest.mark.parametrize("b,signed,n_levels", [(4, False, 16), (4, True, 49), (8, False, 256), (8, True, 2401)])
def test_fake_quantize_buffers_before_observation(b, signed, n_levels):
    fq = at.APoTFakeQuantize(b=b, k=2, signed=signed)
    sd = fq.state_dict()
    assert list(sd) == STATE_KEYS
    assert sd["fake_quant_enabled"].dtype == sd["observer_enabled"].dtype == torch.uint8
    assert sd["fake_quant_enabled"].tolist() == sd["observer_enabled"].tolist() == [1]
    assert fq.alpha.shape == fq.gamma.shape == () and fq.alpha.dtype == torch.float32
    assert torch.isnan(fq.alpha) and torch.isnan(fq.gamma) and torch.isnan(fq.quantization_levels).all()
    assert fq.quantization_levels.shape == (n_levels,) and fq.quantization_levels.dtype == torch.float32
    assert fq.level_indices.shape == (n_levels,) and fq.level_indices.dtype == torch.int32
    assert fq.dtype == torch.quint8


def test_fake_quant_before_observation_is_an_error():
    fq = at.APoTFakeQuantize(b=4, k=2)
    fq.disable_observer()
    with pytest.raises(RuntimeError, match="no qparams yet"):
        fq(torch.ones(3))
    # an all-NaN first batch gives no statistics either
    fq.enable_observer()
    with pytest.raises(RuntimeError, match="no qparams yet"):
        fq(torch.full((3,), float("nan")))


@pytest.mark.parametrize("signed", [False, True])
def test_train_mode_observes_then_fake_quantizes(signed):
    fq = at.APoTFakeQuantize(b=4, k=2, signed=signed, dtype=torch.qint8)
    x1, x2 = data(50, seed=1), data(50, seed=2, scale=3.0)
    fq(x1)
    x = x2.clone().requires_grad_()
    y = fq(x)
    mn, mx = float(torch.minimum(x1.min(), x2.min())), float(torch.maximum(x1.max(), x2.max()))
    assert fq.activation_post_process.min_val == mn and fq.activation_post_process.max_val == mx
    assert_buffers_match_reference(fq, mn, mx, signed)
    alpha, _, levels, indices = reference_qparams(mn, mx, 4, 2, signed)
    _, expected = reference_quantize(x2.numpy(), alpha, levels, indices)
    np.testing.assert_array_equal(bits(y), bits(expected))
    # negative inputs keep their sign only with the signed table
    assert bool((y[x2 < -0.5] < 0).all()) == signed
    y.backward(torch.full_like(y, 2.0))
    assert torch.equal(x.grad, torch.where(x2.abs() <= float(alpha), 2.0, 0.0))


def test_calibrate_only_returns_input_and_records():
    fq = at.APoTFakeQuantize(b=8, k=2)
    fq.disable_fake_quant()
    x = data(100, seed=3)
    assert fq(x) is x
    assert_buffers_match_reference(fq, float(x.min()), float(x.max()), False)
    # an empty batch while calibrating changes nothing and is not an error
    before = {k: v.clone() for k, v in fq.state_dict().items()}
    assert fq(torch.empty(0)).shape == (0,)
    for key, value in fq.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_frozen_eval_keeps_statistics_and_qparams():
    fq = at.APoTFakeQuantize(b=4, k=2, signed=True)
    fq(data(64, seed=4))
    fq.disable_observer()
    frozen = {k: v.clone() for k, v in fq.state_dict().items()}
    wide = data(64, seed=5, scale=10.0)
    y = fq(wide)
    for key, value in fq.state_dict().items():
        if key != "observer_enabled":
            assert torch.equal(value.view(torch.int32) if value.is_floating_point() else value,
                               frozen[key].view(torch.int32) if value.is_floating_point() else frozen[key]), key
    expected = at.quant_dequant_APoT(wide, fq.alpha, fq.gamma, fq.quantization_levels, fq.level_indices)
    np.testing.assert_array_equal(bits(y), bits(expected))
    # values beyond +-alpha clip to the outer levels
    assert y.max() == fq.quantization_levels[-1] and y.min() == fq.quantization_levels[0]


def test_calculate_qparams_uses_signed_unless_overridden():
    fq = at.APoTFakeQuantize(b=4, k=2, signed=True)
    fq(data(20, seed=6))
    assert fq.calculate_qparams()[2].shape == (49,)
    assert fq.calculate_qparams(signed=False)[2].shape == (16,)
    assert isinstance(fq.calculate_qparams(), tuple)


def test_input_not_modified_by_module():
    fq = at.APoTFakeQuantize(b=8, k=2)
    x = torch.cat([data(100, seed=7), torch.tensor([float("nan"), float("inf"), -5.0])])
    before = bits(x).copy()
    fq(x)
    np.testing.assert_array_equal(bits(x), before)


def test_state_dict_round_trip_into_fresh_module():
    fq = at.APoTFakeQuantize(b=8, k=2, signed=True)
    fq(data(200, seed=8))
    fq.disable_observer()
    fresh = at.APoTFakeQuantize(b=8, k=2, signed=True)
    fresh.load_state_dict(fq.state_dict())
    assert fresh.observer_enabled.tolist() == [0]
    x = data(500, seed=9, scale=2.0)
    np.testing.assert_array_equal(bits(fresh(x)), bits(fq(x)))
    # with the observer on again both keep updating identically
    fq.enable_observer()
    fresh.enable_observer()
    x = data(500, seed=10, scale=4.0)
    np.testing.assert_array_equal(bits(fresh(x)), bits(fq(x)))


def test_deepcopy_is_independent():
    fq = at.APoTFakeQuantize(b=4, k=2)
    fq(data(30, seed=11))
    twin = copy.deepcopy(fq)
    x = data(30, seed=12)
    np.testing.assert_array_equal(bits(twin(x)), bits(fq(x)))
    twin(data(30, seed=13, scale=100.0))
    assert twin.alpha > 10 and fq.alpha < 10


def test_to_moves_and_casts_all_buffers():
    fq = at.APoTFakeQuantize(b=4, k=2)
    fq(data(30, seed=14))
    meta = copy.deepcopy(fq).to("meta")
    assert all(t.device.type == "meta" for t in meta.state_dict().values())
    # what torch.ao's QAT modules pass: the weight's device and dtype
    made = at.APoTFakeQuantize(b=4, k=2, factory_kwargs={"device": "meta", "dtype": torch.float16})
    assert all(t.device.type == "meta" for t in made.state_dict().values())
    assert made.alpha.dtype == made.activation_post_process.min_val.dtype == torch.float32
    # .double() casts the float buffers; the numerics stay float32, bit for bit
    x = data(300, seed=15).to(torch.float64)
    expected = fq(x)
    wide = copy.deepcopy(fq).double()
    assert wide.alpha.dtype == torch.float64 and wide.level_indices.dtype == torch.int32
    assert torch.equal(wide(x), expected) and expected.dtype == torch.float64


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_module_matches_cpu():
    fq = at.APoTFakeQuantize(b=8, k=2, signed=True)
    gpu = copy.deepcopy(fq).cuda()
    assert all(t.device.type == "cuda" for t in gpu.state_dict().values())
    for seed in (16, 17):
        x = data(4096, seed=seed)
        np.testing.assert_array_equal(bits(fq(x)), bits(gpu(x.cuda())))
    for key, value in fq.state_dict().items():
        assert torch.equal(value, gpu.state_dict()[key].cpu()), key


def test_invalid_bits_are_refused():
    with pytest.raises(ValueError, match="multiple"):
        at.APoTFakeQuantize(b=5, k=2)
    with pytest.raises(ValueError, match="limit"):
        at.APoTFakeQuantize(b=12, k=2, signed=True)


@pytest.mark.slow
def test_torch_compile_equals_eager():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), at.APoTFakeQuantize(b=4, k=2, signed=True), torch.nn.ReLU(),
                                at.APoTFakeQuantize(b=4, k=2))
    eager = copy.deepcopy(model)
    compiled = torch.compile(model)
    for seed in range(3):
        x = data(32, 8, seed=20 + seed, scale=seed + 1.0)
        np.testing.assert_array_equal(bits(compiled(x)), bits(eager(x)))
    for key, value in eager.state_dict().items():
        assert torch.equal(torch.nan_to_num(value), torch.nan_to_num(model.state_dict()[key])), key


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


@pytest.mark.parametrize("cast", ["half", "bfloat16", "to_float16", "to_bfloat16"])
def test_module_casts_keep_statistics_and_qparams_float32(cast):
    from apot_torch.fake_quantize_module import LearnableAPoTFakeQuantize, SignMagnitudeFakeQuantize

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(200, generator=gen) * 1.3 + 0.1234567  # statistics with more than float16's bits
    modules = [at.APoTFakeQuantize(b=4, k=2), at.APoTFakeQuantize(b=4, k=2, signed=True),
               SignMagnitudeFakeQuantize(3, 2), LearnableAPoTFakeQuantize(3, 2, alpha_init=1.2345678),
               at.APoTObserver(4, 2)]  # fmt: skip
    for m in modules:
        m(x)
    seq = torch.nn.Sequential(torch.nn.Linear(3, 3), *modules)
    before = {key: value.clone() for key, value in seq.state_dict().items()}
    expected = [m(x).detach() for m in modules]
    {"half": lambda: seq.half(), "bfloat16": lambda: seq.bfloat16(), "to_float16": lambda: seq.to(torch.float16),
     "to_bfloat16": lambda: seq.to(torch.bfloat16)}[cast]()  # fmt: skip
    assert seq[0].weight.dtype in (torch.float16, torch.bfloat16)  # other modules are cast as usual
    after = seq.state_dict()
    for key, value in before.items():
        if key.startswith("0."):
            continue
        assert after[key].dtype == value.dtype and torch.equal(after[key], value), key
    assert modules[3].alpha.dtype == torch.float32 and isinstance(modules[3].alpha, torch.nn.Parameter)
    for m, y in zip(modules, expected):
        assert torch.equal(m(x).detach(), y), type(m).__name__  # same outputs for float32 input
    assert modules[0](x.half()).dtype == torch.float16
    meta = seq.to("meta")  # still moves device
    assert all(t.device.type == "meta" for t in meta.state_dict().values())
