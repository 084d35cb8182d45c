"""State conversion between the torch ``APoTFakeQuantize`` and the Flax modules.

One torch ``apot_torch.APoTFakeQuantize`` has exactly these ``state_dict``
entries::

    fake_quant_enabled, observer_enabled     uint8 (1,)
    alpha, gamma                             float32 ()
    quantization_levels                      float32 (N,)
    level_indices                            int32 (N,)
    activation_post_process.min_val          float32 ()
    activation_post_process.max_val          float32 ()

A torch ``apot_torch.SignMagnitudeFakeQuantize`` has the same entries but
``alpha`` alone for its qparams (``SIGN_MAGNITUDE_TORCH_KEYS``); pass
``sign_magnitude=True`` for it.

A Flax fake quant (linen ``"quant_stats"`` entry or NNX ``QuantStat``
Variables) holds only ``min_val``, ``max_val`` and the two flags: the qparams
are a function of the statistics (``calculate_qparams``, ``observed_alpha``),
recomputed every call and bit-identical in both frameworks, so nothing is
lost either way.

torch is imported lazily, only to build torch tensors: JAX-only users can
convert numpy arrays (``as_numpy=True``) without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from apot_common.tables import sign_magnitude_table
from apot_jax.observer import calculate_qparams, observed_alpha

#: The torch module's state_dict keys, in its registration order.
TORCH_KEYS = (
    "fake_quant_enabled",
    "observer_enabled",
    "alpha",
    "gamma",
    "quantization_levels",
    "level_indices",
    "activation_post_process.min_val",
    "activation_post_process.max_val",
)

#: The state_dict keys of torch's ``SignMagnitudeFakeQuantize``.
SIGN_MAGNITUDE_TORCH_KEYS = (
    "fake_quant_enabled",
    "observer_enabled",
    "alpha",
    "activation_post_process.min_val",
    "activation_post_process.max_val",
)


def _to_numpy(value: Any) -> np.ndarray:
    """torch tensor (any device), jax array or numpy array -> numpy array."""
    if hasattr(value, "detach"):  # a torch tensor; no torch import needed
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.dtype.kind == "f":
        a32, b32 = a.astype(np.float32), b.astype(np.float32)
        return bool(np.all((a32.view(np.int32) == b32.view(np.int32)) | (np.isnan(a32) & np.isnan(b32))))
    return bool(np.array_equal(a, b))


def torch_state_dict_to_flax(
    state_dict: Mapping[str, Any],
    *,
    prefix: str = "",
    b: int | None = None,
    k: int | None = None,
    signed: bool = False,
    sign_magnitude: bool = False,
) -> dict[str, Any]:
    """The Flax fake-quant state of one torch ``APoTFakeQuantize`` (or
    ``SignMagnitudeFakeQuantize``).

    Args:
      state_dict: the module's ``state_dict()`` (torch tensors or numpy
        arrays), or a whole model's with ``prefix`` (e.g. ``"fc1.weight_fake_quant."``).
      prefix: prefix of this module's keys.
      b, k, signed: if ``b`` and ``k`` are given, the stored qparams are
        checked to be exactly those of the stored statistics (``ValueError``
        otherwise): a guard against converting a module of another
        configuration. Entries that are not stored are not checked.
      sign_magnitude: the module is a ``SignMagnitudeFakeQuantize`` (``b``,
        ``k`` of its sign-magnitude scheme; ``signed`` must be False).

    Returns:
      ``{"min_val": float32 (), "max_val": float32 (), "observer_enabled":
      int32 (), "fake_quant_enabled": int32 ()}`` as jax arrays, the variables
      of one ``APoTFakeQuantize`` under ``"quant_stats"`` (or the values of an
      ``NNXAPoTFakeQuantize``'s ``QuantStat`` Variables).

    Raises:
      KeyError: a statistics or flag entry is missing.
    """

    def get(key: str) -> np.ndarray:
        full = prefix + key
        if full not in state_dict:
            raise KeyError(f"{full!r} is not in the state_dict (keys: {sorted(state_dict)[:12]})")
        return _to_numpy(state_dict[full])

    min_val = get("activation_post_process.min_val").astype(np.float32).reshape(())
    max_val = get("activation_post_process.max_val").astype(np.float32).reshape(())
    out = {
        "min_val": jnp.asarray(min_val, jnp.float32),
        "max_val": jnp.asarray(max_val, jnp.float32),
        "observer_enabled": jnp.int32(int(get("observer_enabled").reshape(-1)[0])),
        "fake_quant_enabled": jnp.int32(int(get("fake_quant_enabled").reshape(-1)[0])),
    }
    if b is not None and k is not None:
        expected = _qparams_numpy(min_val, max_val, b, k, signed, sign_magnitude)
        for key, value in expected.items():
            if prefix + key in state_dict and not _same_bits(get(key), value):
                raise ValueError(
                    f"{prefix + key} does not match the qparams of the stored statistics for "
                    f"b={b}, k={k}, signed={signed}: wrong configuration, or a state_dict saved "
                    "before its last observation was folded in"
                )
    return out


def _qparams_numpy(
    min_val: Any, max_val: Any, b: int, k: int, signed: bool, sign_magnitude: bool
) -> dict[str, np.ndarray]:
    """The qparam buffers as the torch module holds them for these statistics."""
    if sign_magnitude:
        if signed:
            raise ValueError("signed selects the prototype's signed table; a sign-magnitude module has no such option")
        sign_magnitude_table(b, k)  # ValueError for a bad configuration
        observed = min_val <= max_val  # else the fresh module's NaN
        return {"alpha": np.asarray(observed_alpha(min_val, max_val) if observed else np.nan, np.float32)}
    qp = calculate_qparams(jnp.float32(min_val), jnp.float32(max_val), b=b, k=k, signed=signed)
    if not min_val <= max_val:
        # Nothing observed: torch's buffers keep their initial values (NaN
        # alpha, gamma and levels, zero indices), which its forward refuses.
        n = qp.level_indices.shape[0]
        return {
            "alpha": np.float32(np.nan),
            "gamma": np.float32(np.nan),
            "quantization_levels": np.full((n,), np.nan, np.float32),
            "level_indices": np.zeros((n,), np.int32),
        }
    return {
        "alpha": np.asarray(qp.alpha, np.float32),
        "gamma": np.asarray(qp.gamma, np.float32),
        "quantization_levels": np.asarray(qp.quantization_levels, np.float32),
        "level_indices": np.asarray(qp.level_indices, np.int32),
    }


def flax_to_torch_state_dict(
    quant_stats_vars: Any, b: int, k: int, signed: bool = False, *, sign_magnitude: bool = False, as_numpy: bool = False
) -> dict[str, Any]:
    """The torch ``APoTFakeQuantize`` (or, with ``sign_magnitude``,
    ``SignMagnitudeFakeQuantize``) state_dict of one Flax fake quant.

    Args:
      quant_stats_vars: a mapping with ``min_val``, ``max_val``,
        ``observer_enabled``, ``fake_quant_enabled`` (one linen module's
        ``"quant_stats"`` entry; jax or numpy values), or an
        ``NNXAPoTFakeQuantize``.
      b, k, signed: the configuration; the qparams are computed from the
        statistics exactly as both frameworks do (``calculate_qparams``).
      sign_magnitude: the state of a ``SignMagnitudeFakeQuantize`` of
        ``(b, k)``: ``alpha`` is its only qparam buffer.
      as_numpy: return numpy arrays instead of torch tensors (no torch needed).

    Returns:
      ``{key: value for key in TORCH_KEYS}`` (``SIGN_MAGNITUDE_TORCH_KEYS``)
      with the torch module's dtypes
      and shapes (flags uint8 ``(1,)``), ready for ``load_state_dict``.
      Unobserved statistics (``min_val > max_val``) give the buffers of a
      fresh torch module: NaN alpha, gamma and levels, zero level indices.
    """
    if not isinstance(quant_stats_vars, Mapping):  # an NNX module: read its Variables
        quant_stats_vars = {
            name: getattr(quant_stats_vars, name)[...]
            for name in ("min_val", "max_val", "observer_enabled", "fake_quant_enabled")
        }
    min_val = _to_numpy(quant_stats_vars["min_val"]).astype(np.float32).reshape(())
    max_val = _to_numpy(quant_stats_vars["max_val"]).astype(np.float32).reshape(())
    qparams = _qparams_numpy(min_val, max_val, b, k, signed, sign_magnitude)
    arrays = {
        "fake_quant_enabled": np.asarray(
            [int(_to_numpy(quant_stats_vars["fake_quant_enabled"]).reshape(-1)[0])], np.uint8
        ),
        "observer_enabled": np.asarray([int(_to_numpy(quant_stats_vars["observer_enabled"]).reshape(-1)[0])], np.uint8),
        **qparams,
        "activation_post_process.min_val": min_val,
        "activation_post_process.max_val": max_val,
    }
    if as_numpy:
        return arrays
    import torch  # lazily: only callers that want torch tensors need torch

    keys = SIGN_MAGNITUDE_TORCH_KEYS if sign_magnitude else TORCH_KEYS
    return {key: torch.from_numpy(np.array(arrays[key])) for key in keys}


__all__ = ["SIGN_MAGNITUDE_TORCH_KEYS", "TORCH_KEYS", "flax_to_torch_state_dict", "torch_state_dict_to_flax"]
