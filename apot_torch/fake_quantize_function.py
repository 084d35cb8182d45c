"""``fake_quantize_function``: APoT fake quantization with a clipped
straight-through gradient, as a ``torch.autograd.Function``.

Mirrors ``apot_jax/fake_quantize_function.py``. Fixes the prototype: the input
is not overwritten, the mask comes from the original ``x``, and backward
returns one gradient per input.
"""

from __future__ import annotations

import torch
from torch import Tensor

from apot_common.tables import FLOAT32_TINY
from apot_torch.quantizer import APoTQuantizer, as_float32, scalar_qparams


def ste_mask(x: Tensor, alpha: Tensor) -> Tensor:
    """``-alpha <= x <= alpha`` with explicit comparisons; subnormal ``x`` counts
    as zero, NaN and +-inf get False (also for an infinite ``alpha``)."""
    magnitude = x.to(torch.float32).abs()
    magnitude = torch.where(magnitude < FLOAT32_TINY, 0.0, magnitude)
    return magnitude <= alpha.clamp(max=torch.finfo(torch.float32).max)


class fake_quantize_function(torch.autograd.Function):  # noqa: N801 (prototype name)
    """``y = quant_dequant(x)``; ``dx = dy * (-alpha <= x <= alpha)``.

    Inputs: ``x`` (floating, any shape), ``alpha``, ``gamma`` (float32 scalars),
    ``quantization_levels`` ``(N,)`` float32, ``level_indices`` ``(N,)`` int.
    The qparams get no gradient. Output: shape and dtype of ``x``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor, gamma: Tensor, quantization_levels: Tensor, level_indices: Tensor):
        as_float32(x, "fake_quantize_function")
        # 1-element qparams act as 0-d ones (the mask keeps x's shape)
        alpha, gamma, quantization_levels, level_indices = scalar_qparams(
            alpha, gamma, quantization_levels, level_indices
        )
        ctx.save_for_backward(ste_mask(x, alpha))
        return APoTQuantizer(alpha, gamma, quantization_levels, level_indices).quant_dequant(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (mask,) = ctx.saved_tensors
        grad_x = torch.where(mask, grad_output, 0.0)
        return grad_x, None, None, None, None
