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
from apot_torch._float32 import as_float32
from apot_torch.quantizer import APoTQuantizer, scalar_qparams

_FLOAT32_MAX = float(torch.finfo(torch.float32).max)
#: The largest subnormal float32, 2**-126 - 2**-149 (exact in float32).
_LARGEST_SUBNORMAL = FLOAT32_TINY - 2.0**-149


def ste_mask(x: Tensor, alpha: Tensor) -> Tensor:
    """``-alpha <= x <= alpha`` with explicit comparisons; subnormal ``x`` counts
    as zero, NaN and +-inf get False (also for an infinite ``alpha``).

    Computed as ``|x| <= bound`` (two passes in eager torch, one comparison
    in a fused kernel) with ``bound = max(min(alpha, FLT_MAX), largest
    subnormal)`` where ``alpha >= 0`` and ``alpha`` itself elsewhere (negative
    or NaN: every element False). For ``alpha >= 0``, a zero or subnormal
    ``|x|`` is at most the largest subnormal, so it passes, as zero would;
    a normal ``|x|`` is above it, so it passes exactly when ``|x| <= alpha``.
    Equal to ``where(|x| < tiny, 0, |x|) <= min(alpha, FLT_MAX)`` for every
    ``x`` and ``alpha`` (NaN, +-0, subnormal, +-inf included), with or
    without hardware that flushes subnormal operands.
    """
    alpha = alpha.to(torch.float32)
    clipped = alpha.clamp(max=_FLOAT32_MAX)  # NaN stays NaN
    bound = torch.where(alpha >= 0, clipped.clamp(min=_LARGEST_SUBNORMAL), clipped)
    return x.to(torch.float32).abs() <= bound


def _ste_grad(grad_output: Tensor, x: Tensor, alpha: Tensor) -> Tensor:
    """``dx = where(ste_mask(x, alpha), dy, 0)``, as plain tensor code that
    Inductor fuses into one pass over ``x`` and ``dy``."""
    return torch.where(ste_mask(x, alpha), grad_output, 0.0)


_COMPILED_STE_GRAD = None


def _compiled_ste_grad():
    global _COMPILED_STE_GRAD
    if _COMPILED_STE_GRAD is None:
        _COMPILED_STE_GRAD = torch.compile(_ste_grad, dynamic=True)
    return _COMPILED_STE_GRAD


@torch.library.custom_op("apot::ste_grad", mutates_args=())
def _ste_grad_op(grad_output: Tensor, x: Tensor, alpha: Tensor) -> Tensor:
    """The backward under ``torch.compile``, as one opaque operator.

    Traced as plain ops, AOTAutograd's partitioner moves the mask into the
    forward graph and saves it as a bool tensor (the smallest one to keep),
    and Inductor's CPU code stores a bool tensor several times slower than a
    float32 one (measured: ``benchmarks/bench_torch.py``). Behind this
    operator the forward keeps only ``x`` and ``alpha`` and the backward is
    one fused pass (``_ste_grad``): two float loads, one float store.
    """
    return _compiled_ste_grad()(grad_output, x, alpha)


@_ste_grad_op.register_fake
def _(grad_output, x, alpha):
    return torch.empty_like(grad_output)


class fake_quantize_function(torch.autograd.Function):  # noqa: N801 (prototype name)
    """``y = quant_dequant(x)``; ``dx = dy * (-alpha <= x <= alpha)``.

    Inputs: ``x`` (floating, any shape), ``alpha``, ``gamma`` (float32 scalars),
    ``quantization_levels`` ``(N,)`` float32, ``level_indices`` ``(N,)`` int.
    The qparams get no gradient. Output: shape and dtype of ``x``.

    Eager, the forward saves the bool mask (only when ``x`` needs a
    gradient); under ``torch.compile`` it saves ``x`` and ``alpha`` and the
    backward is the ``apot::ste_grad`` operator (see ``_ste_grad_op``).
    Both give the same gradient, bit for bit.
    """

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor, gamma: Tensor, quantization_levels: Tensor, level_indices: Tensor):
        as_float32(x, "fake_quantize_function")
        # 1-element qparams act as 0-d ones (the mask keeps x's shape)
        alpha, gamma, quantization_levels, level_indices = scalar_qparams(
            alpha, gamma, quantization_levels, level_indices
        )
        if torch.compiler.is_compiling():
            ctx.save_for_backward(x, alpha.detach())
        elif ctx.needs_input_grad[0]:
            ctx.save_for_backward(ste_mask(x, alpha))
        return APoTQuantizer(alpha, gamma, quantization_levels, level_indices).quant_dequant(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        saved = ctx.saved_tensors
        if len(saved) == 2:  # traced forward: the mask from x, in the same pass
            x, alpha = saved
            grad_x = torch.ops.apot.ste_grad(grad_output, x, alpha)
        else:
            (mask,) = saved
            grad_x = torch.where(mask, grad_output, 0.0)
        return grad_x, None, None, None, None


__all__ = [
    "fake_quantize_function",
    "ste_mask",
]
