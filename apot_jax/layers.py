"""Quantization-aware Dense and Conv layers for Flax (linen and NNX).

Each layer fake-quantizes its kernel (``weight_quant``) and, optionally, its
input (``input_quant``) before the float matmul / convolution; the bias stays
float. ``"apot"`` uses :class:`~apot_jax.fake_quantize_module.APoTFakeQuantize`,
``"uniform"`` the uniform symmetric fake quant with the same state layout, and
``None`` leaves that operand in float. For the kernel only,
``"sign-magnitude"`` is the paper's ``b``-bit signed weights (``2**b - 1``
symmetric levels, magnitude base width ``weight_k``) with the observed alpha
(:class:`~apot_jax.fake_quantize_module.SignMagnitudeFakeQuantize`), and
``"apot-paper"`` is the paper's recipe: :class:`~apot_jax.fake_quantize_module.LearnableAPoTFakeQuantize`
(sign-magnitude levels of ``b`` bits with base width ``weight_k`` for the
magnitude, learnable alpha, weight normalization if ``weight_norm``, one alpha
per output feature if ``per_channel``). For the input, ``"apot-paper"`` is the
paper's activation quantizer with a learnable alpha (starting at
``input_alpha_init``), no observer: the unsigned ``(b, k)`` APoT levels with
``level_set="apot"`` (the default), or the paper code's
``build_power_value(b)`` with ``level_set="paper"`` (which differs from the
APoT table at odd ``b``). Either operand also takes a typed config
(``apot_common.config``) instead of a string. The torch qconfig combinations
map as:

* "APoT weights + uniform activations": ``weight_quant="apot", input_quant="uniform"``
* "APoT both": ``weight_quant="apot", input_quant="apot"``
* "uniform both": ``weight_quant="uniform", input_quant="uniform"``

Torch attaches the activation fake quant to a layer's output; quantizing each
layer's input instead quantizes the same tensors (the previous layer's output
after its nonlinearity), plus the network input.

Linen submodules are named ``weight_quant`` and ``input_quant``, so their
state is at ``variables["quant_stats"][<layer>]["weight_quant"]``. The NNX
layers hold the same submodules under the same attribute names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from apot_common.config import CONFIG_TYPES, LearnableAPoTConfig, QuantizerConfig, from_scheme
from apot_common.tables import LevelSet
from apot_jax._conv import as_tuple, conv
from apot_jax.fake_quantize_module import linen_from_config, nnx_from_config

_SCHEMES = ("apot", "uniform", None)
#: The paper's recipe (``apot_jax.paper``): learnable alpha.
PAPER = "apot-paper"
#: Weight-only scheme: sign-magnitude levels with the observed alpha.
SIGN_MAGNITUDE = "sign-magnitude"
_WEIGHT_ONLY = (SIGN_MAGNITUDE,)

Initializer = Callable[..., jax.Array]
Quant = Union[str, QuantizerConfig, None]


def _check_scheme(name: str, value: object) -> None:
    allowed = _SCHEMES + (PAPER,) + (_WEIGHT_ONLY if name == "weight_quant" else ())
    if value not in allowed:
        raise ValueError(f"{name} must be a quantizer config or one of {', '.join(map(repr, allowed))}, "
                         f"got {value!r}")


def weight_config(
    weight_quant: Quant,
    *,
    b: int = 4,
    k: int = 2,
    signed_weights: bool = False,
    weight_k: int | None = None,
    weight_norm: bool = True,
    per_channel: bool = False,
    alpha_init: float = 3.0,
    level_set: LevelSet = "apot",
) -> QuantizerConfig | None:
    """The typed config of a layer's kernel quantizer (``None``: float).

    A config passes through unchanged; a scheme string is mapped with the
    layer's other fields: ``"apot"`` -> ``APoTConfig(b, k, signed_weights)``,
    ``"uniform"`` -> ``UniformConfig(b, signed_weights)``,
    ``"sign-magnitude"`` -> ``SignMagnitudeConfig(b, weight_k, level_set)``,
    ``"apot-paper"`` -> ``LearnableAPoTConfig(b, weight_k, signed=True,
    alpha_init, normalize=weight_norm, per_channel, level_set)``.

    Raises:
      ValueError: an unknown scheme or what the config refuses.
    """
    if weight_quant is None or isinstance(weight_quant, CONFIG_TYPES):
        return weight_quant
    _check_scheme("weight_quant", weight_quant)
    if weight_quant == PAPER:
        return LearnableAPoTConfig(b=b, k=weight_k, signed=True, alpha_init=alpha_init, normalize=weight_norm,
                                   per_channel=per_channel, level_set=level_set)
    return from_scheme(weight_quant, b=b, k=weight_k if weight_quant == SIGN_MAGNITUDE else k,
                       signed=signed_weights, level_set=level_set)


def input_config(
    input_quant: Quant,
    *,
    b: int = 4,
    k: int = 2,
    signed_inputs: bool = False,
    input_alpha_init: float = 8.0,
    level_set: LevelSet = "apot",
) -> QuantizerConfig | None:
    """The typed config of a layer's input quantizer (``None``: float):
    ``"apot"`` / ``"uniform"`` as for :func:`weight_config` with
    ``signed_inputs``; ``"apot-paper"`` -> ``LearnableAPoTConfig(b, k,
    signed=False, normalize=False, alpha_init=input_alpha_init, level_set)``.

    Raises:
      ValueError: an unknown scheme or what the config refuses.
    """
    if input_quant is None or isinstance(input_quant, CONFIG_TYPES):
        return input_quant
    _check_scheme("input_quant", input_quant)
    return from_scheme(input_quant, b=b, k=k, signed=signed_inputs, alpha_init=input_alpha_init,
                       level_set=level_set)


def _layer_configs(layer) -> tuple[QuantizerConfig | None, QuantizerConfig | None]:
    """``(weight, input)`` configs of a linen layer's fields."""
    return (
        weight_config(layer.weight_quant, b=layer.b, k=layer.k, signed_weights=layer.signed_weights,
                      weight_k=layer.weight_k, weight_norm=layer.weight_norm, per_channel=layer.per_channel,
                      alpha_init=layer.alpha_init, level_set=layer.level_set),
        input_config(layer.input_quant, b=layer.b, k=layer.k, signed_inputs=layer.signed_inputs,
                     input_alpha_init=layer.input_alpha_init, level_set=layer.level_set),
    )


def _linen_quantized_operands(
    layer: "APoTDense | APoTConv", x: jax.Array, kernel: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``(x, kernel)`` through the layer's fake quants (submodules
    ``input_quant`` / ``weight_quant`` of ``layer``, from its compact call).
    Kernels end with the output axis, so a per-channel alpha is on axis -1."""
    w_cfg, x_cfg = _layer_configs(layer)
    if x_cfg is not None:
        x = linen_from_config(x_cfg, name="input_quant")(x)
    if w_cfg is not None:
        kernel = linen_from_config(w_cfg, name="weight_quant", channel_axis=-1)(kernel)
    return x, kernel


def _nnx_quantizers(kw: dict, out_features: int) -> tuple[nnx.Module | None, nnx.Module | None]:
    """``(weight_quant, input_quant)`` submodules of an NNX layer."""
    w_cfg = weight_config(kw["weight_quant"], b=kw["b"], k=kw["k"], signed_weights=kw["signed_weights"],
                          weight_k=kw["weight_k"], weight_norm=kw["weight_norm"], per_channel=kw["per_channel"],
                          alpha_init=kw["alpha_init"], level_set=kw["level_set"])
    x_cfg = input_config(kw["input_quant"], b=kw["b"], k=kw["k"], signed_inputs=kw["signed_inputs"],
                         input_alpha_init=kw["input_alpha_init"], level_set=kw["level_set"])
    wq = None if w_cfg is None else nnx_from_config(w_cfg, channels=out_features, channel_axis=-1)
    xq = None if x_cfg is None else nnx_from_config(x_cfg)
    return wq, xq


def _nnx_quantized_operands(layer: "NNXAPoTDense | NNXAPoTConv", x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(x, kernel)`` of an NNX layer through its fake quants."""
    kernel = layer.kernel[...]
    if layer.input_quant is not None:
        x = layer.input_quant(x)
    if layer.weight_quant is not None:
        kernel = layer.weight_quant(kernel)
    return x, kernel


def _dense(x: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
    y = lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
    return y if bias is None else y + bias


# --------------------------------------------------------------------------
# linen


class APoTDense(nn.Module):
    """Dense layer with fake-quantized kernel and (optionally) input.

    Attributes:
      features: output width.
      b, k: bits and base bit-width of the fake quants (``k`` unused by
        ``"uniform"``).
      weight_quant, input_quant: a typed quantizer config
        (``apot_common.config``: ``APoTConfig``, ``SignMagnitudeConfig``,
        ``LearnableAPoTConfig``, ``UniformConfig``), or a scheme string
        mapped with the fields below (:func:`weight_config`,
        :func:`input_config`): ``"apot"``, ``"uniform"``, ``"apot-paper"`` or
        ``None``; for ``weight_quant`` also ``"sign-magnitude"``.
      signed_weights: signed weight table (the prototype-compatible signed
        APoT table; the unsigned default maps every negative weight to 0).
      signed_inputs: signed input table (default unsigned: inputs after a
        ReLU are non-negative).
      use_bias: add a float bias.
      weight_k: the magnitude's base width of ``"sign-magnitude"`` and
        ``"apot-paper"`` weights (default 2 where it divides ``b - 1``, else 1).
      weight_norm, per_channel, alpha_init: ``"apot-paper"`` weights only:
        normalize the kernel first, one alpha per output feature, initial alpha.
      input_alpha_init: ``input_quant="apot-paper"`` only: the initial alpha
        of the input's learnt clipping value.
      level_set: ``"sign-magnitude"`` / ``"apot-paper"`` strings only: the
        level sets, ``"apot"`` (apot's tables) or ``"paper"`` /
        ``"paper-pot"`` (the paper code's ``build_power_value``).

    ``__call__(x)``: ``x`` of shape ``(..., in_features)``, float32; returns
    ``(..., features)`` float32. Params: ``kernel (in_features, features)``,
    ``bias (features,)``; fake-quant state in ``"quant_stats"``.
    """

    features: int
    b: int = 4
    k: int = 2
    weight_quant: Quant = "apot"
    input_quant: Quant = "apot"
    signed_weights: bool = False
    signed_inputs: bool = False
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()
    weight_k: int | None = None
    weight_norm: bool = True
    per_channel: bool = False
    alpha_init: float = 3.0
    input_alpha_init: float = 8.0
    level_set: LevelSet = "apot"

    def __post_init__(self) -> None:
        _layer_configs(self)  # ValueError at construction
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32) if self.use_bias else None
        x, kernel = _linen_quantized_operands(self, x, kernel)
        return _dense(x, kernel, bias)


class APoTConv(nn.Module):
    """Convolution (channels-last, like ``nn.Conv``) with fake-quantized kernel
    and (optionally) input; options as in :class:`APoTDense`.

    ``__call__(x)``: ``x`` of shape ``(N, *spatial, C_in)`` float32; returns
    ``(N, *spatial_out, features)``. Params: ``kernel (*kernel_size, C_in,
    features)``, ``bias (features,)``.
    """

    features: int
    kernel_size: Sequence[int]
    strides: int | Sequence[int] = 1
    padding: str | Sequence[tuple[int, int]] = "SAME"
    b: int = 4
    k: int = 2
    weight_quant: Quant = "apot"
    input_quant: Quant = "apot"
    signed_weights: bool = False
    signed_inputs: bool = False
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()
    weight_k: int | None = None
    weight_norm: bool = True
    per_channel: bool = False
    alpha_init: float = 3.0
    input_alpha_init: float = 8.0
    level_set: LevelSet = "apot"

    def __post_init__(self) -> None:
        _layer_configs(self)  # ValueError at construction
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        window = tuple(self.kernel_size)
        kernel = self.param("kernel", self.kernel_init, window + (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32) if self.use_bias else None
        x, kernel = _linen_quantized_operands(self, x, kernel)
        return conv(x, kernel, bias, as_tuple(self.strides, len(window)), self.padding)


# --------------------------------------------------------------------------
# NNX


class NNXAPoTDense(nnx.Module):
    """NNX twin of :class:`APoTDense`, with ``nnx.Linear``'s signature
    (``in_features, out_features, *, rngs``; exported as ``apot_jax.nnx.APoTDense``).

    Params ``kernel (in_features, out_features)`` and ``bias (out_features,)`` are
    ``nnx.Param``; the fake quants are ``self.weight_quant`` /
    ``self.input_quant`` (``None`` when disabled), whose state is ``QuantStat``.
    Given the same params and state, outputs equal the linen layer's bitwise.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        b: int = 4,
        k: int = 2,
        weight_quant: Quant = "apot",
        input_quant: Quant = "apot",
        signed_weights: bool = False,
        signed_inputs: bool = False,
        use_bias: bool = True,
        kernel_init: Initializer = nnx.initializers.lecun_normal(),
        bias_init: Initializer = nnx.initializers.zeros_init(),
        weight_k: int | None = None,
        weight_norm: bool = True,
        per_channel: bool = False,
        alpha_init: float = 3.0,
        input_alpha_init: float = 8.0,
        level_set: LevelSet = "apot",
        rngs: nnx.Rngs,
    ) -> None:
        quant = dict(weight_quant=weight_quant, input_quant=input_quant, b=b, k=k, signed_weights=signed_weights,
                     signed_inputs=signed_inputs, weight_k=weight_k, weight_norm=weight_norm,
                     per_channel=per_channel, alpha_init=alpha_init, input_alpha_init=input_alpha_init,
                     level_set=level_set)
        weight_q, input_q = _nnx_quantizers(quant, out_features)  # ValueError before any parameter is made
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features), jnp.float32))
        self.bias = nnx.Param(bias_init(rngs.params(), (out_features,), jnp.float32)) if use_bias else None
        self.input_quant = input_q
        self.weight_quant = weight_q

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x (..., in_features)`` float32 -> ``(..., out_features)``."""
        x, kernel = _nnx_quantized_operands(self, x)
        return _dense(x, kernel, None if self.bias is None else self.bias[...])


class NNXAPoTConv(nnx.Module):
    """NNX twin of :class:`APoTConv`, with ``nnx.Conv``'s signature
    (``in_features, out_features, kernel_size, *, strides, padding, rngs``;
    exported as ``apot_jax.nnx.APoTConv``)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: Sequence[int],
        *,
        strides: int | Sequence[int] = 1,
        padding: str | Sequence[tuple[int, int]] = "SAME",
        b: int = 4,
        k: int = 2,
        weight_quant: Quant = "apot",
        input_quant: Quant = "apot",
        signed_weights: bool = False,
        signed_inputs: bool = False,
        use_bias: bool = True,
        kernel_init: Initializer = nnx.initializers.lecun_normal(),
        bias_init: Initializer = nnx.initializers.zeros_init(),
        weight_k: int | None = None,
        weight_norm: bool = True,
        per_channel: bool = False,
        alpha_init: float = 3.0,
        input_alpha_init: float = 8.0,
        level_set: LevelSet = "apot",
        rngs: nnx.Rngs,
    ) -> None:
        quant = dict(weight_quant=weight_quant, input_quant=input_quant, b=b, k=k, signed_weights=signed_weights,
                     signed_inputs=signed_inputs, weight_k=weight_k, weight_norm=weight_norm,
                     per_channel=per_channel, alpha_init=alpha_init, input_alpha_init=input_alpha_init,
                     level_set=level_set)
        weight_q, input_q = _nnx_quantizers(quant, out_features)  # ValueError before any parameter is made
        window = tuple(int(s) for s in kernel_size)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.kernel_size = window
        self.strides = as_tuple(strides, len(window))
        self.padding = padding
        self.kernel = nnx.Param(kernel_init(rngs.params(), window + (in_features, out_features), jnp.float32))
        self.bias = nnx.Param(bias_init(rngs.params(), (out_features,), jnp.float32)) if use_bias else None
        self.input_quant = input_q
        self.weight_quant = weight_q

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x (N, *spatial, in_features)`` float32 -> ``(N, *spatial_out, out_features)``."""
        x, kernel = _nnx_quantized_operands(self, x)
        return conv(x, kernel, None if self.bias is None else self.bias[...], self.strides, self.padding)


__all__ = ["PAPER", "SIGN_MAGNITUDE", "APoTConv", "APoTDense", "NNXAPoTConv", "NNXAPoTDense", "input_config",
           "weight_config"]
