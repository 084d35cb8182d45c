"""``APoTFakeQuantize``: observer + APoT fake quantization as a torch.ao module.

Keeps the prototype's constructor, ``APoTFakeQuantize(observer=APoTObserver,
**observer_kwargs)``, so ``APoTFakeQuantize.with_args(b=8, k=2,
dtype=torch.qint8)`` works in a ``QConfig``. Fixes the prototype: the qparams
are registered buffers (in ``state_dict``, moved by ``.to()``), fake quant
before any observation is a clear error, ``signed=True`` gives weights the
signed level table instead of rounding every negative value to 0, and the
``factory_kwargs`` that torch.ao's QAT modules pass are accepted (the
prototype's observer refused them, so ``prepare_qat`` failed).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor
from torch.ao.quantization.fake_quantize import FakeQuantizeBase

from apot_common.config import (
    APoTConfig,
    LearnableAPoTConfig,
    QuantizerConfig,
    SignMagnitudeConfig,
    UniformConfig,
    check_config,
)
from apot_common.tables import LevelSet, level_table, sign_magnitude_table
from apot_torch import levels as _levels
from apot_torch.fake_quantize_function import fake_quantize_function
from apot_torch.observer import APoTObserver, ConfigInStateDict, Float32State, observed_alpha
from apot_torch.paper import (
    check_learnable,
    learnable_fake_quantize,
    paper_weight_quant,
    sign_magnitude_qparams,
    unsigned_qparams,
)


class _ObservedFakeQuantize(Float32State, ConfigInStateDict, FakeQuantizeBase):
    """Shared forward of the observer-based fake quants: observe (if enabled),
    refresh the qparam buffers from the statistics, fake-quantize (if enabled).

    Subclasses hold an ``alpha`` buffer (NaN until the first observation) and
    define ``_qparam_updates()`` (``(buffer, value)`` pairs from the
    observer's statistics) and ``_fake_quantize(X)``.
    """

    alpha: Tensor

    def forward(self, X: Tensor) -> Tensor:  # noqa: N803 (prototype name)
        """Observe ``X`` (if enabled), then fake-quantize it (if enabled).

        Raises:
          RuntimeError: fake quant enabled but no qparams observed or loaded.
        """
        if self.observer_enabled[0] == 1:
            self._observe(X.detach())
        if self.fake_quant_enabled[0] == 1:
            if bool(torch.isnan(self.alpha)):
                raise RuntimeError(
                    f"{type(self).__name__} has no qparams yet: run it with the observer enabled on data "
                    "(or load a state_dict) before enabling fake quant"
                )
            X = self._fake_quantize(X)
        return X

    # Statistics and qparams run eagerly under torch.compile: they branch on
    # data and build the static level table with numpy, which dynamo cannot
    # trace; only the per-element fake quant is worth compiling.
    @torch.compiler.disable
    def _observe(self, X: Tensor) -> None:  # noqa: N803
        """Update the statistics with ``X`` and the qparam buffers from them."""
        observer = cast(APoTObserver, self.activation_post_process)  # as each subclass builds it
        observer(X)
        # An empty or all-NaN first batch leaves nothing to compute qparams
        # from; the buffers then stay unset rather than failing calibration.
        if bool(observer.min_val <= observer.max_val):
            with torch.no_grad():
                for buffer, value in self._qparam_updates():
                    buffer.copy_(value)

    def _qparam_updates(self) -> list[tuple[Tensor, Tensor]]:
        raise NotImplementedError

    def _fake_quantize(self, X: Tensor) -> Tensor:  # noqa: N803
        raise NotImplementedError


class APoTFakeQuantize(_ObservedFakeQuantize):
    """Observe, recompute APoT qparams and fake-quantize, as one module.

    Args:
      observer: observer class (or ``with_args`` partial) taking
        ``**observer_kwargs``; it must expose ``b``, ``k``, ``min_val``,
        ``max_val`` and ``calculate_qparams(signed)`` like ``APoTObserver``.
      signed: ``False`` (the prototype's choice): the unsigned level table,
        every negative input rounds to 0, suited to activations after ReLU.
        ``True``: the prototype's signed table (``(2**(k+1)-1)**n`` levels,
        duplicates kept), for weights.
      factory_kwargs: what torch.ao's QAT modules pass (the weight's device
        and dtype); the buffers go to that device and stay float32 / int32.
      **observer_kwargs: ``b``, ``k`` and ``dtype`` for ``APoTObserver``.

    Buffers (all in ``state_dict``):
      fake_quant_enabled, observer_enabled: uint8 ``(1,)`` (``FakeQuantizeBase``).
      alpha, gamma: float32 scalars; NaN until the first observation.
      quantization_levels: float32 ``(N,)``, NaN until the first observation.
      level_indices: int32 ``(N,)``, zeros until the first observation.
      activation_post_process.min_val / max_val: the observer's statistics.

    The float32 buffers stay float32 through ``.half()``, ``.bfloat16()`` and
    ``.to()`` a narrower float dtype (the module still moves device;
    ``.double()`` widens them exactly). ``load_state_dict`` refuses (torch's
    ``RuntimeError``, naming the entry or the mismatch, leaving the buffers
    as they were) a state dict recorded for another ``b``, ``k`` or
    ``signed``, entries of the wrong shape or dtype, and qparams that do not
    belong to this configuration's level table (``level_indices`` other than
    the table's, levels other than ``gamma`` times the table's sums, or a
    ``gamma`` other than the one of ``alpha``), also without the recorded
    configuration.

    ``forward(X)`` takes a floating tensor of any shape and returns one of the
    same shape and dtype: ``X`` itself when fake quant is disabled.
    """

    alpha: Tensor
    gamma: Tensor
    quantization_levels: Tensor
    level_indices: Tensor

    def __init__(
        self, observer=APoTObserver, *, signed: bool = False, factory_kwargs: dict | None = None, **observer_kwargs
    ) -> None:
        super().__init__()
        self.activation_post_process = observer(**observer_kwargs)
        self.dtype = self.activation_post_process.dtype
        self.signed = bool(signed)
        # The table is static per (b, k, signed): building it here refuses an
        # oversized one now, and gives a fresh module buffers of the final
        # shape, so load_state_dict needs no resizing.
        n_levels = level_table(self.activation_post_process.b, self.activation_post_process.k, self.signed).num_levels
        nan = float("nan")
        self.register_buffer("alpha", torch.tensor(nan))
        self.register_buffer("gamma", torch.tensor(nan))
        self.register_buffer("quantization_levels", torch.full((n_levels,), nan))
        self.register_buffer("level_indices", torch.zeros(n_levels, dtype=torch.int32))
        device = (factory_kwargs or {}).get("device")
        if device is not None:
            self.to(device)

    @torch.jit.unused
    def calculate_qparams(self, signed: bool | None = None):  # type: ignore[override]
        """``(alpha, gamma, quantization_levels, level_indices)`` from the
        observer's statistics; ``signed=None`` uses this module's ``signed``.

        Raises:
          RuntimeError: nothing finite has been observed yet.
        """
        return self.activation_post_process.calculate_qparams(signed=self.signed if signed is None else signed)

    def _qparam_updates(self) -> list[tuple[Tensor, Tensor]]:
        buffers = (self.alpha, self.gamma, self.quantization_levels, self.level_indices)
        return list(zip(buffers, self.calculate_qparams()))

    def _fake_quantize(self, X: Tensor) -> Tensor:  # noqa: N803
        # .float(): a module cast with .double() keeps the float32 numerics
        return fake_quantize_function.apply(
            X, self.alpha.float(), self.gamma.float(), self.quantization_levels.float(), self.level_indices
        )

    def extra_repr(self) -> str:
        return f"signed={self.signed}"

    def _apot_config(self) -> dict:
        observer = self.activation_post_process
        return {"module": "APoTFakeQuantize", "b": int(observer.b), "k": int(observer.k), "signed": self.signed}

    def _check_loaded(self, state_dict, prefix) -> list[str]:
        """Qparams of another table: level_indices, levels or gamma that this
        ``(b, k, signed)`` cannot produce (unobserved NaN qparams pass)."""
        entries = {
            name: state_dict.get(prefix + name) for name in ("alpha", "gamma", "quantization_levels", "level_indices")
        }
        mine = {"alpha": self.alpha, "gamma": self.gamma, "quantization_levels": self.quantization_levels,
                "level_indices": self.level_indices}  # fmt: skip
        if any(v is None or tuple(v.shape) != tuple(mine[k].shape) for k, v in entries.items()):
            return []  # missing / misshaped: torch names them
        observer = self.activation_post_process
        config = f"b={observer.b}, k={observer.k}, signed={self.signed}"
        table = level_table(observer.b, observer.k, self.signed)
        problems = []
        indices = entries["level_indices"].detach().cpu().to(torch.int64)
        if bool(indices.any()) and not torch.equal(indices, torch.tensor(table.level_indices, dtype=torch.int64)):
            problems.append(f"{prefix}level_indices: not the level order of the table for {config} "
                            "(a state_dict of another configuration?)")  # fmt: skip
        alpha = entries["alpha"].detach().cpu().to(torch.float32)
        gamma = entries["gamma"].detach().cpu().to(torch.float32)
        if not bool(torch.isnan(alpha)):
            expected_gamma = _levels.gamma(alpha, table.p_sum)
            if not _same_bits(gamma, expected_gamma):
                problems.append(f"{prefix}gamma: {gamma.item()!r} is not alpha / p_sum = {expected_gamma.item()!r} "
                                f"for {config} (a state_dict of another configuration?)")  # fmt: skip
            elif not _same_bits(
                entries["quantization_levels"].detach().cpu().to(torch.float32), _levels.levels(gamma, table)
            ):
                problems.append(f"{prefix}quantization_levels: not gamma times the level table for {config} "
                                "(a state_dict of another configuration?)")  # fmt: skip
        return problems


def _same_bits(a: Tensor, b: Tensor) -> bool:
    """Bitwise equality of two float32 tensors (NaN equal to NaN of the same bits)."""
    return a.shape == b.shape and torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


class SignMagnitudeFakeQuantize(_ObservedFakeQuantize):
    """Observe, then fake-quantize with the paper's ``b``-bit signed
    (sign-magnitude) levels for the observed alpha. Twin of
    ``apot_jax.fake_quantize_module.SignMagnitudeFakeQuantize``.

    The sign-magnitude scheme of ``apot_torch.paper`` (``2**b - 1`` levels
    symmetric about 0, ``k`` dividing ``b - 1``) with ``alpha = max(-min_val,
    max_val)`` of the running statistics, like ``APoTFakeQuantize``; for a
    learnt alpha use ``LearnableAPoTFakeQuantize``. The gradient is the
    clipped straight-through one, ``dy * (|X| <= alpha)``.

    Args:
      b, k: bits including the sign, base width of the ``b - 1`` magnitude bits.
      level_set: the magnitudes: ``"apot"`` (apot's table) or ``"paper"`` /
        ``"paper-pot"`` (the paper code's ``build_power_value(b - 1)``).
      dtype: the quantized dtype reported to torch.ao (unused by the numerics).
      factory_kwargs: what torch.ao's QAT modules pass; the buffers go to
        that device and stay float32.

    Buffers (all in ``state_dict``): the ``FakeQuantizeBase`` flags;
    ``alpha``, float32 scalar, NaN until the first observation;
    ``activation_post_process.min_val`` / ``max_val``, the statistics (an
    ``APoTObserver`` of the magnitude's ``(b - 1, k)`` table).
    ``forward(X)``: floating ``X`` of any shape; returns its shape and dtype
    (``X`` itself with fake quant disabled).
    """

    alpha: Tensor

    def __init__(self, b: int, k: int, *, level_set: LevelSet = "apot", dtype: torch.dtype = torch.qint8,
                 factory_kwargs: dict | None = None) -> None:
        super().__init__()
        sign_magnitude_table(b, k, level_set)  # ValueError now
        self.b, self.k, self.level_set = int(b), int(k), level_set
        self.dtype = dtype
        self.activation_post_process = APoTObserver(self.b - 1, self.k, dtype)
        self.register_buffer("alpha", torch.tensor(float("nan")))
        device = (factory_kwargs or {}).get("device")
        if device is not None:
            self.to(device)

    @torch.jit.unused
    def calculate_qparams(self):  # type: ignore[override]
        """The sign-magnitude qparams of the observed alpha.

        Raises:
          RuntimeError: nothing finite has been observed yet.
        """
        observer = self.activation_post_process
        if not bool(observer.min_val <= observer.max_val):
            raise RuntimeError("SignMagnitudeFakeQuantize has not observed any finite value yet")
        return sign_magnitude_qparams(observed_alpha(observer.min_val, observer.max_val), b=self.b, k=self.k,
                                      level_set=self.level_set)

    def _qparam_updates(self) -> list[tuple[Tensor, Tensor]]:
        observer = self.activation_post_process
        return [(self.alpha, observed_alpha(observer.min_val, observer.max_val))]

    def _fake_quantize(self, X: Tensor) -> Tensor:  # noqa: N803
        # the learnable fake quant with a buffer for alpha: same forward and
        # X-gradient, and no alpha gradient is computed
        return learnable_fake_quantize(X, self.alpha.float(), b=self.b, k=self.k, level_set=self.level_set)

    def extra_repr(self) -> str:
        return f"b={self.b}, k={self.k}, level_set={self.level_set}"

    def _apot_config(self) -> dict:
        return {"module": "SignMagnitudeFakeQuantize", "b": self.b, "k": self.k, "level_set": self.level_set}


class LearnableAPoTFakeQuantize(Float32State, ConfigInStateDict, FakeQuantizeBase):
    """The paper's fake quant with a learnt alpha (``apot_torch.paper``):
    sign-magnitude weight levels, a learnable ``alpha`` (an ``nn.Parameter``),
    optional weight normalization and per-channel alpha; or, with
    ``scheme="unsigned", normalize=False``, activations on the unsigned APoT
    levels. Twin of ``apot_jax.fake_quantize_module.LearnableAPoTFakeQuantize``.

    Args:
      b, k: sign-magnitude: bits including the sign, and base width of the
        ``b - 1`` magnitude bits (``k`` must divide ``b - 1``); unsigned: the
        APoT table's (``k`` divides ``b``).
      normalize: normalize the input first (and scale back by its std);
        sign-magnitude only.
      channel_axis: ``None`` for one alpha, else the axis with one alpha per
        entry (``0`` for an ``nn.Linear`` weight ``(out, in)``); needs
        ``channels``; sign-magnitude only.
      channels: number of alphas along ``channel_axis``.
      alpha_init: initial alpha (the paper starts weights at 3.0).
      scheme: ``"sign-magnitude"`` (weights) or ``"unsigned"`` (activations).
      level_set: ``"apot"`` (apot's tables) or ``"paper"`` / ``"paper-pot"``
        (the paper code's ``build_power_value`` sets).
      dtype: the quantized dtype reported to torch.ao (unused by the numerics).
      factory_kwargs: what torch.ao's QAT modules pass; the parameter goes to
        that device and stays float32.

    Parameters: ``alpha``, float32 ``()`` or ``(channels,)``. Buffers: the
    ``FakeQuantizeBase`` flags; ``observer_enabled`` has no effect (alpha is
    learnt, not observed). ``forward(X)``: floating ``X``, any shape; returns
    its shape, float32 when normalizing, else ``X``'s dtype (``X`` itself
    with fake quant disabled).

    ``alpha`` (and its gradient) stays float32 through ``.half()``,
    ``.bfloat16()`` and ``.to()`` a narrower float dtype. ``load_state_dict`` refuses (torch's ``RuntimeError``
    naming the mismatch) a state dict recorded for another ``b``, ``k``,
    ``scheme``, ``normalize`` or ``channel_axis``; an ``alpha`` of another
    shape (per tensor vs per channel, another channel count) is named by
    torch's size-mismatch message.
    """

    def __init__(
        self,
        b: int,
        k: int,
        *,
        normalize: bool = True,
        channel_axis: int | None = None,
        channels: int | None = None,
        alpha_init: float = 3.0,
        scheme: str = "sign-magnitude",
        level_set: LevelSet = "apot",
        dtype: torch.dtype = torch.qint8,
        factory_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        check_learnable(b, k, scheme, normalize, channel_axis, level_set)  # ValueError now
        if (channel_axis is None) != (channels is None):
            raise ValueError("give channels exactly when channel_axis is given")
        self.b, self.k, self.normalize, self.channel_axis = int(b), int(k), bool(normalize), channel_axis
        self.scheme, self.level_set = scheme, level_set
        self.dtype = dtype
        shape = () if channels is None else (int(channels),)
        self.alpha = torch.nn.Parameter(torch.full(shape, float(alpha_init), dtype=torch.float32))
        device = (factory_kwargs or {}).get("device")
        if device is not None:
            self.to(device)

    @torch.jit.unused
    def calculate_qparams(self):  # type: ignore[override]
        """The scheme's qparams of the current alpha (no gradient):
        ``SignMagnitudeQParams``, or the unsigned ``(alpha, gamma, levels,
        level_indices)``."""
        if self.scheme == "unsigned":
            return unsigned_qparams(self.alpha.detach(), b=self.b, k=self.k, level_set=self.level_set)
        return sign_magnitude_qparams(self.alpha.detach(), b=self.b, k=self.k, level_set=self.level_set)

    def forward(self, X: Tensor) -> Tensor:  # noqa: N803 (torch.ao name)
        if self.fake_quant_enabled[0] != 1:
            return X
        if self.scheme == "unsigned":
            return learnable_fake_quantize(X, self.alpha, b=self.b, k=self.k, scheme="unsigned",
                                           level_set=self.level_set)
        return paper_weight_quant(
            X, self.alpha, b=self.b, k=self.k, normalize=self.normalize, channel_axis=self.channel_axis,
            level_set=self.level_set,
        )

    def extra_repr(self) -> str:
        return (f"b={self.b}, k={self.k}, scheme={self.scheme}, normalize={self.normalize}, "
                f"channel_axis={self.channel_axis}, level_set={self.level_set}")

    def _apot_config(self) -> dict:
        return {"module": "LearnableAPoTFakeQuantize", "b": self.b, "k": self.k, "scheme": self.scheme,
                "normalize": self.normalize, "channel_axis": self.channel_axis,
                "level_set": self.level_set}  # fmt: skip


def from_config(
    config: QuantizerConfig,
    *,
    channels: int | None = None,
    channel_axis: int = 0,
    dtype: torch.dtype | None = None,
    factory_kwargs: dict | None = None,
) -> FakeQuantizeBase:
    """The torch fake quant a typed config (``apot_common.config``) describes;
    twin of ``apot_jax.fake_quantize_module.linen_from_config``.

    Args:
      config: ``APoTConfig`` -> :class:`APoTFakeQuantize`;
        ``SignMagnitudeConfig`` -> :class:`SignMagnitudeFakeQuantize`;
        ``LearnableAPoTConfig`` -> :class:`LearnableAPoTFakeQuantize`;
        ``UniformConfig`` -> torch's own ``FakeQuantize`` with a per-tensor
        ``MinMaxObserver`` over ``[0, 2**b - 1]`` (unsigned) or
        ``[-(2**(b-1) - 1), 2**(b-1) - 1]`` (signed): a baseline, outside
        the bit-exact contract.
      channels, channel_axis: a per-channel ``LearnableAPoTConfig`` only: the
        number of alphas and their axis (``0``: an ``nn.Linear`` /
        ``nn.Conv2d`` weight's output channels).
      dtype: the quantized dtype reported to torch.ao (default ``qint8`` for
        signed configs, ``quint8`` for unsigned ones).
      factory_kwargs: what torch.ao's QAT modules pass (device).

    Raises:
      TypeError: ``config`` is not a quantizer config.
      ValueError: a per-channel config without ``channels``.

    >>> from apot_common.config import APoTConfig
    >>> fq = from_config(APoTConfig(b=4, k=2, signed=True))
    >>> type(fq).__name__, fq.activation_post_process.b, fq.activation_post_process.k, fq.signed
    ('APoTFakeQuantize', 4, 2, True)
    """
    check_config(config)
    signed = not isinstance(config, (APoTConfig, UniformConfig, LearnableAPoTConfig)) or config.signed
    dtype = dtype if dtype is not None else (torch.qint8 if signed else torch.quint8)
    kw: dict[str, Any] = {"dtype": dtype, "factory_kwargs": factory_kwargs}
    if isinstance(config, APoTConfig):
        return APoTFakeQuantize(b=config.b, k=config.k, signed=config.signed, **kw)
    if isinstance(config, SignMagnitudeConfig):
        return SignMagnitudeFakeQuantize(config.b, config.magnitude_k, level_set=config.level_set, **kw)
    if isinstance(config, UniformConfig):
        from torch.ao.quantization.fake_quantize import FakeQuantize
        from torch.ao.quantization.observer import MinMaxObserver

        qmax = 2 ** (config.b - 1) - 1 if config.signed else 2**config.b - 1
        qmin = -qmax if config.signed else 0
        fq = FakeQuantize(observer=MinMaxObserver, quant_min=qmin, quant_max=qmax, dtype=torch.qint32,
                          qscheme=torch.per_tensor_symmetric if config.signed else torch.per_tensor_affine)
        device = (factory_kwargs or {}).get("device")
        return fq if device is None else fq.to(device)
    if config.per_channel and channels is None:
        raise ValueError("a per-channel LearnableAPoTConfig needs channels (the size of channel_axis)")
    return LearnableAPoTFakeQuantize(
        config.b, config.magnitude_k, normalize=config.normalize,
        channel_axis=channel_axis if config.per_channel else None,
        channels=channels if config.per_channel else None, alpha_init=config.alpha_init,
        scheme=config.scheme, level_set=config.level_set, **kw,
    )


__all__ = ["APoTFakeQuantize", "LearnableAPoTFakeQuantize", "SignMagnitudeFakeQuantize", "from_config"]
