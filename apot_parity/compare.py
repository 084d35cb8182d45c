"""Bitwise comparison with a measured distance, and the report's records.

A :class:`Comparison` counts mismatching elements and measures the largest
distance (ulp for floats, absolute difference for integer codes); a
:class:`Result` is one line of the parity report. The tolerance is zero
everywhere (docs/parity.md); NaN payloads are not part of the contract, so
NaN matches any NaN.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from apot_parity.records import Elementwise, QParams
from apot_parity.records import float32 as _f32


def _order_key(a: np.ndarray) -> np.ndarray:
    """Monotone float -> int64 map (both zeros -> 0), for ulp distances."""
    a = np.asarray(a)
    ints = {2: np.int16, 4: np.int32, 8: np.int64}[a.dtype.itemsize]
    bits = a.view(ints).astype(np.int64)
    mag = bits & ((1 << (8 * a.dtype.itemsize - 1)) - 1)
    return np.where(bits >= 0, bits, -mag)


@dataclasses.dataclass
class Comparison:
    """Outcome of one bitwise comparison.

    ``max_ulp`` is the largest distance in units in the last place of the
    compared dtype (floats; a NaN against a number counts as ``inf``, -0.0
    against +0.0 as 1) or the largest absolute difference (integers). Floats
    match when their bits are equal (so ``-0.0 != 0.0``) or both are NaN.
    """

    check: str
    comparisons: int
    mismatches: int
    max_ulp: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.mismatches == 0

    @property
    def status(self) -> str:
        return "pass" if self.ok else "fail"


def _is_nan(a: np.ndarray) -> np.ndarray:
    return np.isnan(a.astype(np.float32) if a.dtype.itemsize == 2 else a)


def compare(check: str, actual, expected) -> Comparison:
    """Bitwise comparison of two arrays of the same dtype and shape."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        return Comparison(
            check, max(expected.size, 1), max(expected.size, 1), math.inf,
            f"shape/dtype {actual.shape} {actual.dtype} != expected {expected.shape} {expected.dtype}",
        )
    n = expected.size
    if n == 0:
        return Comparison(check, 0, 0, 0.0)
    if np.issubdtype(expected.dtype, np.integer) or expected.dtype == np.bool_:
        a64, e64 = actual.astype(np.int64), expected.astype(np.int64)
        bad = a64 != e64
        dist = np.abs(a64 - e64).astype(np.float64)
    else:
        ints = {2: np.int16, 4: np.int32, 8: np.int64}[expected.dtype.itemsize]
        a_nan, e_nan = _is_nan(actual), _is_nan(expected)
        same_bits = actual.view(ints) == expected.view(ints)
        bad = ~(same_bits | (a_nan & e_nan))
        dist = np.abs(_order_key(actual) - _order_key(expected)).astype(np.float64)
        dist = np.where(a_nan != e_nan, np.inf, np.where(a_nan & e_nan, 0.0, dist))
        dist = np.where(bad & (dist == 0), 1.0, dist)  # -0.0 vs +0.0
    mismatches = int(np.count_nonzero(bad))
    if not mismatches:
        return Comparison(check, n, 0, 0.0)
    idx = np.flatnonzero(bad.ravel())[:3]
    shown = ", ".join(f"[{i}] got {actual.ravel()[i]!r} expected {expected.ravel()[i]!r}" for i in idx)
    detail = f"{mismatches} of {n} differ: {shown}"
    return Comparison(check, n, mismatches, float(dist.max()), detail)


@dataclasses.dataclass
class Result:
    """One line of the parity report (JSON-serialisable via ``as_json``)."""

    backend: str
    case: str
    check: str
    status: str  # "pass", "fail", "skipped" or "error"
    comparisons: int = 0
    mismatches: int = 0
    max_ulp: float = 0.0
    detail: str = ""
    source: str = ""  # "golden", "live", "pytest"

    @classmethod
    def from_comparison(cls, backend: str, case: str, c: Comparison, source: str) -> "Result":
        return cls(backend, case, c.check, c.status, c.comparisons, c.mismatches, c.max_ulp, c.detail, source)

    def as_json(self) -> dict:
        d = dataclasses.asdict(self)
        if math.isinf(d["max_ulp"]):
            d["max_ulp"] = "inf"
        return d


def compare_elementwise(prefix: str, actual: Elementwise, expected: Elementwise) -> list[Comparison]:
    """codes (as int32), quant_dequant, fake quant and gradient, each bitwise."""
    return [
        compare(f"{prefix}codes", actual.codes.astype(np.int32), expected.codes.astype(np.int32)),
        compare(f"{prefix}quant_dequant", actual.quant_dequant, expected.quant_dequant),
        compare(f"{prefix}fake_quant", actual.fake_quant, expected.fake_quant),
        compare(f"{prefix}grad", actual.grad, expected.grad),
    ]


def compare_qparams(actual: QParams, expected: QParams) -> list[Comparison]:
    """alpha, gamma, levels (float32) and level indices (int64), each bitwise."""
    return [
        compare("alpha", _f32(actual.alpha), _f32(expected.alpha)),
        compare("gamma", _f32(actual.gamma), _f32(expected.gamma)),
        compare("levels", _f32(actual.levels), _f32(expected.levels)),
        compare("level_indices", np.asarray(actual.indices, np.int64), np.asarray(expected.indices, np.int64)),
    ]


def compare_state(check: str, actual, expected) -> Comparison:
    """Observer statistics, as float32, bitwise (a zero statistic is ``+0.0``
    in both frameworks, docs/numerics.md section 2)."""
    return compare(check, _f32(actual), _f32(expected))


__all__ = ["Comparison", "Result", "compare", "compare_elementwise", "compare_qparams", "compare_state"]
