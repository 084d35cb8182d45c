"""``APoTObserver``: running min/max and APoT qparams, as torch buffers.

Mirrors ``apot_jax/observer.py``; keeps the prototype's name and signature.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor
from torch.ao.quantization.observer import ObserverBase

from apot_common.tables import level_table, validate_bits
from apot_torch import levels as _levels
from apot_torch._float32 import as_float32


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


class Float32State:
    """Mixin for the apot torch modules: their float32 buffers and parameters
    (statistics, qparams, a learnt alpha, and its gradient) stay float32
    through ``.half()``, ``.bfloat16()`` and ``.to(dtype)`` of any narrower
    floating dtype (numerics doc section 2: statistics stay float32; a
    float16 copy would round them), while device moves (``.to(device)``,
    ``.cuda()``, ``.cpu()``) apply as usual. ``.double()`` widens them, which
    is exact (the numerics still run in float32). Other modules inside (or
    around) them are converted as torch does.
    """

    def _apply(self, fn, recurse=True):
        own = [t for t in (*self._buffers.values(), *self._parameters.values()) if t is not None]
        own += [t.grad for t in self._parameters.values() if t is not None and t.grad is not None]
        keep = {id(t) for t in own if t.dtype == torch.float32}

        def keep_float32(t):
            out = fn(t)
            if id(t) in keep and isinstance(out, Tensor) and out.dtype not in (torch.float32, torch.float64):
                return t.to(device=out.device)  # the move without the cast (t itself if on that device)
            return out

        return super()._apply(keep_float32, recurse)


#: Key of the apot configuration in a module's ``state_dict`` metadata.
CONFIG_METADATA_KEY = "apot_config"


class ConfigInStateDict:
    """Mixin for the apot torch modules: ``state_dict`` records the
    configuration (``_apot_config()``: class, ``b``, ``k``, ...) in the state
    dict's per-module metadata (``state_dict._metadata[prefix]``, beside
    torch's ``version``; kept by ``torch.save``/``torch.load``, not by
    ``dict(state_dict)``), so the keys stay exactly the buffers (what
    ``apot_jax.convert`` and prototype-shaped code read and write).

    ``load_state_dict`` then refuses, naming the entry or the mismatch, and
    without changing this module's buffers:
      * a state dict recorded for another configuration (``b``, ``k``,
        ``signed``, ``scheme``, ...);
      * an entry that is not a tensor, a float entry that is integer,
        complex or not exactly representable in float32 (the buffers are
        float32), an integer entry that is not integer or out of int32
        range;
      * (``_check_loaded``) qparams inconsistent with this configuration's
        level table, also for state dicts without the metadata.
    Missing, unexpected and misshaped entries are named by torch itself. As
    every ``load_state_dict`` error, the refusal is a ``RuntimeError``
    ("Error(s) in loading state_dict for ...") listing each message.
    """

    def _apot_config(self) -> dict:
        raise NotImplementedError

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        metadata = getattr(destination, "_metadata", None)
        if metadata is not None:
            metadata.setdefault(prefix[:-1], {})[CONFIG_METADATA_KEY] = self._apot_config()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        if self.__dict__.pop("_apot_refused_by_parent", False):
            return  # the parent refused the state dict: load nothing here either
        problems = []
        saved, mine = (local_metadata or {}).get(CONFIG_METADATA_KEY), self._apot_config()
        if saved is not None and saved != mine:
            keys = sorted(set(saved) | set(mine))
            diff = ", ".join(
                f"{k}={saved.get(k)!r} (this module: {mine.get(k)!r})" for k in keys if saved.get(k) != mine.get(k)
            )
            problems.append(f"{prefix[:-1] or type(self).__name__}: state_dict saved for another configuration: {diff}")
        for name, current in (*self._buffers.items(), *self._parameters.items()):
            if current is not None and prefix + name in state_dict:
                problem = _entry_problem(prefix + name, state_dict[prefix + name], current)
                if problem:
                    problems.append(problem)
        if not problems:
            problems += self._check_loaded(state_dict, prefix)
        if problems:
            error_msgs.extend(problems)  # and leave this module's (and its apot children's) buffers as they are
            for child in self.children():
                if isinstance(child, ConfigInStateDict):
                    # read (and cleared) as torch loads it next
                    object.__setattr__(child, "_apot_refused_by_parent", True)
            return
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _check_loaded(self, state_dict, prefix) -> list[str]:
        """Messages for entries inconsistent with this configuration."""
        return []


def _entry_problem(key: str, value, current: Tensor) -> str | None:
    """Why ``value`` cannot be loaded into the buffer ``current`` (dtype-wise), or None."""
    if not isinstance(value, Tensor):
        return f"{key}: expected a tensor, got {type(value).__name__}"
    if current.is_floating_point():
        if not value.is_floating_point():
            return f"{key}: expected a real floating tensor (the buffer is {current.dtype}), got dtype {value.dtype}"
        if current.dtype == torch.float32 and value.dtype != torch.float32:
            v = value.detach()
            same = (v.to(torch.float32).to(v.dtype) == v) | torch.isnan(v)
            if not bool(same.all()):
                bad = v.reshape(-1)[~same.reshape(-1)][0].item()
                return f"{key} of dtype {value.dtype} holds {bad!r}, which float32 cannot represent exactly"
        return None
    if value.is_floating_point() or value.is_complex():
        return f"{key}: expected an integer tensor (the buffer is {current.dtype}), got dtype {value.dtype}"
    if current.dtype == torch.int32 and value.dtype != torch.int32 and value.numel():
        v = value.detach().to(torch.int64) if value.dtype != torch.uint64 else value.detach()
        lo, hi = int(v.min()), int(v.max())
        if lo < -(2**31) or hi >= 2**31:
            return f"{key}: value {lo if lo < -(2**31) else hi} does not fit int32"
    return None


class APoTObserver(Float32State, ConfigInStateDict, ObserverBase):
    """Observer recording the running min/max of everything it sees.

    Args:
      b: total bits, ``k``: base bit-width (``b % k == 0``).
      dtype: quantized dtype reported to torch.ao (unused by the numerics).

    Buffers ``min_val`` / ``max_val`` are float32 scalars (``+inf`` / ``-inf``
    until the first observation), so they are in ``state_dict`` and follow
    ``.to(device)``; they stay float32 through ``.half()``, ``.bfloat16()``
    and ``.to()`` a narrower float dtype (``Float32State``). ``load_state_dict`` refuses a state dict recorded for
    another ``(b, k)`` or with non-float32-exact statistics
    (``ConfigInStateDict``: ``RuntimeError`` naming the entry).
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
            value = _statistic(name, value, cast(Tensor, self._buffers[name]))  # registered as tensors in __init__
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

    def _apot_config(self) -> dict:
        return {"module": "APoTObserver", "b": self.b, "k": self.k}


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


__all__ = [
    "CONFIG_METADATA_KEY",
    "APoTObserver",
    "ConfigInStateDict",
    "Float32State",
    "calculate_qparams",
    "observe",
    "observed_alpha",
]
