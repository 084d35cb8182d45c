"""APoT quantize / dequantize / quant_dequant in torch.

Mirrors ``apot_jax/quantizer.py`` and keeps the prototype's public names
(``APoTQuantizer``, ``quantize_APoT``, ``dequantize_APoT``,
``quant_dequant_APoT``). Unlike the prototype it is vectorised, works on any
device, never modifies its input and returns the input's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from apot_torch import levels as _levels

#: Code returned by ``quantize`` for NaN input (and for unobserved qparams).
NAN_CODE = -1

#: Up to this many levels rounding is a compare-and-select chain (see apot_jax).
SELECT_CHAIN_MAX_LEVELS = 16


def as_float32(x: Tensor, what: str) -> Tensor:
    """``x`` as float32 (a new tensor only if a cast is needed); TypeError if
    ``x`` is not a floating tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} needs a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{what} needs a floating-point tensor, got dtype {x.dtype}")
    return x.to(torch.float32)


def _lookup(x: Tensor, alpha: Tensor, gamma: Tensor, quantization_levels: Tensor, values: Tensor, nan_value) -> Tensor:
    """``values[p(x)]`` for the contract's chosen position ``p`` (float32 ``x``)."""
    theta = _levels.thresholds(quantization_levels, alpha)
    n = theta.shape[0]
    if n <= SELECT_CHAIN_MAX_LEVELS:
        out = values[0].expand(x.shape)
        for j in range(n - 1):
            out = torch.where(x > theta[j], values[j + 1], out)
    else:
        grid = _levels.rounding_grid(theta, quantization_levels, alpha)
        if bool(grid.exact):
            c = _levels.grid_cell(x, grid.origin, grid.scale, grid.threshold.shape[0])
            above = torch.take(values[grid.upper], c)
            below = torch.take(values[grid.lower], c)
            out = torch.where(x > torch.take(grid.threshold, c), above, below)
        else:
            out = values[torch.searchsorted(theta, x.contiguous(), right=False).clamp(max=n - 1)]
    invalid = torch.isnan(x) | torch.isnan(gamma)
    return torch.where(invalid, torch.tensor(nan_value, dtype=values.dtype, device=x.device), out)


class APoTQuantizer:
    """Quantizer for fixed qparams (as returned by ``APoTObserver.calculate_qparams``).

    Args:
      alpha, gamma: float32 scalar tensors.
      quantization_levels: ``(N,)`` float32, ascending.
      level_indices: ``(N,)`` integer tensor, the code of each sorted level.
    """

    def __init__(self, alpha: Tensor, gamma: Tensor, quantization_levels: Tensor, level_indices: Tensor) -> None:
        self.alpha = alpha
        self.gamma = gamma
        self.quantization_levels = quantization_levels
        self.level_indices = level_indices

    def _positions_lookup(self, x32: Tensor, values: Tensor, nan_value) -> Tensor:
        return _lookup(x32, self.alpha, self.gamma, self.quantization_levels, values, nan_value)

    def quantize(self, tensor2quantize: Tensor) -> "TensorAPoT":
        """Codes of ``tensor2quantize`` (any shape, floating) as a ``TensorAPoT``
        whose ``int_repr()`` is int32; NaN gives ``NAN_CODE``."""
        x32 = as_float32(tensor2quantize, "quantize")
        codes = self._positions_lookup(x32, self.level_indices.to(torch.int32), NAN_CODE)
        return TensorAPoT(self, codes, tensor2quantize.dtype)

    def dequantize(self, apot_tensor: "TensorAPoT") -> Tensor:
        """Level values of the codes, in the dtype that was quantized;
        ``NAN_CODE`` and out-of-range codes give NaN."""
        codes = apot_tensor.int_repr()
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
