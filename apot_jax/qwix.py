"""APoT fake quantization of any Flax model through Qwix (``qwix.quantize_model``).

Qwix intercepts ``jax.lax.dot_general``, ``jax.lax.conv_general_dilated`` and
``jax.numpy.einsum`` inside a linen or NNX model and asks a
``QuantizationProvider`` to compute them. :class:`ApotQatProvider` is such a
provider: for every intercepted op whose module path matches an
:class:`ApotRule`, it fake-quantizes the operands with apot's own pure step
(:func:`~apot_jax.fake_quantize_module.fake_quant_step`, the same one the
apot layers run) and then calls the original op in float. Operands that are
params of the calling module (found as Qwix finds them,
``qwix._src.utils.flax_util.find_param``) are weights; the others are
activations. So a model quantized here gives exactly the outputs, gradients
and statistics of the same model built from apot's layers (``docs/numerics.md``
section 10 says what is quantized and how the state is named).

State, per quantized operand ``<op><n>_<lhs|rhs>`` (Qwix's op ids, e.g.
``dot_general0_rhs`` for the kernel of a ``Dense``, ``dot_general0_lhs`` for
its input):

* observer-based schemes: linen ``variables["quant_stats"][<module path>][<name>]``
  = ``{"min_val", "max_val", "observer_enabled", "fake_quant_enabled"}``,
  the layout of apot's layers (so :func:`~apot_jax.fake_quantize_module.set_flags`
  works on it); NNX: a fake-quant submodule at ``module.<name>`` whose
  ``QuantStat`` Variables hold the same four values (so ``model.eval()``,
  ``set_flags(model, ...)`` and ``nnx.state(model, QuantStat)`` work on it).
* learnable alpha (the paper's): linen ``params[<module path>][<name>]["alpha"]``;
  NNX ``module.<name>.alpha`` (an ``nnx.Param``).

The statistics change only when Qwix would change its own: in linen when
``"quant_stats"`` is mutable and the model is not initializing; in NNX except
during the call ``quantize_model`` makes to build the state. For evaluation,
freeze the observers: ``set_flags(variables, observer=False)`` (linen) or
``model.eval()`` (NNX; ``model.train()`` resumes them).

Example (NNX):

>>> import jax, jax.numpy as jnp, qwix
>>> from flax import nnx
>>> from apot_jax.qwix import ApotQatProvider, ApotRule
>>> model = nnx.Linear(8, 4, rngs=nnx.Rngs(0))
>>> x = jnp.linspace(-1.0, 1.0, 16).reshape(2, 8)
>>> provider = ApotQatProvider([ApotRule(module_path=".*", weight_bits=4, weight_k=2)])
>>> qm = qwix.quantize_model(model, provider, x)
>>> y = qm(x)                                   # observes, then fake-quantizes the kernel
>>> y.shape, qm.dot_general0_rhs.max_val[...] == model.kernel[...].max()
((2, 4), Array(True, dtype=bool))
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import qwix
from flax import nnx
from jax import lax
from qwix._src.utils import flax_util

from apot_common.config import APoTConfig, LearnableAPoTConfig, QuantizerConfig, SignMagnitudeConfig, check_config
from apot_common.tables import default_magnitude_k
from apot_jax import fake_quantize_module as fqm

#: Tested range of Qwix (``pyproject.toml``, extra ``apot[qwix]``): the
#: provider uses ``flax_util`` from Qwix's private tree, which moves between
#: versions.
QWIX_VERSIONS = ">=0.1.8,<0.2"

#: Weight schemes: the prototype-compatible signed APoT table (the default),
#: the unsigned table (negative weights become 0), the paper's sign-magnitude
#: levels with the observed alpha, and the paper's recipe (sign-magnitude
#: levels, learnable alpha, optional weight normalization and per-channel alpha).
WEIGHT_SCHEMES = ("signed", "unsigned", "sign-magnitude", "paper")
#: Activation schemes: the unsigned APoT table with an observed alpha (the
#: default; inputs after a ReLU), the signed table with an observed alpha
#: (e.g. attention queries and keys), and the paper's unsigned levels with a
#: learnable alpha.
ACT_SCHEMES = ("unsigned", "signed", "paper")

_OPS = ("dot_general", "conv_general_dilated", "einsum")

# Importing Qwix registered its own QuantStat as the NNX type of
# "quant_stats"; apot's stays the one nnx.bridge maps that collection to.
fqm.register_quant_stats()


@dataclasses.dataclass(frozen=True, kw_only=True)
class ApotRule(qwix.QuantizationRule):
    """Which ops to fake-quantize with APoT, and how (a ``qwix.QuantizationRule``).

    Matched like Qwix's own rules: ``module_path`` is a regex fully matching
    the ``/``-joined module path, ``op_names`` a subset of
    ``("dot_general", "conv_general_dilated", "einsum")`` (empty: all).

    Attributes:
      weight_bits: bits of the weights (operands that are params), or
        ``None`` to leave them float.
      weight_k: base bit-width; ``None`` gives 2 where it divides the
        (magnitude) bits, else 1. For ``"sign-magnitude"`` / ``"paper"`` it is
        the base width of the ``weight_bits - 1`` magnitude bits.
      weight_scheme: one of :data:`WEIGHT_SCHEMES` (default ``"signed"``).
      weight_per_channel: ``"paper"`` only: one alpha per entry of the
        weight's last output axis (a Dense/Conv kernel's output features).
      weight_norm: ``"paper"`` only: normalize the weight first.
      weight_alpha_init: ``"paper"`` only: initial alpha (normalized units).
      act_bits: bits of the activations (operands that are not params), or
        ``None`` (default) to leave them float.
      act_k: their base bit-width (``None``: as for ``weight_k``).
      act_scheme: one of :data:`ACT_SCHEMES` (default ``"unsigned"``).
      act_alpha_init: ``act_scheme="paper"`` only: initial alpha.

    Qwix's uniform fields (``weight_qtype``, ``act_qtype``, ``tile_size``,
    ``act_static_scale``) must stay unset. Every bad value is a
    ``ValueError`` here, at construction.
    """

    weight_bits: int | None = 4
    weight_k: int | None = None
    weight_scheme: str = "signed"
    weight_per_channel: bool = False
    weight_norm: bool = True
    weight_alpha_init: float = 3.0
    act_bits: int | None = None
    act_k: int | None = None
    act_scheme: str = "unsigned"
    act_alpha_init: float = 8.0
    weight: QuantizerConfig | None = None
    act: QuantizerConfig | None = None

    def __post_init__(self) -> None:
        for name in ("weight_qtype", "act_qtype", "tile_size", "act_static_scale"):
            if getattr(self, name) is not None:
                raise ValueError(
                    f"ApotRule quantizes with APoT levels: leave {name} unset (got {getattr(self, name)!r})"
                )
        unknown = set(self.op_names) - set(_OPS)
        if unknown:
            raise ValueError(f"op_names must be among {_OPS}, got {sorted(unknown)}")
        re.compile(self.module_path)
        for side in ("weight", "act"):
            config = getattr(self, side)
            if config is None:
                continue
            check_config(config, side)
            changed = [f.name for f in dataclasses.fields(self) if f.name.startswith(side + "_")
                       and getattr(self, f.name) != f.default and not (side == "weight" and f.name == "weight_bits")]
            if changed:
                raise ValueError(f"ApotRule: give either {side}= (a config) or the {side}_* fields, "
                                 f"not both (set: {', '.join(changed)})")
        if self.weight is not None and self.weight_bits not in (None, 4):
            raise ValueError("ApotRule: give either weight= (a config) or weight_bits, not both")
        if self.weight_scheme not in WEIGHT_SCHEMES:
            raise ValueError(f"weight_scheme must be one of {WEIGHT_SCHEMES}, got {self.weight_scheme!r}")
        if self.act_scheme not in ACT_SCHEMES:
            raise ValueError(f"act_scheme must be one of {ACT_SCHEMES}, got {self.act_scheme!r}")
        if self.weight_bits is None and self.act_bits is None and self.weight is None and self.act is None:
            raise ValueError("an ApotRule quantizes something: set weight_bits, act_bits or both")
        if self.weight is None and self.weight_scheme != "paper" and self.weight_per_channel:
            raise ValueError("weight_per_channel needs weight_scheme='paper' (a learnt alpha per channel)")
        self.weight_quantizer()  # ValueError for bad bits / k
        self.act_quantizer()

    def _k(self, bits: int, k: int | None, magnitude: bool) -> int:
        if k is not None:
            return k
        if isinstance(bits, bool) or not isinstance(bits, int):
            raise ValueError(f"bits must be an integer, got {bits!r}")
        return default_magnitude_k(bits) if magnitude else (2 if bits % 2 == 0 else 1)

    def weight_quantizer(self) -> QuantizerConfig | None:
        """The weights' typed config: ``weight``, or the one the ``weight_*``
        fields describe (``None``: float). ``ValueError`` for a bad one."""
        if self.weight is not None:
            return self.weight
        scheme, b = self.weight_scheme, self.weight_bits
        if b is None:
            return None
        k = self._k(b, self.weight_k, scheme in ("sign-magnitude", "paper"))
        if scheme == "paper":
            return LearnableAPoTConfig(b=b, k=k, signed=True, normalize=self.weight_norm,
                                       per_channel=self.weight_per_channel, alpha_init=self.weight_alpha_init)
        if scheme == "sign-magnitude":
            return SignMagnitudeConfig(b=b, k=k)
        return APoTConfig(b=b, k=k, signed=scheme == "signed")

    def act_quantizer(self) -> QuantizerConfig | None:
        """The activations' typed config: ``act``, or the one the ``act_*``
        fields describe (``None``: float). ``ValueError`` for a bad one."""
        if self.act is not None:
            return self.act
        b = self.act_bits
        if b is None:
            return None
        k = self._k(b, self.act_k, False)
        if self.act_scheme == "paper":
            return LearnableAPoTConfig(b=b, k=k, signed=False, normalize=False, alpha_init=self.act_alpha_init)
        return APoTConfig(b=b, k=k, signed=self.act_scheme == "signed")


def _per_channel(config: QuantizerConfig) -> bool:
    return isinstance(config, LearnableAPoTConfig) and config.per_channel


def _check_operand(op: str, x: Any) -> None:
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"ApotQatProvider: {op} operand of dtype {dtype} cannot be fake-quantized (needs a float dtype)"
        )


def _same_config(existing: nnx.Module, wanted: nnx.Module) -> bool:
    keys = ("b", "k", "signed", "normalize", "channel_axis", "scheme", "level_set")
    return type(existing) is type(wanted) and all(
        getattr(existing, key, None) == getattr(wanted, key, None) for key in keys
    )


def _fake_quant(name: str, x: jax.Array, quant: QuantizerConfig, channel_axis: int | None) -> jax.Array:
    """Fake-quantize one operand of the current module, with its state ``name``."""
    module = flax_util.get_current_module()
    update = flax_util.should_update_quant_stats()
    if isinstance(module, nn.Module):
        scope = module.scope
        assert scope is not None  # a module qwix is running (get_current_module) is bound
        if isinstance(quant, LearnableAPoTConfig):
            shape = (x.shape[channel_axis],) if channel_axis is not None else ()
            init = quant.alpha_init
            params = scope.param(name, lambda _: {"alpha": jnp.full(shape, init, jnp.float32)})
            if jnp.shape(params["alpha"]) != shape:
                raise ValueError(f"params {name}/alpha has shape {jnp.shape(params['alpha'])}, this rule needs {shape}")
            return fqm.learnable_quant(quant, x, params["alpha"], channel_axis)
        var = scope.variable(fqm.QUANT_STATS, name, fqm._init_stats)
        stats = var.value
        if set(stats) != set(fqm.STAT_NAMES):
            raise ValueError(f"quant_stats {name} has entries {sorted(stats)}, expected {sorted(fqm.STAT_NAMES)}")
        y, new_min, new_max = fqm.fake_quant_step(
            x,
            stats["min_val"],
            stats["max_val"],
            stats["observer_enabled"],
            stats["fake_quant_enabled"],
            fqm.observer_quantizer(quant),
        )
        if update:
            var.value = {**stats, "min_val": new_min, "max_val": new_max}
        return y

    channels = x.shape[channel_axis] if channel_axis is not None else None
    # the module's state of an earlier call: of wanted's type (checked below), or None
    sub: Any = getattr(module, name, None)
    wanted = fqm.nnx_from_config(quant, channels=channels, channel_axis=channel_axis)
    if sub is None:
        sub = wanted
        setattr(module, name, sub)
    elif not _same_config(sub, wanted):
        raise ValueError(f"{name} of {type(module).__name__} holds the state of another configuration: {sub}")
    if isinstance(quant, LearnableAPoTConfig):
        return fqm.learnable_quant(quant, x, sub.alpha[...], channel_axis)
    return sub.step(x, update=update)


def _einsum_output_axis(spec: str, operand: int) -> int:
    """Last axis of einsum operand ``operand`` that appears in the output."""
    if "->" not in spec or "." in spec:
        raise ValueError(f"weight_per_channel needs an explicit einsum without ellipsis on the weight, got {spec!r}")
    inputs, output = spec.replace(" ", "").split("->")
    letters = inputs.split(",")[operand]
    axes = [i for i, c in enumerate(letters) if c in output]
    if not axes:
        raise ValueError(f"einsum {spec!r}: operand {operand} has no output axis for a per-channel alpha")
    return axes[-1]


class ApotQatProvider(qwix.QuantizationProvider):
    """A ``qwix.QuantizationProvider`` that fake-quantizes with APoT (QAT).

    Args:
      rules: :class:`ApotRule` s in order of precedence (the first match wins;
        an op no rule matches stays float).
      disable_jit: passed to Qwix.

    Use: ``qwix.quantize_model(model, ApotQatProvider(rules), *inputs)`` for
    NNX, ``qwix.quantize_model(model, ApotQatProvider(rules))`` for linen.
    Intercepted ops: ``dot_general``, ``conv_general_dilated`` and two-operand
    ``einsum``; each gets its float result on the fake-quantized operands.
    """

    def __init__(self, rules: Sequence[ApotRule], *, disable_jit: bool = False) -> None:
        rules = list(rules)
        for rule in rules:
            if not isinstance(rule, ApotRule):
                raise TypeError(f"ApotQatProvider takes ApotRule rules, got {type(rule).__name__}: {rule!r}")
        super().__init__(rules, disable_jit=disable_jit)

    def _init_rule(self, rule: qwix.QuantizationRule) -> qwix.QuantizationRule:
        return rule  # validated in ApotRule.__post_init__; Qwix's uniform defaults do not apply

    def get_intercept_map(self) -> dict[str, Callable[..., Any]]:
        return super().get_intercept_map() | {
            "jax.lax.dot_general": self.dot_general,
            "jax.lax.conv_general_dilated": self.conv_general_dilated,
            "jax.numpy.einsum": self.einsum,
        }

    def _operands(
        self,
        op: str,
        op_id: str,
        rule: ApotRule,
        operands: tuple[jax.Array, jax.Array],
        channel_axis: Callable[[int], int],
    ) -> tuple[jax.Array, jax.Array]:
        """The two operands of ``op``, fake-quantized per ``rule``."""
        weights = [flax_util.find_param(x) is not None for x in operands]
        if all(weights):
            raise ValueError(f"ApotQatProvider: both operands of {op} ({op_id}) are params")
        out = []
        for side, x, is_weight in zip(("lhs", "rhs"), operands, weights):
            quant = rule.weight_quantizer() if is_weight else rule.act_quantizer()
            if quant is None:
                out.append(x)
                continue
            _check_operand(op, x)
            index = 0 if side == "lhs" else 1
            axis = channel_axis(index) if _per_channel(quant) else None
            out.append(_fake_quant(f"{op_id}_{side}", x, quant, axis))
        return out[0], out[1]

    def dot_general(
        self,
        lhs: jax.Array,
        rhs: jax.Array,
        dimension_numbers: lax.DotDimensionNumbers,
        precision: lax.PrecisionLike = None,
        preferred_element_type: jax.typing.DTypeLike | None = None,
        **kwargs: Any,
    ) -> jax.Array:
        """``lax.dot_general`` of the fake-quantized operands."""
        rule, op_id = self._get_current_rule_and_op_id("dot_general")
        if rule is not None:
            (contract_l, contract_r), (batch_l, batch_r) = dimension_numbers

            def channel_axis(index: int) -> int:
                x, skip = (lhs, set(contract_l) | set(batch_l)) if index == 0 else (rhs, set(contract_r) | set(batch_r))
                free = [d for d in range(x.ndim) if d not in skip]
                if not free:
                    raise ValueError(f"dot_general ({op_id}): the weight has no output axis for a per-channel alpha")
                return free[-1]

            lhs, rhs = self._operands("dot_general", op_id, rule, (lhs, rhs), channel_axis)
        return lax.dot_general(
            lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=preferred_element_type, **kwargs
        )

    def conv_general_dilated(
        self,
        lhs: jax.Array,
        rhs: jax.Array,
        window_strides: Sequence[int],
        padding: str | Sequence[tuple[int, int]],
        lhs_dilation: Sequence[int] | None = None,
        rhs_dilation: Sequence[int] | None = None,
        dimension_numbers: Any = None,
        feature_group_count: int = 1,
        batch_group_count: int = 1,
        precision: lax.PrecisionLike = None,
        preferred_element_type: jax.typing.DTypeLike | None = None,
        **kwargs: Any,
    ) -> jax.Array:
        """``lax.conv_general_dilated`` of the fake-quantized input and kernel."""
        rule, op_id = self._get_current_rule_and_op_id("conv_general_dilated")
        if rule is not None:

            def channel_axis(index: int) -> int:
                if index != 1:
                    raise ValueError(f"conv_general_dilated ({op_id}): a per-channel weight must be the kernel (rhs)")
                dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
                return dn.rhs_spec[0]  # the kernel's output-feature dimension

            lhs, rhs = self._operands("conv_general_dilated", op_id, rule, (lhs, rhs), channel_axis)
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            batch_group_count=batch_group_count,
            precision=precision,
            preferred_element_type=preferred_element_type,
            **kwargs,
        )

    def einsum(self, spec: str, *operands: jax.Array, **kwargs: Any) -> jax.Array:
        """``jnp.einsum`` of the fake-quantized operands (two operands only).

        Fake quant is elementwise, so quantizing the operands before the
        contraction equals quantizing them inside it."""
        rule, op_id = self._get_current_rule_and_op_id("einsum")
        if rule is not None:
            if not isinstance(spec, str) or len(operands) != 2:
                raise ValueError(
                    f"ApotQatProvider: einsum needs a subscript string and two operands, got {spec!r} "
                    f"with {len(operands)} operands"
                )
            operands = self._operands("einsum", op_id, rule, operands, lambda i: _einsum_output_axis(spec, i))
        return jnp.einsum(spec, *operands, **kwargs)


__all__ = ["ACT_SCHEMES", "QWIX_VERSIONS", "WEIGHT_SCHEMES", "ApotQatProvider", "ApotRule"]
