"""``apot parity``: JAX/torch parity on every backend present.

This module holds the pieces shared by the command, the golden-vector checker
(``apot_cli/golden.py``) and the pytest suite (``parity_tests/``):

* backend discovery: ``jax-cpu``, ``jax-gpu``, ``jax-tpu`` (``jax.devices``),
  ``torch-cpu``, ``torch-cuda``; an absent backend comes with the reason;
* one thin *binding* per framework (:class:`JaxBinding`,
  :class:`TorchBinding`) with the same methods, so every check is written
  once against a binding (AQT's pattern for its TF/JAX parity tests);
* bitwise comparison with a measured distance (ulp for floats, absolute
  difference for integer codes) and a JSON-friendly result record.

Neither framework is imported at module level: the golden checker runs on a
Colab TPU where torch is absent, and ``apot parity`` reports a missing
framework as a skipped backend.

``apot parity`` checks the committed golden vectors on every backend present
and, when torch is installed, recomputes the golden cases live with torch on
the CPU and compares every other backend (each JAX backend, CUDA) to it. The tolerance is zero everywhere (docs/parity.md); NaN payloads are not
part of the contract, so NaN matches any NaN.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import time
from typing import Any, Iterable, Sequence

import numpy as np

#: Every backend the suite knows, in report order.
ALL_BACKENDS = ("jax-cpu", "jax-gpu", "jax-tpu", "torch-cpu", "torch-cuda")

#: Input dtypes of the element-wise checks, by name.
DTYPE_NAMES = ("float32", "bfloat16", "float16")

#: Chunk length of the JAX element-wise evaluation: every call has this shape,
#: so each (b, k, signed) compiles once per device whatever the input size.
CHUNK = 2048


def numpy_dtype(name: str) -> np.dtype:
    """numpy dtype of a dtype name (bfloat16 from ``ml_dtypes``, a JAX dependency)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def dtype_name(dtype: Any) -> str:
    name = np.dtype(dtype).name
    if name not in DTYPE_NAMES:
        raise ValueError(f"unsupported dtype {name}")
    return name


# --------------------------------------------------------------------------
# backend discovery


@dataclasses.dataclass(frozen=True)
class BackendStatus:
    """One backend: whether it is usable here and, if not, why."""

    name: str
    available: bool
    reason: str = ""


def _jax_status(platform: str) -> BackendStatus:
    name = f"jax-{platform}"
    try:
        import jax
    except ImportError as exc:
        return BackendStatus(name, False, f"jax is not installed ({exc})")
    try:
        devices = jax.devices(platform)
    except RuntimeError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return BackendStatus(name, False, f"no JAX {platform} backend: {first_line}")
    if not devices:
        return BackendStatus(name, False, f"no JAX {platform} device")
    return BackendStatus(name, True, f"{len(devices)} device(s), using {devices[0]}")


def _torch_status(device: str) -> BackendStatus:
    name = f"torch-{device}"
    try:
        import torch
    except ImportError as exc:
        return BackendStatus(name, False, f"torch is not installed ({exc})")
    if device == "cuda" and not torch.cuda.is_available():
        return BackendStatus(name, False, "torch.cuda.is_available() is False")
    return BackendStatus(name, True, f"torch {torch.__version__}")


@functools.lru_cache(maxsize=None)
def backend_status(name: str) -> BackendStatus:
    """Availability of one backend name from :data:`ALL_BACKENDS`."""
    if name not in ALL_BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(ALL_BACKENDS)}")
    framework, device = name.split("-", 1)
    return _jax_status(device) if framework == "jax" else _torch_status(device)


def parse_backends(spec: str | None) -> tuple[str, ...]:
    """``"jax-cpu,torch-cpu"`` -> tuple of names; ``None``/``"all"`` -> all.

    Also accepts ``jax`` / ``torch`` for every backend of that framework.
    """
    if spec is None or spec.strip() in ("", "all"):
        return ALL_BACKENDS
    names: list[str] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if item in ("jax", "torch"):
            names += [b for b in ALL_BACKENDS if b.startswith(item + "-")]
        elif item in ALL_BACKENDS:
            names.append(item)
        else:
            raise ValueError(f"unknown backend {item!r}; choose from {', '.join(ALL_BACKENDS)}, jax, torch, all")
    return tuple(dict.fromkeys(names))


def make_binding(name: str):
    """The binding of an available backend name (``ValueError`` if absent)."""
    status = backend_status(name)
    if not status.available:
        raise ValueError(f"backend {name} is not available: {status.reason}")
    framework, device = name.split("-", 1)
    return _jax_binding(device) if framework == "jax" else _torch_binding(device)


@functools.lru_cache(maxsize=None)
def _jax_binding(platform: str) -> "JaxBinding":
    return JaxBinding(platform)


@functools.lru_cache(maxsize=None)
def _torch_binding(device: str) -> "TorchBinding":
    return TorchBinding(device)


# --------------------------------------------------------------------------
# bindings


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


def _f32(v) -> np.ndarray:
    return np.asarray(v, dtype=np.float32)


class _Binding:
    """What every binding derives from its ``elementwise``."""

    def quantize(self, x, min_val, max_val, b: int, k: int, signed: bool) -> np.ndarray:
        return self.elementwise(x, np.ones_like(x), min_val, max_val, b, k, signed).codes

    def quant_dequant(self, x, min_val, max_val, b: int, k: int, signed: bool) -> np.ndarray:
        return self.elementwise(x, np.ones_like(x), min_val, max_val, b, k, signed).quant_dequant

    def fake_quant_and_grad(self, x, dy, min_val, max_val, b: int, k: int, signed: bool):
        r = self.elementwise(x, dy, min_val, max_val, b, k, signed)
        return r.fake_quant, r.grad


class JaxBinding(_Binding):
    """``apot_jax`` on one JAX platform (``cpu``, ``gpu`` or ``tpu``).

    Every method takes and returns numpy arrays; inputs are placed on the
    platform's first device, so the jitted computation runs there.
    """

    framework = "jax"

    def __init__(self, platform: str) -> None:
        import jax

        self.platform = platform
        self.name = f"jax-{platform}"
        self.device = jax.devices(platform)[0]

    def _put(self, a):
        import jax

        return jax.device_put(np.asarray(a), self.device)

    def qparams(self, min_val, max_val, b: int, k: int, signed: bool) -> QParams:
        """``calculate_qparams`` (``min_val``/``max_val`` scalars or arrays)."""
        qp = _jax_qparams_fn(b, k, signed)(self._put(_f32(min_val)), self._put(_f32(max_val)))
        return QParams(*(np.asarray(a) for a in qp))

    def elementwise(self, x, dy, min_val, max_val, b: int, k: int, signed: bool) -> Elementwise:
        """codes, quant_dequant, fake quant and its input gradient for ``x`` of
        any shape (compiled for that shape: use :meth:`evaluate` for many)."""
        fn = _jax_elementwise_fn(b, k, signed)
        out = fn(self._put(_f32(min_val)), self._put(_f32(max_val)), self._put(x), self._put(dy))
        return Elementwise(*(np.asarray(a) for a in out))

    def evaluate(self, b: int, k: int, signed: bool, min_val, max_val, inputs: dict) -> tuple[QParams, dict]:
        """qparams and the element-wise results of several inputs at once.

        Args:
          inputs: ``{dtype name: (x, dy)}`` with flat numpy arrays.

        Returns:
          ``(QParams, {dtype name: Elementwise})``. Runs in chunks of
          :data:`CHUNK` elements of every dtype, so one compilation per
          ``(b, k, signed)`` and device serves every case.
        """
        fn = _jax_case_fn(b, k, signed)
        mn, mx = self._put(_f32(min_val)), self._put(_f32(max_val))
        sizes = {name: np.asarray(x).size for name, (x, _) in inputs.items()}
        chunks = max(1, max((-(-s // CHUNK) for s in sizes.values()), default=1))
        parts: dict[str, list] = {name: [] for name in inputs}
        qp = None
        for c in range(chunks):
            xs, dys = [], []
            for name in DTYPE_NAMES:
                dt = numpy_dtype(name)
                x = np.zeros(CHUNK, dt)
                dy = np.zeros(CHUNK, dt)
                if name in inputs:
                    src_x = np.asarray(inputs[name][0], dt).ravel()[c * CHUNK : (c + 1) * CHUNK]
                    src_dy = np.asarray(inputs[name][1], dt).ravel()[c * CHUNK : (c + 1) * CHUNK]
                    x[: src_x.size] = src_x
                    dy[: src_dy.size] = src_dy
                xs.append(self._put(x))
                dys.append(self._put(dy))
            q, outs = fn(mn, mx, tuple(xs), tuple(dys))
            if qp is None:
                qp = QParams(*(np.asarray(a) for a in q))
            for name, out in zip(DTYPE_NAMES, outs):
                if name in inputs:
                    parts[name].append([np.asarray(a) for a in out])
        results = {}
        for name in inputs:
            n = sizes[name]
            cols = [np.concatenate([p[i] for p in parts[name]])[:n] for i in range(4)]
            results[name] = Elementwise(*cols)
        return qp, results

    def observe_stream(self, batches: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``apot_jax.observe`` over the batches: (min_val, max_val) after each."""
        import apot_jax as aj

        state = aj.init_observer_state()
        state = aj.ObserverState(self._put(state.min_val), self._put(state.max_val))
        out = []
        for batch in batches:
            state = aj.observe(state, self._put(batch))
            out.append((np.asarray(state.min_val), np.asarray(state.max_val)))
        return out


@functools.lru_cache(maxsize=None)
def _jax_qparams_fn(b: int, k: int, signed: bool):
    import jax

    import apot_jax as aj

    def run(mn, mx):
        qp = aj.calculate_qparams(mn, mx, b=b, k=k, signed=signed)
        return qp.alpha, qp.gamma, qp.quantization_levels, qp.level_indices

    return jax.jit(run)


def _jax_one(aj, jax, x, dy, qp):
    y, vjp = jax.vjp(lambda v: aj.fake_quantize(v, qp), x)
    (dx,) = vjp(dy)
    return aj.quantize(x, qp), aj.quant_dequant(x, qp), y, dx


@functools.lru_cache(maxsize=None)
def _jax_elementwise_fn(b: int, k: int, signed: bool):
    import jax

    import apot_jax as aj

    def run(mn, mx, x, dy):
        qp = aj.calculate_qparams(mn, mx, b=b, k=k, signed=signed)
        return _jax_one(aj, jax, x, dy, qp)

    return jax.jit(run)


@functools.lru_cache(maxsize=None)
def _jax_case_fn(b: int, k: int, signed: bool):
    import jax

    import apot_jax as aj

    def run(mn, mx, xs, dys):
        qp = aj.calculate_qparams(mn, mx, b=b, k=k, signed=signed)
        outs = tuple(_jax_one(aj, jax, x, dy, qp) for x, dy in zip(xs, dys))
        return (qp.alpha, qp.gamma, qp.quantization_levels, qp.level_indices), outs

    return jax.jit(run)


class TorchBinding(_Binding):
    """``apot_torch`` on one torch device (``cpu`` or ``cuda``); numpy in and out."""

    framework = "torch"

    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.name = f"torch-{device}"

    def to_torch(self, a):
        """numpy (incl. ml_dtypes bfloat16) -> tensor on this device."""
        torch = self.torch
        a = np.array(a, order="C", copy=True)  # (np.ascontiguousarray makes 0-d arrays 1-d)
        if a.dtype.name == "bfloat16":
            t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        else:
            t = torch.from_numpy(a)
        return t.to(self.device)

    def to_numpy(self, t) -> np.ndarray:
        torch = self.torch
        t = t.detach().cpu()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(numpy_dtype("bfloat16"))
        return t.numpy()

    def _qparams(self, min_val, max_val, b, k, signed):
        import apot_torch as at

        return at.calculate_qparams(self.to_torch(_f32(min_val)), self.to_torch(_f32(max_val)), b, k, signed)

    def qparams(self, min_val, max_val, b: int, k: int, signed: bool) -> QParams:
        qp = self._qparams(min_val, max_val, b, k, signed)
        return QParams(*(self.to_numpy(t) for t in qp))

    def _elementwise(self, x, dy, qp) -> Elementwise:
        import apot_torch as at

        xt = self.to_torch(x)
        codes = at.quantize_APoT(xt, *qp).int_repr()
        qd = at.quant_dequant_APoT(xt, *qp)
        xg = xt.clone().requires_grad_(True)
        y = at.fake_quantize_function.apply(xg, *qp)
        y.backward(self.to_torch(dy))
        return Elementwise(*(self.to_numpy(t) for t in (codes, qd, y, xg.grad)))

    def elementwise(self, x, dy, min_val, max_val, b: int, k: int, signed: bool) -> Elementwise:
        return self._elementwise(x, dy, self._qparams(min_val, max_val, b, k, signed))

    def evaluate(self, b: int, k: int, signed: bool, min_val, max_val, inputs: dict) -> tuple[QParams, dict]:
        """Same contract as :meth:`JaxBinding.evaluate`."""
        qp = self._qparams(min_val, max_val, b, k, signed)
        results = {name: self._elementwise(x, dy, qp) for name, (x, dy) in inputs.items()}
        return QParams(*(self.to_numpy(t) for t in qp)), results

    def observe_stream(self, batches: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """An ``APoTObserver`` (b=4, k=2) fed the batches: its buffers after each."""
        import apot_torch as at

        obs = at.APoTObserver(b=4, k=2).to(self.device)
        out = []
        for batch in batches:
            obs(self.to_torch(batch))
            out.append((self.to_numpy(obs.min_val).copy(), self.to_numpy(obs.max_val).copy()))
        return out


# --------------------------------------------------------------------------
# comparison


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


# --------------------------------------------------------------------------
# live checks: every backend against torch on the CPU, on the golden inputs


def live_results(backends: Iterable[str]) -> list[Result]:
    """Recompute the golden cases with torch on the CPU and compare every
    other available backend to it, bit for bit."""
    from apot_cli import golden

    backends = [b for b in backends if b != "torch-cpu"]
    base_status = backend_status("torch-cpu")
    if not base_status.available:
        return [Result(b, "live", "all", "skipped", detail=f"live checks need torch: {base_status.reason}",
                       source="live") for b in backends]
    base = make_binding("torch-cpu")
    cases = golden.element_cases()
    reference = {c.key: base.evaluate(*c.config, c.min_val, c.max_val, c.inputs) for c in cases}
    results = []
    for name in backends:
        status = backend_status(name)
        if not status.available:
            results.append(Result(name, "live", "all", "skipped", detail=status.reason, source="live"))
            continue
        binding = make_binding(name)
        for c in cases:
            qp, outs = binding.evaluate(*c.config, c.min_val, c.max_val, c.inputs)
            ref_qp, ref_outs = reference[c.key]
            comps = compare_qparams(qp, ref_qp)
            for dt in c.inputs:
                comps += compare_elementwise(f"{dt}/", outs[dt], ref_outs[dt])
            results += [Result.from_comparison(name, c.key, comp, "live") for comp in comps]
    return results


# --------------------------------------------------------------------------
# report


def summarize(results: Sequence[Result]) -> dict[str, list[dict]]:
    """Per backend, one row per (source, family) with totals."""
    rows: dict[str, dict[tuple, dict]] = {}
    for r in results:
        family = r.case.split(" ", 1)[0]
        key = (r.source, family)
        row = rows.setdefault(r.backend, {}).setdefault(
            key, {"source": r.source, "family": family, "checks": 0, "passed": 0, "failed": 0,
                  "skipped": 0, "comparisons": 0, "max_ulp": 0.0, "detail": ""})
        row["checks"] += 1
        row["comparisons"] += r.comparisons
        if r.status == "pass":
            row["passed"] += 1
        elif r.status == "skipped":
            row["skipped"] += 1
            row["detail"] = r.detail
        else:
            row["failed"] += 1
            row["max_ulp"] = max(row["max_ulp"], r.max_ulp)
            row["detail"] = row["detail"] or f"{r.case} {r.check}: {r.detail}"
    return {b: list(v.values()) for b, v in rows.items()}


def format_table(results: Sequence[Result]) -> str:
    """The per-backend table printed by ``apot parity``. ``max ulp`` is over
    the failed checks only (0 when everything is bitwise equal)."""
    lines = []
    summary = summarize(results)
    order = [b for b in ALL_BACKENDS if b in summary] + [b for b in summary if b not in ALL_BACKENDS]
    for backend in order:
        rows = summary[backend]
        lines.append(f"== {backend}")
        lines.append(f"  {'source':<7} {'family':<9} {'checks':>7} {'passed':>7} {'failed':>7} "
                     f"{'skipped':>7} {'comparisons':>12} {'max ulp':>8}")
        for row in rows:
            ulp = row["max_ulp"]
            ulp_s = "inf" if math.isinf(ulp) else f"{ulp:g}"
            lines.append(f"  {row['source'] or '-':<7} {row['family']:<9} {row['checks']:>7} {row['passed']:>7} "
                         f"{row['failed']:>7} {row['skipped']:>7} {row['comparisons']:>12} {ulp_s:>8}")
            if row["detail"] and (row["failed"] or row["skipped"]):
                lines.append(f"      {row['detail'][:200]}")
    return "\n".join(lines)


def totals(results: Sequence[Result]) -> dict:
    return {
        "checks": len(results),
        "passed": sum(r.status == "pass" for r in results),
        "failed": sum(r.status in ("fail", "error") for r in results),
        "skipped": sum(r.status == "skipped" for r in results),
        "comparisons": sum(r.comparisons for r in results),
    }


def write_json(path: str, results: Sequence[Result], extra: dict | None = None) -> None:
    """``{"results": [...], "summary": {backend: rows}, "total": {...}}``
    plus ``extra``."""
    payload = {
        "results": [r.as_json() for r in results],
        "summary": summarize(results),
        "total": totals(results),
    }
    payload.update(extra or {})
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


# --------------------------------------------------------------------------
# command


def add_arguments(parser) -> None:
    parser.add_argument("--backends", default="all",
                        help=f"comma-separated subset of {', '.join(ALL_BACKENDS)} (or jax, torch, all)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--no-golden", action="store_true", help="skip the golden-vector checks")
    parser.add_argument("--no-live", action="store_true",
                        help="skip the live comparisons against torch on the CPU")


def run(args) -> int:
    from apot_cli import golden

    try:
        backends = parse_backends(args.backends)
    except ValueError as exc:
        print(f"apot parity: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    results: list[Result] = []
    for name in backends:
        status = backend_status(name)
        if not status.available:
            results.append(Result(name, "backend", "available", "skipped", detail=status.reason))
    if not args.no_golden:
        for name in backends:
            if backend_status(name).available:
                results += golden.check_golden(name)
    if not args.no_live:
        results += live_results([b for b in backends if backend_status(b).available])
    elapsed = time.perf_counter() - start
    print(format_table(results))
    t = totals(results)
    print(f"\n{t['checks']} checks, {t['comparisons']} comparisons: {t['passed']} passed, {t['failed']} failed, "
          f"{t['skipped']} skipped ({elapsed:.1f} s)")
    if args.json:
        write_json(args.json, results, {"elapsed_s": elapsed})
        print(f"wrote {args.json}")
    return 1 if t["failed"] else 0


__all__ = [
    "ALL_BACKENDS",
    "BackendStatus",
    "Comparison",
    "Elementwise",
    "JaxBinding",
    "QParams",
    "Result",
    "TorchBinding",
    "backend_status",
    "compare",
    "compare_elementwise",
    "compare_qparams",
    "compare_state",
    "make_binding",
    "parse_backends",
]
