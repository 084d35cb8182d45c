"""One thin binding per framework, the same methods on both.

``JaxBinding(platform)`` and ``TorchBinding(device)`` take and return numpy
arrays, so every parity check is written once against a binding (AQT's
pattern for its TF/JAX parity tests):

* ``qparams(min_val, max_val, b, k, signed) -> QParams``,
* ``quantize`` / ``quant_dequant`` / ``fake_quant_and_grad`` for one input,
* ``elementwise(x, dy, ...) -> Elementwise`` (all of them at once),
* ``evaluate(b, k, signed, min_val, max_val, {dtype: (x, dy)})``: qparams and
  the element-wise results of many inputs (JAX: fixed-size chunks, so each
  configuration compiles once per device),
* ``observe_stream(batches)``: observer state after each batch.

The frameworks are imported when a binding is made, not at module level.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Sequence

import numpy as np

from apot_parity.records import DTYPE_NAMES, Elementwise, QParams, numpy_dtype
from apot_parity.records import float32 as _f32

#: Chunk length of the JAX element-wise evaluation: every call has this shape,
#: so each (b, k, signed) compiles once per device whatever the input size.
CHUNK = 2048


class _Binding:
    """What every binding derives from its ``elementwise``."""

    if TYPE_CHECKING:  # defined by each binding

        def elementwise(self, x, dy, min_val, max_val, b: int, k: int, signed: bool) -> Elementwise: ...

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
        assert qp is not None  # chunks >= 1: set by the first chunk
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


__all__ = ["CHUNK", "JaxBinding", "TorchBinding"]
