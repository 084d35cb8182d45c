"""The APoT paper's weight recipe in JAX: sign-magnitude levels, learnable alpha,
weight normalization, per-channel alpha.

Mirrors ``apot_torch/paper.py`` function for function; the numerics are
``docs/numerics.md`` section 9:

* sign-magnitude scheme: a sign bit plus the unsigned APoT levels of the
  other ``b - 1`` bits, ``2**b - 1`` levels symmetric about 0, rounded with the
  contract's rule (section 5) over the whole symmetric set; codes are the
  signed integers ``+-c`` (``c`` the magnitude's APoT code), NaN gets
  ``-2**(b - 1)``;
* learnable alpha (:func:`learnable_fake_quantize`, a ``jax.custom_vjp``): the
  forward is the sign-magnitude fake quant with levels from alpha, the
  backward gives ``x`` the clipped straight-through gradient and alpha the
  paper's reparameterized gradient ``sign(x)`` outside ``[-alpha, alpha]`` and
  ``(y - x) / alpha`` inside (``Pi(x/alpha) - x/alpha``), elementwise from
  :func:`alpha_grad_elements`;
* weight normalization (:func:`normalize_weight`) before quantization;
* per-channel: alpha of shape ``(C,)`` for the channel axis ``channel_axis``;
* activations (``scheme="unsigned"``): the same learnable alpha over the
  unsigned APoT levels of ``(b, k)`` (:func:`unsigned_qparams`), as the paper
  quantizes the non-negative ReLU outputs: ``d y / d alpha`` is 1 above
  alpha, ``(y - x) / alpha`` in ``[0, alpha]`` and 0 below 0;
* level sets (``level_set=``, every function here): ``"apot"`` (default),
  the prototype's ``(b, k)`` tables as above; ``"paper"``, the paper code's
  own sets (``build_power_value`` of yhhhli/APoT_Quantization, via
  :func:`apot_common.tables.paper_level_table`): weights sign +
  ``build_power_value(b - 1)`` (``b`` in 2..7; ternary at ``b = 2``),
  activations ``build_power_value(b)`` (``b`` in 2..6); ``"paper-pot"``, its
  non-additive (plain powers-of-two) sets. ``k`` is not used by the paper's
  sets; their qparams carry ``k = 0``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

import apot_jax._float32 as _float32
from apot_common.tables import (
    LEVEL_SETS,
    LevelSet,
    check_level_set,
    fit_alpha_grid,
    sign_magnitude_table,
    unsigned_table,
)
from apot_jax import levels as _levels
from apot_jax._float32 import as_float32
from apot_jax._lookup import lookup
from apot_jax.fake_quantize_function import ste_mask
from apot_jax.observer import APoTQParams
from apot_jax.quantizer import quant_dequant as _apot_quant_dequant

#: The learnable fake quant's schemes: the paper's signed weights, and the
#: unsigned table of the activations.
SCHEMES = ("sign-magnitude", "unsigned")



@dataclasses.dataclass(frozen=True)
class SignMagnitudeQParams:
    """Qparams of the sign-magnitude scheme.

    Attributes:
      alpha: float32, shape ``()`` or ``(C,)`` (per channel).
      gamma: float32 like ``alpha``: ``alpha / p_sum`` of the ``b - 1``-bit
        magnitude table, correctly rounded.
      quantization_levels: float32 ``alpha.shape + (2**b - 1,)``, ascending,
        symmetric (``-mag[::-1]`` joined to ``mag`` at the one zero).
      b, k: static configuration (``k`` divides ``b - 1``; 0 for the paper's sets).
      level_set: static, ``"apot"``, ``"paper"`` or ``"paper-pot"``.
    """

    alpha: jax.Array
    gamma: jax.Array
    quantization_levels: jax.Array
    b: int
    k: int
    level_set: LevelSet = "apot"


jax.tree_util.register_dataclass(
    SignMagnitudeQParams, data_fields=["alpha", "gamma", "quantization_levels"], meta_fields=["b", "k", "level_set"]
)


def sign_magnitude_qparams(alpha: jax.Array, *, b: int, k: int, level_set: LevelSet = "apot") -> SignMagnitudeQParams:
    """Qparams of the ``(b, k)`` sign-magnitude scheme for clipping value ``alpha``.

    Args:
      alpha: float32 scalar or ``(C,)``; zero and subnormal alpha count as
        ``+0.0`` (every level 0), negative or non-finite alpha give NaN levels.
      b, k: bits (sign included) and the magnitude's base width.
      level_set: ``"apot"``: magnitudes ``level_table(b - 1, k)``;
        ``"paper"``: the paper's ``build_power_value(b - 1)`` (``b`` in
        2..7, ternary at 2; ``k`` not used), levels ``alpha * value``;
        ``"paper-pot"``: ``build_power_value(b - 1, additive=False)``.

    Returns:
      Qparams whose levels are float32 ``alpha.shape + (2**b - 1,)``.

    Raises:
      ValueError: ``b < 2``, ``k`` not dividing ``b - 1`` (``"apot"``), a
        ``b`` the paper's sets lack, or a bad ``level_set`` (at trace time).
    """
    table = sign_magnitude_table(b, k, level_set)  # ValueError before any tracing
    alpha, g, lv = _sign_magnitude_qparams(alpha, b, k, level_set)
    return SignMagnitudeQParams(alpha, g, lv, table.b, table.k, table.level_set)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))  # one program also when called eagerly
def _sign_magnitude_qparams(alpha: jax.Array, b: int, k: int, level_set: LevelSet
                            ) -> tuple[jax.Array, jax.Array, jax.Array]:
    table = sign_magnitude_table(b, k, level_set)
    alpha = _levels.positive_zero(jnp.asarray(alpha, jnp.float32))
    g = _levels.gamma(alpha, table.p_sum)
    mag = _levels.levels(g, table.magnitude)  # alpha.shape + (2**(b-1),), mag[..., 0] == 0
    return alpha, g, jnp.concatenate([-mag[..., :0:-1], mag], axis=-1)


def unsigned_qparams(alpha: jax.Array, *, b: int, k: int, level_set: LevelSet = "apot") -> APoTQParams:
    """Qparams of an unsigned table for a clipping value ``alpha`` (float32
    scalar; zero/subnormal count as ``+0.0``, negative or non-finite give NaN
    levels): ``calculate_qparams`` with alpha given instead of observed.

    ``level_set="apot"``: the ``(b, k)`` APoT table; ``"paper"``: the
    paper's activation set ``build_power_value(b)`` (``b`` in 2..6, ``k`` not
    used, levels ``alpha * value``, codes the ascending positions);
    ``"paper-pot"``: ``build_power_value(b, additive=False)`` (``b`` in 1..7).
    Levels: float32 ``(2**b,)``.

    Raises:
      ValueError: invalid ``(b, k)`` or ``b`` for the level set, or a bad
        ``level_set`` (at trace time).
    """
    table = unsigned_table(b, k, level_set)  # ValueError before any tracing
    alpha, g, lv = _unsigned_qparams(alpha, b, k, level_set)
    return APoTQParams(alpha, g, lv, jnp.asarray(table.level_indices), table.b, table.k, False)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))  # one program also when called eagerly
def _unsigned_qparams(alpha: jax.Array, b: int, k: int, level_set: LevelSet) -> tuple[jax.Array, jax.Array, jax.Array]:
    table = unsigned_table(b, k, level_set)
    alpha = _levels.positive_zero(jnp.asarray(alpha, jnp.float32))
    g = _levels.gamma(alpha, table.p_sum)
    return alpha, g, _levels.levels(g, table)


def check_learnable(
    b: int, k: int, scheme: str, normalize: bool, channel_axis: int | None, level_set: LevelSet = "apot"
) -> None:
    """``ValueError`` for a configuration the learnable modules cannot run:
    a bad ``(b, k)`` for the scheme and level set, or normalization /
    per-channel alpha with the unsigned (activation) scheme."""
    _check_scheme(scheme, b, k, level_set)
    if scheme == "unsigned" and (normalize or channel_axis is not None):
        raise ValueError("the unsigned (activation) scheme takes neither normalize nor channel_axis")


def _check_scheme(scheme: str, b: int, k: int, level_set: LevelSet = "apot") -> None:
    check_level_set(level_set)
    if scheme == "sign-magnitude":
        sign_magnitude_table(b, k, level_set)
    elif scheme == "unsigned":
        unsigned_table(b, k, level_set)
    else:
        raise ValueError(f"scheme must be one of {', '.join(map(repr, SCHEMES))}, got {scheme!r}")


def _per_channel(
    f: Callable[[jax.Array, SignMagnitudeQParams], jax.Array],
    x: jax.Array,
    qparams: SignMagnitudeQParams,
    channel_axis: int | None,
) -> jax.Array:
    """``f(x, qparams)`` per tensor, or per channel of ``x`` along ``channel_axis``
    with the matching entry of ``(C,)``-shaped qparams; result shaped like ``x``."""
    if channel_axis is None:
        if qparams.alpha.ndim != 0:
            raise ValueError(f"per-tensor quantization needs a scalar alpha, got shape {qparams.alpha.shape}")
        return f(x, qparams)
    axis = _channel_axis(channel_axis, x.ndim)
    channels = x.shape[axis]
    if qparams.alpha.shape != (channels,):
        raise ValueError(
            f"per-channel alpha along axis {channel_axis} needs shape ({channels},), got {qparams.alpha.shape}"
        )
    moved = jnp.moveaxis(x, axis, 0)
    out = jax.vmap(f)(moved.reshape(channels, -1), qparams)
    return jnp.moveaxis(out.reshape(moved.shape), 0, axis)


def _channel_axis(channel_axis: int, ndim: int) -> int:
    if not -ndim <= channel_axis < ndim:
        raise ValueError(f"channel_axis {channel_axis} is out of range for a {ndim}-D input")
    return channel_axis % ndim


def quantize(x: jax.Array, qparams: SignMagnitudeQParams, channel_axis: int | None = None) -> jax.Array:
    """Signed codes of ``x`` (floating, any shape), int32 shaped like ``x``.

    ``+c`` / ``-c`` for the positive / negative level of magnitude code ``c``
    (0 for the zero level); ``-2**(b - 1)`` for NaN input or NaN qparams.
    """
    x = as_float32(x, "quantize")
    table = sign_magnitude_table(qparams.b, qparams.k, qparams.level_set)
    codes = jnp.asarray(table.code_by_position)
    return _per_channel(lambda v, qp: lookup(v, qp, codes, table.nan_code), x, qparams, channel_axis)


def quant_dequant(x: jax.Array, qparams: SignMagnitudeQParams, channel_axis: int | None = None) -> jax.Array:
    """Nearest sign-magnitude level of each element (contract rule, section 5,
    on the symmetric set); shape and dtype of ``x``; NaN stays NaN."""
    dtype = jnp.asarray(x).dtype
    x32 = as_float32(x, "quant_dequant")
    out = _per_channel(lambda v, qp: lookup(v, qp, qp.quantization_levels, jnp.nan), x32, qparams, channel_axis)
    return out.astype(dtype)


def dequantize(codes: jax.Array, qparams: SignMagnitudeQParams, channel_axis: int | None = None) -> jax.Array:
    """float32 levels of signed ``codes`` (integer array); the NaN code and
    codes outside ``(-2**(b-1), 2**(b-1))`` give NaN."""
    codes = jnp.asarray(codes)
    if not jnp.issubdtype(codes.dtype, jnp.integer):
        raise TypeError(f"dequantize needs integer codes, got dtype {codes.dtype}")
    table = sign_magnitude_table(qparams.b, qparams.k, qparams.level_set)
    half = 2 ** (qparams.b - 1)
    # position of each magnitude code among the ascending magnitudes
    position_of_code = jnp.argsort(jnp.asarray(table.magnitude.level_indices))
    zero = half - 1  # position of the zero level in the symmetric set

    def one(c: jax.Array, qp: SignMagnitudeQParams) -> jax.Array:
        c = c.astype(jnp.int32)
        valid = (c > -half) & (c < half)
        pos = position_of_code[jnp.clip(jnp.abs(c), 0, half - 1)]
        pos = jnp.where(c < 0, zero - pos, zero + pos)
        return jnp.where(valid, qp.quantization_levels[pos], jnp.float32(jnp.nan))

    return _per_channel(one, codes, qparams, channel_axis)


# --------------------------------------------------------------------------
# learnable alpha


def reciprocal(alpha: jax.Array) -> jax.Array:
    """Correctly rounded float32 ``1 / alpha`` (XLA's division is not).

    Args:
      alpha: float32, any shape.

    Returns:
      float32 like ``alpha``: the IEEE quotient for positive normal finite
      alpha (0 if it would be subnormal); 0 for zero, subnormal and ``+inf``
      alpha; NaN for negative or NaN alpha.
    """
    alpha = _levels.flush_subnormal(jnp.asarray(alpha, jnp.float32))
    normal = jnp.isfinite(alpha) & (alpha > 0)
    bits = _float32.bits(jnp.where(normal, alpha, jnp.float32(1)))
    e = ((bits >> 23) & 0xFF) - 127
    m = _float32.from_bits((bits & 0x007FFFFF) | (127 << 23))  # alpha = m * 2**e, m in [1, 2)
    q = jnp.float32(1) / m  # within an ulp or two of 1/m, in (0.5, 1]
    up, down = jnp.float32(jnp.inf), jnp.float32(-jnp.inf)
    below = jnp.nextafter(q, down)
    above = jnp.nextafter(q, up)
    # one stacked array, as in apot_jax.levels.gamma (why: see there)
    candidates = jnp.stack([jnp.nextafter(below, down), below, q, above, jnp.nextafter(above, up)])
    # Residual 2**48 * (1 - c * m) = 2**48 - C * M with C = c * 2**25 and
    # M = m * 2**23, both integers (c >= 0.25). |residual| < 2**27, so the
    # product modulo 2**32 (XLA's int32 multiply wraps) gives it exactly.
    big_c = (candidates * jnp.float32(2.0**25)).astype(jnp.int32)
    big_m = (m * jnp.float32(2.0**23)).astype(jnp.int32)
    residual = -(big_c * big_m)
    best = _float32.nearest_candidate(list(candidates), list(residual))
    r = _float32.scale_by_power_of_two(best, -e)
    r = jnp.where(normal, r, jnp.float32(0))
    return jnp.where((alpha < 0) | jnp.isnan(alpha), jnp.float32(jnp.nan), r)


def alpha_grad_elements(x: jax.Array, alpha: jax.Array, y: jax.Array, scheme: str = "sign-magnitude") -> jax.Array:
    """Per-element ``d y / d alpha`` of the learnable fake quant (paper, eq. 10).

    Args:
      x: the input, float32; ``alpha``: float32 broadcastable to ``x``;
      y: ``quant_dequant(x)`` for that alpha, float32 like ``x``.
      scheme: ``"sign-magnitude"`` or ``"unsigned"`` (levels in ``[0, alpha]``).

    Returns:
      float32 like ``x``: ``+1`` / ``-1`` for ``x > alpha`` / ``x < -alpha``
      (``+-inf`` included), ``(y - x) * reciprocal(alpha)`` inside (the
      normalized ``Pi(x/alpha) - x/alpha``; subnormal ``x`` counts as 0, and
      the difference and the product are flushed to zero when subnormal), 0
      for NaN ``x``. Unsigned: 0 for every ``x < 0`` (``y`` is the constant 0
      there) instead. Only IEEE subtract, multiply and comparisons, in an
      order no FMA contraction can change, so every backend gives the same bits.
    """
    x = _levels.flush_subnormal(x.astype(jnp.float32))
    alpha = jnp.asarray(alpha, jnp.float32)
    diff = _levels.flush_subnormal(y.astype(jnp.float32) - x)
    inside = _levels.flush_subnormal(diff * reciprocal(alpha))
    outside = jnp.where(x > 0, jnp.float32(1), jnp.float32(-1))
    g = jnp.where(ste_mask(x, alpha), inside, outside)
    if scheme == "unsigned":
        g = jnp.where(x < 0, jnp.float32(0), g)
    return jnp.where(jnp.isnan(x), jnp.float32(0), g)


def pairwise_sum(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """Sum of float32 ``x`` over ``axes`` (kept as size 1) in a fixed order.

    Pairwise: the entries (in row-major order over ``axes``) are added as
    ``(0 + 1), (2 + 3), ...``, a zero appended to an odd count, repeatedly,
    each partial sum flushed to zero if subnormal. Only elementwise IEEE adds,
    which no compiler reorders, so the result has the same bits under ``jit``
    or not, in any fusion, and in ``apot_torch`` (a plain ``jnp.sum`` has the
    backend's order, which differs between jit contexts and frameworks).
    """
    x = jnp.asarray(x, jnp.float32)
    rest = tuple(i for i in range(x.ndim) if i not in axes)
    moved = jnp.transpose(x, tuple(axes) + rest)
    kept_shape = tuple(x.shape[i] for i in rest)
    # flushing is a select: it also keeps a compiler from contracting a
    # product that feeds this sum into an FMA (XLA on CPU does), which would
    # round differently
    v = _levels.flush_subnormal(moved.reshape((-1,) + kept_shape))
    while v.shape[0] > 1:
        if v.shape[0] % 2:
            v = jnp.concatenate([v, jnp.zeros((1,) + kept_shape, jnp.float32)])
        v = _levels.flush_subnormal(v[0::2] + v[1::2])
    total = v[0] if v.shape[0] else jnp.zeros(kept_shape, jnp.float32)
    out_shape = tuple(1 if i in axes else x.shape[i] for i in range(x.ndim))
    return total.reshape(out_shape)


def _broadcast_channel(alpha: jax.Array, ndim: int, channel_axis: int | None) -> jax.Array:
    """``alpha`` (scalar or ``(C,)``) shaped to broadcast against an ``ndim``-D input."""
    if channel_axis is None:
        return alpha
    shape = [1] * ndim
    shape[_channel_axis(channel_axis, ndim)] = alpha.shape[0]
    return alpha.reshape(shape)


#: static configuration of the learnable fake quant: (b, k, channel_axis, scheme, level_set)
_Config = tuple[int, int, int | None, str, LevelSet]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _learnable(x: jax.Array, alpha: jax.Array, config: _Config) -> jax.Array:
    b, k, channel_axis, scheme, level_set = config
    if scheme == "unsigned":
        return _apot_quant_dequant(x, unsigned_qparams(alpha, b=b, k=k, level_set=level_set))
    return quant_dequant(x, sign_magnitude_qparams(alpha, b=b, k=k, level_set=level_set), channel_axis)


def _learnable_fwd(x, alpha, config):
    y = _learnable(x, alpha, config)
    return y, (x, alpha, y)


def _learnable_bwd(config, residuals, dy):
    x, alpha, y = residuals
    _, _, channel_axis, scheme, _ = config
    a = _broadcast_channel(jnp.asarray(alpha, jnp.float32), x.ndim, channel_axis)
    dx = jnp.where(ste_mask(x, a), dy, jnp.zeros_like(dy))
    contributions = _levels.flush_subnormal(dy.astype(jnp.float32) * alpha_grad_elements(x, a, y, scheme))
    if channel_axis is None:
        dalpha = pairwise_sum(contributions, tuple(range(x.ndim))).reshape(())
    else:
        axis = _channel_axis(channel_axis, x.ndim)
        dalpha = pairwise_sum(contributions, tuple(i for i in range(x.ndim) if i != axis)).reshape(-1)
    return dx, dalpha.astype(jnp.asarray(alpha).dtype)


_learnable.defvjp(_learnable_fwd, _learnable_bwd)
# one program per shape and configuration also when called eagerly (see
# apot_jax._lookup.lookup); nested in a traced function it is inlined
_learnable_jit = jax.jit(_learnable, static_argnums=(2,))


def learnable_fake_quantize(
    x: jax.Array,
    alpha: jax.Array,
    *,
    b: int,
    k: int,
    channel_axis: int | None = None,
    scheme: str = "sign-magnitude",
    level_set: LevelSet = "apot",
) -> jax.Array:
    """APoT fake quant with a trainable clipping value.

    Args:
      x: floating array (f32, bf16, f16), any shape.
      alpha: float32 scalar, or ``(C,)`` with ``C = x.shape[channel_axis]``.
      b, k: sign-magnitude: bits (sign included) and base width of the
        magnitude (``k | b - 1``); unsigned: the APoT table's (``k | b``).
      channel_axis: ``None`` (per tensor) or the axis of ``x`` that ``alpha``
        runs along (sign-magnitude only).
      scheme: ``"sign-magnitude"`` (weights) or ``"unsigned"`` (activations:
        the unsigned ``(b, k)`` levels, negative inputs give 0).
      level_set: ``"apot"`` (the ``(b, k)`` tables), ``"paper"`` (the
        paper's ``build_power_value`` sets: weights sign + ``b - 1`` bits,
        ``b`` in 2..7; activations ``b`` bits, ``b`` in 2..6; ``k`` not used)
        or ``"paper-pot"`` (its non-additive sets); see
        :func:`sign_magnitude_qparams` and :func:`unsigned_qparams`.

    Returns:
      ``quant_dequant`` of ``x`` with the scheme's qparams for ``alpha``,
      shaped and typed like ``x``. Gradients: ``dx = dy * (|x| <= alpha)``;
      ``dalpha`` the :func:`pairwise_sum` of ``dy * alpha_grad_elements(x,
      alpha, y, scheme)`` (products flushed when subnormal) over the tensor
      (per channel: over every axis but ``channel_axis``), so it is bitwise
      reproducible too.
    """
    as_float32(x, "learnable_fake_quantize")
    _check_scheme(scheme, b, k, level_set)
    alpha = jnp.asarray(alpha, jnp.float32)
    if channel_axis is not None:
        if scheme != "sign-magnitude":
            raise ValueError("per-channel alpha is for sign-magnitude weights")
        _channel_axis(channel_axis, jnp.ndim(x))
    elif alpha.ndim != 0:
        raise ValueError(f"per-tensor quantization needs a scalar alpha, got shape {alpha.shape}")
    return _learnable_jit(x, alpha, (int(b), int(k), channel_axis, scheme, level_set))


def fit_alpha(
    x: jax.Array,
    *,
    b: int,
    k: int,
    scheme: str = "unsigned",
    channel_axis: int | None = None,
    candidates: int = 64,
    level_set: LevelSet = "apot",
) -> jax.Array:
    """A starting alpha for :func:`learnable_fake_quantize`, fitted to data.

    The candidates are ``top * i / candidates`` for ``i = 1..candidates``,
    ``top`` the largest value of ``x`` (sign-magnitude: the largest
    magnitude; per channel: of each channel); the result is the first with
    the least squared error ``pairwise_sum((y - x)**2)`` of the scheme's fake
    quant ``y`` (per channel: each channel's own). Clipping a long tail pays
    at low bits, so the best alpha is often well below ``top``. The grid is
    computed on the host in numpy float32 and the sums have a fixed order,
    so ``apot_torch.paper.fit_alpha`` picks the same bits
    (:func:`apot_common.tables.fit_alpha_grid` serves both).

    Calibration runs eagerly (it checks the values of ``x``), not under ``jit``.

    Args:
      x: floating array, any non-empty shape, finite, ``top > 0``: e.g. a
        layer's inputs on a calibration batch (the ReLU outputs for
        ``scheme="unsigned"``), or a (normalized) weight.
      b, k, scheme, channel_axis, level_set: as in
        :func:`learnable_fake_quantize` (``channel_axis`` for sign-magnitude only).
      candidates: number of grid points, ``>= 1``.

    Returns:
      float32 alpha in ``(0, top]``: a scalar, or ``(C,)`` with
      ``C = x.shape[channel_axis]``.

    Raises:
      TypeError: ``x`` is not floating. ValueError: a bad scheme, ``(b, k)``,
      ``channel_axis`` or ``candidates``; ``x`` empty, not finite, or
      without a positive ``top`` (in some channel).
    """
    x = as_float32(x, "fit_alpha")
    _check_scheme(scheme, b, k, level_set)
    if channel_axis is None:
        rows = x.reshape(1, -1)
    elif scheme != "sign-magnitude":
        raise ValueError("per-channel alpha is for sign-magnitude weights")
    else:
        rows = jnp.moveaxis(x, _channel_axis(channel_axis, x.ndim), 0)
        rows = rows.reshape(rows.shape[0], -1)
    if rows.size == 0 or not bool(jnp.all(jnp.isfinite(rows))):
        raise ValueError("fit_alpha needs a non-empty, finite x")
    magnitude = scheme == "sign-magnitude"
    top = jnp.max(jnp.abs(rows) if magnitude else rows, axis=1)
    grid = fit_alpha_grid(top, candidates, "magnitude" if magnitude else "value")  # (candidates, C)
    config = (int(b), int(k), None if channel_axis is None else 0, scheme, level_set)
    alpha = _fit_alpha(rows, jnp.asarray(grid), config)
    return alpha.reshape(()) if channel_axis is None else alpha


@functools.partial(jax.jit, static_argnums=(2,))
def _fit_alpha(rows: jax.Array, grid: jax.Array, config: _Config) -> jax.Array:
    def errors(alphas: jax.Array) -> jax.Array:  # (C,) per channel of rows
        d = _learnable(rows, alphas if config[2] is not None else alphas[0], config) - rows
        return pairwise_sum(d * d, (1,)).reshape(-1)

    best = jnp.argmin(lax.map(errors, grid), axis=0)  # the first minimum
    return jnp.take_along_axis(grid, best[None, :], axis=0)[0]


# --------------------------------------------------------------------------
# weight normalization


def normalize_weight(w: jax.Array, channel_axis: int | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Zero mean, unit variance over the tensor (or per channel), as the paper.

    Args:
      w: float32 weight, any shape with at least 2 elements per statistic.
      channel_axis: ``None`` for one mean/std over the whole tensor, else the
        axis whose entries get their own.

    Returns:
      ``(w_hat, mean, std)``: ``w_hat = (w - mean) / std`` shaped like ``w``;
      ``mean`` and ``std`` (unbiased, like ``torch.Tensor.std`` in the paper's
      code) keep the reduced axes as size 1. The statistics are constants for
      the gradient, as in the paper's code (``weight.data.mean()``), so
      ``d w_hat / d w = 1 / std``. A zero std gives ``w_hat = w - mean`` (all
      zeros). The sums are :func:`pairwise_sum` (a fixed order), the
      divisions multiplies by host-rounded ``1/count`` and a correctly
      rounded :func:`reciprocal`, the square root correctly rounded: so
      ``w_hat``, ``mean`` and ``std`` are bitwise equal to
      ``apot_torch.paper.normalize_weight`` of the same values in the same
      element order, and between ``jit`` and eager (``docs/numerics.md`` 9.3).
    """
    w = jnp.asarray(w, jnp.float32)
    if channel_axis is None:
        axes = tuple(range(w.ndim))
    else:
        axis = _channel_axis(channel_axis, w.ndim)
        axes = tuple(i for i in range(w.ndim) if i != axis)
    return _normalize_weight(w, axes)


@functools.partial(jax.jit, static_argnums=(1,))  # one program also when called eagerly
def _normalize_weight(w: jax.Array, axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array, jax.Array]:
    count = 1
    for i in axes:
        count *= w.shape[i]
    if count < 2:  # shapes are static: raised while tracing, and a failed trace is never cached
        raise ValueError(f"weight normalization needs at least 2 elements per statistic, got {count}")
    stats_of = lax.stop_gradient(w)
    # Fixed-order sums, multiplies by host-rounded constants and a correctly
    # rounded reciprocal instead of jnp.mean and divisions: XLA's reduction
    # order and its rewriting of divisions differ between jit contexts (and
    # from torch), which would change w_hat's bits between the training step,
    # the export and the torch twin.
    # The flushes (selects) after products that feed a subtraction keep XLA
    # from contracting the pair into an FMA, which rounds once instead of twice.
    mean = _levels.flush_subnormal(pairwise_sum(stats_of, axes) * jnp.float32(1 / count))
    var = pairwise_sum(jnp.square(stats_of - mean), axes) * jnp.float32(1 / (count - 1))
    std = jnp.sqrt(var)
    return _levels.flush_subnormal((w - mean) * reciprocal(std)), mean, std


def paper_weight_quant(
    w: jax.Array,
    alpha: jax.Array,
    *,
    b: int,
    k: int,
    normalize: bool = True,
    channel_axis: int | None = None,
    level_set: LevelSet = "apot",
) -> jax.Array:
    """The paper's weight fake quant: normalize, quantize with learnable alpha.

    ``std * learnable_fake_quantize((w - mean) / std, alpha)`` with
    ``normalize`` (the factor ``std`` stands in for the BatchNorm that
    follows every convolution in the paper's networks; the mean is not added
    back, so the quantized weight stays on the symmetric level set, scaled),
    else ``learnable_fake_quantize(w, alpha)``, sign-magnitude levels of
    ``level_set``. Shapes as :func:`learnable_fake_quantize`; float32 output.
    """
    if not normalize:
        return learnable_fake_quantize(w, alpha, b=b, k=k, channel_axis=channel_axis, level_set=level_set)
    w_hat, _, std = normalize_weight(w, channel_axis)
    return learnable_fake_quantize(w_hat, alpha, b=b, k=k, channel_axis=channel_axis, level_set=level_set) * std


__all__ = [
    "LEVEL_SETS",
    "SCHEMES",
    "SignMagnitudeQParams",
    "alpha_grad_elements",
    "check_learnable",
    "dequantize",
    "fit_alpha",
    "learnable_fake_quantize",
    "normalize_weight",
    "pairwise_sum",
    "paper_weight_quant",
    "quant_dequant",
    "quantize",
    "reciprocal",
    "sign_magnitude_qparams",
    "unsigned_qparams",
]
