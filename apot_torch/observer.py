"""``APoTObserver``: running min/max and APoT qparams, as torch buffers.

Mirrors ``apot_jax/observer.py``; keeps the prototype's name and signature.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.ao.quantization.observer import ObserverBase

from apot_common.tables import level_table, validate_bits
from apot_torch import levels as _levels
from apot_torch.quantizer import as_float32


def observed_alpha(min_val: Tensor, max_val: Tensor) -> Tensor:
    """float32 ``max(-min_val, max_val)`` (``+0.0`` when zero or subnormal,
    ``-inf`` before any observation), as ``apot_jax.observer.observed_alpha``."""
    alpha = torch.maximum(-min_val.to(torch.float32), max_val.to(torch.float32))
    return _levels.positive_zero(alpha)


def calculate_qparams(min_val: Tensor, max_val: Tensor, b: int, k: int, signed: bool = False):
    """``(alpha, gamma, quantization_levels, level_indices)`` from statistics.

    Pure function of float32 tensors (the observer's buffers); the level table
    is static per ``(b, k, signed)``. Unobserved statistics (``min > max``)
    give ``alpha = -inf`` and NaN gamma/levels (``APoTObserver`` refuses
    them); zero or subnormal alpha is ``+0.0``.
    """
    table = level_table(b, k, signed)
    alpha = observed_alpha(min_val, max_val)
    g = _levels.gamma(alpha, table.p_sum)
    quantization_levels = _levels.levels(g, table)
    level_indices = torch.tensor(table.level_indices, device=alpha.device)
    return alpha, g, quantization_levels, level_indices


def observe(min_val: Tensor, max_val: Tensor, x: Tensor):
    """New ``(min_val, max_val)`` including the finite values of ``x``
    (zeros and subnormals count as ``+0.0``; empty ``x`` changes nothing)."""
    x = _levels.positive_zero(as_float32(x, "APoTObserver"))
    finite = torch.isfinite(x)
    inf = torch.tensor(float("inf"), device=x.device)
    lo = torch.where(finite, x, inf).amin() if x.numel() else inf
    hi = torch.where(finite, x, -inf).amax() if x.numel() else -inf
    return torch.minimum(min_val, lo), torch.maximum(max_val, hi)


class APoTObserver(ObserverBase):
    """Observer recording the running min/max of everything it sees.

    Args:
      b: total bits, ``k``: base bit-width (``b % k == 0``).
      dtype: quantized dtype reported to torch.ao (unused by the numerics).

    Buffers ``min_val`` / ``max_val`` are float32 scalars (``+inf`` / ``-inf``
    until the first observation), so they are in ``state_dict`` and follow
    ``.to(device)``.
    """

    min_val: Tensor
    max_val: Tensor

    def __init__(self, b: int, k: int, dtype: torch.dtype = torch.quint8) -> None:
        super().__init__(dtype)
        validate_bits(b, k)
        level_table(b, k, False)  # refuses oversized tables now, not mid-training
        self.b = int(b)
        self.k = int(k)
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))

    def __setattr__(self, name: str, value) -> None:
        # The prototype's tests assign statistics: ``obs.min_val =
        # torch.tensor([0.0])``. A 1-element value of any real dtype becomes a
        # fresh float32 0-d buffer on the buffer's device (a copy: the
        # caller's tensor is never written later), so the qparams are 0-d.
        if name in ("min_val", "max_val") and name in self.__dict__.get("_buffers", {}):
            value = _statistic(name, value, self._buffers[name])
        super().__setattr__(name, value)

    def forward(self, x_orig: Tensor) -> Tensor:
        """Update the statistics with ``x_orig`` and return it unchanged."""
        lo, hi = observe(self.min_val, self.max_val, x_orig.detach())
        self.min_val.copy_(lo)
        self.max_val.copy_(hi)
        return x_orig

    @torch.jit.unused
    def calculate_qparams(self, signed: bool):  # type: ignore[override]
        """``(alpha, gamma, quantization_levels, level_indices)``.

        Raises:
          RuntimeError: nothing finite has been observed yet.
        """
        if not bool(self.min_val <= self.max_val):
            raise RuntimeError("APoTObserver has not observed any finite value yet; call it on data first")
        return calculate_qparams(self.min_val, self.max_val, self.b, self.k, signed)

    @torch.jit.unused
    def quant_levels_visualization(self, signed: bool = False):
        """The prototype's plot of the quantization function on ``[0, 1)``
        (1000 points, ``apot_to_float(float_to_apot(x))``), shown with
        ``plt.show()``. Needs matplotlib (``apot[qat]``); returns the figure.

        Raises:
          RuntimeError: nothing finite has been observed yet.
        """
        import matplotlib.pyplot as plt

        from apot_torch.apot_utils import apot_to_float, float_to_apot

        alpha, _, quantization_levels, level_indices = self.calculate_qparams(signed)
        xs = torch.arange(1000, dtype=torch.float64).div(1000.0).to(torch.float32)
        ys = apot_to_float(float_to_apot(xs, quantization_levels, level_indices, alpha), quantization_levels,
                           level_indices)  # fmt: skip
        figure = plt.figure(figsize=(15, 10))
        plt.plot(xs.tolist(), ys.tolist())
        plt.title("APoT Quantization Plot")
        plt.xlabel("Full Precision")
        plt.ylabel("Quantized")
        plt.show()
        return figure

    def extra_repr(self) -> str:
        return f"b={self.b}, k={self.k}"


def _statistic(name: str, value, current: Tensor) -> Tensor:
    """A float32 0-d copy of an assigned statistic on ``current``'s device.

    Raises:
      TypeError: not a tensor, or a complex / boolean one.
      ValueError: not exactly one element.
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"APoTObserver.{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"APoTObserver.{name} must be real, got dtype {value.dtype}")
    if value.numel() != 1:
        raise ValueError(f"APoTObserver.{name} must hold one value, got shape {tuple(value.shape)}")
    return value.detach().to(device=current.device, dtype=torch.float32).reshape(()).clone()
