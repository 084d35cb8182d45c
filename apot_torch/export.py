"""Export of a paper-recipe linear or convolution layer to integer APoT codes,
and inference from them. Mirrors ``apot_jax/export.py`` in torch's weight
layout, ``(out, in)`` or ``(out, in, *window)`` (per-channel alpha along dim
0, the output features); see that module and ``docs/numerics.md`` section 9.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from apot_common.tables import LevelSet, check_export_codes, export_code_dtype, sign_magnitude_table
from apot_torch import paper


@dataclasses.dataclass(frozen=True)
class ExportedWeight:
    """An exported linear weight ``(out, in)`` or convolution weight ``(out, in, *window)``.

    Attributes:
      codes: int8 (``b <= 8``), int16 (``b <= 16``) or int32 signed codes, the weight's shape.
      alpha, gamma: float32 ``()`` or ``(out,)``.
      scale: float32 ``(1, 1, ...)`` or ``(out, 1, ...)`` (the weight's
        rank): the normalization std (1 without normalization).
      bias: float32 ``(out,)`` or ``None``.
      b, k, per_channel: the configuration.
      level_set: ``"apot"``, ``"paper"`` or ``"paper-pot"`` (``k`` is 0 for
        the paper's sets; see ``apot_jax.export.ExportedKernel``).
    """

    codes: Tensor
    alpha: Tensor
    gamma: Tensor
    scale: Tensor
    bias: Tensor | None
    b: int
    k: int
    per_channel: bool
    level_set: LevelSet = "apot"

    def code_bytes(self) -> int:
        """Bytes of the codes packed at ``b`` bits each."""
        return -(-self.codes.numel() * self.b // 8)

    def total_bytes(self) -> int:
        """Packed codes plus the float32 alpha, gamma, scale and bias."""
        floats = self.alpha.numel() + self.gamma.numel() + self.scale.numel()
        return self.code_bytes() + 4 * (floats + (0 if self.bias is None else self.bias.numel()))


def _axis(per_channel: bool) -> int | None:
    return 0 if per_channel else None


@torch.no_grad()
def export_weight(
    weight: Tensor,
    alpha: Tensor,
    *,
    b: int,
    k: int,
    normalize: bool = True,
    per_channel: bool = False,
    bias: Tensor | None = None,
    level_set: LevelSet = "apot",
) -> ExportedWeight:
    """Codes and scales of a trained weight (``(out, in)`` or ``(out, in,
    *window)``) and its alpha (``()``, or ``(out,)`` with ``per_channel``),
    as ``paper_weight_quant`` with ``channel_axis=0`` quantized it
    (``level_set`` as there).

    Raises:
      ValueError: a weight of rank < 2, or with NaN (no code); a ``(b, k)``
        or ``level_set`` that ``sign_magnitude_qparams`` refuses.
    """
    weight = weight.detach().to(torch.float32)
    if weight.dim() < 2:
        raise ValueError(f"export_weight needs a weight of rank >= 2, got shape {tuple(weight.shape)}")
    axis = _axis(per_channel)
    scale_shape = (weight.shape[0] if per_channel else 1,) + (1,) * (weight.dim() - 1)
    if normalize:
        w_hat, _, scale = paper.normalize_weight(weight, axis)
    else:
        w_hat, scale = weight, torch.ones(scale_shape, device=weight.device)
    qparams = paper.sign_magnitude_qparams(alpha.detach(), b=b, k=k, level_set=level_set)
    codes = paper.quantize(w_hat, qparams, axis)
    if bool((codes == sign_magnitude_table(b, k, level_set).nan_code).any()):
        raise ValueError("export_weight needs a weight without NaN (NaN has no code)")
    return ExportedWeight(
        codes=codes.to(getattr(torch, export_code_dtype(b).name)),
        alpha=qparams.alpha,
        gamma=qparams.gamma,
        scale=scale.reshape(scale_shape),
        bias=None if bias is None else bias.detach().to(torch.float32),
        b=b,
        k=qparams.k,
        per_channel=per_channel,
        level_set=qparams.level_set,
    )


def dequantize_weight(exported: ExportedWeight) -> Tensor:
    """float32 weight (the codes' shape): the codes' levels times the scale,
    equal bit for bit to the fake-quant weight of ``paper_weight_quant``."""
    qparams = paper.sign_magnitude_qparams(exported.alpha, b=exported.b, k=exported.k, level_set=exported.level_set)
    return paper.dequantize(exported.codes, qparams, _axis(exported.per_channel)) * exported.scale


def linear_from_codes(x: Tensor, exported: ExportedWeight) -> Tensor:
    """``x (..., in)`` -> ``x @ dequantize_weight.T + bias`` ``(..., out)``."""
    if exported.codes.dim() != 2:
        raise ValueError(f"linear_from_codes needs a 2-D weight, got shape {tuple(exported.codes.shape)}")
    return torch.nn.functional.linear(x.to(torch.float32), dequantize_weight(exported), exported.bias)


_CONV = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d, 3: torch.nn.functional.conv3d}


def conv_from_codes(
    x: Tensor, exported: ExportedWeight, stride: int | tuple[int, ...] = 1, padding: str | int | tuple[int, ...] = 0
) -> Tensor:
    """The convolution of ``x`` ``(N, in, *spatial)`` (torch's layout) with the
    dequantized ``(out, in, *window)`` weight, plus the bias, as
    ``torch.nn.functional.conv{1,2,3}d``: ``(N, out, *spatial_out)``, float32."""
    conv = _CONV.get(exported.codes.dim() - 2)
    if conv is None:
        raise ValueError(f"conv_from_codes needs a 3-D to 5-D weight, got shape {tuple(exported.codes.shape)}")
    return conv(x.to(torch.float32), dequantize_weight(exported), exported.bias, stride=stride, padding=padding)


def _apot_magnitude(exported: ExportedWeight, what: str):
    """The APoT magnitude table of an ``"apot"`` export; ``ValueError`` for the
    paper's level sets (no exact shift-and-add form: see ``apot_jax.export``)."""
    if exported.level_set != "apot":
        raise ValueError(
            f"{what} needs an export of the APoT (b, k) tables; level_set={exported.level_set!r} "
            "(the paper's sets, normalised by their max) has no exact shift-and-add form: use dequantize_weight"
        )
    return sign_magnitude_table(exported.b, exported.k).magnitude


def integer_weights(exported: ExportedWeight) -> tuple[Tensor, int]:
    """``(I, D)``: the weight's levels are ``gamma * I / 2**D`` exactly, ``I``
    int64 ``(out, in)``, each a signed sum of at most ``n`` powers of two.

    Raises:
      ValueError: an export of the paper's level sets (no exact integer
        form, see ``apot_jax.export``), or a code outside the ``b``-bit range.
    """
    table = _apot_magnitude(exported, "integer_weights")
    check_export_codes(exported.codes.cpu().numpy(), exported.b)
    d = table.n * (2**table.k - 1) - 1
    magnitude = torch.tensor(table.base_sum, dtype=torch.float64, device=exported.codes.device)
    magnitude = torch.round(magnitude * 2.0**d).to(torch.int64)
    codes = exported.codes.to(torch.int64)
    return torch.sign(codes) * magnitude[codes.abs()], d


def shift_add_matmul(x_int: Tensor, exported: ExportedWeight) -> Tensor:
    """Exact ``x_int @ I.T`` by shifts and adds (``apot_jax.export.shift_add_matmul``).

    Args:
      x_int: integer ``(rows, in)`` activations.

    Returns:
      int64 ``(rows, out)``: for each term ``i`` and each of its exponents,
      the ``{-1, 0, 1}`` plane of the weights using that power of two,
      multiplied with ``x_int`` and shifted into place.
    """
    if x_int.is_floating_point() or x_int.dim() != 2:
        raise ValueError("shift_add_matmul needs a 2-D integer activation")
    if exported.codes.dim() != 2:
        raise ValueError(f"shift_add_matmul needs a 2-D (linear) weight, got shape {tuple(exported.codes.shape)}")
    if x_int.is_complex() or x_int.dtype == torch.bool:
        raise ValueError(f"shift_add_matmul needs a 2-D integer activation, got dtype {x_int.dtype}")
    table = _apot_magnitude(exported, "shift_add_matmul")
    check_export_codes(exported.codes.cpu().numpy(), exported.b)
    n, k = table.n, table.k
    d = n * (2**k - 1) - 1
    # overflow check on Python ints of the extremes, before any cast:
    # |x @ I| <= max|x| * in * max|I|, max|I| < 2**(d + 1)
    peak = max(int(x_int.max()), -int(x_int.min())) if x_int.numel() else 0
    if peak * x_int.shape[1] * 2 ** (d + 1) >= 2**63:
        raise ValueError(f"shift_add_matmul: max|x_int| = {peak} times in = {x_int.shape[1]} times 2**{d + 1} "
                         "would overflow int64")
    codes = exported.codes.to(torch.int64)
    sign, magnitude = torch.sign(codes), codes.abs()
    x = x_int.to(torch.int64)
    out = torch.zeros((x.shape[0], codes.shape[0]), dtype=torch.int64, device=x.device)
    for i in range(n):
        block = (magnitude >> (k * (n - 1 - i))) & (2**k - 1)
        for j in range(1, 2**k):
            plane = torch.where(block == j, sign, 0)
            out += (x @ plane.T) << (d - i - (j - 1) * n)
    return out


__all__ = [
    "ExportedWeight",
    "conv_from_codes",
    "dequantize_weight",
    "export_weight",
    "integer_weights",
    "linear_from_codes",
    "shift_add_matmul",
]
