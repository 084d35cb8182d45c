"""The records every parity check exchanges: numpy in, numpy out.

:class:`QParams` and :class:`Elementwise` are what a binding returns and what
the golden files store; the dtype names are the element-wise input dtypes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

#: Input dtypes of the element-wise checks, by name.
DTYPE_NAMES = ("float32", "bfloat16", "float16")


def numpy_dtype(name: str) -> np.dtype:
    """numpy dtype of a dtype name (bfloat16 from ``ml_dtypes``, a JAX dependency)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def dtype_name(dtype: Any) -> str:
    """The name of a supported element-wise dtype (``ValueError`` otherwise)."""
    name = np.dtype(dtype).name
    if name not in DTYPE_NAMES:
        raise ValueError(f"unsupported dtype {name}")
    return name


@dataclasses.dataclass
class QParams:
    """qparams as numpy: float32 alpha/gamma (scalars or batched), levels
    ``(..., N)`` float32, ``level_indices`` ``(N,)`` int64."""

    alpha: np.ndarray
    gamma: np.ndarray
    levels: np.ndarray
    indices: np.ndarray


@dataclasses.dataclass
class Elementwise:
    """Element-wise results for one input array: ``codes`` int32, the rest in
    the input's dtype (``grad`` is the input gradient of the fake quant)."""

    codes: np.ndarray
    quant_dequant: np.ndarray
    fake_quant: np.ndarray
    grad: np.ndarray


def float32(v) -> np.ndarray:
    """``v`` as a float32 numpy array (statistics and qparams are float32)."""
    return np.asarray(v, dtype=np.float32)


__all__ = ["DTYPE_NAMES", "Elementwise", "QParams", "dtype_name", "float32", "numpy_dtype"]
