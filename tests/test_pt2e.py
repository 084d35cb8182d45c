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
