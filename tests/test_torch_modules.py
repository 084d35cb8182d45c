"""apot_torch modules: APoTFakeQuantize, LinearAPoT and the prototype's qconfigs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import apot_torch as at
import apot_torch.qconfig as qc
from tests.reference import reference_qparams, reference_quantize

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


def bits(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().to(torch.float32).numpy()
    return np.asarray(a, np.float32).view(np.int32)


def data(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def assert_buffers_match_reference(fq: at.APoTFakeQuantize, mn: float, mx: float, signed: bool) -> None:
    obs = fq.activation_post_process
    alpha, gamma, levels, indices = reference_qparams(mn, mx, obs.b, obs.k, signed)
    assert bits(fq.alpha) == bits(alpha) and bits(fq.gamma) == bits(gamma)
    np.testing.assert_array_equal(bits(fq.quantization_levels), bits(levels))
    np.testing.assert_array_equal(fq.level_indices.numpy(), indices)


# --- APoTFakeQuantize


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


# --- LinearAPoT


def prototype_shift_add(codes_t: list[list[int]], activation: list[list[float]], k: int) -> list[list[int]]:
    """The prototype's LinearAPoT.matmul, loops and bin() strings included."""

    def decompose(code: int) -> list[str]:
        digits = bin(code)[2:]
        return [digits[i : i + k] for i in range(0, len(digits), k)]

    def bitshift_mul(blocks: list[str], r: int) -> int:
        product, place = 0, 0
        for block in reversed(blocks):
            for digit in reversed(block):
                if int(digit):
                    product += r << place
                place += 1
        return product

    rows, inner, cols = len(activation), len(codes_t), len(codes_t[0])
    result = [[0] * cols for _ in range(rows)]
    for i in range(rows):
        for j in range(cols):
            for kk in range(inner):
                result[i][j] += bitshift_mul(decompose(codes_t[kk][j]), int(activation[i][kk]))
    return result


@pytest.mark.parametrize("b,k", [(8, 1), (8, 2), (4, 2), (6, 3), (4, 4)])
def test_linear_equals_loop_shift_add(b, k):
    g = torch.Generator().manual_seed(b * 10 + k)
    weight = torch.randn(5, 7, generator=g)
    activation = torch.randint(-255, 256, (4, 7), generator=g).to(torch.float32) + 0.7 * torch.rand(4, 7, generator=g)
    layer = at.LinearAPoT(weight, b, k)
    expected = prototype_shift_add(layer.weight_transposed.tolist(), activation.tolist(), k)
    decomposed = layer.decompose_APoT(layer.weight_transposed)
    assert layer.matmul(decomposed, activation.trunc().to(torch.int64)).tolist() == expected
    out = layer(activation)
    assert out.dtype == torch.float32 and out.tolist() == expected  # all below 2**24: exact


def test_linear_pieces_match_the_prototype_definitions():
    layer = at.LinearAPoT(data(6, 6, seed=30), 8, 2)
    codes = torch.arange(256)
    blocks = layer.decompose_APoT(codes)
    assert blocks.shape == (256, 4)
    assert blocks[0b10_01_11_00].tolist() == [2, 1, 3, 0]
    assert torch.equal((blocks * torch.tensor([64, 16, 4, 1])).sum(-1), codes)
    r = torch.tensor([-7, 0, 3, 255])
    products = layer.bitshift_mul(blocks[:, None, :], r)
    assert torch.equal(products, codes[:, None] * r)


def test_linear_codes_and_qparams_are_the_quantizer_s():
    weight = data(8, 3, seed=31, scale=5.0)
    layer = at.LinearAPoT(weight, 4, 2)
    alpha, gamma, levels, indices = reference_qparams(float(weight.min()), float(weight.max()), 4, 2, False)
    codes, _ = reference_quantize(weight.numpy(), alpha, levels, indices)
    assert layer.weight.dtype == torch.int32 and layer.weight.shape == (8, 3)
    np.testing.assert_array_equal(layer.weight.reshape(-1).numpy(), codes)
    np.testing.assert_array_equal(bits(layer.quantization_levels), bits(levels))
    assert set(layer.state_dict()) == {"alpha", "gamma", "quantization_levels", "level_indices", "weight"}


def test_linear_prototype_test_case():
    """The prototype's own test: equal to nn.Linear with the codes as weight."""
    g = torch.Generator().manual_seed(32)
    weight = 1000 * torch.rand(5, 3, generator=g)
    activation = torch.randint(0, 255, (5, 3), generator=g, dtype=torch.float32)
    layer = at.LinearAPoT(weight, 8, 2)
    assert torch.equal(layer(activation), F.linear(activation, layer.weight.to(torch.float32)))


def test_linear_large_equals_dense():
    g = torch.Generator().manual_seed(33)
    in_features = 300
    weight = torch.randn(200, in_features, generator=g)
    activation = torch.randint(0, 256, (64, in_features), generator=g).to(torch.float32)
    layer = at.LinearAPoT(weight, 8, 2)
    out = layer(activation)
    # float64 sums of these integers are exact: the shift-add result is exact
    exact = F.linear(activation.double(), layer.weight.double())
    assert torch.equal(out, exact.to(torch.float32))
    # float32 dense: every term is >= 0, so the relative error of the sum is at
    # most in_features * 2**-24 (recursive summation bound), plus our rounding
    dense = F.linear(activation, layer.weight.to(torch.float32))
    torch.testing.assert_close(out, dense, rtol=(in_features + 1) * 2**-24, atol=0)


@pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions.*are deprecated")
def test_linear_quantized_activation():
    layer = at.LinearAPoT(data(4, 6, seed=34), 8, 2)
    act = torch.randint(0, 200, (3, 6), generator=torch.Generator().manual_seed(35)).to(torch.float32)
    q = torch.quantize_per_tensor(act, scale=1.0, zero_point=0, dtype=torch.quint8)
    assert torch.equal(layer(q), layer(act))


def test_linear_errors():
    with pytest.raises(ValueError, match="2-D weight"):
        at.LinearAPoT(torch.ones(3), 4, 2)
    with pytest.raises(ValueError, match="multiple"):
        at.LinearAPoT(torch.ones(2, 2), 4, 3)
    with pytest.raises(ValueError, match="NaN"):
        at.LinearAPoT(torch.tensor([[1.0, float("nan")]]), 4, 2)
    layer = at.LinearAPoT(data(2, 3, seed=36), 4, 2)
    with pytest.raises(ValueError, match="2-D activation"):
        layer(torch.ones(3))
    with pytest.raises(ValueError, match="finite"):
        layer(torch.tensor([[1.0, float("inf"), 0.0]]))
    with pytest.raises(ValueError, match="too large"):
        layer(torch.full((1, 3), 2.0**52))
    with pytest.raises(NotImplementedError):
        at.LinearAPoT.from_reference(None, None, None, None, None)


# --- qconfigs and QAT


def test_qconfigs_build_the_prototype_s_modules():
    from torch.ao.quantization.fake_quantize import FakeQuantize

    expected = {
        "uniform_qconfig_8bit": (None, None),
        "apot_weight_qconfig_8bit": (None, (8, False)),
        "apot_qconfig_8bit": ((8, False), (8, False)),
        "uniform_qconfig_4bit": (None, None),
        "apot_weight_qconfig_4bit": (None, (4, False)),
        "apot_qconfig_4bit": ((4, False), (4, False)),
        "apot_weight_qconfig_8bit_signed": (None, (8, True)),
        "apot_qconfig_8bit_signed": ((8, False), (8, True)),
        "apot_weight_qconfig_4bit_signed": (None, (4, True)),
        "apot_qconfig_4bit_signed": ((4, False), (4, True)),
    }
    for name, specs in expected.items():
        qconfig = getattr(qc, name)
        for make, spec, dtype in zip((qconfig.activation, qconfig.weight), specs, (torch.quint8, torch.qint8)):
            module = make()
            if spec is None:
                assert type(module) is FakeQuantize and module.qscheme == torch.per_tensor_symmetric, name
            else:
                assert isinstance(module, at.APoTFakeQuantize), name
                assert (module.activation_post_process.b, module.activation_post_process.k) == (spec[0], 2)
                assert module.signed == spec[1]
            assert module.dtype == dtype, name
    assert (qc.uniform_qconfig_4bit.activation().quant_min, qc.uniform_qconfig_4bit.activation().quant_max) == (0, 15)


@pytest.mark.parametrize("name,ratio", [("apot_qconfig_8bit_signed", 0.8), ("apot_qconfig_4bit", 0.95)])
def test_prepare_qat_trains_a_small_mlp(name, ratio):
    from torch.ao.quantization import prepare_qat

    torch.manual_seed(0)
    x = torch.randn(512, 8)
    y = (x @ torch.randn(8) > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    model.qconfig = getattr(qc, name)
    qat = prepare_qat(model.train())
    assert isinstance(qat[0].weight_fake_quant, at.APoTFakeQuantize)
    opt = torch.optim.SGD(qat.parameters(), lr=0.1)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(qat(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < ratio * losses[0], losses[::10]
    # the weights the layer used are APoT levels of its own fake quant
    fq = qat[0].weight_fake_quant
    used = fq(qat[0].weight.detach())
    assert torch.isin(used, fq.quantization_levels).all()
