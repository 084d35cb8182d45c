"""The prototype's QAT configurations, plus signed-weight APoT variants.

Same observers and fake quants as ``torch/ao/quantization/experimental/qconfig.py``:
uniform ones are torch's ``FakeQuantize`` with a per-tensor symmetric
``MinMaxObserver``, APoT ones are ``APoTFakeQuantize`` with (b=8, k=2) or
(b=4, k=2). One fix: the prototype passed the bound method
``default_weight_symmetric_fake_quant.with_args`` (and its activation twin)
where a constructor belongs, so ``qconfig.weight()`` returned a partial instead
of a module; here the constructors themselves are used.

Kept from the prototype on purpose: the 4-bit uniform weight quantizer uses
``qint8`` with ``quant_min=0, quant_max=15`` (zero point 0), so negative
weights become 0, and the APoT weight fake quants use the unsigned table,
which does the same. The ``*_signed`` variants give weights the signed APoT
table (``APoTFakeQuantize(signed=True)``) instead.

The ``apot_sign_magnitude_qconfig_*`` configurations give weights the
paper's true ``b``-bit signed levels (``SignMagnitudeFakeQuantize``: sign plus
the APoT levels of ``b - 1`` bits, ``2**b - 1`` symmetric levels) with the
observed alpha and the prototype's observer-based activations. The
``apot_paper_qconfig_*`` configurations use the paper's recipe
(``LearnableAPoTFakeQuantize``): sign-magnitude ``b``-bit weights with a
learnable alpha after weight normalization, and unsigned APoT activations of
the same bits with a learnable alpha, like ``apot qat --recipe paper``.
Their alphas start at fixed values (3.0 weights, 8.0 activations); for a
start fitted to data, copy ``apot_torch.paper.fit_alpha`` of a calibration
batch (or of the normalized weight) into a module's ``alpha`` under
``torch.no_grad()``, as ``apot qat`` does on the JAX side.
"""

from __future__ import annotations

import functools

import torch
from torch.ao.quantization.fake_quantize import FakeQuantize
from torch.ao.quantization.observer import MinMaxObserver
from torch.ao.quantization.qconfig import QConfig

from apot_common.config import LearnableAPoTConfig, QuantizerConfig, check_config
from apot_torch.fake_quantize_module import (
    APoTFakeQuantize,
    LearnableAPoTFakeQuantize,
    SignMagnitudeFakeQuantize,
    from_config,
)

#: Symmetric uniform fake quant for activations (the prototype's default).
default_symmetric_fake_quant = FakeQuantize.with_args(
    observer=MinMaxObserver, qscheme=torch.per_tensor_symmetric, dtype=torch.quint8
)

#: Symmetric uniform fake quant for weights (the prototype's default).
default_weight_symmetric_fake_quant = FakeQuantize.with_args(
    observer=MinMaxObserver, qscheme=torch.per_tensor_symmetric, dtype=torch.qint8
)

_uniform_activation_4bit = default_symmetric_fake_quant.with_args(quant_min=0, quant_max=15)


def _apot(b: int, dtype: torch.dtype, signed: bool = False):
    return APoTFakeQuantize.with_args(b=b, k=2, dtype=dtype, signed=signed)


# uniform activation and weight, 8 bit
uniform_qconfig_8bit = QConfig(activation=default_symmetric_fake_quant, weight=default_weight_symmetric_fake_quant)

# uniform activation, APoT weight, b=8 k=2
apot_weight_qconfig_8bit = QConfig(activation=default_symmetric_fake_quant, weight=_apot(8, torch.qint8))

# APoT activation and weight, b=8 k=2
apot_qconfig_8bit = QConfig(activation=_apot(8, torch.quint8), weight=_apot(8, torch.qint8))

# uniform activation and weight, 4 bit (quant range [0, 15])
uniform_qconfig_4bit = QConfig(
    activation=_uniform_activation_4bit,
    weight=default_weight_symmetric_fake_quant.with_args(quant_min=0, quant_max=15),
)

# uniform activation, APoT weight, b=4 k=2
apot_weight_qconfig_4bit = QConfig(activation=_uniform_activation_4bit, weight=_apot(4, torch.qint8))

# APoT activation and weight, b=4 k=2
apot_qconfig_4bit = QConfig(activation=_apot(4, torch.quint8), weight=_apot(4, torch.qint8))

# The same with signed APoT weights (negative weights keep their sign).
apot_weight_qconfig_8bit_signed = QConfig(activation=default_symmetric_fake_quant, weight=_apot(8, torch.qint8, True))
apot_qconfig_8bit_signed = QConfig(activation=_apot(8, torch.quint8), weight=_apot(8, torch.qint8, True))
apot_weight_qconfig_4bit_signed = QConfig(activation=_uniform_activation_4bit, weight=_apot(4, torch.qint8, True))
apot_qconfig_4bit_signed = QConfig(activation=_apot(4, torch.quint8), weight=_apot(4, torch.qint8, True))

# Sign-magnitude weights with the observed alpha (magnitude k = 2 for 3
# bits, k = 1 for 2 bits), the paper recipe's activations.
apot_sign_magnitude_qconfig_3bit = QConfig(
    activation=APoTFakeQuantize.with_args(b=3, k=1, dtype=torch.quint8),
    weight=SignMagnitudeFakeQuantize.with_args(b=3, k=2),
)
apot_sign_magnitude_qconfig_2bit = QConfig(
    activation=APoTFakeQuantize.with_args(b=2, k=2, dtype=torch.quint8),
    weight=SignMagnitudeFakeQuantize.with_args(b=2, k=1),
)

# The paper's recipe: sign-magnitude weights (magnitude k = 2 for 3 bits,
# k = 1 for 2 bits: ternary), learnable alpha, weight normalization; APoT
# activations of the same bits (k = 1 at 3 bits, k = 2 at 2 bits) with a
# learnable alpha too, starting at 8.0.
_paper_activation = LearnableAPoTFakeQuantize.with_args(
    scheme="unsigned", normalize=False, alpha_init=8.0, dtype=torch.quint8
)
apot_paper_qconfig_3bit = QConfig(
    activation=_paper_activation.with_args(b=3, k=1),
    weight=LearnableAPoTFakeQuantize.with_args(b=3, k=2),
)
apot_paper_qconfig_2bit = QConfig(
    activation=_paper_activation.with_args(b=2, k=2),
    weight=LearnableAPoTFakeQuantize.with_args(b=2, k=1),
)


def _constructor(config: QuantizerConfig | None, what: str):
    if config is None:
        return torch.nn.Identity  # takes and ignores factory_kwargs: the operand stays float
    check_config(config, what)
    if isinstance(config, LearnableAPoTConfig) and config.per_channel:
        raise ValueError(f"{what}: a per-channel alpha needs the channel count, which a QConfig does not know; "
                         "use apot_torch.torchao.APoTQATConfig or build the module with from_config(channels=...)")
    return functools.partial(from_config, config)


def qconfig(*, weight: QuantizerConfig | None, activation: QuantizerConfig | None) -> QConfig:
    """A torch.ao ``QConfig`` (for ``prepare_qat``) from typed configs; ``None``
    leaves that operand float.

    Raises:
      TypeError: an argument that is not a quantizer config.
      ValueError: a per-channel ``LearnableAPoTConfig`` (the channel count is
        not known to a QConfig).

    >>> from apot_common.config import APoTConfig, SignMagnitudeConfig
    >>> qc = qconfig(weight=SignMagnitudeConfig(b=3), activation=APoTConfig(b=3, k=1))
    >>> type(qc.weight()).__name__, type(qc.activation()).__name__
    ('SignMagnitudeFakeQuantize', 'APoTFakeQuantize')
    """
    return QConfig(activation=_constructor(activation, "activation"), weight=_constructor(weight, "weight"))


__all__ = [
    "apot_paper_qconfig_2bit",
    "apot_paper_qconfig_3bit",
    "apot_qconfig_4bit",
    "apot_qconfig_4bit_signed",
    "apot_qconfig_8bit",
    "apot_qconfig_8bit_signed",
    "apot_sign_magnitude_qconfig_2bit",
    "apot_sign_magnitude_qconfig_3bit",
    "apot_weight_qconfig_4bit",
    "apot_weight_qconfig_4bit_signed",
    "apot_weight_qconfig_8bit",
    "apot_weight_qconfig_8bit_signed",
    "default_symmetric_fake_quant",
    "default_weight_symmetric_fake_quant",
    "qconfig",
    "uniform_qconfig_4bit",
    "uniform_qconfig_8bit",
]
