"""Comparison helpers shared by the tests of every package (numpy only)."""

from __future__ import annotations

import numpy as np


def bits(a) -> np.ndarray:
    """float32 bit patterns of ``a`` (numpy, JAX or torch; other float dtypes
    are cast to float32 first), so that comparisons are bitwise: NaN == NaN
    and -0.0 != 0.0."""
    if hasattr(a, "detach"):  # a torch.Tensor, without importing torch here
        a = a.detach().cpu().float().numpy()
    return np.asarray(a, np.float32).view(np.int32)


__all__ = ["bits"]
