"""Inputs, qparams and reference checks shared by the apot_torch tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import apot_torch as at
from tests.helpers import bits
from tests.reference import reference_quantize

# The same statistics as the JAX tests: ordinary, odd, alpha where a level
# product rounds across the normal range for k = 8, tiny, huge, all-zero.
STATS = [(-1.0, 1.0), (-0.3, 0.7371), (0.0, 0.5 - 2**-25), (-1e-30, 3e-31), (-3e37, 2.0), (0.0, 0.0)]

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def qparams(mn: float, mx: float, b: int, k: int, signed: bool = False, device: str = "cpu"):
    """``calculate_qparams`` of the statistics ``(mn, mx)`` on ``device``."""
    return at.calculate_qparams(torch.tensor(mn, device=device), torch.tensor(mx, device=device), b, k, signed)


def observed_qparams():
    """Unsigned b=4, k=2 qparams of an observer that saw ``[-1, 1]``."""
    obs = at.APoTObserver(4, 2)
    obs(torch.tensor([-1.0, 1.0]))
    return obs.calculate_qparams(signed=False)


def observed(module, seed=0):
    """``module`` after it observed 64 normal values (times 2) from ``seed``."""
    module(torch.randn(64, generator=torch.Generator().manual_seed(seed)) * 2)
    return module


def data(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    """A normal tensor of ``shape`` times ``scale`` from torch's ``seed``."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def check_against_reference(x: np.ndarray, qp, ref) -> None:
    """Codes, quant_dequant and dequantize of ``x`` with torch qparams ``qp``
    equal the reference ``ref = (alpha, gamma, levels, indices)`` bitwise."""
    alpha, gamma, levels, indices = ref
    xt = torch.from_numpy(x)
    apot = at.quantize_APoT(xt, *qp)
    codes = apot.int_repr()
    values = at.quant_dequant_APoT(xt, *qp)
    ref_codes, ref_values = reference_quantize(x, alpha, levels, indices)
    assert codes.dtype == torch.int32
    np.testing.assert_array_equal(codes.numpy(), ref_codes)
    np.testing.assert_array_equal(bits(values), bits(ref_values))
    np.testing.assert_array_equal(bits(at.dequantize_APoT(apot)), bits(ref_values))


__all__ = ["STATS", "check_against_reference", "data", "observed", "observed_qparams", "qparams", "requires_cuda"]
