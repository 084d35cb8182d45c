"""Bit-level float32 helpers shared by the torch modules: the bit pattern of a
float32 tensor and back, exact scaling by a power of two, and the float32
input check. Internal, not public API (mirrors ``apot_jax/_float32.py``);
``as_float32`` is re-exported by ``apot_torch.quantizer``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def bits(x: Tensor) -> Tensor:
    return x.contiguous().view(torch.int32)


def from_bits(bits: Tensor) -> Tensor:
    return bits.contiguous().view(torch.float32)


def scale_by_power_of_two(x: Tensor, e: Tensor) -> Tensor:
    """``x * 2**e`` for normal ``x`` and ``e <= 1``, exact; zero where the result
    would be subnormal, +-inf where it overflows (done on the exponent bits)."""
    x_bits = bits(x)
    biased = ((x_bits >> 23) & 0xFF) + e
    scaled = from_bits(x_bits + (e << 23))
    keep = (biased >= 1) & (x != 0)
    scaled = torch.where(keep, scaled, x * 0)
    scaled = torch.where(biased >= 255, x * float("inf"), scaled)
    return torch.where(torch.isfinite(x), scaled, x)


def as_float32(x: Tensor, what: str) -> Tensor:
    """``x`` as float32 (a new tensor only if a cast is needed); TypeError if
    ``x`` is not a floating tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} needs a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{what} needs a floating-point tensor, got dtype {x.dtype}")
    return x.to(torch.float32)


__all__ = [
    "as_float32",
    "bits",
    "from_bits",
    "scale_by_power_of_two",
]
