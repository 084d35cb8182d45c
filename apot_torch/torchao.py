"""APoT quantization-aware training through torchao's ``quantize_``.

Install with ``pip install 'apot[torchao]'``. The flow::

    from torchao.quantization import quantize_
    from apot_torch.torchao import APoTFakeQuantizeConfig, APoTQATConfig, is_linear_or_conv2d

    weight = APoTFakeQuantizeConfig(b=3, k=2, scheme="sign-magnitude", alpha="learnable", normalize=True)
    activation = APoTFakeQuantizeConfig(b=3, k=1, scheme="unsigned", alpha="learnable", alpha_init=8.0)
    quantize_(model, APoTQATConfig(weight, activation), filter_fn=is_linear_or_conv2d)
    train(model)
    quantize_(model, APoTQATConfig(step="convert"), filter_fn=is_linear_or_conv2d)

``step="prepare"`` swaps each ``nn.Linear`` for torchao's
``FakeQuantizedLinear`` and each ``nn.Conv2d`` for :class:`APoTFakeQuantizedConv2d`,
with apot_torch's eager fake-quant modules as their ``weight_fake_quantizer``
and ``activation_fake_quantizer`` (the layer's input), so the prepared model
computes exactly what those modules compute (bit for bit, gradients and
learnt alphas included). ``step="convert"`` turns each prepared layer into
:class:`APoTQuantizedLinear` / :class:`APoTQuantizedConv2d`, which store the
weight as integer APoT codes (sign-magnitude schemes: ``export_weight`` /
``ExportedWeight``; the prototype's tables: their ``quantize_APoT`` codes)
and compute from them; their outputs equal the prepared model's with its
observers disabled (``torch.ao.quantization.disable_observer``), exactly.

torchao's default ``filter_fn`` selects ``nn.Linear`` only; pass
:func:`is_linear_or_conv2d` to include ``nn.Conv2d`` (it also lets error
messages name the layer).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from apot_common.config import (
    CONFIG_TYPES,
    APoTConfig,
    LearnableAPoTConfig,
    QuantizerConfig,
    SignMagnitudeConfig,
    UniformConfig,
)
from apot_common.tables import level_table, sign_magnitude_table
from apot_torch import levels as _levels
from apot_torch._float32 import as_float32
from apot_torch.export import ExportedWeight, dequantize_weight, export_weight
from apot_torch.fake_quantize_module import APoTFakeQuantize, LearnableAPoTFakeQuantize, SignMagnitudeFakeQuantize
from apot_torch.paper import sign_magnitude_qparams, unsigned_qparams
from apot_torch.quantizer import APoTQuantizer, TensorAPoT

try:
    from torchao.core.config import AOBaseConfig
    from torchao.quantization.qat.linear import FakeQuantizedLinear
    from torchao.quantization.transform_module import register_quantize_module_handler
except ImportError as error:  # pragma: no cover - exercised only without torchao
    raise ImportError(
        "apot_torch.torchao needs torchao: pip install 'apot[torchao]' (with the torch already installed)"
    ) from error

#: Level sets: the prototype's unsigned and signed tables, the paper's sign-magnitude one.
SCHEMES = ("unsigned", "signed", "sign-magnitude")
#: Where alpha comes from: the running min/max, or a learnt parameter (paper, eq. 10).
ALPHAS = ("observed", "learnable")
STEPS = ("prepare", "convert")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")


@dataclasses.dataclass(frozen=True)
class APoTFakeQuantizeConfig:
    """How one tensor (a layer's weight or its input) is fake-quantized.

    Attributes:
      b, k: bits and base width. ``"unsigned"``/``"signed"``: ``k`` divides
        ``b``; ``"sign-magnitude"``: ``b`` includes the sign bit and ``k``
        divides ``b - 1``.
      scheme: ``"unsigned"`` (the prototype's table, negative values round
        to 0: activations after ReLU), ``"signed"`` (the prototype's signed
        table, duplicates kept) or ``"sign-magnitude"`` (the paper's
        ``2**b - 1`` symmetric levels).
      alpha: ``"observed"`` (``max(-min, max)`` of everything seen:
        ``APoTFakeQuantize`` / ``SignMagnitudeFakeQuantize``) or
        ``"learnable"`` (an ``nn.Parameter``: ``LearnableAPoTFakeQuantize``;
        ``"unsigned"`` or ``"sign-magnitude"`` only).
      normalize: normalize the weight before quantizing it (paper; learnable
        sign-magnitude weights only).
      per_channel: one alpha per output channel (learnable sign-magnitude
        weights only).
      alpha_init: the learnable alpha's start (finite, > 0; the paper uses
        3.0 for weights). Copy ``apot_torch.paper.fit_alpha`` into the
        module's ``alpha`` for a start fitted to data.

    Raises:
      ValueError: at construction, for any value the modules cannot run.
    """

    b: int
    k: int
    scheme: str
    alpha: str = "observed"
    normalize: bool = False
    per_channel: bool = False
    alpha_init: float = 3.0

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(map(repr, SCHEMES))}, got {self.scheme!r}")
        if self.alpha not in ALPHAS:
            raise ValueError(f"alpha must be one of {', '.join(map(repr, ALPHAS))}, got {self.alpha!r}")
        if self.scheme == "sign-magnitude":
            sign_magnitude_table(self.b, self.k)  # ValueError naming b or k
        else:
            level_table(self.b, self.k, self.scheme == "signed")
        _check_bool("normalize", self.normalize)
        _check_bool("per_channel", self.per_channel)
        init = self.alpha_init
        if isinstance(init, bool) or not isinstance(init, (int, float)) or not math.isfinite(init) or init <= 0:
            raise ValueError(f"alpha_init must be a finite number > 0, got {init!r}")
        if self.alpha == "learnable" and self.scheme == "signed":
            raise ValueError(
                "alpha='learnable' takes scheme 'unsigned' or 'sign-magnitude', not the prototype's 'signed'"
            )
        learnable_sign_magnitude = self.alpha == "learnable" and self.scheme == "sign-magnitude"
        for name in ("normalize", "per_channel"):
            if getattr(self, name) and not learnable_sign_magnitude:
                raise ValueError(f"{name}=True needs scheme='sign-magnitude' with alpha='learnable'")

    def make(self, channels: int | None = None, device: torch.device | None = None) -> nn.Module:
        """The eager apot_torch fake-quant module of this configuration
        (``channels``: output channels, needed with ``per_channel``)."""
        factory = {"device": device}
        if self.alpha == "learnable":
            per_channel: dict[str, Any] = (
                # int(None) raises the TypeError a per-channel config without channels gets
                {"channel_axis": 0, "channels": int(channels)} if self.per_channel else {}  # type: ignore[arg-type]
            )
            return LearnableAPoTFakeQuantize(
                self.b,
                self.k,
                normalize=self.normalize,
                alpha_init=float(self.alpha_init),
                scheme=self.scheme,
                factory_kwargs=factory,
                **per_channel,
            )
        if self.scheme == "sign-magnitude":
            return SignMagnitudeFakeQuantize(self.b, self.k, factory_kwargs=factory)
        return APoTFakeQuantize(b=self.b, k=self.k, signed=self.scheme == "signed", factory_kwargs=factory)


def fake_quantize_config(config: QuantizerConfig) -> APoTFakeQuantizeConfig:
    """The torchao-path config of a typed quantizer config (``apot_common.config``).

    Raises:
      ValueError: a ``UniformConfig`` (torchao has its own uniform configs)
        or a ``level_set`` other than ``"apot"`` (the paper's sets are not
        wired into this path's integer-code convert yet).

    >>> from apot_common.config import LearnableAPoTConfig
    >>> c = fake_quantize_config(LearnableAPoTConfig(b=3))
    >>> c.b, c.k, c.scheme, c.alpha, c.normalize
    (3, 2, 'sign-magnitude', 'learnable', True)
    """
    if isinstance(config, UniformConfig):
        raise ValueError("APoTQATConfig quantizes with APoT levels; for uniform QAT use torchao's own configs")
    if getattr(config, "level_set", "apot") != "apot":
        level_set = cast(SignMagnitudeConfig | LearnableAPoTConfig, config).level_set  # APoTConfig has none
        raise ValueError(f"the torchao path supports level_set='apot' only, got {level_set!r}")
    if isinstance(config, APoTConfig):
        return APoTFakeQuantizeConfig(config.b, config.k, "signed" if config.signed else "unsigned")
    if isinstance(config, SignMagnitudeConfig):
        return APoTFakeQuantizeConfig(config.b, config.magnitude_k, "sign-magnitude")
    return APoTFakeQuantizeConfig(config.b, config.magnitude_k, config.scheme, alpha="learnable",
                                  normalize=config.normalize, per_channel=config.per_channel,
                                  alpha_init=float(config.alpha_init))


@dataclasses.dataclass(frozen=True)
class APoTQATConfig(AOBaseConfig):
    """APoT QAT for ``torchao.quantization.quantize_``.

    Attributes:
      weight: the weights' fake quant (required for ``step="prepare"``): an
        :class:`APoTFakeQuantizeConfig` or a typed config of
        ``apot_common.config`` (converted by :func:`fake_quantize_config`).
      activation: the layers' inputs' fake quant, or ``None`` (float inputs);
        per tensor, without normalization.
      step: ``"prepare"`` (swap in fake-quantized layers) or ``"convert"``
        (swap prepared layers for integer-code inference layers; takes no
        ``weight``/``activation``: they come from the prepared layers).

    Raises:
      ValueError: at construction, for an inconsistent configuration.
    """

    weight: APoTFakeQuantizeConfig | None = None
    activation: APoTFakeQuantizeConfig | None = None
    step: str = "prepare"

    def __post_init__(self) -> None:
        if self.step not in STEPS:
            raise ValueError(f"step must be one of {', '.join(map(repr, STEPS))}, got {self.step!r}")
        for name in ("weight", "activation"):
            value = getattr(self, name)
            if isinstance(value, CONFIG_TYPES):
                object.__setattr__(self, name, fake_quantize_config(value))
            elif value is not None and not isinstance(value, APoTFakeQuantizeConfig):
                raise ValueError(f"{name} must be an APoTFakeQuantizeConfig, a quantizer config "
                                 f"(apot_common.config) or None, got {type(value).__name__}")
        if self.step == "convert":
            if self.weight is not None or self.activation is not None:
                raise ValueError(
                    "APoTQATConfig(step='convert') takes no weight or activation config: "
                    "each prepared layer carries its own"
                )
            return
        if self.weight is None:
            raise ValueError("APoTQATConfig(step='prepare') needs a weight config")
        if self.activation is not None and (self.activation.per_channel or self.activation.normalize):
            raise ValueError("activations are fake-quantized per tensor, without normalization")


# --------------------------------------------------------------------------
# naming the layer in errors: torchao's handler gets the module, not its name

_last_match = threading.local()


def is_linear_or_conv2d(module: nn.Module, fqn: str = "") -> bool:
    """``filter_fn`` for ``quantize_``: every ``nn.Linear`` and ``nn.Conv2d``
    (prepared ones included, so that ``step="convert"`` finds them).
    Remembers ``fqn`` so that a refusal names the layer."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        _last_match.value = (module, fqn)
        return True
    return False


def _where(module: nn.Module) -> str:
    match = getattr(_last_match, "value", None)
    if match is not None and match[0] is module:
        return f"layer {match[1]!r} ({type(module).__name__})"
    return f"layer {module!r}"


_APOT_FAKE_QUANTS = (APoTFakeQuantize, SignMagnitudeFakeQuantize, LearnableAPoTFakeQuantize)


def _is_apot_fake_quant(module: object) -> bool:
    return isinstance(module, _APOT_FAKE_QUANTS) and isinstance(getattr(module, "config", None), APoTFakeQuantizeConfig)


# --------------------------------------------------------------------------
# prepare


class APoTFakeQuantizedConv2d(nn.Conv2d):
    """``nn.Conv2d`` with fake-quantized weight and (optionally) input, the
    convolution twin of torchao's ``FakeQuantizedLinear`` (same attribute
    names: ``weight_fake_quantizer``, ``activation_fake_quantizer``)."""

    weight_fake_quantizer: nn.Module
    activation_fake_quantizer: nn.Module | None

    def forward(self, x: Tensor) -> Tensor:
        if self.activation_fake_quantizer is not None:
            x = self.activation_fake_quantizer(x)
        return self._conv_forward(x, self.weight_fake_quantizer(self.weight), self.bias)


def _check_weight(module: nn.Linear | nn.Conv2d, config: APoTQATConfig) -> None:
    weight = module.weight
    if weight.dtype != torch.float32:
        raise ValueError(f"{_where(module)}: APoT QAT needs a float32 weight, got {weight.dtype}")
    if weight.device.type == "meta":
        raise ValueError(f"{_where(module)}: the weight is on the meta device; materialize it before prepare")
    assert config.weight is not None  # APoTQATConfig(step="prepare") refuses weight=None
    if config.weight.normalize:
        per = weight[0].numel() if config.weight.per_channel else weight.numel()
        if per < 2:
            raise ValueError(
                f"{_where(module)}: weight normalization needs at least 2 weight elements per "
                f"{'output channel' if config.weight.per_channel else 'tensor'}, got {per}"
            )


def _fake_quants(module: nn.Linear | nn.Conv2d, config: APoTQATConfig) -> tuple[nn.Module, nn.Module | None]:
    device = module.weight.device
    assert config.weight is not None  # APoTQATConfig(step="prepare") refuses weight=None
    weight_fq = config.weight.make(channels=module.weight.shape[0], device=device)
    # nn.Module.__setattr__ is typed for tensors and modules only; any value is stored
    weight_fq.config = config.weight  # type: ignore[assignment]
    activation_fq = None
    if config.activation is not None:
        activation_fq = config.activation.make(device=device)
        activation_fq.config = config.activation  # type: ignore[assignment]  # as weight_fq.config
    return weight_fq, activation_fq


def _prepare(module: nn.Module, config: APoTQATConfig) -> nn.Module:
    if _is_prepared(module) or isinstance(module, FakeQuantizedLinear):
        raise ValueError(f"{_where(module)} is already prepared for QAT; prepare each layer once")
    if isinstance(module, (APoTQuantizedLinear, APoTQuantizedConv2d)):
        raise ValueError(f"{_where(module)} is already converted to integer codes")
    if type(module) is nn.Linear:
        _check_weight(module, config)
        weight_fq, activation_fq = _fake_quants(module, config)
        new = FakeQuantizedLinear(
            module.in_features, module.out_features, module.bias is not None, device=module.weight.device
        )
        # shared, as torchao's FakeQuantizedLinear.from_linear does: an
        # optimizer over the model's parameters keeps working
        new.weight, new.bias = module.weight, module.bias
        new.weight_fake_quantizer, new.activation_fake_quantizer = weight_fq, activation_fq
        new.train(module.training)
        return new
    if type(module) is nn.Conv2d:
        _check_weight(module, config)
        weight_fq, activation_fq = _fake_quants(module, config)
        # torch types Conv2d's attributes tuple[int, ...]; nn.Conv2d made them pairs
        new = APoTFakeQuantizedConv2d(
            module.in_channels,
            module.out_channels,
            module.kernel_size,  # type: ignore[arg-type]
            stride=module.stride,  # type: ignore[arg-type]
            padding=module.padding,  # type: ignore[arg-type]
            dilation=module.dilation,  # type: ignore[arg-type]
            groups=module.groups,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
            device=module.weight.device,
        )
        new.weight, new.bias = module.weight, module.bias
        new.weight_fake_quantizer, new.activation_fake_quantizer = weight_fq, activation_fq
        new.train(module.training)
        return new
    raise ValueError(
        f"APoTQATConfig cannot prepare {_where(module)}: it handles torch.nn.Linear and torch.nn.Conv2d "
        "(exactly those types; pass filter_fn=apot_torch.torchao.is_linear_or_conv2d to select them)"
    )


def _is_prepared(module: nn.Module) -> bool:
    return isinstance(module, (FakeQuantizedLinear, APoTFakeQuantizedConv2d)) and _is_apot_fake_quant(
        getattr(module, "weight_fake_quantizer", None)
    )


# --------------------------------------------------------------------------
# convert


class FrozenAPoTActivation(nn.Module):
    """Inference fake quant of a layer's input with frozen qparams: the
    sorted ``levels`` and their decision ``thresholds`` (buffers), each
    element becoming ``levels[count(thresholds < x)]`` (NaN stays NaN), the
    rule of ``docs/numerics.md`` section 5 that the training modules apply,
    so the output is bitwise theirs. Only ``searchsorted`` and indexing: it
    exports (``torch.export``) as it is.
    """

    thresholds: Tensor
    levels: Tensor

    def __init__(self, levels: Tensor, alpha: Tensor) -> None:
        super().__init__()
        levels = levels.detach().to(torch.float32)
        self.register_buffer("levels", levels.clone())
        self.register_buffer("thresholds", _levels.thresholds(levels, alpha.detach().to(torch.float32)))

    @classmethod
    def from_fake_quant(cls, fake_quant: nn.Module, where: str = "the activation") -> "FrozenAPoTActivation":
        """The frozen quantizer of one of apot_torch's per-tensor fake-quant
        modules, as its forward would quantize with its current qparams.

        Raises:
          ValueError: fake quant disabled, per-channel or normalizing, or no
            qparams yet (never observed).
        """
        # fake_quant_enabled: a FakeQuantizeBase buffer, typed Tensor | Module by nn.Module.__getattr__
        if int(fake_quant.fake_quant_enabled[0]) != 1:  # type: ignore[index]
            raise ValueError(f"{where}: fake quant is disabled; enable it before convert")
        if isinstance(fake_quant, APoTFakeQuantize):
            if bool(torch.isnan(fake_quant.alpha)):
                raise ValueError(f"{where}: the fake quant has observed nothing yet; run the model on data first")
            return cls(fake_quant.quantization_levels, fake_quant.alpha)
        if isinstance(fake_quant, SignMagnitudeFakeQuantize):
            if bool(torch.isnan(fake_quant.alpha)):
                raise ValueError(f"{where}: the fake quant has observed nothing yet; run the model on data first")
            qp = sign_magnitude_qparams(fake_quant.alpha, b=fake_quant.b, k=fake_quant.k)
            return cls(qp.quantization_levels, qp.alpha)
        if isinstance(fake_quant, LearnableAPoTFakeQuantize):
            if fake_quant.normalize or fake_quant.channel_axis is not None:
                raise ValueError(f"{where}: a normalizing or per-channel fake quant cannot be frozen per tensor")
            alpha = fake_quant.alpha.detach()
            if fake_quant.scheme == "unsigned":
                alpha, _, lv, _ = unsigned_qparams(alpha, b=fake_quant.b, k=fake_quant.k)
            else:
                qp = sign_magnitude_qparams(alpha, b=fake_quant.b, k=fake_quant.k)
                alpha, lv = qp.alpha, qp.quantization_levels
            return cls(lv, alpha)
        raise ValueError(f"{where}: {type(fake_quant).__name__} is not one of apot_torch's fake quants")

    def forward(self, x: Tensor) -> Tensor:
        x32 = as_float32(x, "FrozenAPoTActivation")
        p = torch.searchsorted(self.thresholds, x32, right=False).clamp(max=self.thresholds.shape[0] - 1)
        out = torch.where(torch.isnan(x32), float("nan"), self.levels[p])
        return out.to(x.dtype)


class _CodesWeight(nn.Module):
    """A weight stored as integer APoT codes, rebuilt from them on each call.

    ``"sign-magnitude"`` weights hold an ``ExportedWeight`` (buffers
    ``codes``, ``alpha``, ``gamma``, ``scale``; ``exported`` gives it back),
    rebuilt by ``dequantize_weight``. The prototype's tables hold the
    ``quantize_APoT`` codes with the qparams (``alpha``, ``gamma``,
    ``quantization_levels``, ``level_indices``), rebuilt by
    ``APoTQuantizer.dequantize``. Both equal the fake-quant weight bit for bit.
    """

    codes: Tensor
    alpha: Tensor
    gamma: Tensor
    scale: Tensor  # sign-magnitude only
    quantization_levels: Tensor  # prototype only
    level_indices: Tensor  # prototype only

    def __init__(self, weight: Tensor, fake_quant: nn.Module, where: str) -> None:
        super().__init__()
        # fake_quant_enabled: a FakeQuantizeBase buffer, typed Tensor | Module by nn.Module.__getattr__
        if int(fake_quant.fake_quant_enabled[0]) != 1:  # type: ignore[index]
            raise ValueError(f"{where}: the weight's fake quant is disabled; enable it before convert")
        weight = weight.detach()
        if isinstance(fake_quant, APoTFakeQuantize):
            self.format = "prototype"
            if bool(torch.isnan(fake_quant.alpha)):
                raise ValueError(f"{where}: the weight's fake quant has observed nothing yet; run the model once first")
            qparams = [t.detach().clone() for t in (fake_quant.alpha, fake_quant.gamma)]
            qparams += [
                fake_quant.quantization_levels.detach().float().clone(), fake_quant.level_indices.detach().clone()
            ]
            codes = APoTQuantizer(*qparams).quantize(weight).int_repr()
            if bool((codes < 0).any()):
                raise ValueError(f"{where}: the weight has NaN, which has no code")
            n = qparams[2].shape[0]
            self.register_buffer("codes", codes.to(torch.int16 if n <= 2**15 else torch.int32))
            for name, value in zip(("alpha", "gamma", "quantization_levels", "level_indices"), qparams):
                self.register_buffer(name, value)
            return
        self.format = "sign-magnitude"
        if isinstance(fake_quant, SignMagnitudeFakeQuantize):
            if bool(torch.isnan(fake_quant.alpha)):
                raise ValueError(f"{where}: the weight's fake quant has observed nothing yet; run the model once first")
            normalize, per_channel = False, False
        elif isinstance(fake_quant, LearnableAPoTFakeQuantize) and fake_quant.scheme == "sign-magnitude":
            if fake_quant.channel_axis not in (None, 0):
                raise ValueError(f"{where}: per-channel alpha must be along the output channels (axis 0)")
            normalize, per_channel = fake_quant.normalize, fake_quant.channel_axis == 0
        elif isinstance(fake_quant, LearnableAPoTFakeQuantize):
            raise ValueError(f"{where}: learnable {fake_quant.scheme!r} weights have no export; use 'sign-magnitude'")
        else:
            raise ValueError(f"{where}: {type(fake_quant).__name__} is not one of apot_torch's fake quants")
        try:
            exported = export_weight(
                weight, fake_quant.alpha, b=fake_quant.b, k=fake_quant.k, normalize=normalize, per_channel=per_channel
            )
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from error
        self.b, self.k, self.per_channel = exported.b, exported.k, exported.per_channel
        for name in ("codes", "alpha", "gamma", "scale"):
            self.register_buffer(name, getattr(exported, name).clone())

    @property
    def exported(self) -> ExportedWeight:
        """The stored ``ExportedWeight`` (sign-magnitude weights only)."""
        if self.format != "sign-magnitude":
            raise ValueError("only sign-magnitude weights are stored as an ExportedWeight")
        return ExportedWeight(self.codes, self.alpha, self.gamma, self.scale, None, self.b, self.k, self.per_channel)

    def forward(self) -> Tensor:
        if self.format == "sign-magnitude":
            return dequantize_weight(self.exported)
        quantizer = APoTQuantizer(self.alpha, self.gamma, self.quantization_levels, self.level_indices)
        return quantizer.dequantize(TensorAPoT(quantizer, self.codes.to(torch.int32), torch.float32))

    def extra_repr(self) -> str:
        return f"format={self.format!r}, shape={tuple(self.codes.shape)}, codes={self.codes.dtype}"


class _QuantizedLayer(nn.Module):
    bias: Tensor | None

    def _init_from(self, prepared: FakeQuantizedLinear | APoTFakeQuantizedConv2d, where: str) -> None:
        self.weight_codes = _CodesWeight(prepared.weight, prepared.weight_fake_quantizer, where)
        act = prepared.activation_fake_quantizer
        self.activation_quantizer = (
            None if act is None else FrozenAPoTActivation.from_fake_quant(act, f"{where}: the input")
        )
        bias = None if prepared.bias is None else prepared.bias.detach().clone()
        self.register_buffer("bias", bias)

    def _input(self, x: Tensor) -> Tensor:
        return x if self.activation_quantizer is None else self.activation_quantizer(x)

    def dequantized_weight(self) -> Tensor:
        """The float32 weight rebuilt from the codes (the fake-quant weight)."""
        return self.weight_codes()


class APoTQuantizedLinear(_QuantizedLayer):
    """Inference linear layer from integer APoT weight codes (and a frozen
    APoT input quantizer if the prepared layer had one); output equals the
    prepared layer's with its observers disabled, bit for bit."""

    def __init__(self, prepared: FakeQuantizedLinear, where: str = "the layer") -> None:
        super().__init__()
        self.in_features, self.out_features = prepared.in_features, prepared.out_features
        self._init_from(prepared, where)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self._input(x), self.weight_codes(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class APoTQuantizedConv2d(_QuantizedLayer):
    """Inference 2-D convolution from integer APoT weight codes (and a
    frozen input quantizer), with the prepared layer's stride, padding,
    dilation, groups and padding mode; output equals the prepared layer's
    with its observers disabled, bit for bit."""

    def __init__(self, prepared: APoTFakeQuantizedConv2d, where: str = "the layer") -> None:
        super().__init__()
        self.stride, self.padding, self.dilation = prepared.stride, prepared.padding, prepared.dilation
        self.groups, self.padding_mode = prepared.groups, prepared.padding_mode
        self._reversed_padding_repeated_twice = prepared._reversed_padding_repeated_twice
        self._init_from(prepared, where)

    def forward(self, x: Tensor) -> Tensor:
        x, weight = self._input(x), self.weight_codes()
        # as nn.Conv2d._conv_forward
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, groups={self.groups}"


def _convert(module: nn.Module) -> nn.Module:
    where = _where(module)
    if isinstance(module, (APoTQuantizedLinear, APoTQuantizedConv2d)):
        raise ValueError(f"{where} is already converted")
    if not _is_prepared(module):
        if isinstance(module, FakeQuantizedLinear):
            raise ValueError(
                f"{where} was prepared by torchao's QATConfig, not APoTQATConfig: convert it with QATConfig"
            )
        raise ValueError(
            f"{where} is not prepared: run quantize_(model, APoTQATConfig(weight=..., step='prepare')) and train "
            "before step='convert' (or leave the layer out with filter_fn)"
        )
    if isinstance(module, FakeQuantizedLinear):
        return APoTQuantizedLinear(module, where)
    return APoTQuantizedConv2d(cast(APoTFakeQuantizedConv2d, module), where)  # _is_prepared: one of the two


@register_quantize_module_handler(APoTQATConfig)
def _apot_qat_transform(module: nn.Module, config: APoTQATConfig) -> nn.Module:
    """torchao's handler: prepare or convert one layer (see the module doc)."""
    if config.step == "prepare":
        return _prepare(module, config)
    return _convert(module)


__all__ = [
    "ALPHAS",
    "SCHEMES",
    "APoTFakeQuantizeConfig",
    "APoTFakeQuantizedConv2d",
    "APoTQATConfig",
    "APoTQuantizedConv2d",
    "fake_quantize_config",
    "APoTQuantizedLinear",
    "FrozenAPoTActivation",
    "is_linear_or_conv2d",
]
