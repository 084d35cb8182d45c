"""APoT quantize / dequantize / quant_dequant in torch.

Mirrors ``apot_jax/quantizer.py`` and keeps the prototype's public names
(``APoTQuantizer``, ``quantize_APoT``, ``dequantize_APoT``,
``quant_dequant_APoT``). Unlike the prototype it is vectorised, works on any
device, never modifies its input and returns the input's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from apot_torch._float32 import as_float32  # re-exported: public API, in __all__
from apot_torch._lookup import SELECT_CHAIN_MAX_LEVELS, lookup  # SELECT_CHAIN_MAX_LEVELS: re-exported, in __all__

#: Code returned by ``quantize`` for NaN input (and for unobserved qparams).
NAN_CODE = -1


def _float32_qparam(t: Tensor, name: str) -> Tensor:
    """``t`` as float32; TypeError for a non-tensor, complex or integer
    tensor, ValueError for a value that float32 cannot hold exactly (a cast
    would silently move a level or the clipping value)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_complex() or not t.is_floating_point():
        raise TypeError(f"{name} must be a real floating-point tensor, got dtype {t.dtype}")
    if t.dtype == torch.float32:
        return t
    t32 = t.to(torch.float32)
    same = (t32.to(t.dtype) == t) | (torch.isnan(t) & torch.isnan(t32.to(t.dtype)))
    if not bool(same.all()):
        bad = t.reshape(-1)[~same.reshape(-1)][0].item()
        raise ValueError(f"{name} of dtype {t.dtype} holds {bad!r}, which float32 cannot represent exactly; "
                         "APoT qparams are float32")
    return t32


def scalar_qparams(
    alpha: Tensor, gamma: Tensor, quantization_levels: Tensor, level_indices: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One tensor's qparams in the shapes the lookup needs: ``alpha``, ``gamma``
    float32 ``()``; ``quantization_levels`` float32 ``(N,)``; ``level_indices``
    integer ``(N,)``.

    1-element qparams (``(1,)`` alpha, ``(1, N)`` levels, what the prototype's
    ``obs.min_val = torch.tensor([0.0])`` gives) are taken as the 0-d ones;
    float64/float16/bfloat16 values are accepted when float32 holds them
    exactly. Anything else is a ``TypeError``/``ValueError`` naming it.
    """
    alpha = _float32_qparam(alpha, "alpha")
    gamma = _float32_qparam(gamma, "gamma")
    quantization_levels = _float32_qparam(quantization_levels, "quantization_levels")
    for name, t in (("alpha", alpha), ("gamma", gamma)):
        if t.numel() != 1:
            raise ValueError(f"{name} must hold one value (per-tensor qparams), got shape {tuple(t.shape)}")
    if not isinstance(level_indices, Tensor):
        raise TypeError(f"level_indices must be a torch.Tensor, got {type(level_indices).__name__}")
    if level_indices.is_floating_point() or level_indices.is_complex() or level_indices.dtype == torch.bool:
        raise TypeError(f"level_indices must be an integer tensor, got dtype {level_indices.dtype}")
    if quantization_levels.dim() > 1 and all(d == 1 for d in quantization_levels.shape[:-1]):
        quantization_levels = quantization_levels.reshape(-1)
    if quantization_levels.dim() != 1 or level_indices.reshape(-1).shape != quantization_levels.shape:
        raise ValueError(
            f"quantization_levels must be (N,) and level_indices (N,), got shapes {tuple(quantization_levels.shape)} "
            f"and {tuple(level_indices.shape)}"
        )
    return alpha.reshape(()), gamma.reshape(()), quantization_levels, level_indices.reshape(-1)


class APoTQuantizer:
    """Quantizer for fixed qparams (as returned by ``APoTObserver.calculate_qparams``).

    Args:
      alpha, gamma: float32 scalar tensors.
      quantization_levels: ``(N,)`` float32, ascending.
      level_indices: ``(N,)`` integer tensor, the code of each sorted level.
    """

    def __init__(self, alpha: Tensor, gamma: Tensor, quantization_levels: Tensor, level_indices: Tensor) -> None:
        # 1-element qparams act as 0-d ones; bad dtypes/shapes are refused here
        alpha, gamma, quantization_levels, level_indices = scalar_qparams(
            alpha, gamma, quantization_levels, level_indices
        )
        self.alpha = alpha
        self.gamma = gamma
        self.quantization_levels = quantization_levels
        self.level_indices = level_indices

    def q_apot_alpha(self) -> float:
        """The prototype's unimplemented stub: always ``NotImplementedError``."""
        raise NotImplementedError("APoTQuantizer.q_apot_alpha is not implemented (neither is the prototype's)")

    def _positions_lookup(self, x32: Tensor, values: Tensor, nan_value) -> Tensor:
        return lookup(x32, self.alpha, self.gamma, self.quantization_levels, values, nan_value)

    def quantize(self, tensor2quantize: Tensor) -> "TensorAPoT":
        """Codes of ``tensor2quantize`` (any shape, floating) as a ``TensorAPoT``
        whose ``int_repr()`` is int32; NaN gives ``NAN_CODE``."""
        x32 = as_float32(tensor2quantize, "quantize")
        codes = self._positions_lookup(x32, self.level_indices.to(torch.int32), NAN_CODE)
        return TensorAPoT(self, codes, tensor2quantize.dtype)

    def dequantize(self, apot_tensor: "TensorAPoT") -> Tensor:
        """Level values of the codes, in the dtype that was quantized;
        ``NAN_CODE`` and out-of-range codes give NaN.

        Codes of any integer dtype are range-checked before any narrowing
        cast: int64 codes beyond int32 and uint64 codes beyond int64 are out
        of range (NaN), never wrapped onto a valid code.

        Raises:
          TypeError: the codes are not an integer tensor (float, bool, complex).
        """
        codes = _integer_codes(apot_tensor.int_repr())
        by_code = torch.empty_like(self.quantization_levels)
        by_code[self.level_indices.long()] = self.quantization_levels
        n = by_code.shape[0]
        valid = (codes >= 0) & (codes < n)
        out = torch.take(by_code, codes.clamp(0, n - 1).long())
        out = torch.where(valid, out, torch.tensor(float("nan"), device=out.device))
        return out.to(apot_tensor.dtype)

    def quant_dequant(self, tensor2quantize: Tensor) -> Tensor:
        """Nearest level of each element; same shape and dtype as the input."""
        x32 = as_float32(tensor2quantize, "quant_dequant")
        out = self._positions_lookup(x32, self.quantization_levels, float("nan"))
        return out.to(tensor2quantize.dtype)


def _integer_codes(codes: Tensor) -> Tensor:
    """``codes`` in a signed integer dtype that holds every value exactly
    (uint32 widened to int64; uint64 reinterpreted as int64, so values
    ``>= 2**63`` become negative, i.e. out of range); a fresh tensor when
    converted, the caller's otherwise (never written).

    Raises:
      TypeError: not a tensor, or not of an integer dtype.
    """
    if not isinstance(codes, Tensor):
        raise TypeError(f"dequantize needs a tensor of integer codes, got {type(codes).__name__}")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"dequantize needs integer codes, got dtype {codes.dtype}")
    if codes.dtype == torch.uint64:
        return codes.view(torch.int64)  # bit reinterpretation: >= 2**63 -> negative -> NaN
    if codes.dtype in (torch.uint16, torch.uint32):
        return codes.to(torch.int64)  # exact
    return codes


class TensorAPoT:
    """APoT-quantized data: the quantizer, the int32 codes and the source dtype."""

    def __init__(self, quantizer: APoTQuantizer, apot_data: Tensor, dtype: torch.dtype = torch.float32) -> None:
        self.quantizer = quantizer
        self.data = apot_data
        self.dtype = dtype

    def int_repr(self) -> Tensor:
        """The int32 APoT codes."""
        return self.data


def quantize_APoT(
    tensor2quantize: Tensor, alpha: Tensor, gamma: Tensor, quantization_levels: Tensor, level_indices: Tensor
) -> TensorAPoT:
    """Quantize with the given qparams (prototype signature)."""
    return APoTQuantizer(alpha, gamma, quantization_levels, level_indices).quantize(tensor2quantize)


def dequantize_APoT(apot_tensor: TensorAPoT) -> Tensor:
    """Dequantize a ``TensorAPoT`` with its own quantizer."""
    return apot_tensor.quantizer.dequantize(apot_tensor)


def quant_dequant_APoT(
    tensor2quantize: Tensor, alpha: Tensor, gamma: Tensor, quantization_levels: Tensor, level_indices: Tensor
) -> Tensor:
    """``dequantize_APoT(quantize_APoT(x))`` in one pass; input is not modified."""
    return APoTQuantizer(alpha, gamma, quantization_levels, level_indices).quant_dequant(tensor2quantize)


__all__ = [
    "NAN_CODE",
    "SELECT_CHAIN_MAX_LEVELS",
    "APoTQuantizer",
    "TensorAPoT",
    "as_float32",
    "dequantize_APoT",
    "quant_dequant_APoT",
    "quantize_APoT",
    "scalar_qparams",
]
