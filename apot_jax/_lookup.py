"""The rounding lookup of the JAX quantizers (``apot_jax.quantizer``,
``apot_jax.paper``): the contract's chosen position of each element, by a
select chain, a one-comparison grid or a binary search. Internal, not public
API (mirrors ``apot_torch/_lookup.py``).
"""

from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp
from jax import lax

from apot_jax import levels as _levels


class LookupQParams(Protocol):
    """What the lookup reads of a qparams pytree (``apot_jax.observer.APoTQParams``,
    ``apot_jax.paper.SignMagnitudeQParams``): scalar ``alpha`` and ``gamma``,
    ``(N,)`` ascending ``quantization_levels``."""

    @property
    def alpha(self) -> jax.Array: ...

    @property
    def gamma(self) -> jax.Array: ...

    @property
    def quantization_levels(self) -> jax.Array: ...


#: Up to this many levels, rounding is a chain of compare-and-selects against
#: scalar thresholds (vectorises, no gather); above it, a per-cell lookup.
#: On XLA's CPU backend, up to 64 levels the chain runs as fast as the grid
#: (within this machine's noise: the signed 4-bit table's 49 levels, 4M
#: elements, forward 4.7-5.9 against 4.4-4.7 ms, forward and backward
#: 6.5-8.2 against 7.8-11.3 ms) and compiles in about two thirds of the time
#: (no grid tables, no conditional); forced at 256 levels it is five times
#: slower (``benchmarks/bench_jax.py``, ``benchmarks/bench_compile.py``).
#: ``apot_torch`` keeps 16 (its chain runs only under ``torch.compile``).
SELECT_CHAIN_MAX_LEVELS = 64


def lookup(x: jax.Array, qparams: LookupQParams, values: jax.Array, nan_value) -> jax.Array:
    """``values[p(x)]`` for the contract's chosen position ``p`` of each element.

    ``x`` is float32; ``values`` is indexed by sorted position (shape ``(N,)``).
    All three strategies compute ``p = count(thresholds < x)``; they differ
    only in speed (measured in ``benchmarks/bench_jax.py``).

    One compiled program per shape and configuration, also when called
    eagerly (op by op, the thresholds' bisection and the select chain are
    some hundred dispatches, each compiled on first use):
    ``benchmarks/bench_jax.py --eager``. Inside a traced function it is
    inlined like any nested ``jax.jit``.
    """
    return _lookup(x, qparams, values, jnp.asarray(nan_value, values.dtype))


@jax.jit
def _lookup(x: jax.Array, qparams: LookupQParams, values: jax.Array,
            nan_value: jax.Array) -> jax.Array:
    theta = _levels.thresholds(qparams.quantization_levels, qparams.alpha)
    n = theta.shape[0]

    def select_chain(x):
        out = jnp.broadcast_to(values[0], x.shape)
        for j in range(n - 1):
            out = jnp.where(x > theta[j], values[j + 1], out)
        return out

    def binary_search(x):
        return values[_levels.search_sorted(theta, x, side="left")]

    if n <= SELECT_CHAIN_MAX_LEVELS:
        out = select_chain(x)
    else:
        grid = _levels.rounding_grid(theta, qparams.quantization_levels, qparams.alpha)
        cells = grid.threshold.shape[0]
        below, above = values[grid.lower], values[grid.upper]

        def one_comparison(x):
            c = _levels.grid_cell(x, grid.origin, grid.scale, cells)
            # grid_cell clips to [0, cells): skip the gathers' own bounds handling
            def get(table):
                return table.at[c].get(mode="promise_in_bounds")

            return jnp.where(x > get(grid.threshold), get(above), get(below))

        out = lax.cond(grid.exact, one_comparison, binary_search, x)
    invalid = jnp.isnan(x) | jnp.isnan(qparams.gamma)
    return jnp.where(invalid, nan_value, out)


__all__ = [
    "SELECT_CHAIN_MAX_LEVELS",
    "lookup",
]
