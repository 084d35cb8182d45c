"""apot_torch.fake_quantize_function: forward is quant_dequant, backward the
straight-through mask (gradcheck against a clamp with the same backward), no
gradient to the qparams, float64 inputs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

import apot_torch as at
from tests.helpers import bits
from tests.torch.helpers import qparams


class _ClampWithSTEBackward(torch.autograd.Function):
    """``clamp(x, -alpha, alpha)`` whose backward is fake_quantize_function's.

    The fake quant forward is a step function, so finite differences cannot
    check its straight-through gradient; the clamp is the function that
    gradient is the exact derivative of (docs/numerics.md, 6).
    """

    @staticmethod
    def forward(ctx, x, alpha):
        ctx.save_for_backward(at.ste_mask(x, alpha))
        return x.clamp(-alpha.to(x.dtype), alpha.to(x.dtype))

    @staticmethod
    def backward(ctx, grad_output):
        saved = SimpleNamespace(saved_tensors=ctx.saved_tensors)
        grad_x = at.fake_quantize_function.backward(saved, grad_output)[0]
        return grad_x, None


def test_fake_quantize_function_forward_and_backward():
    qp = qparams(-1.0, 1.0, 4, 2)
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.3, 1.0, 1.5, float("nan"), float("inf"), -float("inf")])
    xr = x.clone().requires_grad_()
    y = at.fake_quantize_function.apply(xr, *qp)
    np.testing.assert_array_equal(bits(y), bits(at.quant_dequant_APoT(x, *qp)))
    dy = torch.arange(1.0, 11.0)
    y.backward(dy)
    # dy where -alpha <= x <= alpha (boundaries included), 0 outside and for
    # NaN/inf; the mask is of the original x: -2 and 1.5 quantize to levels
    # inside [-alpha, alpha] but get no gradient
    assert xr.grad.tolist() == [0, 2, 3, 4, 5, 6, 0, 0, 0, 0]


def test_fake_quantize_function_no_gradient_to_qparams():
    alpha, gamma, levels, indices = (t.clone() for t in qparams(-1.0, 1.0, 4, 2))
    for t in (alpha, gamma, levels):
        t.requires_grad_()
    x = torch.tensor([0.2, 0.7], requires_grad=True)
    at.fake_quantize_function.apply(x, alpha, gamma, levels, indices).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0]
    assert alpha.grad is None and gamma.grad is None and levels.grad is None


def test_fake_quantize_function_float64():
    qp = qparams(-1.0, 1.0, 8, 2)
    x = torch.tensor([-1.5, -0.3, 0.0, 0.25, 0.99, 1.0 + 1e-12], dtype=torch.float64, requires_grad=True)
    y = at.fake_quantize_function.apply(x, *qp)
    assert y.dtype == torch.float64
    expected = at.quant_dequant_APoT(x.detach().to(torch.float32), *qp).to(torch.float64)
    assert torch.equal(y.detach(), expected)
    y.backward(torch.full_like(y, 0.5))
    assert x.grad.dtype == torch.float64
    # x is taken in float32 (docs/numerics.md, 5): 1 + 1e-12 is 1.0 = alpha there
    assert x.grad.tolist() == [0.0, 0.5, 0.5, 0.5, 0.5, 0.5]


def test_gradcheck_of_the_straight_through_backward():
    alpha = torch.tensor(1.0)
    # keep clear of the kinks at +-alpha, where finite differences are undefined
    x = torch.tensor([-3.0, -1.5, -0.99, -0.4, 0.0, 0.25, 0.7, 0.98, 1.02, 2.5], dtype=torch.float64)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda v: _ClampWithSTEBackward.apply(v, alpha), (x,), eps=1e-6, atol=1e-7)
    wide = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 2
    wide = wide[(wide.abs() - 1).abs() > 1e-3].requires_grad_()
    assert torch.autograd.gradcheck(lambda v: _ClampWithSTEBackward.apply(v, alpha), (wide,), eps=1e-6, atol=1e-7)


def test_subnormal_inputs_count_as_zero_in_the_gradient_mask():
    alpha, gamma, levels, indices = qparams(0.0, 0.0, 4, 2)
    x = torch.tensor([1e-45, -1e-40, 0.0, 1e-30], requires_grad=True)
    at.fake_quantize_function.apply(x, alpha, gamma, levels, indices).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 1.0, 1.0, 0.0])
