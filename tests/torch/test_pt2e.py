"""apot_torch.pt2e: APoT fake quant in PT2E's prepare_qat_pt2e, trained
bitwise like a model written by hand from the eager apot_torch modules."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("torchao", reason="PT2E lives in torchao (pip install 'apot[torchao]')")
from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e  # noqa: E402

import apot_torch as at  # noqa: E402
from apot_torch.pt2e import APoTQuantizer, convert  # noqa: E402
from apot_torch.torchao import APoTFakeQuantizeConfig as Cfg  # noqa: E402

CASES = [
    (
        "paper",
        Cfg(3, 2, "sign-magnitude", alpha="learnable", normalize=True, per_channel=True),
        lambda out: at.LearnableAPoTFakeQuantize(3, 2, normalize=True, channel_axis=0, channels=out),
        Cfg(3, 1, "unsigned", alpha="learnable", alpha_init=2.0),
        lambda: at.LearnableAPoTFakeQuantize(3, 1, scheme="unsigned", normalize=False, alpha_init=2.0),
    ),
    ("prototype", Cfg(4, 2, "signed"), lambda out: at.APoTFakeQuantize(b=4, k=2, signed=True), None, None),
]


class Eager(nn.Module):
    def __init__(self, model, make_w, make_a):
        super().__init__()
        self.model = copy.deepcopy(model)
        self.w = nn.ModuleList([make_w(layer.out_features) for layer in self.model if isinstance(layer, nn.Linear)])
        self.a = nn.ModuleList([make_a() for _ in self.w]) if make_a else None

    def forward(self, x):
        i = 0
        for layer in self.model:
            if isinstance(layer, nn.Linear):
                x = x if self.a is None else self.a[i](x)
                x = F.linear(x, self.w[i](layer.weight), layer.bias)
                i += 1
            else:
                x = layer(x)
        return x


def train(model, params, steps=4):
    g = torch.Generator().manual_seed(3)
    opt = torch.optim.SGD(params, lr=0.1)
    losses = []
    for _ in range(steps):
        x, y = torch.randn(16, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return losses


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_pt2e_training_matches_eager_modules(case):
    _, weight, make_w, activation, make_a = case
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    exported = torch.export.export(copy.deepcopy(model), (torch.randn(16, 8),)).module()
    prepared = prepare_qat_pt2e(exported, APoTQuantizer(weight, activation))
    ref = Eager(model, make_w, make_a)
    ours_losses = train(prepared, list(prepared.parameters()))
    ref_losses = train(ref, list(ref.parameters()))
    for a, b in zip(ours_losses, ref_losses):
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))
    for i in (0, 2):
        ours = getattr(prepared, str(i)).weight.detach()
        assert torch.equal(ours.view(torch.int32), ref.model[i].weight.detach().view(torch.int32))


def test_pt2e_quantizer_refuses_bad_config():
    with pytest.raises(ValueError, match="weight"):
        APoTQuantizer({"b": 4})
    with pytest.raises(ValueError, match="per-tensor"):
        APoTQuantizer(Cfg(4, 2, "signed"), Cfg(3, 2, "sign-magnitude", alpha="learnable", per_channel=True))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_pt2e_convert_computes_from_codes(case):
    _, weight, _, activation, _ = case
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(16, 8)
    prepared = prepare_qat_pt2e(torch.export.export(model, (x,)).module(), APoTQuantizer(weight, activation))
    train(prepared, list(prepared.parameters()), steps=2)
    prepared.apply(torch.ao.quantization.disable_observer)
    state = {k: v.clone() for k, v in prepared.state_dict().items()}
    converted = convert(prepared)
    assert sorted(dict(converted.named_parameters())) == ["0.bias", "2.bias"]  # weights are codes
    with torch.no_grad():
        expected = prepared(x)
    assert torch.equal(converted(x).view(torch.int32), expected.view(torch.int32))
    program = torch.export.export(converted, (x,))
    assert torch.equal(program.module()(x).view(torch.int32), expected.view(torch.int32))
    for key, value in prepared.state_dict().items():  # the prepared graph is not modified
        assert torch.equal(value, state[key]) or bool(torch.isnan(value).all()), key


def test_pt2e_convert_unprepared_is_an_error():
    model = torch.export.export(nn.Linear(4, 2), (torch.randn(3, 4),)).module()
    with pytest.raises(ValueError, match="no APoT fake quant"):
        convert(model)


# --------------------------------------------------------------------------
# Conv2d


def conv_model():
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 3, 3, stride=2, padding=1, bias=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3, 4),
    )


class EagerConvNet(nn.Module):
    """The reference: F.conv2d / F.linear of the eager fake quants' outputs."""

    def __init__(self, model, make_w, make_a):
        super().__init__()
        self.model = copy.deepcopy(model)
        layers = [m for m in self.model if isinstance(m, (nn.Conv2d, nn.Linear))]
        self.w = nn.ModuleList([make_w(m.weight.shape[0]) for m in layers])
        self.a = nn.ModuleList([make_a() for _ in layers]) if make_a else None

    def forward(self, x):
        i = 0
        for layer in self.model:
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                x = x if self.a is None else self.a[i](x)
                w = self.w[i](layer.weight)
                if isinstance(layer, nn.Conv2d):
                    x = F.conv2d(x, w, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
                else:
                    x = F.linear(x, w, layer.bias)
                i += 1
            else:
                x = layer(x)
        return x


def conv_batches(steps, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 2, 5, 5, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(steps)]


def train_conv(model, steps=4):
    opt = torch.optim.SGD(list(model.parameters()), lr=0.1)
    losses = []
    for x, y in conv_batches(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return losses


def prepared_conv(weight, activation):
    model = conv_model()
    exported = torch.export.export(copy.deepcopy(model), (conv_batches(1)[0][0],)).module()
    return model, prepare_qat_pt2e(exported, APoTQuantizer(weight, activation))


def bitwise(a, b):
    return a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.int32), b.reshape(-1).view(torch.int32))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_pt2e_conv_forward_and_training_match_eager_modules(case):
    _, weight, make_w, activation, make_a = case
    model, prepared = prepared_conv(weight, activation)
    ref = EagerConvNet(model, make_w, make_a)
    fq = [n for n, m in prepared.named_modules() if type(m).__name__ == "PT2EAPoTFakeQuantize"]
    assert len(fq) == (6 if activation is not None else 3)  # both convs and the linear are annotated
    x = conv_batches(1, seed=9)[0][0]
    assert bitwise(prepared(x), ref(x))  # forward (observers run once, alike)
    ours_losses, ref_losses = train_conv(prepared), train_conv(ref)
    for a, b in zip(ours_losses, ref_losses):
        assert bitwise(a, b)
    for i in (0, 2, 5):
        assert bitwise(getattr(prepared, str(i)).weight.detach(), ref.model[i].weight.detach()), i
    assert bitwise(prepared(x), ref(x))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_pt2e_conv_convert_computes_from_codes(case):
    _, weight, _, activation, _ = case
    _, prepared = prepared_conv(weight, activation)
    train_conv(prepared, steps=2)
    prepared.apply(torch.ao.quantization.disable_observer)
    state = {k: v.clone() for k, v in prepared.state_dict().items()}
    converted = convert(prepared)
    assert sorted(dict(converted.named_parameters())) == ["0.bias", "5.bias"]  # weights are codes
    x = conv_batches(1, seed=11)[0][0]
    with torch.no_grad():
        expected = prepared(x)
    assert bitwise(converted(x), expected)
    program = torch.export.export(converted, (x,))
    assert bitwise(program.module()(x), expected)
    for key, value in prepared.state_dict().items():  # the prepared graph is not modified
        assert torch.equal(value, state[key]) or bool(torch.isnan(value).all()), key


# --------------------------------------------------------------------------
# bad input


def _export(model, x):
    return torch.export.export(model, (x,)).module()


def test_pt2e_unsupported_weight_names_the_layer():
    paper = Cfg(3, 2, "sign-magnitude", alpha="learnable", normalize=True, per_channel=True)
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 1)), nn.Linear(1, 2))
    with pytest.raises(ValueError, match=r"layer '2' \(Linear.*at least 2 weight elements per output channel, got 1"):
        prepare_qat_pt2e(_export(model, torch.randn(2, 4)), APoTQuantizer(paper))
    model = nn.Sequential(nn.Conv2d(2, 2, 1)).double()
    with pytest.raises(ValueError, match=r"layer '0' \(Conv2d.*float32 weight, got torch.float64"):
        prepare_qat_pt2e(_export(model, torch.randn(1, 2, 3, 3).double()), APoTQuantizer(paper))


def test_pt2e_graph_without_linear_or_conv2d_is_an_error():
    model = nn.Sequential(nn.Conv1d(2, 2, 3))
    with pytest.raises(ValueError, match=r"nothing to quantize.*aten.conv1d"):
        prepare_qat_pt2e(_export(model, torch.randn(1, 2, 5)), APoTQuantizer(Cfg(4, 2, "signed")))


def test_pt2e_other_ops_stay_float_and_nothing_passed_in_is_modified():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 2, 3), nn.Flatten(), nn.Linear(6, 3))
    x = torch.randn(4, 2, 5)
    weight = Cfg(4, 2, "signed")
    quantizer = APoTQuantizer(weight)
    state = copy.deepcopy(model.state_dict())
    prepared = prepare_qat_pt2e(_export(model, x), quantizer)
    fq = [m for m in prepared.modules() if type(m).__name__ == "PT2EAPoTFakeQuantize"]
    assert len(fq) == 1  # the linear weight; the conv1d stays float
    w = at.APoTFakeQuantize(b=4, k=2, signed=True)
    expected = F.linear(model[1](model[0](x)), w(model[2].weight), model[2].bias)
    assert bitwise(prepared(x), expected)
    assert quantizer.weight is weight and weight == Cfg(4, 2, "signed") and quantizer.activation is None
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
