"""Fake-quant modules for Flax (linen and NNX) that own their observer state.

The torch ``APoTFakeQuantize`` keeps ``min_val`` / ``max_val`` and two uint8
flags as buffers. Here the same four values are Flax state:

* linen: the variable collection ``"quant_stats"`` (qwix's name), with float32
  scalars ``min_val`` (``+inf`` initially) and ``max_val`` (``-inf``) and int32
  scalars ``observer_enabled`` and ``fake_quant_enabled`` (``1`` initially).
  Statistics change only when ``"quant_stats"`` is mutable and the module is
  not initializing (the ``BatchNorm`` convention). The flags are toggled with
  the pure helper :func:`set_flags`.
* NNX: ``QuantStat`` Variables (a dedicated ``nnx.Variable`` subclass, so
  ``nnx.state(model, QuantStat)`` selects exactly this state), updated in
  ``__call__``, with ``enable_observer()`` / ``disable_observer()`` /
  ``enable_fake_quant()`` / ``disable_fake_quant()``.

Both front ends run the same pure step (:func:`fake_quant_step`), so they give
bitwise identical outputs and state. The statistics and qparams are computed
outside the ``custom_vjp`` and passed into it (contract section 8: NNX refuses
Variable updates inside a ``custom_vjp`` forward, flax issue 4847), and the
observer sees ``stop_gradient(x)``: the fake quant gives the qparams a zero
cotangent anyway, so this only saves the backward pass of the min/max.

:class:`SignMagnitudeFakeQuantize` / :class:`NNXSignMagnitudeFakeQuantize`
have the same state and use the paper's ``b``-bit signed (sign-magnitude)
levels with the observed alpha. The paper's recipe with a learnt alpha
(sign-magnitude weights with optional weight normalization and per-channel
alpha, or unsigned activations; ``apot_jax/paper.py``) is
:class:`LearnableAPoTFakeQuantize` / :class:`NNXLearnableAPoTFakeQuantize`:
its alpha is a trainable parameter (linen ``"params"`` / ``nnx.Param``), so it
has no observer state and no flags.

Besides APoT, a uniform symmetric fake quant with the same state layout is
provided (``UniformFakeQuantize`` / ``NNXUniformFakeQuantize``), for the torch
qconfig combinations "APoT weights + uniform activations" and "uniform both".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from flax.core import FrozenDict

from apot_common.config import (
    APoTConfig,
    LearnableAPoTConfig,
    QuantizerConfig,
    SignMagnitudeConfig,
    UniformConfig,
    check_config,
    check_uniform_bits,
)
from apot_common.tables import LevelSet, level_table, sign_magnitude_table
from apot_jax.fake_quantize_function import fake_quantize, ste_mask
from apot_jax.observer import ObserverState, calculate_qparams, observe, observed_alpha
from apot_jax.paper import check_learnable, learnable_fake_quantize, paper_weight_quant

#: Name of the linen variable collection holding observer statistics and flags.
QUANT_STATS = "quant_stats"

#: Names of the four state entries of every fake-quant module.
STAT_NAMES = ("min_val", "max_val", "observer_enabled", "fake_quant_enabled")

# A quantizer: (x, min_val, max_val) -> fake-quantized x. The statistics are
# the ones to use for this call (already updated with x if observing).
Quantizer = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def _init_stats() -> dict[str, jax.Array]:
    return {
        "min_val": jnp.float32(jnp.inf),
        "max_val": jnp.float32(-jnp.inf),
        "observer_enabled": jnp.int32(1),
        "fake_quant_enabled": jnp.int32(1),
    }


def check_stats(stats: Mapping[str, Any], where: str) -> None:
    """Check one fake quant's state before it is used: exactly the entries
    ``STAT_NAMES``, each a scalar (shape ``()``), the statistics real
    floating, the flags integer or boolean. A state made for another module
    or configuration (e.g. a torch-shaped ``(1,)`` flag, a ``levels`` entry,
    per-channel statistics) is refused instead of being broadcast into the
    qparams.

    Raises:
      ValueError: a missing or unexpected entry, or a non-scalar one
        (``where`` and the entry named).
      TypeError: an entry of the wrong dtype (named).
    """
    missing = [name for name in STAT_NAMES if name not in stats]
    unexpected = sorted(set(stats) - set(STAT_NAMES))
    if missing or unexpected:
        raise ValueError(f"{where}: missing entries {missing}, unexpected entries {unexpected} (expected exactly "
                         f"{list(STAT_NAMES)}: state of another module or configuration?)")  # fmt: skip
    for name in STAT_NAMES:
        value = stats[name]
        shape, dtype = jnp.shape(value), jnp.result_type(value)
        if shape != ():
            raise ValueError(f"{where}: {name} must be a scalar (shape ()), got shape {shape}")
        if name in ("min_val", "max_val"):
            if not jnp.issubdtype(dtype, jnp.floating):
                raise TypeError(f"{where}: {name} must be a real floating scalar (float32), got dtype {dtype}")
        elif not (jnp.issubdtype(dtype, jnp.integer) or dtype == jnp.bool_):
            raise TypeError(f"{where}: {name} must be an integer flag (int32 0 or 1), got dtype {dtype}")


def fake_quant_step(
    x: jax.Array,
    min_val: jax.Array,
    max_val: jax.Array,
    observer_enabled: jax.Array,
    fake_quant_enabled: jax.Array,
    quantizer: Quantizer,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One forward of a fake-quant module, as a pure function.

    Args:
      x: floating array, any shape.
      min_val, max_val: float32 scalars, the running statistics.
      observer_enabled, fake_quant_enabled: int32 scalars (0 or 1); traced
        values are fine, both branches are computed and selected by ``where``.
      quantizer: ``(x, min_val, max_val) -> y``, the fake quant proper.

    Returns:
      ``(y, new_min, new_max)``: ``y`` shaped and typed like ``x`` (``x``
      itself where fake quant is disabled), and the float32 statistics after
      this call (unchanged where the observer is disabled).
    """
    # The qparams get a zero cotangent from the fake quant: differentiating the
    # min/max would only add work to the backward pass.
    observed = observe(ObserverState(min_val, max_val), jax.lax.stop_gradient(x))
    on = jnp.asarray(observer_enabled) != 0
    new_min = jnp.where(on, observed.min_val, jnp.asarray(min_val, jnp.float32))
    new_max = jnp.where(on, observed.max_val, jnp.asarray(max_val, jnp.float32))
    y = quantizer(x, new_min, new_max)
    y = jnp.where(jnp.asarray(fake_quant_enabled) != 0, y, x)
    return y, new_min, new_max


def apot_quantizer(b: int, k: int, signed: bool = False) -> Quantizer:
    """The APoT fake quant ``(x, min_val, max_val) -> y`` of ``(b, k, signed)``."""
    level_table(b, k, signed)  # ValueError now rather than at trace time

    def quantize(x: jax.Array, min_val: jax.Array, max_val: jax.Array) -> jax.Array:
        qparams = calculate_qparams(min_val, max_val, b=b, k=k, signed=signed)
        return fake_quantize(x, qparams)

    return quantize


def sign_magnitude_quantizer(b: int, k: int, level_set: LevelSet = "apot") -> Quantizer:
    """The sign-magnitude fake quant ``(x, min_val, max_val) -> y`` of ``(b, k)``
    with an observed alpha.

    The paper's ``b``-bit signed weights (``apot_jax.paper``: ``2**b - 1``
    levels symmetric about 0) with ``alpha = observed_alpha(min_val,
    max_val)`` instead of a learnt one. The forward equals
    ``paper.quant_dequant(x, sign_magnitude_qparams(alpha))``, the gradient is
    the clipped straight-through one, ``dy * (|x| <= alpha)``; alpha gets
    none (it follows the statistics). ``level_set`` picks the magnitudes
    (``apot_common.tables.sign_magnitude_table``).
    """
    sign_magnitude_table(b, k, level_set)  # ValueError now rather than at trace time

    def quantize(x: jax.Array, min_val: jax.Array, max_val: jax.Array) -> jax.Array:
        # the learnable fake quant with a constant alpha: the same forward and
        # x-gradient; the alpha cotangent is dead code that jit removes
        alpha = jax.lax.stop_gradient(observed_alpha(min_val, max_val))
        return learnable_fake_quantize(x, alpha, b=b, k=k, level_set=level_set)

    return quantize


# --------------------------------------------------------------------------
# Uniform symmetric fake quant (the comparison baseline; not part of the
# bit-exact APoT contract).


@jax.custom_vjp
def _uniform_fake_quant(x: jax.Array, alpha: jax.Array, qmin: jax.Array, qmax: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    scale = alpha / qmax
    q = jnp.clip(jnp.round(jnp.clip(x32, -alpha, alpha) / scale), qmin, qmax)
    y = jnp.where(alpha > 0, q * scale, jnp.zeros_like(x32))  # alpha = 0: all levels are 0
    y = jnp.where(jnp.isnan(x32) | jnp.isnan(scale), jnp.float32(jnp.nan), y)
    return y.astype(x.dtype)


def _uniform_fwd(x, alpha, qmin, qmax):
    return _uniform_fake_quant(x, alpha, qmin, qmax), (ste_mask(x, alpha), alpha, qmin, qmax)


def _uniform_bwd(residuals, dy):
    mask, alpha, qmin, qmax = residuals
    return jnp.where(mask, dy, jnp.zeros_like(dy)), jnp.zeros_like(alpha), jnp.zeros_like(qmin), jnp.zeros_like(qmax)


_uniform_fake_quant.defvjp(_uniform_fwd, _uniform_bwd)


def uniform_quantizer(b: int, signed: bool = True) -> Quantizer:
    """Uniform symmetric fake quant ``(x, min_val, max_val) -> y`` with ``b`` bits.

    ``alpha = max(-min_val, max_val)``; signed levels are ``q * alpha / qmax``
    for integers ``q`` in ``[-qmax, qmax]`` with ``qmax = 2**(b-1) - 1``
    (``b >= 2``); unsigned levels use ``q`` in ``[0, 2**b - 1]`` (so negative
    inputs become 0, like the unsigned APoT table). ``x`` is clipped to
    ``[-alpha, alpha]`` and rounded half to even; the gradient is the same
    clipped straight-through estimator as APoT's, ``dy * (-alpha <= x <= alpha)``.
    Unobserved statistics (``alpha = -inf``) give NaN, like APoT.

    Raises:
      ValueError: ``b`` not an integer in ``[1, UNIFORM_MAX_BITS]`` (``[2,
        ...]`` signed): above 16 bits the level count exceeds the APoT
        tables' limit, and above 24 the integer levels are no longer exact
        in float32.
    """
    check_uniform_bits(b, signed)
    qmax = float(2 ** (b - 1) - 1 if signed else 2**b - 1)
    qmin = -qmax if signed else 0.0

    def quantize(x: jax.Array, min_val: jax.Array, max_val: jax.Array) -> jax.Array:
        alpha = jnp.maximum(-jnp.asarray(min_val, jnp.float32), jnp.asarray(max_val, jnp.float32))
        alpha = jnp.where(alpha >= 0, alpha, jnp.float32(jnp.nan))  # unobserved -> NaN
        return _uniform_fake_quant(x, alpha, jnp.float32(qmin), jnp.float32(qmax))

    return quantize


# --------------------------------------------------------------------------
# linen


class _LinenFakeQuantBase(nn.Module):
    """Shared linen logic: declares the ``quant_stats`` variables and runs the step."""

    def _quantizer(self) -> Quantizer:
        raise NotImplementedError

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Fake-quantize ``x`` (any shape, floating); returns its shape and dtype.

        Raises:
          ValueError / TypeError: the ``quant_stats`` given for this module
            are not its own (see :func:`check_stats`), naming the entry.
        """
        if not self.is_initializing() and any(self.has_variable(QUANT_STATS, name) for name in STAT_NAMES):
            check_stats(
                dict(self.variables.get(QUANT_STATS, {})),
                f"quant_stats of {'/'.join(self.path) or type(self).__name__}",
            )
        init = _init_stats()
        v = {name: self.variable(QUANT_STATS, name, lambda n=name: init[n]) for name in STAT_NAMES}
        y, new_min, new_max = fake_quant_step(
            x,
            v["min_val"].value,
            v["max_val"].value,
            v["observer_enabled"].value,
            v["fake_quant_enabled"].value,
            self._quantizer(),
        )
        # BatchNorm convention: store only when the caller asked for the
        # collection back; an immutable collection is a read-only (eval) call.
        if self.is_mutable_collection(QUANT_STATS) and not self.is_initializing():
            v["min_val"].value = new_min
            v["max_val"].value = new_max
        return y


class APoTFakeQuantize(_LinenFakeQuantBase):
    """APoT fake quant with an observer, as a linen module.

    Attributes:
      b: total bits; k: base bit-width (``b % k == 0``); signed: use the
        prototype-compatible signed table (default unsigned, the prototype's
        choice for ``APoTFakeQuantize``: negative inputs become 0).

    State (collection ``"quant_stats"``): float32 scalars ``min_val`` /
    ``max_val`` (``+inf`` / ``-inf`` initially), int32 scalars
    ``observer_enabled`` / ``fake_quant_enabled`` (1 initially).

    ``__call__(x)`` (``x`` floating, any shape; returns ``x``'s shape/dtype):
    if the observer is enabled, the statistics used are ``observe(stats, x)``
    (stored only if ``"quant_stats"`` is mutable and not initializing),
    otherwise the stored ones; qparams follow from them; the output is
    ``fake_quantize(x, qparams)`` if fake quant is enabled, else ``x``.
    Note that an enabled observer uses the current batch even when the
    statistics are not stored: for evaluation, disable it with
    ``set_flags(variables, observer=False)``.

    Before any observation: with the observer disabled and nothing stored, the
    statistics are ``+inf`` / ``-inf``, alpha is ``-inf`` and the qparams are
    NaN, so the fake-quant output is **NaN everywhere** (never a plausible
    number; torch raises ``RuntimeError`` in this case instead).
    """

    b: int
    k: int
    signed: bool = False

    def __post_init__(self) -> None:
        level_table(self.b, self.k, self.signed)  # ValueError at construction
        super().__post_init__()

    def _quantizer(self) -> Quantizer:
        return apot_quantizer(self.b, self.k, self.signed)


class SignMagnitudeFakeQuantize(_LinenFakeQuantBase):
    """Sign-magnitude APoT fake quant with an observer, as a linen module: the
    paper's ``b``-bit signed weights (``k`` divides ``b - 1``; see
    :func:`sign_magnitude_quantizer`) with alpha from the running min/max.

    State and flag semantics as :class:`APoTFakeQuantize` (NaN output before
    any observation). For a learnt alpha use :class:`LearnableAPoTFakeQuantize`.
    ``level_set``: ``"apot"`` (default), ``"paper"`` or ``"paper-pot"``
    magnitudes.
    """

    b: int
    k: int
    level_set: LevelSet = "apot"

    def __post_init__(self) -> None:
        sign_magnitude_table(self.b, self.k, self.level_set)  # ValueError at construction
        super().__post_init__()

    def _quantizer(self) -> Quantizer:
        return sign_magnitude_quantizer(self.b, self.k, self.level_set)


class UniformFakeQuantize(_LinenFakeQuantBase):
    """Uniform symmetric fake quant (see :func:`uniform_quantizer`), with the
    same ``"quant_stats"`` state and flag semantics as :class:`APoTFakeQuantize`
    (NaN output before any observation)."""

    b: int
    signed: bool = True

    def __post_init__(self) -> None:
        uniform_quantizer(self.b, self.signed)  # ValueError at construction
        super().__post_init__()

    def _quantizer(self) -> Quantizer:
        return uniform_quantizer(self.b, self.signed)


class LearnableAPoTFakeQuantize(nn.Module):
    """The paper's fake quant with a learnt alpha as a linen module
    (``apot_jax.paper``): weights by default, activations with
    ``scheme="unsigned", normalize=False``.

    Attributes:
      b, k: sign-magnitude: bits including the sign, and base width of the
        ``b - 1`` magnitude bits (``k`` must divide ``b - 1``); unsigned:
        the APoT table's (``k`` divides ``b``).
      normalize: normalize the input to zero mean, unit variance first (and
        scale the result back by the std, see ``paper_weight_quant``);
        sign-magnitude only.
      channel_axis: ``None`` for one alpha, else the input axis with one
        alpha per entry (for a Dense kernel ``(in, out)``: ``-1``);
        sign-magnitude only.
      alpha_init: initial alpha (in units of the normalized input when
        ``normalize``); the paper starts weights at 3.0.
      scheme: ``"sign-magnitude"`` (weights) or ``"unsigned"`` (activations
        after a ReLU: negative inputs give 0).
      level_set: ``"apot"`` (apot's tables), ``"paper"`` / ``"paper-pot"``
        (the paper code's ``build_power_value`` sets).

    Params: ``alpha``, float32 ``()`` or ``(C,)``. ``__call__(x)``: ``x``
    floating, any shape (at least 2 elements per statistic when
    normalizing); returns its shape, float32 when normalizing, else ``x``'s
    dtype.
    """

    b: int
    k: int
    normalize: bool = True
    channel_axis: int | None = None
    alpha_init: float = 3.0
    scheme: str = "sign-magnitude"
    level_set: LevelSet = "apot"

    def __post_init__(self) -> None:
        # ValueError now
        check_learnable(self.b, self.k, self.scheme, self.normalize, self.channel_axis, self.level_set)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = () if self.channel_axis is None else (x.shape[self.channel_axis],)
        alpha = self.param("alpha", lambda _, s: jnp.full(s, self.alpha_init, jnp.float32), shape)
        return _learnable_quant(self, x, alpha)


def _learnable_quant(
    module: "LearnableAPoTFakeQuantize | NNXLearnableAPoTFakeQuantize", x: jax.Array, alpha: jax.Array
) -> jax.Array:
    """The fake quant of a learnable module (linen or NNX) for its scheme."""
    return _learnable(x, alpha, b=module.b, k=module.k, signed=module.scheme != "unsigned",
                      normalize=module.normalize, channel_axis=module.channel_axis, level_set=module.level_set)


def _learnable(x: jax.Array, alpha: jax.Array, *, b: int, k: int, signed: bool, normalize: bool,
               channel_axis: int | None, level_set: LevelSet) -> jax.Array:
    if not signed:
        return learnable_fake_quantize(x, alpha, b=b, k=k, scheme="unsigned", level_set=level_set)
    return paper_weight_quant(x, alpha, b=b, k=k, normalize=normalize, channel_axis=channel_axis,
                              level_set=level_set)


def _is_flag_dict(node: Any) -> bool:
    return isinstance(node, Mapping) and "observer_enabled" in node and "fake_quant_enabled" in node


def set_flags(variables: Any, observer: bool | None = None, fake_quant: bool | None = None) -> Any:
    """Set the flags of every fake-quant module found in ``variables``.

    Args:
      variables: a linen variables tree (dict or ``FrozenDict``, the whole
        ``{"params": ..., "quant_stats": ...}`` or any subtree of it), or an
        NNX module (changed in place).
      observer, fake_quant: new value of ``observer_enabled`` /
        ``fake_quant_enabled``; ``None`` leaves that flag as it is.

    Returns:
      A new tree of the same container types (the input is not modified), or
      the NNX module itself.
    """
    if isinstance(variables, nnx.Module):
        for _, module in nnx.iter_modules(variables):
            if isinstance(module, _NNXFakeQuantBase):
                if observer is not None:
                    module.observer_enabled[...] = jnp.int32(bool(observer))
                if fake_quant is not None:
                    module.fake_quant_enabled[...] = jnp.int32(bool(fake_quant))
        return variables

    def walk(node: Any) -> Any:
        if not isinstance(node, Mapping):
            return node
        out = {key: walk(value) for key, value in node.items()}
        if _is_flag_dict(node):
            if observer is not None:
                out["observer_enabled"] = jnp.full_like(node["observer_enabled"], int(bool(observer)))
            if fake_quant is not None:
                out["fake_quant_enabled"] = jnp.full_like(node["fake_quant_enabled"], int(bool(fake_quant)))
        return FrozenDict(out) if isinstance(node, FrozenDict) else out

    return walk(variables)


# --------------------------------------------------------------------------
# NNX


class QuantStat(nnx.Variable):
    """NNX Variable type of observer statistics and fake-quant flags.

    ``nnx.state(model, QuantStat)`` selects exactly the fake-quant state (not
    the params), e.g. to checkpoint or all-reduce it. Registered as the NNX
    type of the linen collection ``"quant_stats"``, so ``nnx.bridge`` maps
    the two layouts onto each other (Qwix registers its own ``QuantStat``
    under that name on import; ``apot_jax.qwix`` registers this one again).
    """


def register_quant_stats() -> None:
    """Make :class:`QuantStat` the NNX type of the ``"quant_stats"`` collection."""
    nnx.register_variable_name(QUANT_STATS, QuantStat, overwrite=True)


register_quant_stats()


class _NNXFakeQuantBase(nnx.Module):
    """Shared NNX logic: four ``QuantStat`` Variables and the pure step.

    ``use_running_average`` (static, ``False`` initially) is the attribute
    ``nnx.Module.eval()`` / ``.train()`` set, as on ``nnx.BatchNorm``: while
    it is ``True`` the observer is frozen (the stored statistics are used and
    kept), whatever ``observer_enabled`` says.
    """

    def __init__(self, *, use_running_average: bool = False) -> None:
        init = _init_stats()
        self.min_val = QuantStat(init["min_val"])
        self.max_val = QuantStat(init["max_val"])
        self.observer_enabled = QuantStat(init["observer_enabled"])
        self.fake_quant_enabled = QuantStat(init["fake_quant_enabled"])
        self.use_running_average = bool(use_running_average)

    def _quantizer(self) -> Quantizer:
        raise NotImplementedError

    def step(self, x: jax.Array, *, update: bool = True) -> jax.Array:
        """Fake-quantize ``x``; store the new statistics only if ``update``
        (the Qwix provider passes Qwix's own decision).

        Raises:
          ValueError / TypeError: a ``QuantStat`` of the wrong shape or dtype
            (e.g. after ``nnx.update`` with another module's state), named.
        """
        check_stats({name: getattr(self, name)[...] for name in STAT_NAMES}, f"{type(self).__name__} QuantStat")
        observer = jnp.int32(0) if self.use_running_average else self.observer_enabled[...]
        y, new_min, new_max = fake_quant_step(
            x, self.min_val[...], self.max_val[...], observer, self.fake_quant_enabled[...], self._quantizer()
        )
        if update:
            self.min_val[...] = new_min
            self.max_val[...] = new_max
        return y

    def __call__(self, x: jax.Array) -> jax.Array:
        """Fake-quantize ``x`` (any shape, floating); returns its shape and dtype.

        The statistics Variables are updated here (unchanged when the observer
        is disabled or frozen by ``eval()``), outside the ``custom_vjp``.
        """
        return self.step(x)

    def enable_observer(self) -> None:
        self.observer_enabled[...] = jnp.int32(1)

    def disable_observer(self) -> None:
        self.observer_enabled[...] = jnp.int32(0)

    def enable_fake_quant(self) -> None:
        self.fake_quant_enabled[...] = jnp.int32(1)

    def disable_fake_quant(self) -> None:
        self.fake_quant_enabled[...] = jnp.int32(0)


class NNXAPoTFakeQuantize(_NNXFakeQuantBase):
    """NNX twin of :class:`APoTFakeQuantize` (same arguments, same outputs and
    state bit for bit). State: ``QuantStat`` Variables ``min_val``,
    ``max_val`` (float32 scalars), ``observer_enabled``,
    ``fake_quant_enabled`` (int32 scalars). Before any observation with the
    observer disabled, the output is NaN everywhere."""

    def __init__(self, b: int, k: int, signed: bool = False, *, use_running_average: bool = False) -> None:
        level_table(b, k, signed)  # ValueError at construction
        self.b, self.k, self.signed = int(b), int(k), bool(signed)
        super().__init__(use_running_average=use_running_average)

    def _quantizer(self) -> Quantizer:
        return apot_quantizer(self.b, self.k, self.signed)


class NNXSignMagnitudeFakeQuantize(_NNXFakeQuantBase):
    """NNX twin of :class:`SignMagnitudeFakeQuantize` (same outputs and state
    bit for bit)."""

    def __init__(self, b: int, k: int, *, level_set: LevelSet = "apot", use_running_average: bool = False) -> None:
        sign_magnitude_table(b, k, level_set)  # ValueError at construction
        self.b, self.k, self.level_set = int(b), int(k), level_set
        super().__init__(use_running_average=use_running_average)

    def _quantizer(self) -> Quantizer:
        return sign_magnitude_quantizer(self.b, self.k, self.level_set)


class NNXUniformFakeQuantize(_NNXFakeQuantBase):
    """NNX twin of :class:`UniformFakeQuantize`."""

    def __init__(self, b: int, signed: bool = True, *, use_running_average: bool = False) -> None:
        uniform_quantizer(b, signed)  # ValueError at construction
        self.b, self.signed = int(b), bool(signed)
        super().__init__(use_running_average=use_running_average)

    def _quantizer(self) -> Quantizer:
        return uniform_quantizer(self.b, self.signed)


class NNXLearnableAPoTFakeQuantize(nnx.Module):
    """NNX twin of :class:`LearnableAPoTFakeQuantize`: ``alpha`` is an
    ``nnx.Param`` of shape ``()`` or ``(channels,)`` (``channels`` is needed
    with ``channel_axis``); same outputs bit for bit given the same alpha."""

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
    ) -> None:
        check_learnable(b, k, scheme, normalize, channel_axis, level_set)  # ValueError at construction
        if (channel_axis is None) != (channels is None):
            raise ValueError("give channels exactly when channel_axis is given")
        self.b, self.k, self.normalize, self.channel_axis = int(b), int(k), bool(normalize), channel_axis
        self.scheme, self.level_set = scheme, level_set
        shape = () if channels is None else (int(channels),)
        self.alpha = nnx.Param(jnp.full(shape, alpha_init, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Fake-quantize ``x`` (float32, any shape); returns its shape.

        Raises:
          ValueError: ``alpha`` is not of shape ``()`` (per tensor) or
            ``(x.shape[channel_axis],)`` (per channel), e.g. after
            ``nnx.update`` with another configuration's state.
        """
        alpha = self.alpha[...]
        expected = () if self.channel_axis is None else (x.shape[self.channel_axis],)
        if jnp.shape(alpha) != expected:
            raise ValueError(
                f"{type(self).__name__}.alpha has shape {jnp.shape(alpha)}, expected {expected} "
                f"({'per tensor' if self.channel_axis is None else f'one per entry of axis {self.channel_axis}'})"
            )
        return _learnable_quant(self, x, alpha)


# --------------------------------------------------------------------------
# typed configs -> modules


def linen_from_config(config: QuantizerConfig, *, name: str | None = None,
                      channel_axis: int | None = -1) -> nn.Module:
    """The linen fake quant a typed config (``apot_common.config``) describes.

    Args:
      config: :class:`~apot_common.config.APoTConfig` ->
        :class:`APoTFakeQuantize`; ``SignMagnitudeConfig`` ->
        :class:`SignMagnitudeFakeQuantize`; ``UniformConfig`` ->
        :class:`UniformFakeQuantize`; ``LearnableAPoTConfig`` ->
        :class:`LearnableAPoTFakeQuantize`.
      name: the submodule name (its state lives under it).
      channel_axis: ``LearnableAPoTConfig(per_channel=True)`` only: the input
        axis with one alpha per entry (``-1``: a Dense/Conv kernel's outputs).

    Raises:
      TypeError: ``config`` is not a quantizer config.

    >>> from apot_common.config import APoTConfig
    >>> linen_from_config(APoTConfig(b=4, k=2), name="q")
    APoTFakeQuantize(
        # attributes
        b = 4
        k = 2
        signed = False
    )
    """
    check_config(config)
    if isinstance(config, APoTConfig):
        return APoTFakeQuantize(config.b, config.k, config.signed, name=name)
    if isinstance(config, SignMagnitudeConfig):
        return SignMagnitudeFakeQuantize(config.b, config.magnitude_k, config.level_set, name=name)
    if isinstance(config, UniformConfig):
        return UniformFakeQuantize(config.b, config.signed, name=name)
    return LearnableAPoTFakeQuantize(
        config.b, config.magnitude_k, normalize=config.normalize,
        channel_axis=channel_axis if config.per_channel else None, alpha_init=config.alpha_init,
        scheme=config.scheme, level_set=config.level_set, name=name,
    )


def nnx_from_config(config: QuantizerConfig, *, channels: int | None = None,
                    channel_axis: int | None = -1) -> nnx.Module:
    """The NNX twin of :func:`linen_from_config` (same outputs and state bit
    for bit); ``channels`` (the size of ``channel_axis``) is needed for a
    per-channel ``LearnableAPoTConfig``.

    Raises:
      TypeError: ``config`` is not a quantizer config.
      ValueError: a per-channel config without ``channels``.
    """
    check_config(config)
    if isinstance(config, APoTConfig):
        return NNXAPoTFakeQuantize(config.b, config.k, config.signed)
    if isinstance(config, SignMagnitudeConfig):
        return NNXSignMagnitudeFakeQuantize(config.b, config.magnitude_k, level_set=config.level_set)
    if isinstance(config, UniformConfig):
        return NNXUniformFakeQuantize(config.b, config.signed)
    if config.per_channel and channels is None:
        raise ValueError("a per-channel LearnableAPoTConfig needs channels (the size of channel_axis)")
    return NNXLearnableAPoTFakeQuantize(
        config.b, config.magnitude_k, normalize=config.normalize,
        channel_axis=channel_axis if config.per_channel else None,
        channels=channels if config.per_channel else None, alpha_init=config.alpha_init,
        scheme=config.scheme, level_set=config.level_set,
    )


def observer_quantizer(config: QuantizerConfig) -> Quantizer:
    """The ``(x, min_val, max_val) -> y`` fake quant of an observed-alpha
    config (``APoTConfig``, ``SignMagnitudeConfig``, ``UniformConfig``), as
    the modules run it; ``TypeError`` for a learnable or unknown config."""
    if isinstance(config, APoTConfig):
        return apot_quantizer(config.b, config.k, config.signed)
    if isinstance(config, SignMagnitudeConfig):
        return sign_magnitude_quantizer(config.b, config.magnitude_k, config.level_set)
    if isinstance(config, UniformConfig):
        return uniform_quantizer(config.b, config.signed)
    raise TypeError(f"observer_quantizer needs an observed-alpha config, got {config!r}")


def learnable_quant(config: LearnableAPoTConfig, x: jax.Array, alpha: jax.Array,
                    channel_axis: int | None) -> jax.Array:
    """The fake quant of a ``LearnableAPoTConfig`` with the given ``alpha``
    (``()`` or ``(x.shape[channel_axis],)``), as the learnable modules run it."""
    return _learnable(x, alpha, b=config.b, k=config.magnitude_k, signed=config.signed,
                      normalize=config.normalize, channel_axis=channel_axis, level_set=config.level_set)


__all__ = [
    "QUANT_STATS",
    "APoTFakeQuantize",
    "LearnableAPoTFakeQuantize",
    "NNXAPoTFakeQuantize",
    "NNXLearnableAPoTFakeQuantize",
    "NNXSignMagnitudeFakeQuantize",
    "NNXUniformFakeQuantize",
    "QuantStat",
    "SignMagnitudeFakeQuantize",
    "UniformFakeQuantize",
    "apot_quantizer",
    "fake_quant_step",
    "learnable_quant",
    "linen_from_config",
    "nnx_from_config",
    "observer_quantizer",
    "register_quant_stats",
    "set_flags",
    "sign_magnitude_quantizer",
    "uniform_quantizer",
]
