"""apot_torch.levels: gamma is the correctly rounded quotient, the signed
levels stay finite near the float32 limit, and quant_dequant is
differentiable in the levels."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

import apot_torch as at
from apot_torch.levels import gamma as torch_gamma
from tests.helpers import bits
from tests.reference import reference_qparams, reference_quantize, round_rational_to_float32
from tests.torch.helpers import qparams


def test_gamma_correctly_rounded_on_many_alphas():
    rng = np.random.default_rng(7)
    alphas = np.concatenate([
        rng.uniform(0, 10, 20000).astype(np.float32),
        np.exp(rng.uniform(-80, 80, 5000)).astype(np.float32),
        np.arange(1, 2001, dtype=np.float32) * np.float32(3),
    ])
    for n in (1, 2, 3, 4, 8):
        p_sum = 2 - 2.0 ** (1 - n)
        got = torch_gamma(torch.from_numpy(alphas), p_sum).numpy()
        pick = rng.choice(alphas.size, 3000, replace=False)
        exact = np.array(
            [round_rational_to_float32(Fraction(float(alphas[i])) / (2 - Fraction(2) ** (1 - n))) for i in pick],
            np.float32,
        )
        np.testing.assert_array_equal(bits(got[pick]), bits(exact), err_msg=f"n={n}")


def test_quant_dequant_is_differentiable_in_the_levels():
    """A gather keeps the graph to the level values: d sum / d level[p] is the
    number of elements rounded to position p (the fake quant gives none)."""
    alpha, gamma, levels, indices = qparams(-1.0, 1.0, 8, 2)
    levels = levels.clone().requires_grad_()
    x = torch.randn(2**16 + 5000, generator=torch.Generator().manual_seed(4)) * 0.7  # two chunks
    out = at.quant_dequant_APoT(x, alpha, gamma, levels, indices)
    np.testing.assert_array_equal(bits(out), bits(at.quant_dequant_APoT(x, alpha, gamma, levels.detach(), indices)))
    out.sum().backward()
    codes, _ = reference_quantize(x.numpy(), np.float32(1.0), levels.detach().numpy(), indices.numpy())
    positions = np.argsort(indices.numpy())[codes]
    np.testing.assert_array_equal(levels.grad.numpy(), np.bincount(positions, minlength=levels.numel()))


@pytest.mark.parametrize("b,k", [(4, 2), (6, 3), (8, 2), (8, 4)])
def test_signed_levels_near_float32_max_do_not_overflow(b, k):
    fmax = float(np.finfo(np.float32).max)
    _, _, ref_levels, _ = reference_qparams(0.0, fmax, b, k, True)
    assert np.isfinite(ref_levels).all()
    np.testing.assert_array_equal(bits(qparams(0.0, fmax, b, k, True)[2].numpy()), bits(ref_levels))
