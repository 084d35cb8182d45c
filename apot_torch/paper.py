"""The APoT paper's weight recipe in torch: sign-magnitude levels, learnable
alpha, weight normalization, per-channel alpha.

Mirrors ``apot_jax/paper.py`` function for function (see that module and
``docs/numerics.md`` section 9), ``level_set=`` included: ``"apot"`` (the
``(b, k)`` tables, default), ``"paper"`` (the paper code's
``build_power_value`` sets: weights sign + ``b - 1`` bits, activations ``b``
bits) or ``"paper-pot"`` (its non-additive sets). Every function works on any
device and never modifies its inputs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

import apot_torch._float32 as _float32
from apot_common.tables import (
    LEVEL_SETS,
    LevelSet,
    check_level_set,
    fit_alpha_grid,
    sign_magnitude_table,
    unsigned_table,
)
from apot_torch import levels as _levels
from apot_torch._float32 import as_float32
from apot_torch._lookup import lookup
from apot_torch.fake_quantize_function import ste_mask
from apot_torch.quantizer import APoTQuantizer

#: The learnable fake quant's level sets (``apot_jax.paper.SCHEMES``).
SCHEMES = ("sign-magnitude", "unsigned")


class SignMagnitudeQParams(NamedTuple):
    """Qparams of the sign-magnitude scheme (see ``apot_jax.paper``).

    alpha, gamma: float32 ``()`` or ``(C,)``; quantization_levels: float32
    ``alpha.shape + (2**b - 1,)``, ascending and symmetric; b, k: ints (``k``
    is 0 for the paper's sets); level_set: ``"apot"``, ``"paper"`` or
    ``"paper-pot"``.
    """

    alpha: Tensor
    gamma: Tensor
    quantization_levels: Tensor
    b: int
    k: int
    level_set: LevelSet = "apot"


def sign_magnitude_qparams(alpha: Tensor, *, b: int, k: int, level_set: LevelSet = "apot") -> SignMagnitudeQParams:
    """Qparams of the ``(b, k)`` sign-magnitude scheme for clipping value ``alpha``
    (float32 scalar or ``(C,)``; zero/subnormal count as ``+0.0``, negative or
    non-finite give NaN levels); ``level_set`` as
    ``apot_jax.paper.sign_magnitude_qparams`` (``"paper"``: sign +
    ``build_power_value(b - 1)``, ``b`` in 2..7, ``k`` not used). Levels:
    float32 ``alpha.shape + (2**b - 1,)``.

    Raises:
      ValueError: ``b < 2``, ``k`` not dividing ``b - 1`` (``"apot"``), a
        ``b`` the paper's sets lack, or a bad ``level_set``.
    """
    table = sign_magnitude_table(b, k, level_set)
    alpha = _levels.positive_zero(alpha.detach().to(torch.float32))
    g = _levels.gamma(alpha, table.p_sum)
    mag = _levels.levels(g, table.magnitude)
    lv = torch.cat([-mag[..., 1:].flip(-1), mag], dim=-1)
    return SignMagnitudeQParams(alpha, g, lv, table.b, table.k, table.level_set)


def unsigned_qparams(
    alpha: Tensor, *, b: int, k: int, level_set: LevelSet = "apot"
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(alpha, gamma, quantization_levels, level_indices)`` of an unsigned
    table for a clipping value ``alpha`` (float32 scalar), as
    ``apot_jax.paper.unsigned_qparams``: the ``(b, k)`` APoT table, or with
    ``level_set="paper"`` the paper's ``build_power_value(b)`` (``b`` in
    2..6; ``"paper-pot"``: non-additive, ``b`` in 1..7; ``k`` not used).
    Levels: float32 ``(2**b,)``; indices int32.

    Raises:
      ValueError: invalid ``(b, k)`` or ``b`` for the level set, or a bad ``level_set``.
    """
    table = unsigned_table(b, k, level_set)
    alpha = _levels.positive_zero(alpha.detach().to(torch.float32))
    g = _levels.gamma(alpha, table.p_sum)
    return alpha, g, _levels.levels(g, table), torch.tensor(table.level_indices, device=alpha.device)


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


def _channel_axis(channel_axis: int, ndim: int) -> int:
    if not -ndim <= channel_axis < ndim:
        raise ValueError(f"channel_axis {channel_axis} is out of range for a {ndim}-D input")
    return channel_axis % ndim


def _check_channels(x: Tensor, qparams: SignMagnitudeQParams, channel_axis: int | None) -> int | None:
    """The normalized channel axis (``None`` per tensor); ``ValueError`` when
    alpha's shape does not match it."""
    if channel_axis is None:
        if qparams.alpha.dim() != 0:
            raise ValueError(f"per-tensor quantization needs a scalar alpha, got shape {tuple(qparams.alpha.shape)}")
        return None
    axis = _channel_axis(channel_axis, x.dim())
    channels = x.shape[axis]
    if tuple(qparams.alpha.shape) != (channels,):
        raise ValueError(
            f"per-channel alpha along axis {channel_axis} needs shape ({channels},), got {tuple(qparams.alpha.shape)}"
        )
    if channels == 0:
        raise ValueError("per-channel quantization needs at least one channel")
    return axis


def _rows(x: Tensor, axis: int) -> Tensor:
    """``x`` as ``(C, rest)`` with the channel axis first."""
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


def _unrows(rows: Tensor, like: Tensor, axis: int) -> Tensor:
    moved_shape = (like.shape[axis],) + tuple(s for i, s in enumerate(like.shape) if i != axis)
    return rows.reshape(moved_shape).movedim(0, axis)


def _channel_positions(x: Tensor, qparams: SignMagnitudeQParams, axis: int) -> Tensor:
    """Per-channel chosen positions ``count(thresholds_c < x)``, ``(C, rest)``
    int64: every channel at once (a batched binary search over its own
    thresholds), the rule the per-tensor lookup applies to each channel."""
    theta = _levels.thresholds(qparams.quantization_levels, qparams.alpha)
    p = torch.searchsorted(theta, _rows(x, axis).contiguous(), right=False)
    return p.clamp(max=theta.shape[-1] - 1)


def _channel_invalid(x: Tensor, qparams: SignMagnitudeQParams, axis: int) -> Tensor:
    """NaN input, or a channel with NaN qparams, as ``(C, rest)``."""
    return torch.isnan(_rows(x, axis)) | torch.isnan(qparams.gamma)[:, None]


def quantize(x: Tensor, qparams: SignMagnitudeQParams, channel_axis: int | None = None) -> Tensor:
    """Signed int32 codes of ``x`` (``+-c``; ``-2**(b - 1)`` for NaN), shaped like ``x``."""
    x = as_float32(x, "quantize")
    table = sign_magnitude_table(qparams.b, qparams.k, qparams.level_set)
    codes = torch.tensor(table.code_by_position, device=x.device)
    axis = _check_channels(x, qparams, channel_axis)
    if axis is None:
        return lookup(x, qparams.alpha, qparams.gamma, qparams.quantization_levels, codes, table.nan_code)
    out = codes[_channel_positions(x, qparams, axis)]
    out = torch.where(_channel_invalid(x, qparams, axis), table.nan_code, out)
    return _unrows(out, x, axis)


def quant_dequant(x: Tensor, qparams: SignMagnitudeQParams, channel_axis: int | None = None) -> Tensor:
    """Nearest sign-magnitude level of each element; shape and dtype of ``x``."""
    x32 = as_float32(x, "quant_dequant")
    axis = _check_channels(x32, qparams, channel_axis)
    levels = qparams.quantization_levels
    if axis is None:
        out = lookup(x32, qparams.alpha, qparams.gamma, levels, levels, float("nan"))
    else:
        rows = torch.gather(levels, 1, _channel_positions(x32, qparams, axis))
        rows = torch.where(_channel_invalid(x32, qparams, axis), float("nan"), rows)
        out = _unrows(rows, x32, axis)
    return out.to(x.dtype)


def dequantize(codes: Tensor, qparams: SignMagnitudeQParams, channel_axis: int | None = None) -> Tensor:
    """float32 levels of signed ``codes``; the NaN code and codes outside
    ``(-2**(b-1), 2**(b-1))`` give NaN."""
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"dequantize needs integer codes, got dtype {codes.dtype}")
    table = sign_magnitude_table(qparams.b, qparams.k, qparams.level_set)
    half = 2 ** (qparams.b - 1)
    position_of_code = torch.argsort(torch.tensor(table.magnitude.level_indices, device=codes.device))
    zero = half - 1
    axis = _check_channels(codes, qparams, channel_axis)
    c = codes.to(torch.int64) if axis is None else _rows(codes.to(torch.int64), axis)
    valid = (c > -half) & (c < half)
    pos = position_of_code[c.abs().clamp(0, half - 1)]
    pos = torch.where(c < 0, zero - pos, zero + pos)
    if axis is None:
        return torch.where(valid, qparams.quantization_levels[pos], float("nan"))
    out = torch.where(valid, torch.gather(qparams.quantization_levels, 1, pos), float("nan"))
    return _unrows(out, codes, axis)


# --------------------------------------------------------------------------
# learnable alpha


def reciprocal(alpha: Tensor) -> Tensor:
    """Correctly rounded float32 ``1 / alpha`` by the same steps as
    ``apot_jax.paper.reciprocal`` (0 where subnormal, and for zero, subnormal
    and ``+inf`` alpha; NaN for negative or NaN alpha)."""
    alpha = _levels.flush_subnormal(alpha.to(torch.float32))
    normal = torch.isfinite(alpha) & (alpha > 0)
    bits = _float32.bits(torch.where(normal, alpha, torch.ones_like(alpha)))
    e = ((bits >> 23) & 0xFF) - 127
    m = _float32.from_bits((bits & 0x007FFFFF) | (127 << 23))
    q = 1.0 / m
    inf = torch.full_like(q, float("inf"))
    below = torch.nextafter(q, -inf)
    above = torch.nextafter(q, inf)
    candidates = torch.stack([torch.nextafter(below, -inf), below, q, above, torch.nextafter(above, inf)])
    # 2**48 * (1 - c * m) exactly, in int64 (JAX gets the same integer from a
    # wrapping int32 product)
    big_c = (candidates * 2.0**25).to(torch.int64)
    big_m = (m * 2.0**23).to(torch.int64)
    residual = 2**48 - big_c * big_m
    best = torch.gather(candidates, 0, residual.abs().argmin(dim=0, keepdim=True))[0]
    r = _float32.scale_by_power_of_two(best, -e)
    r = torch.where(normal, r, torch.zeros_like(r))
    return torch.where((alpha < 0) | torch.isnan(alpha), float("nan"), r)


def alpha_grad_elements(x: Tensor, alpha: Tensor, y: Tensor, scheme: str = "sign-magnitude") -> Tensor:
    """Per-element ``d y / d alpha`` (see ``apot_jax.paper.alpha_grad_elements``):
    ``sign(x)`` outside ``[-alpha, alpha]``, ``(y - x) * reciprocal(alpha)``
    inside (subnormals flushed), 0 for NaN ``x`` (and, unsigned, for
    ``x < 0``); float32 like ``x``."""
    x = _levels.flush_subnormal(x.to(torch.float32))
    alpha = alpha.to(torch.float32)
    diff = _levels.flush_subnormal(y.to(torch.float32) - x)
    inside = _levels.flush_subnormal(diff * reciprocal(alpha))
    outside = torch.where(x > 0, 1.0, -1.0)
    g = torch.where(ste_mask(x, alpha), inside, outside)
    if scheme == "unsigned":
        g = torch.where(x < 0, 0.0, g)
    return torch.where(torch.isnan(x), 0.0, g)


def pairwise_sum(x: Tensor, dims: list[int]) -> Tensor:
    """Sum of float32 ``x`` over ``dims`` (kept as size 1) in the fixed
    pairwise order of ``apot_jax.paper.pairwise_sum`` (partial sums flushed
    when subnormal), so both frameworks give the same bits."""
    x = x.to(torch.float32)
    rest = [i for i in range(x.dim()) if i not in dims]
    kept_shape = [x.shape[i] for i in rest]
    v = _levels.flush_subnormal(x.permute(*dims, *rest).reshape([-1] + kept_shape))
    while v.shape[0] > 1:
        if v.shape[0] % 2:
            v = torch.cat([v, v.new_zeros([1] + kept_shape)])
        v = _levels.flush_subnormal(v[0::2] + v[1::2])
    total = v[0] if v.shape[0] else x.new_zeros(kept_shape)
    return total.reshape([1 if i in dims else x.shape[i] for i in range(x.dim())])


def _broadcast_channel(alpha: Tensor, ndim: int, channel_axis: int | None) -> Tensor:
    if channel_axis is None:
        return alpha
    shape = [1] * ndim
    shape[_channel_axis(channel_axis, ndim)] = alpha.shape[0]
    return alpha.reshape(shape)


def _learnable_forward(
    x: Tensor, alpha: Tensor, b: int, k: int, channel_axis: int | None, scheme: str, level_set: LevelSet = "apot"
) -> Tensor:
    if scheme == "unsigned":
        return APoTQuantizer(*unsigned_qparams(alpha, b=b, k=k, level_set=level_set)).quant_dequant(x)
    return quant_dequant(x, sign_magnitude_qparams(alpha, b=b, k=k, level_set=level_set), channel_axis)


class learnable_fake_quantize_function(torch.autograd.Function):  # noqa: N801 (torch.ao naming)
    """``y = quant_dequant`` of ``x`` with the scheme's qparams for ``alpha``;
    ``dx = dy * (|x| <= alpha)``, ``dalpha = pairwise_sum(dy *
    alpha_grad_elements)`` over the tensor (per channel: over every dim but
    ``channel_axis``), bitwise equal to ``apot_jax``.

    ``apply(x, alpha, b, k, channel_axis, scheme[, level_set])``: ``x``
    floating, any shape; ``alpha`` float32 scalar or ``(C,)``; ``level_set``
    ``"apot"`` when left out. Output: shape and dtype of ``x``.
    """

    @staticmethod
    def forward(
        ctx, x: Tensor, alpha: Tensor, b: int, k: int, channel_axis: int | None, scheme: str, *level_set: LevelSet
    ):
        as_float32(x, "learnable_fake_quantize")
        y = _learnable_forward(x, alpha, b, k, channel_axis, scheme, *level_set)
        ctx.channel_axis, ctx.scheme = channel_axis, scheme
        ctx.static_inputs = 4 + len(level_set)  # b, k, channel_axis, scheme[, level_set]: no gradient
        ctx.save_for_backward(x, alpha, y)
        return y

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        x, alpha, y = ctx.saved_tensors
        channel_axis = ctx.channel_axis
        a = _broadcast_channel(alpha.detach().to(torch.float32), x.dim(), channel_axis)
        grad_x = torch.where(ste_mask(x, a), grad_output, 0.0)
        static = (None,) * ctx.static_inputs
        if not ctx.needs_input_grad[1]:  # an observed (constant) alpha
            return (grad_x, None) + static
        elements = alpha_grad_elements(x, a, y, ctx.scheme)
        contributions = _levels.flush_subnormal(grad_output.to(torch.float32) * elements)
        if channel_axis is None:
            grad_alpha = pairwise_sum(contributions, list(range(x.dim()))).reshape(())
        else:
            axis = _channel_axis(channel_axis, x.dim())
            grad_alpha = pairwise_sum(contributions, [i for i in range(x.dim()) if i != axis]).reshape(-1)
        return (grad_x, grad_alpha.to(alpha.dtype)) + static


def learnable_fake_quantize(
    x: Tensor,
    alpha: Tensor,
    *,
    b: int,
    k: int,
    channel_axis: int | None = None,
    scheme: str = "sign-magnitude",
    level_set: LevelSet = "apot",
) -> Tensor:
    """APoT fake quant with a trainable ``alpha``: sign-magnitude weights or
    (``scheme="unsigned"``) the unsigned table for activations, over the
    ``level_set``'s levels (see ``apot_jax.paper.learnable_fake_quantize``
    for shapes, gradients and errors)."""
    _check_scheme(scheme, b, k, level_set)
    if channel_axis is not None:
        if scheme != "sign-magnitude":
            raise ValueError("per-channel alpha is for sign-magnitude weights")
        _channel_axis(channel_axis, x.dim())
    elif alpha.dim() != 0:
        raise ValueError(f"per-tensor quantization needs a scalar alpha, got shape {tuple(alpha.shape)}")
    return learnable_fake_quantize_function.apply(x, alpha, int(b), int(k), channel_axis, scheme, level_set)


@torch.no_grad()
def fit_alpha(
    x: Tensor,
    *,
    b: int,
    k: int,
    scheme: str = "unsigned",
    channel_axis: int | None = None,
    candidates: int = 64,
    level_set: LevelSet = "apot",
) -> Tensor:
    """A starting alpha for :func:`learnable_fake_quantize`, fitted to data:
    of ``top * i / candidates`` (``i = 1..candidates``, ``top`` the largest
    value of ``x``, sign-magnitude: magnitude, per channel: of each channel)
    the first with the least ``pairwise_sum((y - x)**2)``, bitwise as
    ``apot_jax.paper.fit_alpha`` (see there for the arguments and errors).

    ``x``: floating, any non-empty shape, finite, ``top > 0``, e.g. a layer's
    inputs on a calibration batch; it is not modified. Returns float32 alpha
    on ``x``'s device, a scalar or ``(C,)`` along ``channel_axis``. To start
    a module's training there: ``fq.alpha.copy_(fit_alpha(...))`` under
    ``torch.no_grad()``.
    """
    x = as_float32(x, "fit_alpha")
    _check_scheme(scheme, b, k, level_set)
    if channel_axis is None:
        rows = x.reshape(1, -1)
    elif scheme != "sign-magnitude":
        raise ValueError("per-channel alpha is for sign-magnitude weights")
    else:
        rows = _rows(x, _channel_axis(channel_axis, x.dim()))
    if rows.numel() == 0 or not bool(torch.isfinite(rows).all()):
        raise ValueError("fit_alpha needs a non-empty, finite x")
    magnitude = scheme == "sign-magnitude"
    top = (rows.abs() if magnitude else rows).amax(dim=1).cpu().numpy()
    grid = torch.from_numpy(fit_alpha_grid(top, candidates, "magnitude" if magnitude else "value")).to(x.device)
    axis = None if channel_axis is None else 0
    errors = []
    for alphas in grid:
        a = alphas if axis is not None else alphas[0]
        d = _learnable_forward(rows, a, int(b), int(k), axis, scheme, level_set) - rows
        errors.append(pairwise_sum(d * d, [1]).reshape(-1))
    best = torch.argmin(torch.stack(errors), dim=0)  # the first minimum
    alpha = torch.gather(grid, 0, best[None, :])[0]
    return alpha.reshape(()) if channel_axis is None else alpha


# --------------------------------------------------------------------------
# weight normalization


def normalize_weight(w: Tensor, channel_axis: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(w_hat, mean, std)`` with ``w_hat = (w - mean) / std`` over the tensor
    (or per channel), unbiased std, statistics detached (constants for the
    gradient), zero std giving ``w_hat = 0``; computed by the same steps as
    ``apot_jax.paper.normalize_weight``, bit for bit."""
    w = w.to(torch.float32)
    if channel_axis is None:
        dims = list(range(w.dim()))
    else:
        axis = _channel_axis(channel_axis, w.dim())
        dims = [i for i in range(w.dim()) if i != axis]
    count = 1
    for i in dims:
        count *= w.shape[i]
    if count < 2:
        raise ValueError(f"weight normalization needs at least 2 elements per statistic, got {count}")
    stats_of = w.detach()
    # the same fixed-order sums and multiplies by host-rounded constants as apot_jax
    one_over_count = torch.tensor(1 / count, dtype=torch.float32, device=w.device)
    one_over_dof = torch.tensor(1 / (count - 1), dtype=torch.float32, device=w.device)
    mean = _levels.flush_subnormal(pairwise_sum(stats_of, dims) * one_over_count)
    var = pairwise_sum((stats_of - mean).square(), dims) * one_over_dof
    # torch's vectorised float32 sqrt on CPU is not always correctly rounded
    # (XLA's is); the float64 root rounded to float32 is (53 >= 2 * 24 + 2 bits)
    std = var.double().sqrt().float()
    return _levels.flush_subnormal((w - mean) * reciprocal(std)), mean, std


def paper_weight_quant(
    w: Tensor,
    alpha: Tensor,
    *,
    b: int,
    k: int,
    normalize: bool = True,
    channel_axis: int | None = None,
    level_set: LevelSet = "apot",
) -> Tensor:
    """``std * learnable_fake_quantize((w - mean) / std, alpha)`` with
    ``normalize``, else ``learnable_fake_quantize(w, alpha)``, sign-magnitude
    levels of ``level_set`` (see ``apot_jax.paper.paper_weight_quant``)."""
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
    "learnable_fake_quantize_function",
    "normalize_weight",
    "pairwise_sum",
    "paper_weight_quant",
    "quant_dequant",
    "reciprocal",
    "quantize",
    "sign_magnitude_qparams",
    "unsigned_qparams",
]
