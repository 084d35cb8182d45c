"""Regression tests for four edge cases where the frameworks used to differ.

The parity suite once found these differences between ``apot_jax`` and
``apot_torch``; both cores now follow the refinements of ``docs/numerics.md``:

* ``zero-alpha`` (section 2): a zero or subnormal alpha is ``+0.0``, whatever
  the signs of the zero statistics, in the scalar and the batched path;
* ``subnormal-mask`` (section 6): in the fake-quant gradient mask a
  subnormal ``x`` counts as zero, so with alpha = 0 it gets mask 1;
* ``signed-level-overflow`` (section 4): signed levels for alpha near the
  float32 maximum are finite (``gamma * mantissa`` used to overflow);
* ``observer-zero-sign`` (section 2): the observers see zeros and subnormals
  as ``+0.0``, so a zero statistic is ``+0.0`` whichever zero came first.

Each case is checked three ways: every backend against the independent
reference (``parity_tests/expected.py``) bit for bit, ``jax-cpu`` against
``torch-cpu`` directly, and the reference itself against the rule (so the
reference cannot drift back to the old behaviour).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

from apot_common.tables import level_table
from apot_parity import (
    Elementwise,
    QParams,
    backend_status,
    compare_elementwise,
    compare_qparams,
    compare_state,
    make_binding,
    numpy_dtype,
)
from parity_tests import expected

F32 = np.float32
TINY = np.finfo(F32).tiny
FMAX = np.finfo(F32).max
SUB = np.nextafter(TINY, F32(0))  # largest subnormal


def _is_positive_zero(a) -> np.ndarray:
    return np.asarray(a, F32).view(np.int32) == 0


@dataclasses.dataclass
class States:
    """Observer statistics after each batch of one stream."""

    min_val: np.ndarray
    max_val: np.ndarray


class Reference:
    """``parity_tests.expected`` behind the binding methods used here (never
    cached across statistics: ``-0.0 == 0.0`` would share a cache entry)."""

    name = "reference"

    def qparams(self, min_val, max_val, b: int, k: int, signed: bool) -> QParams:
        ref = expected.qparams.__wrapped__
        mn, mx = np.asarray(min_val, F32), np.asarray(max_val, F32)
        if mn.ndim == 0:
            return ref(b, k, signed, float(mn), float(mx))
        rows = [ref(b, k, signed, float(a), float(c)) for a, c in zip(mn.ravel(), mx.ravel())]
        n = level_table(b, k, signed).num_levels
        return QParams(
            np.array([r.alpha for r in rows], F32).reshape(mn.shape),
            np.array([r.gamma for r in rows], F32).reshape(mn.shape),
            np.stack([r.levels for r in rows]).reshape(mn.shape + (n,)),
            rows[0].indices,
        )

    def elementwise(self, x, dy, min_val, max_val, b: int, k: int, signed: bool) -> Elementwise:
        return expected.elementwise(x, dy, self.qparams(F32(min_val), F32(max_val), b, k, signed))

    def observe_stream(self, batches):
        return expected.observer_states(batches)


REFERENCE = Reference()


# --------------------------------------------------------------------------
# the four cases: each maps a binding (or the reference) to named results

#: (min_val, max_val) whose alpha is a zero or a subnormal.
ZERO_STATS = [
    (0.0, 0.0), (-0.0, -0.0), (-0.0, 0.0), (0.0, -0.0), (0.0, 1e-40), (-1e-39, 0.0), (-1e-39, -0.0),
    (-1e-45, 1e-45), (-float(SUB), 0.0), (0.0, float(SUB)), (1e-40, -1e-40),
]
ZERO_CONFIGS = [(4, 2, False), (4, 2, True), (3, 1, True), (8, 8, False)]


def zero_alpha(source) -> dict:
    out = {}
    for b, k, s in ZERO_CONFIGS:
        cfg = expected.config_id((b, k, s))
        for mn, mx in ZERO_STATS:
            out[f"{cfg} min={mn!r} max={mx!r}"] = source.qparams(F32(mn), F32(mx), b, k, s)
        mins = np.array([mn for mn, _ in ZERO_STATS], F32)
        maxs = np.array([mx for _, mx in ZERO_STATS], F32)
        out[f"{cfg} batched"] = source.qparams(mins, maxs, b, k, s)  # torch's vector path
    return out


#: inputs of the gradient check: subnormals of both signs, zeros, the
#: smallest normals, ordinary and non-finite values
MASK_X = np.array(
    [1e-45, -1e-40, 0.0, -0.0, SUB, -SUB, TINY, -TINY, 1e-30, -1.0, 0.25, np.inf, -np.inf, np.nan], F32)
#: statistics of the gradient check: alpha 0 (from zeros and from subnormals)
#: and a tiny normal alpha (subnormal x inside, TINY inside, 1e-30 outside)
MASK_STATS = [(0.0, 0.0), (-0.0, -0.0), (0.0, 1e-40), (-1e-39, 0.0), (-float(TINY), 1e-40)]
MASK_CONFIGS = [(4, 2, False), (4, 2, True), (8, 4, False)]


def _mask_inputs():
    yield "float32", MASK_X
    # float16 subnormals are float32 normals: outside alpha = 0
    yield "float16", np.array([6e-8, -6e-8, 0.0, -0.0, 1e-45, 1.0], numpy_dtype("float16"))
    yield "bfloat16", MASK_X.astype(numpy_dtype("bfloat16"))  # bf16 has the float32 exponent range


def subnormal_mask(source) -> dict:
    out = {}
    for b, k, s in MASK_CONFIGS:
        for mn, mx in MASK_STATS:
            for dtype, x in _mask_inputs():
                dy = (np.arange(1, x.size + 1, dtype=F32) * F32(0.5)).astype(x.dtype)
                key = f"{expected.config_id((b, k, s))} min={mn!r} max={mx!r} {dtype}"
                out[key] = source.elementwise(x, dy, F32(mn), F32(mx), b, k, s)
    return out


#: signed configurations (every signed table has mantissas above p_sum)
OVERFLOW_CONFIGS = [(2, 1, True), (3, 1, True), (4, 1, True), (4, 2, True), (6, 2, True), (6, 3, True),
                    (8, 2, True), (8, 4, True), (8, 8, True)]
#: alphas from about 2.6e38 (where gamma * mantissa began to overflow) to the maximum
OVERFLOW_STATS = [(0.0, float(FMAX)), (-float(FMAX), 0.0), (-float(FMAX), float(FMAX)), (0.0, 3e38),
                  (-2.7e38, 1.0), (0.0, 2.6e38), (0.0, float(np.nextafter(FMAX, F32(0))))]


def signed_level_overflow(source) -> dict:
    out = {}
    for b, k, s in OVERFLOW_CONFIGS:
        cfg = expected.config_id((b, k, s))
        out[f"{cfg} max=float32 max"] = source.qparams(F32(0.0), FMAX, b, k, s)
        mins = np.array([mn for mn, _ in OVERFLOW_STATS], F32)
        maxs = np.array([mx for _, mx in OVERFLOW_STATS], F32)
        out[f"{cfg} batched"] = source.qparams(mins, maxs, b, k, s)
    # the unsigned tables at the maximum too (never affected, kept honest)
    out["b4k2u max=float32 max"] = source.qparams(F32(0.0), FMAX, 4, 2, False)
    return out


def _batch(values, dtype="float32"):
    return np.array(values, numpy_dtype(dtype))


#: streams whose running min or max is a zero met with both signs
ZERO_SIGN_STREAMS = [
    [_batch([0.0, -0.0, 1.0])],
    [_batch([-0.0, 0.0, 1.0])],
    [_batch([-0.0, -1.0])],
    [_batch([0.0, -0.0, -1.0])],
    [_batch([-0.0]), _batch([0.0]), _batch([-0.0, 2.0])],
    [_batch([0.0]), _batch([-0.0]), _batch([-3.0, -0.0])],
    [_batch([-1e-40, 1e-40])],
    [_batch([1e-40, -1e-40]), _batch([-0.0]), _batch([], "float32"), _batch([np.nan, -0.0])],
    [_batch([-1e-45, -0.0, -2.0]), _batch([-0.0, 0.0, 5.0])],
    [_batch([-0.0, 0.0], "bfloat16"), _batch([0.0, -0.0, 2.0], "float16"), _batch([-0.0, -1.0], "bfloat16")],
]


def observer_zero_sign(source) -> dict:
    out = {}
    for i, stream in enumerate(ZERO_SIGN_STREAMS):
        states = source.observe_stream(stream)
        out[f"stream={i}"] = States(np.array([m for m, _ in states], F32), np.array([m for _, m in states], F32))
    return out


EDGES = {
    "zero-alpha": zero_alpha,
    "subnormal-mask": subnormal_mask,
    "signed-level-overflow": signed_level_overflow,
    "observer-zero-sign": observer_zero_sign,
}


@functools.lru_cache(maxsize=None)
def reference_results(edge: str) -> dict:
    """The reference's results of one edge case, computed once."""
    return EDGES[edge](REFERENCE)


def _compare(got, ref) -> list:
    if isinstance(ref, QParams):
        return compare_qparams(got, ref)
    if isinstance(ref, Elementwise):
        return compare_elementwise("", got, ref)
    return [compare_state("min_val", got.min_val, ref.min_val), compare_state("max_val", got.max_val, ref.max_val)]


def _check(parity, backend_name: str, edge: str, got: dict, ref: dict) -> None:
    assert sorted(got) == sorted(ref)
    for case in ref:
        parity.record(backend_name, f"edge {edge} {case}", _compare(got[case], ref[case]))
    parity.assert_ok()


# --------------------------------------------------------------------------
# tests


@pytest.mark.parametrize("edge", list(EDGES))
def test_backend_matches_reference(backend, edge, parity):
    """Every backend against the independent reference, bit for bit."""
    _check(parity, backend.name, edge, EDGES[edge](backend), reference_results(edge))


@pytest.fixture(scope="module")
def cpu_pair():
    for name in ("jax-cpu", "torch-cpu"):
        if not backend_status(name).available:
            pytest.skip(f"needs {name}: {backend_status(name).reason}")
    return make_binding("jax-cpu"), make_binding("torch-cpu")


@pytest.mark.parametrize("edge", list(EDGES))
def test_jax_cpu_equals_torch_cpu(cpu_pair, edge, parity):
    """jax-cpu against torch-cpu directly (no reference in between)."""
    jx, tc = cpu_pair
    _check(parity, "jax-cpu~torch-cpu", edge, EDGES[edge](jx), EDGES[edge](tc))


def test_reference_zero_alpha_is_positive_zero():
    for case, qp in reference_results("zero-alpha").items():
        assert np.all(_is_positive_zero(qp.alpha)), case
        assert np.all(_is_positive_zero(qp.gamma)), case
        assert np.all(np.asarray(qp.levels) == 0), case  # zeros (of the base sum's sign)


def test_reference_subnormal_x_counts_as_zero():
    dy = np.ones(MASK_X.size, F32)
    subnormal = (MASK_X != 0) & (np.abs(MASK_X) < TINY)
    for mn, mx in [(0.0, 0.0), (-0.0, -0.0), (0.0, 1e-40), (-1e-39, 0.0)]:
        grad = REFERENCE.elementwise(MASK_X, dy, F32(mn), F32(mx), 4, 2, False).grad
        zero_or_subnormal = np.isfinite(MASK_X) & (np.abs(MASK_X) < TINY)
        assert np.array_equal(grad != 0, zero_or_subnormal), (mn, mx, grad)
        assert np.all(grad[subnormal] == 1)
    # float16 subnormals are float32 normals: outside alpha = 0
    x16 = np.array([6e-8, -6e-8, 0.0], numpy_dtype("float16"))
    grad = REFERENCE.elementwise(x16, np.ones(3, x16.dtype), F32(0), F32(0), 4, 2, False).grad
    assert grad.astype(F32).tolist() == [0.0, 0.0, 1.0]


def test_reference_signed_levels_stay_finite():
    for case, qp in reference_results("signed-level-overflow").items():
        assert np.all(np.isfinite(qp.levels)), case
    qp = REFERENCE.qparams(F32(0), FMAX, 4, 2, True)
    assert qp.levels.min() < -FMAX / 2 and qp.levels.max() > FMAX / 2
    assert np.all(np.diff(qp.levels) >= 0)


def test_reference_observer_zero_is_positive():
    for i, stream in enumerate(ZERO_SIGN_STREAMS):
        for j, (mn, mx) in enumerate(REFERENCE.observe_stream(stream)):
            for v in (mn, mx):
                if v == 0:
                    assert _is_positive_zero(v), (i, j, mn, mx)
