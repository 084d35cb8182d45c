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
paper's activation quantizer: the unsigned ``(b, k)`` APoT levels with a
learnable alpha (starting at ``input_alpha_init``), no observer. The torch qconfig combinations map as:

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
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from apot_common.tables import default_magnitude_k, level_table, sign_magnitude_table
from apot_jax.fake_quantize_module import (
    APoTFakeQuantize,
    LearnableAPoTFakeQuantize,
    NNXAPoTFakeQuantize,
    NNXLearnableAPoTFakeQuantize,
    NNXSignMagnitudeFakeQuantize,
    NNXUniformFakeQuantize,
    SignMagnitudeFakeQuantize,
    UniformFakeQuantize,
)

_SCHEMES = ("apot", "uniform", None)
#: Weight-only scheme: the paper's recipe (``apot_jax.paper``).
PAPER = "apot-paper"
#: Weight-only scheme: sign-magnitude levels with the observed alpha.
SIGN_MAGNITUDE = "sign-magnitude"
_WEIGHT_ONLY = (SIGN_MAGNITUDE,)

Initializer = Callable[..., jax.Array]


def _check_scheme(name: str, value: str | None) -> None:
    allowed = _SCHEMES + (PAPER,) + (_WEIGHT_ONLY if name == "weight_quant" else ())
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _check_layer(weight_quant: str | None, input_quant: str | None, b: int, k: int, weight_k: int | None) -> None:
    """``ValueError`` now (at construction) for a bad scheme or bit width."""
    _check_scheme("weight_quant", weight_quant)
    _check_scheme("input_quant", input_quant)
    if weight_quant in (SIGN_MAGNITUDE, PAPER):
        _magnitude_k(b, weight_k)
    if input_quant == PAPER:
        level_table(b, k, False)


def _magnitude_k(b: int, weight_k: int | None) -> int:
    """The magnitude base width of sign-magnitude weights (``weight_k``, or 2
    where it divides ``b - 1``, else 1); raises ``ValueError`` for a bad pair."""
    k = weight_k if weight_k is not None else default_magnitude_k(b)
    sign_magnitude_table(b, k)
    return k


def _linen_quantizer(scheme: str | None, b: int, k: int, signed: bool, name: str) -> nn.Module | None:
    """The fake quant of a prototype-compatible scheme (observer-based)."""
    if scheme == "apot":
        return APoTFakeQuantize(b, k, signed, name=name)
    if scheme == "uniform":
        return UniformFakeQuantize(b, signed, name=name)
    return None


def _linen_weight_quantizer(layer: "APoTDense | APoTConv") -> nn.Module | None:
    """The kernel's fake quant of a linen layer (the paper scheme included)."""
    if layer.weight_quant == SIGN_MAGNITUDE:
        return SignMagnitudeFakeQuantize(layer.b, _magnitude_k(layer.b, layer.weight_k), name="weight_quant")
    if layer.weight_quant == PAPER:
        return LearnableAPoTFakeQuantize(
            layer.b,
            _magnitude_k(layer.b, layer.weight_k),
            normalize=layer.weight_norm,
            channel_axis=-1 if layer.per_channel else None,  # kernels end with the output axis
            alpha_init=layer.alpha_init,
            name="weight_quant",
        )
    return _linen_quantizer(layer.weight_quant, layer.b, layer.k, layer.signed_weights, "weight_quant")


def _linen_quantized_operands(layer: "APoTDense | APoTConv", x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(x, kernel)`` through the layer's fake quants (submodules
    ``input_quant`` / ``weight_quant`` of ``layer``, from its compact call)."""
    if layer.input_quant == PAPER:
        xq = LearnableAPoTFakeQuantize(
            layer.b, layer.k, normalize=False, alpha_init=layer.input_alpha_init, scheme="unsigned", name="input_quant"
        )
    else:
        xq = _linen_quantizer(layer.input_quant, layer.b, layer.k, layer.signed_inputs, "input_quant")
    wq = _linen_weight_quantizer(layer)
    return (x if xq is None else xq(x)), (kernel if wq is None else wq(kernel))


def _nnx_weight_quantizer(
    scheme: str | None,
    b: int,
    k: int,
    signed: bool,
    features: int,
    weight_k: int | None,
    weight_norm: bool,
    per_channel: bool,
    alpha_init: float,
) -> nnx.Module | None:
    """The kernel's fake quant of an NNX layer (the weight-only schemes included)."""
    if scheme == SIGN_MAGNITUDE:
        return NNXSignMagnitudeFakeQuantize(b, _magnitude_k(b, weight_k))
    if scheme == PAPER:
        return NNXLearnableAPoTFakeQuantize(
            b,
            _magnitude_k(b, weight_k),
            normalize=weight_norm,
            channel_axis=-1 if per_channel else None,
            channels=features if per_channel else None,
            alpha_init=alpha_init,
        )
    return _nnx_quantizer(scheme, b, k, signed)


def _nnx_input_quantizer(
    scheme: str | None, b: int, k: int, signed: bool, input_alpha_init: float
) -> nnx.Module | None:
    """The input's fake quant of an NNX layer (the paper scheme included)."""
    if scheme == PAPER:
        return NNXLearnableAPoTFakeQuantize(b, k, normalize=False, alpha_init=input_alpha_init, scheme="unsigned")
    return _nnx_quantizer(scheme, b, k, signed)


def _nnx_quantizer(scheme: str | None, b: int, k: int, signed: bool) -> nnx.Module | None:
    if scheme == "apot":
        return NNXAPoTFakeQuantize(b, k, signed)
    if scheme == "uniform":
        return NNXUniformFakeQuantize(b, signed)
    return None


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


def _conv(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
) -> jax.Array:
    # Channels-last, like nn.Conv: x (N, *spatial, C_in), kernel (*window, C_in, C_out).
    spatial = "HWDXYZ"[: kernel.ndim - 2]
    dn = lax.conv_dimension_numbers(x.shape, kernel.shape, (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"))
    y = lax.conv_general_dilated(x, kernel, tuple(strides), padding, dimension_numbers=dn)
    return y if bias is None else y + bias


def _tuple(value: int | Sequence[int], n: int) -> tuple[int, ...]:
    return (int(value),) * n if isinstance(value, int) else tuple(int(v) for v in value)


# --------------------------------------------------------------------------
# linen


class APoTDense(nn.Module):
    """Dense layer with fake-quantized kernel and (optionally) input.

    Attributes:
      features: output width.
      b, k: bits and base bit-width of the fake quants (``k`` unused by
        ``"uniform"``).
      weight_quant, input_quant: ``"apot"``, ``"uniform"``, ``"apot-paper"``
        or ``None``; for ``weight_quant`` also ``"sign-magnitude"``.
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

    ``__call__(x)``: ``x`` of shape ``(..., in_features)``, float32; returns
    ``(..., features)`` float32. Params: ``kernel (in_features, features)``,
    ``bias (features,)``; fake-quant state in ``"quant_stats"``.
    """

    features: int
    b: int = 4
    k: int = 2
    weight_quant: str | None = "apot"
    input_quant: str | None = "apot"
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

    def __post_init__(self) -> None:
        _check_layer(self.weight_quant, self.input_quant, self.b, self.k, self.weight_k)
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
    weight_quant: str | None = "apot"
    input_quant: str | None = "apot"
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

    def __post_init__(self) -> None:
        _check_layer(self.weight_quant, self.input_quant, self.b, self.k, self.weight_k)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        window = tuple(self.kernel_size)
        kernel = self.param("kernel", self.kernel_init, window + (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32) if self.use_bias else None
        x, kernel = _linen_quantized_operands(self, x, kernel)
        return _conv(x, kernel, bias, _tuple(self.strides, len(window)), self.padding)


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
        weight_quant: str | None = "apot",
        input_quant: str | None = "apot",
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
        rngs: nnx.Rngs,
    ) -> None:
        _check_layer(weight_quant, input_quant, b, k, weight_k)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features), jnp.float32))
        self.bias = nnx.Param(bias_init(rngs.params(), (out_features,), jnp.float32)) if use_bias else None
        self.input_quant = _nnx_input_quantizer(input_quant, b, k, signed_inputs, input_alpha_init)
        self.weight_quant = _nnx_weight_quantizer(
            weight_quant, b, k, signed_weights, out_features, weight_k, weight_norm, per_channel, alpha_init
        )

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
        weight_quant: str | None = "apot",
        input_quant: str | None = "apot",
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
        rngs: nnx.Rngs,
    ) -> None:
        _check_layer(weight_quant, input_quant, b, k, weight_k)
        window = tuple(int(s) for s in kernel_size)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.kernel_size = window
        self.strides = _tuple(strides, len(window))
        self.padding = padding
        self.kernel = nnx.Param(kernel_init(rngs.params(), window + (in_features, out_features), jnp.float32))
        self.bias = nnx.Param(bias_init(rngs.params(), (out_features,), jnp.float32)) if use_bias else None
        self.input_quant = _nnx_input_quantizer(input_quant, b, k, signed_inputs, input_alpha_init)
        self.weight_quant = _nnx_weight_quantizer(
            weight_quant, b, k, signed_weights, out_features, weight_k, weight_norm, per_channel, alpha_init
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x (N, *spatial, in_features)`` float32 -> ``(N, *spatial_out, out_features)``."""
        x, kernel = _nnx_quantized_operands(self, x)
        return _conv(x, kernel, None if self.bias is None else self.bias[...], self.strides, self.padding)


__all__ = ["PAPER", "SIGN_MAGNITUDE", "APoTConv", "APoTDense", "NNXAPoTConv", "NNXAPoTDense"]
