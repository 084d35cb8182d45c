"""apot_torch.qconfig: the prototype's qconfigs and ``qconfig(weight=,
activation=)`` from typed configs build the right modules, and
``prepare_qat`` models train with them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.ao.quantization import prepare_qat

import apot_torch as at
import apot_torch.qconfig as qc
from apot_common.config import APoTConfig, LearnableAPoTConfig, SignMagnitudeConfig
from apot_torch import qconfig
from apot_torch.fake_quantize_module import SignMagnitudeFakeQuantize

# torch.ao.quantization warns that it is deprecated; that must not fail a run.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_torch_qconfig_from_configs_trains_through_prepare_qat():
    from torch.ao.quantization import prepare_qat

    from apot_torch.qconfig import qconfig

    model = torch.nn.Sequential(torch.nn.Linear(6, 4))
    model.qconfig = qconfig(weight=SignMagnitudeConfig(b=3, level_set="paper"), activation=APoTConfig(b=4, k=2))
    prepared = prepare_qat(model.train())
    wfq = prepared[0].weight_fake_quant
    assert type(wfq).__name__ == "SignMagnitudeFakeQuantize" and wfq.level_set == "paper"
    prepared(torch.randn(5, 6)).sum().backward()
    assert prepared[0].weight.grad is not None
    with pytest.raises(ValueError, match="per-channel"):
        qconfig(weight=LearnableAPoTConfig(b=3, per_channel=True), activation=None)
    with pytest.raises(TypeError, match="weight must be one of"):
        qconfig(weight="apot", activation=None)


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
