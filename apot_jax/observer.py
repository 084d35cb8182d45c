"""Observer state and qparams in JAX: pure functions, state held by the caller.

Mirrors ``apot_torch/observer.py``. Flax modules keep the ``ObserverState``
fields as variables; see ``apot_jax/fake_quantize_module.py``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from apot_common.tables import level_table
from apot_jax import levels as _levels
from apot_jax._float32 import as_float32


class ObserverState(NamedTuple):
    """Running statistics: float32 scalars (or arrays for per-channel use)."""

    min_val: jax.Array
    max_val: jax.Array


def init_observer_state() -> ObserverState:
    """State before any observation: ``min_val = +inf``, ``max_val = -inf``."""
    return ObserverState(jnp.float32(jnp.inf), jnp.float32(-jnp.inf))


def observe(state: ObserverState, x: jax.Array) -> ObserverState:
    """Fold the finite values of ``x`` (any shape, floating) into the running min/max.

    NaN and +-inf are ignored, zeros and subnormals count as ``+0.0``, an
    empty ``x`` leaves the state unchanged. Statistics are float32 whatever
    ``x``'s dtype.
    """
    return _observe(state, as_float32(x, "observe"))


@jax.jit  # one program also when called eagerly (see apot_jax._lookup.lookup)
def _observe(state: ObserverState, x: jax.Array) -> ObserverState:
    x = _levels.positive_zero(x)
    finite = jnp.isfinite(x)
    # min(x) and -min(-x) = max(x) in one reduction over a stacked array: one
    # kernel where two reductions were (XLA compiles each on its own). Exact:
    # negation is, and x holds no -0.0 (positive_zero), so no sign of zero
    # can flip.
    both = jnp.stack([jnp.where(finite, x, jnp.inf), jnp.where(finite, -x, jnp.inf)]).reshape(2, -1)
    lo, neg_hi = jnp.min(both, axis=1, initial=jnp.inf)
    hi = -neg_hi
    return ObserverState(
        jnp.minimum(jnp.asarray(state.min_val, jnp.float32), lo),
        jnp.maximum(jnp.asarray(state.max_val, jnp.float32), hi),
    )


@dataclasses.dataclass(frozen=True)
class APoTQParams:
    """Quantization parameters: a pytree of arrays plus static ``(b, k, signed)``.

    Attributes:
      alpha: float32 scalar, the clipping value ``max(-min_val, max_val)``.
      gamma: float32 scalar, ``alpha / p_sum`` correctly rounded.
      quantization_levels: ``(N,)`` float32, ascending.
      level_indices: ``(N,)`` int32, the APoT code of each sorted level.
      b, k, signed: the static configuration (pytree metadata).
    """

    alpha: jax.Array
    gamma: jax.Array
    quantization_levels: jax.Array
    level_indices: jax.Array
    b: int
    k: int
    signed: bool


jax.tree_util.register_dataclass(
    APoTQParams,
    data_fields=["alpha", "gamma", "quantization_levels", "level_indices"],
    meta_fields=["b", "k", "signed"],
)


def observed_alpha(min_val: jax.Array, max_val: jax.Array) -> jax.Array:
    """The clipping value of observed statistics: float32 ``max(-min_val,
    max_val)``, ``+0.0`` when zero or subnormal, ``-inf`` before any
    observation (``min_val > max_val``), which makes every level NaN."""
    alpha = jnp.maximum(-jnp.asarray(min_val, jnp.float32), jnp.asarray(max_val, jnp.float32))
    return _levels.positive_zero(alpha)


def calculate_qparams(
    min_val: jax.Array, max_val: jax.Array, *, b: int, k: int, signed: bool = False
) -> APoTQParams:
    """Qparams from observed statistics (traceable in ``min_val``/``max_val``).

    ``alpha = max(-min_val, max_val)``, with zero and subnormal alpha made
    ``+0.0`` (all levels are then 0). Before any observation
    (``min_val > max_val``) alpha is ``-inf`` and gamma
    and the levels are NaN, so everything quantized with them is NaN rather
    than a plausible wrong number.

    Raises:
      ValueError: invalid ``(b, k)`` or a table too large (at trace time).

    >>> import apot_jax as aj
    >>> qp = aj.calculate_qparams(-1.0, 1.0, b=4, k=2)
    >>> float(qp.alpha), float(qp.gamma), qp.quantization_levels.shape
    (1.0, 0.6666666865348816, (16,))
    """
    table = level_table(b, k, signed)  # ValueError before any tracing
    alpha, g, levels = _qparams(min_val, max_val, b, k, signed)
    return APoTQParams(
        alpha=alpha,
        gamma=g,
        quantization_levels=levels,
        level_indices=jnp.asarray(table.level_indices),
        b=table.b,
        k=table.k,
        signed=table.signed,
    )


@functools.partial(jax.jit, static_argnums=(2, 3, 4))  # one program also when called eagerly
def _qparams(min_val: jax.Array, max_val: jax.Array, b: int, k: int, signed: bool
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
    table = level_table(b, k, signed)
    alpha = observed_alpha(min_val, max_val)
    g = _levels.gamma(alpha, table.p_sum)
    return alpha, g, _levels.levels(g, table)


__all__ = [
    "APoTQParams",
    "ObserverState",
    "calculate_qparams",
    "init_observer_state",
    "observe",
    "observed_alpha",
]
