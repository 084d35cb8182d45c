"""apot_torch.torchao: APoT QAT through torchao's ``quantize_``.

Every value is compared with an independent reference: a model written by
hand from the eager apot_torch fake-quant modules (``APoTFakeQuantize``,
``SignMagnitudeFakeQuantize``, ``LearnableAPoTFakeQuantize``, proven bitwise
against apot_jax elsewhere), with ``export_weight`` for the codes, and the
Flax layers for the cross-framework check. Equality is bitwise throughout
(``torch.equal``), except where a test says why not.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("torchao", reason="the torchao flow needs torchao (pip install 'apot[torchao]')")
from torchao.quantization import quantize_  # noqa: E402
from torchao.quantization.qat.linear import FakeQuantizedLinear  # noqa: E402

import apot_torch as at  # noqa: E402
from apot_common.config import APoTConfig, LearnableAPoTConfig, SignMagnitudeConfig, UniformConfig  # noqa: E402
from apot_torch.torchao import (  # noqa: E402
    APoTFakeQuantizeConfig,
    APoTFakeQuantizedConv2d,
    APoTQATConfig,
    APoTQuantizedConv2d,
    APoTQuantizedLinear,
    is_linear_or_conv2d,
)

Cfg = APoTFakeQuantizeConfig

#: (id, weight config, eager weight fake quant for `out` channels,
#:  activation config, eager activation fake quant)
CASES = [
    (
        "paper-per-channel",
        Cfg(3, 2, "sign-magnitude", alpha="learnable", normalize=True, per_channel=True, alpha_init=2.0),
        lambda out: at.LearnableAPoTFakeQuantize(3, 2, normalize=True, channel_axis=0, channels=out, alpha_init=2.0),
        Cfg(3, 1, "unsigned", alpha="learnable", alpha_init=1.5),
        lambda: at.LearnableAPoTFakeQuantize(3, 1, scheme="unsigned", normalize=False, alpha_init=1.5),
    ),
    (
        "paper-per-tensor",
        Cfg(2, 1, "sign-magnitude", alpha="learnable", normalize=True),
        lambda out: at.LearnableAPoTFakeQuantize(2, 1, normalize=True),
        None,
        None,
    ),
    (
        "sign-magnitude-observed",
        Cfg(4, 3, "sign-magnitude"),
        lambda out: at.SignMagnitudeFakeQuantize(4, 3),
        Cfg(4, 2, "unsigned"),
        lambda: at.APoTFakeQuantize(b=4, k=2),
    ),
    (
        "prototype-signed",
        Cfg(4, 2, "signed"),
        lambda out: at.APoTFakeQuantize(b=4, k=2, signed=True),
        Cfg(4, 2, "unsigned"),
        lambda: at.APoTFakeQuantize(b=4, k=2),
    ),
]
IDS = [c[0] for c in CASES]


def float_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 3, 3, stride=2, padding=1, padding_mode="reflect", bias=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3, 16),
        nn.ReLU(),
        nn.Linear(16, 5),
    )


class EagerLinear(nn.Module):
    """The reference: F.linear of the eager fake quants' outputs."""

    def __init__(self, layer: nn.Linear, weight_fq: nn.Module, act_fq: nn.Module | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(layer.weight.detach().clone())
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())
        self.weight_fq, self.act_fq = weight_fq, act_fq

    def forward(self, x):
        x = x if self.act_fq is None else self.act_fq(x)
        return F.linear(x, self.weight_fq(self.weight), self.bias)


class EagerConv(nn.Module):
    def __init__(self, layer: nn.Conv2d, weight_fq: nn.Module, act_fq: nn.Module | None) -> None:
        super().__init__()
        self.layer = copy.deepcopy(layer)
        self.weight_fq, self.act_fq = weight_fq, act_fq

    def forward(self, x):
        x = x if self.act_fq is None else self.act_fq(x)
        return self.layer._conv_forward(x, self.weight_fq(self.layer.weight), self.layer.bias)


def eager_model(model: nn.Module, make_weight_fq, make_act_fq) -> nn.Module:
    layers = []
    for layer in model:
        if isinstance(layer, nn.Linear):
            layers.append(EagerLinear(layer, make_weight_fq(layer.out_features), make_act_fq and make_act_fq()))
        elif isinstance(layer, nn.Conv2d):
            layers.append(EagerConv(layer, make_weight_fq(layer.out_channels), make_act_fq and make_act_fq()))
        else:
            layers.append(copy.deepcopy(layer))
    return nn.Sequential(*layers)


def prepared_model(model: nn.Module, weight: Cfg, activation: Cfg | None) -> nn.Module:
    model = copy.deepcopy(model)
    quantize_(model, APoTQATConfig(weight, activation), filter_fn=is_linear_or_conv2d)
    return model


def batches(steps: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 2, 5, 5, generator=g), torch.randint(0, 5, (8,), generator=g)) for _ in range(steps)]


def train(model: nn.Module, steps: int = 4) -> list[torch.Tensor]:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for x, y in batches(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return losses


def assert_bitwise(a: torch.Tensor, b: torch.Tensor, what: str = "") -> None:
    assert a.shape == b.shape and a.dtype == b.dtype, what
    assert torch.equal(a.view(-1).view(torch.int32), b.view(-1).view(torch.int32)), what


# --------------------------------------------------------------------------
# configuration


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(b=4, k=2, scheme="sign-magnitude"), "k must divide|b - 1|divid"),
        (dict(b=4, k=3, scheme="unsigned"), "multiple of k"),
        (dict(b=4.0, k=2, scheme="unsigned"), "integer"),
        (dict(b=4, k=2, scheme="symmetric"), "scheme"),
        (dict(b=4, k=2, scheme="unsigned", alpha="fitted"), "alpha"),
        (dict(b=4, k=2, scheme="signed", alpha="learnable"), "signed"),
        (dict(b=4, k=2, scheme="unsigned", normalize=True, alpha="learnable"), "normalize"),
        (dict(b=3, k=2, scheme="sign-magnitude", normalize=True), "normalize"),
        (dict(b=3, k=2, scheme="sign-magnitude", per_channel=True), "per_channel"),
        (dict(b=3, k=2, scheme="sign-magnitude", per_channel=1, alpha="learnable"), "bool"),
        (dict(b=3, k=2, scheme="sign-magnitude", alpha="learnable", alpha_init=0.0), "alpha_init"),
        (dict(b=3, k=2, scheme="sign-magnitude", alpha="learnable", alpha_init=float("nan")), "alpha_init"),
        (dict(b=3, k=2, scheme="sign-magnitude", alpha="learnable", alpha_init=True), "alpha_init"),
    ],
)
def test_invalid_fake_quantize_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Cfg(**kwargs)


def test_invalid_qat_config():
    w = Cfg(3, 2, "sign-magnitude")
    with pytest.raises(ValueError, match="step"):
        APoTQATConfig(w, step="train")
    with pytest.raises(ValueError, match="needs a weight"):
        APoTQATConfig()
    with pytest.raises(ValueError, match="takes no weight"):
        APoTQATConfig(w, step="convert")
    with pytest.raises(ValueError, match="APoTFakeQuantizeConfig"):
        APoTQATConfig(weight={"b": 3})
    with pytest.raises(ValueError, match="per tensor"):
        APoTQATConfig(w, Cfg(3, 2, "sign-magnitude", alpha="learnable", per_channel=True))
    config = APoTQATConfig(w)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.step = "convert"
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.b = 5


# --------------------------------------------------------------------------
# prepare and train


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_prepare_swaps_layers(case):
    _, weight, _, activation, _ = case
    model = prepared_model(float_model(), weight, activation)
    assert isinstance(model[0], APoTFakeQuantizedConv2d) and isinstance(model[2], APoTFakeQuantizedConv2d)
    assert isinstance(model[5], FakeQuantizedLinear) and isinstance(model[7], FakeQuantizedLinear)
    assert model[2].padding_mode == "reflect" and model[2].stride == (2, 2) and model[2].bias is None
    assert (model[0].activation_fake_quantizer is None) == (activation is None)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_training_matches_eager_modules(case):
    _, weight, make_weight_fq, activation, make_act_fq = case
    base = float_model()
    ours = prepared_model(base, weight, activation)
    ref = eager_model(base, make_weight_fq, make_act_fq)
    ours_losses, ref_losses = train(ours), train(ref)
    for step, (a, b) in enumerate(zip(ours_losses, ref_losses)):
        assert_bitwise(a, b, f"loss at step {step}")
    assert len(list(ours.parameters())) == len(list(ref.parameters()))
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        assert_bitwise(a.detach(), b.detach(), name)
    for (name, a), b in zip(ours.named_buffers(), ref.buffers()):
        assert torch.equal(a.view(-1), b.view(-1)) or bool(torch.isnan(a).all() and torch.isnan(b).all()), name
    x = batches(1, seed=7)[0][0]
    assert_bitwise(ours(x), ref(x), "output after training")


def test_learnable_alpha_moves_and_is_trained():
    """A guard for the comparison above: the alphas do get gradients and change."""
    _, weight, _, activation, _ = CASES[0]
    model = prepared_model(float_model(), weight, activation)
    before = model[5].weight_fake_quantizer.alpha.detach().clone()
    train(model, steps=2)
    assert not torch.equal(before, model[5].weight_fake_quantizer.alpha.detach())


# --------------------------------------------------------------------------
# convert


def trained(case, steps: int = 3) -> nn.Module:
    _, weight, _, activation, _ = case
    model = prepared_model(float_model(), weight, activation)
    train(model, steps)
    model.apply(torch.ao.quantization.disable_observer)
    return model


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_convert_outputs_equal_fake_quant(case):
    model = trained(case)
    prepared_state = {k: v.clone() for k, v in model.state_dict().items()}
    converted = copy.deepcopy(model)
    quantize_(converted, APoTQATConfig(step="convert"), filter_fn=is_linear_or_conv2d)
    assert isinstance(converted[0], APoTQuantizedConv2d) and isinstance(converted[7], APoTQuantizedLinear)
    assert list(converted.parameters()) == []  # no float weight left
    x = batches(1, seed=9)[0][0]
    with torch.no_grad():
        assert_bitwise(converted(x), model(x), "converted output")
    # the prepared model's state is unchanged by converting its copy
    for key, value in model.state_dict().items():
        assert torch.equal(value, prepared_state[key]) or bool(torch.isnan(value).all()), key


@pytest.mark.parametrize("case", [c for c in CASES if c[1].scheme == "sign-magnitude"], ids=lambda c: c[0])
def test_convert_stores_export_weight_codes(case):
    _, weight, _, activation, _ = case
    model = trained(case)
    converted = copy.deepcopy(model)
    quantize_(converted, APoTQATConfig(step="convert"), filter_fn=is_linear_or_conv2d)
    for i in (0, 2, 5, 7):
        fq = model[i].weight_fake_quantizer
        reference = at.export_weight(
            model[i].weight, fq.alpha, b=weight.b, k=weight.k,
            normalize=weight.normalize, per_channel=weight.per_channel
        )
        stored = converted[i].weight_codes.exported
        assert stored.codes.dtype == torch.int8
        assert torch.equal(stored.codes, reference.codes)
        assert_bitwise(stored.scale, reference.scale)
        assert_bitwise(at.dequantize_weight(stored), fq(model[i].weight).detach(), f"layer {i} weight")


def test_convert_prototype_codes_are_quantize_apot():
    case = CASES[3]
    model = trained(case)
    converted = copy.deepcopy(model)
    quantize_(converted, APoTQATConfig(step="convert"), filter_fn=is_linear_or_conv2d)
    fq = model[5].weight_fake_quantizer
    reference = at.quantize_APoT(model[5].weight, fq.alpha, fq.gamma, fq.quantization_levels, fq.level_indices)
    assert torch.equal(converted[5].weight_codes.codes.to(torch.int32), reference.int_repr())
    assert_bitwise(converted[5].dequantized_weight(), fq(model[5].weight).detach())


def test_converted_state_dict_round_trip():
    model = trained(CASES[0])
    quantize_(model, APoTQATConfig(step="convert"), filter_fn=is_linear_or_conv2d)
    fresh = trained(CASES[0], steps=1)  # other weights and alphas
    quantize_(fresh, APoTQATConfig(step="convert"), filter_fn=is_linear_or_conv2d)
    fresh.load_state_dict(model.state_dict())
    x = batches(1, seed=3)[0][0]
    assert_bitwise(fresh(x), model(x))


# --------------------------------------------------------------------------
# bad input


def test_unsupported_layer_is_named():
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Conv1d(2, 2, 3)))
    config = APoTQATConfig(Cfg(4, 2, "unsigned"))

    def linear_or_conv(module, fqn):
        return is_linear_or_conv2d(module, fqn) or isinstance(module, nn.Conv1d)

    with pytest.raises(ValueError, match=r"Conv1d.*handles torch.nn.Linear and torch.nn.Conv2d"):
        quantize_(copy.deepcopy(model), config, filter_fn=linear_or_conv)


def test_layer_errors_name_the_layer():
    config = APoTQATConfig(Cfg(3, 2, "sign-magnitude", alpha="learnable", normalize=True, per_channel=True))
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(1, 3)))
    with pytest.raises(ValueError, match=r"'1.0'.*at least 2 weight elements per output channel, got 1"):
        quantize_(model, config, filter_fn=is_linear_or_conv2d)
    model = nn.Sequential(nn.Linear(4, 4).double())
    with pytest.raises(ValueError, match=r"'0'.*float32 weight, got torch.float64"):
        quantize_(model, config, filter_fn=is_linear_or_conv2d)
    model = nn.Sequential(nn.Linear(4, 4))
    quantize_(model, config, filter_fn=is_linear_or_conv2d)
    with pytest.raises(ValueError, match=r"'0'.*already prepared"):
        quantize_(model, config, filter_fn=is_linear_or_conv2d)


def test_convert_unprepared_model_is_an_error():
    model = float_model()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"layer '0' \(Conv2d\) is not prepared"):
        quantize_(model, APoTQATConfig(step="convert"), filter_fn=is_linear_or_conv2d)
    with pytest.raises(ValueError, match=r"Linear.*is not prepared"):  # torchao's default filter
        quantize_(model, APoTQATConfig(step="convert"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


def test_convert_before_observing_is_an_error():
    model = prepared_model(float_model(), Cfg(4, 2, "signed"), None)
    with pytest.raises(ValueError, match="observed nothing yet"):
        quantize_(model, APoTQATConfig(step="convert"), filter_fn=is_linear_or_conv2d)


def test_prepare_modifies_nothing_passed_in():
    base = float_model()
    linear = base[5]
    weight_before = linear.weight.detach().clone()
    weight = Cfg(3, 2, "sign-magnitude", alpha="learnable", normalize=True, per_channel=True)
    config = APoTQATConfig(weight, Cfg(3, 1, "unsigned", alpha="learnable"))
    config_before = dataclasses.asdict(config)
    quantize_(base, config, filter_fn=is_linear_or_conv2d)
    assert type(linear) is nn.Linear and not hasattr(linear, "weight_fake_quantizer")
    assert torch.equal(linear.weight, weight_before)
    assert dataclasses.asdict(config) == config_before
    # the prepared layer shares the Parameter (as torchao's from_linear does)
    assert base[5].weight is linear.weight


# --------------------------------------------------------------------------
# torch-trained state -> Flax


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _train_mlp(model: nn.Module, steps: int = 4) -> None:
    g = torch.Generator().manual_seed(5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        x, y = torch.randn(16, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


FLAX_CASES = [
    (
        "paper",
        Cfg(3, 2, "sign-magnitude", alpha="learnable", normalize=True, per_channel=True),
        Cfg(3, 1, "unsigned", alpha="learnable", alpha_init=2.0),
        dict(b=3, k=1, weight_quant="apot-paper", input_quant="apot-paper", weight_k=2, per_channel=True),
    ),
    (
        "prototype",
        Cfg(4, 2, "signed"),
        Cfg(4, 2, "unsigned"),
        dict(b=4, k=2, weight_quant="apot", input_quant="apot", signed_weights=True),
    ),
]


@pytest.mark.parametrize("case", FLAX_CASES, ids=[c[0] for c in FLAX_CASES])
def test_torchao_trained_state_converts_to_flax(case):
    jax = pytest.importorskip("jax", reason="the Flax side needs jax")
    import jax.numpy as jnp

    import apot_jax as aj
    from apot_jax.convert import torch_state_dict_to_flax

    _, weight, activation, flax_kwargs = case
    model = _mlp()
    quantize_(model, APoTQATConfig(weight, activation))  # torchao's default filter: every Linear
    _train_mlp(model)
    model.apply(torch.ao.quantization.disable_observer)
    sd = model.state_dict()
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        h_torch = model[0](x)

    def flax_variables(i: int) -> dict:
        prefix = f"{i}."
        params = {
            "kernel": jnp.asarray(sd[prefix + "weight"].numpy().T),
            "bias": jnp.asarray(sd[prefix + "bias"].numpy()),
        }
        variables = {"params": params}
        if weight.alpha == "learnable":
            params["weight_quant"] = {"alpha": jnp.asarray(sd[prefix + "weight_fake_quantizer.alpha"].numpy())}
            params["input_quant"] = {"alpha": jnp.asarray(sd[prefix + "activation_fake_quantizer.alpha"].numpy())}
        else:
            variables["quant_stats"] = {
                "weight_quant": torch_state_dict_to_flax(
                    sd, prefix=prefix + "weight_fake_quantizer.", b=weight.b, k=weight.k, signed=True
                ),
                "input_quant": torch_state_dict_to_flax(
                    sd, prefix=prefix + "activation_fake_quantizer.", b=activation.b, k=activation.k
                ),
            }
        return variables

    torch_x = {0: x, 2: torch.relu(h_torch)}
    flax_x = {0: jnp.asarray(x.numpy())}
    for i, features in ((0, 16), (2, 4)):
        layer = aj.APoTDense(features=features, **flax_kwargs)
        out, state = layer.apply(
            flax_variables(i), flax_x[i], capture_intermediates=True, mutable=["intermediates"]
        )
        seen = state["intermediates"]
        with torch.no_grad():
            xq = model[i].activation_fake_quantizer(torch_x[i]).numpy()
            wq = model[i].weight_fake_quantizer(model[i].weight).numpy()
            out_torch = model[i](torch_x[i]).numpy()
        # the fake-quantized operands: bitwise
        np.testing.assert_array_equal(np.asarray(seen["input_quant"]["__call__"][0]).view(np.int32), xq.view(np.int32))
        np.testing.assert_array_equal(
            np.asarray(seen["weight_quant"]["__call__"][0]).view(np.int32), wq.T.view(np.int32)
        )
        # the output: bitwise the float matmul of those operands (XLA's) plus
        # the bias; torch's MKL matmul may sum in another order, so torch's
        # output agrees to float32 rounding only (docs/numerics.md section 8)
        same_matmul = jnp.dot(jnp.asarray(xq), jnp.asarray(wq.T)) + jnp.asarray(sd[f"{i}.bias"].numpy())
        np.testing.assert_array_equal(np.asarray(out).view(np.int32), np.asarray(same_matmul).view(np.int32))
        np.testing.assert_allclose(np.asarray(out), out_torch, rtol=1e-5, atol=1e-6)
        flax_x[2] = jax.nn.relu(out)


def test_torchao_takes_typed_configs():
    """APoTQATConfig(weight=<typed config>) prepares the same modules as the
    torchao-path config it maps to, and refuses what that path cannot run."""
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(6, 4))
    x = torch.randn(5, 6)
    a, b = torch.nn.Sequential(torch.nn.Linear(6, 4)), torch.nn.Sequential(torch.nn.Linear(6, 4))
    a.load_state_dict(base.state_dict())
    b.load_state_dict(base.state_dict())
    quantize_(a, APoTQATConfig(weight=LearnableAPoTConfig(b=3), activation=APoTConfig(b=3, k=1)),
              filter_fn=is_linear_or_conv2d)
    quantize_(b, APoTQATConfig(weight=APoTFakeQuantizeConfig(3, 2, "sign-magnitude", alpha="learnable",
                                                             normalize=True),
                               activation=APoTFakeQuantizeConfig(3, 1, "unsigned")),
              filter_fn=is_linear_or_conv2d)
    np.testing.assert_array_equal(a(x).detach().numpy(), b(x).detach().numpy())
    with pytest.raises(ValueError, match="level_set='apot' only"):
        APoTQATConfig(weight=SignMagnitudeConfig(b=3, level_set="paper"))
    with pytest.raises(ValueError, match="uniform"):
        APoTQATConfig(weight=UniformConfig(b=4))
