"""The prototype's ``apot_utils`` helpers, same names and signatures, vectorised.

PyTorch's prototype (``torch/ao/quantization/experimental/apot_utils.py``)
converted one Python number at a time by scanning the levels. These take a
number or a tensor of any shape and follow ``docs/numerics.md`` section 5 (the
prototype's strict-``<`` scan is its first-minimum rule). One deliberate
difference, the contract's fix (section 7): a value beyond ``+-alpha`` is
clipped and then rounded, where the prototype's ``float_to_apot`` returned the
float ``+-alpha`` itself as if it were a code. Nothing passed in is modified.
"""

from __future__ import annotations

import torch
from torch import Tensor

from apot_torch._float32 import as_float32
from apot_torch.quantizer import APoTQuantizer


def _as_tensor(x: Tensor | float, what: str) -> Tensor:
    if isinstance(x, bool) or isinstance(x, complex):
        raise TypeError(f"{what} needs a real number or a floating tensor, got {x!r}")
    if isinstance(x, (int, float)):
        return torch.tensor(float(x), dtype=torch.float32)
    return as_float32(x, what)


def _quantizer(levels: Tensor, indices: Tensor, alpha: Tensor | float | None) -> APoTQuantizer:
    levels = levels.reshape(-1) if isinstance(levels, Tensor) and levels.dim() > 1 else levels
    if alpha is None:  # no clipping value given: the largest magnitude among the levels
        alpha = levels.detach().to(torch.float32).abs().amax()
    alpha = _as_tensor(alpha, "alpha")
    # gamma only marks unobserved qparams (NaN); these functions take the levels as given
    return APoTQuantizer(alpha, torch.zeros((), device=alpha.device), levels, indices)


def float_to_apot(x: Tensor | float, levels: Tensor, indices: Tensor, alpha: Tensor | float) -> Tensor:
    """APoT code of ``x``: the code (``indices[p]``) of the first level
    ``levels[p]`` nearest to ``x`` clipped to ``[-alpha, alpha]``.

    Args:
      x: a number or a floating tensor of any shape.
      levels: ``(N,)`` ascending float32 levels; ``indices``: ``(N,)`` codes.
      alpha: the clipping value (0-d or 1-element).

    Returns:
      int32 tensor shaped like ``x`` (0-d for a number); NaN gives ``NAN_CODE``.
    """
    return _quantizer(levels, indices, alpha).quantize(_as_tensor(x, "float_to_apot")).int_repr()


def quant_dequant_util(x: Tensor | float, levels: Tensor, indices: Tensor) -> Tensor:
    """The first level nearest to ``x`` (float32, shaped like ``x``; NaN stays NaN).

    As in the prototype there is no clipping value; the range is that of the
    levels (``alpha = max |level|``), which changes nothing for a value that
    is not huge and keeps a huge one at the outermost level.
    """
    return _quantizer(levels, indices, None).quant_dequant(_as_tensor(x, "quant_dequant_util").to(torch.float32))


def apot_to_float(x_apot: Tensor | int, levels: Tensor, indices: Tensor) -> Tensor:
    """Level of each APoT code: ``levels[p]`` where ``indices[p] == x_apot``.

    Args:
      x_apot: an int or an integer tensor of codes, any shape.

    Returns:
      float32 tensor shaped like ``x_apot``. A code that is not in
      ``indices`` (e.g. ``NAN_CODE``) gives NaN, as ``dequantize`` does (the
      prototype raised ``ValueError`` from ``list.index``).

    Raises:
      TypeError: floating, complex or boolean codes.
    """
    if isinstance(x_apot, bool) or not isinstance(x_apot, (int, Tensor)):
        raise TypeError(f"apot_to_float needs integer codes, got {x_apot!r}")
    codes = torch.tensor(x_apot) if isinstance(x_apot, int) else x_apot
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"apot_to_float needs integer codes, got dtype {codes.dtype}")
    q = _quantizer(levels, indices, None)
    codes = codes.to(q.quantization_levels.device)
    by_code = torch.full((q.quantization_levels.shape[0],), float("nan"), device=codes.device)
    idx = q.level_indices.long().to(codes.device)
    n = by_code.shape[0]
    if bool(((idx < 0) | (idx >= n)).any()):
        raise ValueError(f"indices must be codes in [0, {n}), got {idx.tolist()}")
    by_code[idx] = q.quantization_levels.to(codes.device)
    valid = (codes >= 0) & (codes < n)
    # range-check before any narrowing: int64 codes compare as int64
    out = by_code[torch.where(valid, codes, torch.zeros_like(codes)).long()]
    return torch.where(valid, out, torch.tensor(float("nan"), device=out.device))


__all__ = ["apot_to_float", "float_to_apot", "quant_dequant_util"]
