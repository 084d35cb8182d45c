"""Typed quantizer configs: one frozen dataclass per scheme, validated at
construction, shared by both frameworks.

A config says *what* a fake quantizer computes; each framework builds its own
module from it (``apot_jax.fake_quantize_module.from_config`` for linen and
NNX, ``apot_torch.fake_quantize_module.from_config`` for torch), and the
layers, the Qwix rule, the torchao / PT2E configs and ``apot qat`` all take
one. The scheme strings of the older API (``"apot"``, ``"uniform"``,
``"sign-magnitude"``, ``"apot-paper"``) stay accepted; :func:`from_scheme`
maps them to a config.

* :class:`APoTConfig`: the prototype's APoT table of ``(b, k, signed)``,
  alpha observed (``max(|min|, |max|)`` of the running statistics).
* :class:`SignMagnitudeConfig`: a true ``b``-bit signed scheme (sign plus the
  unsigned levels of ``b - 1`` bits), alpha observed.
* :class:`LearnableAPoTConfig`: the paper's recipe: alpha is a parameter with
  the paper's gradient; sign-magnitude weights (``signed=True``) or unsigned
  activations (``signed=False``), optional weight normalization and one alpha
  per channel.
* :class:`UniformConfig`: the uniform baseline (``2**b`` evenly spaced levels
  over the observed range), for comparisons.

>>> cfg = APoTConfig(b=4, k=2)
>>> cfg.num_levels
16
>>> from_scheme("apot-paper", b=3)
LearnableAPoTConfig(b=3, k=None, signed=False, alpha_init=8.0, normalize=False, per_channel=False, level_set='apot')
>>> APoTConfig(b=4, k=3)
Traceback (most recent call last):
...
ValueError: b must be a multiple of k, got b=4, k=3
"""

from __future__ import annotations

import dataclasses
import math
from typing import Union

from apot_common.tables import (
    LevelSet,
    check_level_set,
    default_magnitude_k,
    level_table,
    sign_magnitude_table,
    unsigned_table,
)

#: Bit widths of the uniform baseline: codes up to ``2**b - 1`` in an int32.
UNIFORM_MAX_BITS = 16


def check_uniform_bits(b: object, signed: bool) -> int:
    """``b`` of a uniform quantizer: an integer in ``[1, UNIFORM_MAX_BITS]``
    (``[2, ...]`` signed). Above 16 bits the level count exceeds the APoT
    tables' limit, and above 24 the integer levels are no longer exact in
    float32 (``ValueError`` naming the value)."""
    _check_int("b", b, 1)
    assert isinstance(b, int)  # _check_int raised otherwise
    if b > UNIFORM_MAX_BITS:
        raise ValueError(f"a uniform quantizer takes at most {UNIFORM_MAX_BITS} bits, got b={b}")
    if signed and b < 2:
        raise ValueError(f"a signed uniform quantizer needs b >= 2, got b={b}")
    return int(b)


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")


def _check_alpha_init(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"alpha_init must be a finite number > 0, got {value!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class APoTConfig:
    """The prototype's scheme: the ``(b, k, signed)`` APoT table, observed alpha.

    Attributes:
      b: total bits (``b >= 1``).
      k: base bit-width; must divide ``b`` (``n = b // k`` additive terms).
      signed: signed table (levels of both signs) or unsigned (negative
        inputs round to 0).

    Raises:
      ValueError: a bit width out of range, ``k`` not dividing ``b``, or a
        table over the size limit (``apot_common.tables.MAX_LEVELS``).
    """

    b: int = 4
    k: int = 2
    signed: bool = False

    def __post_init__(self) -> None:
        _check_int("b", self.b, 1)
        _check_int("k", self.k, 1)
        _check_bool("signed", self.signed)
        level_table(self.b, self.k, self.signed)

    @property
    def num_levels(self) -> int:
        """Number of levels (positions) of the table, equal ones included."""
        return level_table(self.b, self.k, self.signed).num_levels


@dataclasses.dataclass(frozen=True, kw_only=True)
class SignMagnitudeConfig:
    """Sign plus the unsigned levels of the ``b - 1`` magnitude bits, observed
    alpha (``2**b - 1`` distinct symmetric levels for ``level_set="apot"``).

    Attributes:
      b: total bits, sign included (``b >= 2``).
      k: base width of the magnitude bits; ``None``: 2 where it divides
        ``b - 1``, else 1 (ignored by the paper's level sets).
      level_set: ``"apot"`` (apot's tables), ``"paper"`` (the paper code's
        ``build_power_value(b - 1)``) or ``"paper-pot"`` (its non-additive set).

    Raises:
      ValueError: as :func:`apot_common.tables.sign_magnitude_table`.
    """

    b: int = 3
    k: int | None = None
    level_set: LevelSet = "apot"

    def __post_init__(self) -> None:
        _check_int("b", self.b, 2)
        if self.k is not None:
            _check_int("k", self.k, 1)
        check_level_set(self.level_set)
        sign_magnitude_table(self.b, self.magnitude_k, self.level_set)

    @property
    def magnitude_k(self) -> int:
        """``k``, or its default for ``b``."""
        return default_magnitude_k(self.b) if self.k is None else self.k


@dataclasses.dataclass(frozen=True, kw_only=True)
class LearnableAPoTConfig:
    """The paper's recipe: a learnable alpha with the paper's gradient.

    Attributes:
      b: total bits.
      k: base width (of the ``b - 1`` magnitude bits when ``signed``);
        ``None``: 2 where it divides them, else 1.
      signed: ``True``: sign-magnitude levels (weights); ``False``: the
        unsigned levels of ``b`` bits (activations after a ReLU).
      alpha_init: the alpha the parameter starts from (normalized units when
        ``normalize``).
      normalize: normalize the tensor (zero mean, unit variance) first.
      per_channel: one alpha per output channel.
      level_set: ``"apot"``, ``"paper"`` or ``"paper-pot"``.

    Raises:
      ValueError: a bad bit width, level set or ``alpha_init``; ``normalize``
        or ``per_channel`` with ``signed=False`` (activations).
    """

    b: int = 3
    k: int | None = None
    signed: bool = True
    alpha_init: float = 3.0
    normalize: bool = True
    per_channel: bool = False
    level_set: LevelSet = "apot"

    def __post_init__(self) -> None:
        _check_int("b", self.b, 2 if self.signed else 1)
        if self.k is not None:
            _check_int("k", self.k, 1)
        for name in ("signed", "normalize", "per_channel"):
            _check_bool(name, getattr(self, name))
        _check_alpha_init(self.alpha_init)
        check_level_set(self.level_set)
        if not self.signed and (self.normalize or self.per_channel):
            raise ValueError("normalize and per_channel are for weights (signed=True); "
                             f"got normalize={self.normalize}, per_channel={self.per_channel} with signed=False")
        if self.signed:
            sign_magnitude_table(self.b, self.magnitude_k, self.level_set)
        else:
            unsigned_table(self.b, self.magnitude_k, self.level_set)

    @property
    def magnitude_k(self) -> int:
        """``k``, or its default: 2 where it divides the (magnitude) bits, else 1."""
        if self.k is not None:
            return self.k
        # default_magnitude_k(B) looks at B - 1 bits: the magnitude of a
        # signed b-bit scheme, or all b bits of an unsigned one (B = b + 1)
        return default_magnitude_k(self.b if self.signed else self.b + 1)

    @property
    def scheme(self) -> str:
        """The older API's name of the table: ``"sign-magnitude"`` or ``"unsigned"``."""
        return "sign-magnitude" if self.signed else "unsigned"


@dataclasses.dataclass(frozen=True, kw_only=True)
class UniformConfig:
    """The uniform baseline: ``2**b`` evenly spaced levels, observed range.

    Attributes:
      b: bits, ``1 <= b <= 16`` (``2 <= b`` signed).
      signed: symmetric signed range or unsigned.

    Raises:
      ValueError: ``b`` out of range.
    """

    b: int = 8
    signed: bool = False

    def __post_init__(self) -> None:
        _check_bool("signed", self.signed)
        check_uniform_bits(self.b, self.signed)


QuantizerConfig = Union[APoTConfig, SignMagnitudeConfig, LearnableAPoTConfig, UniformConfig]
CONFIG_TYPES = (APoTConfig, SignMagnitudeConfig, LearnableAPoTConfig, UniformConfig)

#: The scheme strings of the older API, in the order the layers list them.
SCHEMES = ("apot", "uniform", "sign-magnitude", "apot-paper")


def from_scheme(scheme: str, *, b: int, k: int | None = None, signed: bool = False,
                alpha_init: float | None = None, level_set: LevelSet = "apot") -> QuantizerConfig:
    """The config of an older-API scheme string.

    ``"apot"``: :class:`APoTConfig` (``k`` default 2 where it divides ``b``,
    else 1); ``"uniform"``: :class:`UniformConfig`; ``"sign-magnitude"``:
    :class:`SignMagnitudeConfig`; ``"apot-paper"``: the paper's *activation*
    quantizer, :class:`LearnableAPoTConfig` with ``signed=False`` (alpha 8.0
    unless given); the paper's weights are ``LearnableAPoTConfig()`` itself.

    Raises:
      ValueError: an unknown scheme, or what the config refuses.
    """
    if scheme == "apot":
        return APoTConfig(b=b, k=k if k is not None else (2 if b % 2 == 0 else 1), signed=signed)
    if scheme == "uniform":
        return UniformConfig(b=b, signed=signed)
    if scheme == "sign-magnitude":
        return SignMagnitudeConfig(b=b, k=k, level_set=level_set)
    if scheme == "apot-paper":
        return LearnableAPoTConfig(b=b, k=k, signed=False, normalize=False,
                                   alpha_init=8.0 if alpha_init is None else alpha_init, level_set=level_set)
    raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")


def check_config(config: object, what: str = "config") -> QuantizerConfig:
    """``config`` itself if it is a quantizer config, else ``TypeError``."""
    if not isinstance(config, CONFIG_TYPES):
        names = ", ".join(t.__name__ for t in CONFIG_TYPES)
        raise TypeError(f"{what} must be one of {names}, got {type(config).__name__}: {config!r}")
    return config


__all__ = [
    "APoTConfig",
    "CONFIG_TYPES",
    "LearnableAPoTConfig",
    "LevelSet",
    "QuantizerConfig",
    "SCHEMES",
    "SignMagnitudeConfig",
    "UNIFORM_MAX_BITS",
    "UniformConfig",
    "check_config",
    "check_uniform_bits",
    "from_scheme",
]
