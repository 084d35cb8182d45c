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


def pad_to_bucket(x: np.ndarray) -> np.ndarray:
    """1-D ``x`` repeated cyclically up to the next power of two in length.

    JAX compiles one program per input shape: inputs whose sizes differ a
    little (the adversarial inputs of each alpha) then share one, and every
    value of ``x`` is still in the result."""
    x = np.asarray(x).reshape(-1)
    return np.resize(x, 1 << max(0, (x.size - 1).bit_length()))


__all__ = ["bits", "pad_to_bucket"]
