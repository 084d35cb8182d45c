"""The rounding lookup of the torch quantizers (``apot_torch.quantizer``,
``apot_torch.paper``): the eager strategies with their table cache, and the
custom operators ``apot::thresholds`` and ``apot::grid_or_search`` that
traced graphs call instead. Internal, not public API (mirrors ``apot_jax/_lookup.py``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor

from apot_torch import levels as _levels

#: Up to this many levels, traced code (``torch.compile``) rounds with a chain
#: of compare-and-selects against scalar thresholds, fused into one kernel (as
#: in apot_jax). Eager torch runs each select as its own pass, and on CPU a
#: ``torch.where`` with an unpredictable mask costs several times a gather, so
#: eager code takes the grid (or the binary search) whatever the size.
SELECT_CHAIN_MAX_LEVELS = 16


def lookup(x: Tensor, alpha: Tensor, gamma: Tensor, quantization_levels: Tensor, values: Tensor, nan_value) -> Tensor:
    """``values[p(x)]`` for the contract's chosen position ``p`` of each element.

    ``x`` is float32 (any shape); ``values`` is indexed by sorted position
    (``(N,)``). The three strategies of ``apot_jax._lookup.lookup`` compute
    the same ``p = count(thresholds < x)``; they differ only in speed
    (``benchmarks/bench_torch.py``). Returns ``values.dtype``, shaped like ``x``.

    Under ``torch.compile`` the rounding tables come from opaque operators
    (``apot::thresholds``, ``apot::grid_or_search``) that read the eager
    table cache, so the caller's graph holds none of the 32-step threshold
    bisection: traced, it was some 600 Inductor nodes in every graph that
    rounds, and most of a model's compile time. Up to
    ``SELECT_CHAIN_MAX_LEVELS`` levels the graph rounds with a chain of
    selects against those thresholds, fused into the caller's kernel; more
    levels are one operator (the graph does not break at the data-dependent
    choice of strategy) whose exact-grid case runs a fused Inductor kernel
    (``_grid_lookup``).
    """
    x = x.detach()  # comparisons and indices carry no gradient to x anyway
    if torch.compiler.is_compiling():
        n = quantization_levels.shape[0]
        if n <= SELECT_CHAIN_MAX_LEVELS:
            theta = torch.ops.apot.thresholds(quantization_levels.detach(), alpha.detach())
            nan = torch.tensor(nan_value, dtype=values.dtype, device=values.device)
            out = values[0].expand(x.shape)
            for j in range(n - 1):
                out = torch.where(x > theta[j], values[j + 1], out)
            # unobserved qparams (NaN gamma): every element gets nan_value
            return torch.where(torch.isnan(x) | torch.isnan(gamma), nan, out)
        if not values.requires_grad:
            return torch.ops.apot.grid_or_search(
                x, alpha.detach(), gamma.detach(), quantization_levels.detach(), values, float(nan_value)
            )
        # a gradient to the values (levels that depend on a learned alpha):
        # eager, behind a graph break, where autograd records the gather
        return _eager_lookup_outside_graph(x, alpha, gamma, quantization_levels, values, nan_value, False)
    return _eager_lookup(x, alpha, gamma, quantization_levels, values, nan_value, False)


def _eager_lookup(
    x: Tensor, alpha: Tensor, gamma: Tensor, quantization_levels: Tensor, values: Tensor, nan_value, inductor: bool
) -> Tensor:
    """``lookup`` outside a traced graph: exact grid or binary search
    (``inductor``: the grid as a fused compiled kernel, else ``_one_comparison``)."""
    theta, grid, use_grid = _rounding_tables(quantization_levels, alpha)
    n = theta.shape[0]
    nan = torch.tensor(nan_value, dtype=values.dtype, device=values.device)
    # Unobserved qparams (NaN gamma): every element gets nan_value, whatever p is.
    values = torch.where(torch.isnan(gamma), nan, values)

    if not use_grid:
        out = values[torch.searchsorted(theta, x.contiguous(), right=False).clamp(max=n - 1)]
        return torch.where(torch.isnan(x), nan, out)

    if inductor:
        below = values[grid.lower.clamp(max=n - 1)]
        above = values[grid.upper.clamp(max=n - 1)]
        top = torch.tensor(grid.threshold.shape[0] - 1, dtype=torch.float32, device=x.device)
        flat = _compiled_grid_lookup()(x.reshape(-1), grid.origin, grid.scale, top, grid.threshold, below, above, nan)
        return flat.view(x.shape)
    return _one_comparison(x, grid, values, nan)


#: Rounding tables of the last distinct (levels, alpha) pairs, by their bits
#: (``_rounding_tables``).
_TABLE_CACHE: "OrderedDict[tuple, tuple[Tensor, _levels.RoundingGrid, bool]]" = OrderedDict()
_TABLE_CACHE_SIZE = 32


def _rounding_tables(quantization_levels: Tensor, alpha: Tensor) -> tuple[Tensor, _levels.RoundingGrid, bool]:
    """``(thresholds, rounding grid, whether the grid decides)`` for these
    qparams; the tables depend on nothing else.

    The 32-step threshold bisection costs milliseconds in eager torch (some
    500 small ops), as much as rounding 4M elements; the qparams are often
    the same from call to call (an observer that is off, inference, the same
    qparams reused). So the tables are kept for the last
    ``_TABLE_CACHE_SIZE`` distinct pairs, keyed on the bit patterns of the
    levels and alpha (copied to the host, so a change in place is a new
    key): a hit returns exactly what the computation would. Traced code
    (``torch.compile``) reads them through the ``apot::`` operators.
    """
    levels_ = quantization_levels.detach()
    alpha_ = alpha.detach()
    key = (
        levels_.device,
        levels_.dtype,
        tuple(levels_.shape),
        levels_.cpu().numpy().tobytes(),
        alpha_.dtype,
        tuple(alpha_.shape),
        alpha_.cpu().numpy().tobytes(),
    )
    tables = _TABLE_CACHE.get(key)
    if tables is None:
        tables = _compute_rounding_tables(levels_, alpha_)
        _TABLE_CACHE[key] = tables
        while len(_TABLE_CACHE) > _TABLE_CACHE_SIZE:
            _TABLE_CACHE.popitem(last=False)
    else:
        _TABLE_CACHE.move_to_end(key)
    return tables


def _compute_rounding_tables(quantization_levels: Tensor, alpha: Tensor) -> tuple[Tensor, _levels.RoundingGrid, bool]:
    theta = _levels.thresholds(quantization_levels, alpha)
    grid = _levels.rounding_grid(theta, quantization_levels, alpha)
    # With 0 < scale < inf, a cell coordinate is NaN exactly when x is (the
    # NaN cell of _one_comparison relies on it); alpha = 0 or alpha near the
    # float32 limits is left to the binary search.
    use_grid = bool(grid.exact & (grid.scale > 0) & (grid.scale < float("inf")))
    return theta, grid, use_grid


def _grid_lookup(
    x: Tensor, origin: Tensor, scale: Tensor, top: Tensor, threshold: Tensor, below: Tensor, above: Tensor, nan: Tensor
) -> Tensor:
    """The exact grid's one comparison as plain tensor code, for Inductor to
    fuse into one pass: cell ``c`` (as ``_levels.grid_cell``, ``top`` = cells
    - 1), then ``above[c]`` where ``x > threshold[c]`` else ``below[c]``
    (``below``/``above``: ``values`` at the cell's ``lower``/``upper``);
    NaN ``x`` gives ``nan``. The same value as ``_one_comparison``."""
    c = torch.nan_to_num(((x - origin) * scale).clamp(min=0).minimum(top), nan=0.0).to(torch.int64)
    out = torch.where(x > threshold[c], above[c], below[c])
    return torch.where(torch.isnan(x), nan, out)


_COMPILED_GRID_LOOKUP = None


def _compiled_grid_lookup():
    global _COMPILED_GRID_LOOKUP
    if _COMPILED_GRID_LOOKUP is None:
        _COMPILED_GRID_LOOKUP = torch.compile(_grid_lookup, dynamic=True)
    return _COMPILED_GRID_LOOKUP


_eager_lookup_outside_graph = torch.compiler.disable(_eager_lookup)


@torch.library.custom_op("apot::thresholds", mutates_args=())
def _thresholds(quantization_levels: Tensor, alpha: Tensor) -> Tensor:
    """``_levels.thresholds`` of ``(N,)`` levels as an operator that traced
    graphs cannot see into, computed from the table cache
    (``_rounding_tables``).

    Inductor cannot fuse the bisection into the caller's kernel this way
    either: traced, the thresholds' pointwise tail (order key to float,
    clipping to alpha, subnormals) was fused into the per-element loop and
    ran once per vector of 8 elements, which made the compiled b=4 forward
    slower than torch's uniform fake quant (``benchmarks/bench_torch.py``).
    Returns a copy: the graph owns its outputs, the cache keeps its tables.
    On a GPU the cache key is a copy of the qparams to the host, as in eager
    code.
    """
    return _rounding_tables(quantization_levels, alpha)[0].clone()


@_thresholds.register_fake
def _(quantization_levels, alpha):
    return torch.empty_like(quantization_levels)


@torch.library.custom_op("apot::grid_or_search", mutates_args=())
def _grid_or_search(
    x: Tensor, alpha: Tensor, gamma: Tensor, quantization_levels: Tensor, values: Tensor, nan_value: float
) -> Tensor:
    """``lookup`` of more than ``SELECT_CHAIN_MAX_LEVELS`` levels as one
    operator for traced graphs: the tables from the cache, then the exact
    grid as a fused compiled kernel, or the binary search."""
    nan = int(nan_value) if not values.is_floating_point() else nan_value
    return _eager_lookup(x, alpha, gamma, quantization_levels, values, nan, True)


@_grid_or_search.register_fake
def _(x, alpha, gamma, quantization_levels, values, nan_value):
    return x.new_empty(x.shape, dtype=values.dtype)


#: Elements per pass of _one_comparison on CPU: its temporaries are then
#: allocated once per call and stay in cache, where whole-tensor temporaries
#: would cost page faults and memory traffic at every pass (twice as slow).
_CPU_CHUNK = 2**16


# Eager even under torch.compile: Inductor's CPU code for these gathers (one
# scalar load per element, bounds-checked) was slower than eager index_select.
@torch.compiler.disable
def _one_comparison(x: Tensor, grid: _levels.RoundingGrid, values: Tensor, nan: Tensor) -> Tensor:
    """``values[count(thresholds < x)]`` with one comparison per element, for an
    exact grid with ``0 < grid.scale < inf``; NaN ``x`` gives ``nan``.

    The comparison is written as index arithmetic so that the select is a
    gather (on CPU a torch.where with an unpredictable mask is slower than a
    gather): cell c (as _levels.grid_cell, except that NaN gets the extra cell
    ``cells``, whose entries are ``nan``) indexes ``below`` in ``table[c]`` and
    ``above`` in ``table[c + cells + 1]``. ``buf`` holds in turn the cell
    coordinate, the gathered thresholds and their difference to x.
    """
    cells = grid.threshold.shape[0]
    threshold = torch.cat([grid.threshold, grid.threshold.new_full((1,), float("inf"))])
    table = torch.cat([values[grid.lower], nan[None], values[grid.upper], nan[None]])
    flat = x.reshape(-1)
    n = flat.numel()
    step = min(n, _CPU_CHUNK) if flat.device.type == "cpu" else n
    # gather with out= where possible; out= records no autograd graph, so with
    # a gradient to the levels the indices are kept and gathered once at the end
    index = flat.new_empty(n, dtype=torch.int32) if table.requires_grad else None
    out = None if table.requires_grad else flat.new_empty(n, dtype=table.dtype)
    buf = flat.new_empty(step)
    c = flat.new_empty(step, dtype=torch.int32)
    for start in range(0, n, max(step, 1)):
        xs = flat[start : start + step]
        stop = start + xs.numel()
        b = buf[: xs.numel()]
        ci = c[: xs.numel()] if index is None else index[start:stop]
        torch.sub(xs, grid.origin, out=b)
        b.mul_(grid.scale).clamp_(0, cells - 1).nan_to_num_(nan=cells)
        ci.copy_(b)  # truncation, i.e. floor: b >= 0
        torch.index_select(threshold, 0, ci, out=b)
        # x > threshold exactly when threshold - x has its sign bit set: a
        # nonzero difference keeps its sign when rounded (or flushed), equal
        # operands give +0, and thresholds are never +-0. Where the difference
        # is NaN (inf - inf in a cell without threshold, NaN x) below and above
        # are the same entry. The int32 sign mask costs half of a comparison,
        # whose bool result CPU torch converts to int32 in an extra pass.
        sign = torch.sub(b, xs, out=b).view(torch.int32).bitwise_right_shift_(31)  # 0 or -1
        ci.sub_(sign, alpha=cells + 1)
        if out is not None:
            torch.index_select(table, 0, ci, out=out[start:stop])
    if index is not None:
        return table.index_select(0, index).view(x.shape)
    assert out is not None  # allocated exactly when index is not
    return out.view(x.shape)


__all__ = [
    "SELECT_CHAIN_MAX_LEVELS",
    "lookup",
]
