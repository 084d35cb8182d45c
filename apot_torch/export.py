"""Export of a paper-recipe linear layer to integer APoT codes, and inference
from them. Mirrors ``apot_jax/export.py`` in torch's ``(out, in)`` weight
layout (per-channel alpha along dim 0, the output features); see that module
and ``docs/numerics.md`` section 9.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from apot_common.tables import sign_magnitude_table
from apot_torch import paper


@dataclasses.dataclass(frozen=True)
class ExportedLinear:
    """An exported linear layer (weight ``(out_features, in_features)``).

    Attributes:
      codes: int8 (``b <= 8``, else int16) ``(out, in)`` signed codes.
      alpha, gamma: float32 ``()`` or ``(out,)``.
      scale: float32 ``(1, 1)`` or ``(out, 1)``: the normalization std (1
        without normalization).
      bias: float32 ``(out,)`` or ``None``.
      b, k, per_channel: the configuration.
    """

    codes: Tensor
    alpha: Tensor
    gamma: Tensor
    scale: Tensor
    bias: Tensor | None
    b: int
    k: int
    per_channel: bool

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
def export_linear(
    weight: Tensor,
    alpha: Tensor,
    *,
    b: int,
    k: int,
    normalize: bool = True,
    per_channel: bool = False,
    bias: Tensor | None = None,
) -> ExportedLinear:
    """Codes and scales of a trained ``(out, in)`` weight and its alpha.

    Raises:
      ValueError: not a 2-D weight, or a weight with NaN (no code).
    """
    weight = weight.detach().to(torch.float32)
    if weight.dim() != 2:
        raise ValueError(f"export_linear needs a 2-D weight, got shape {tuple(weight.shape)}")
    axis = _axis(per_channel)
    if normalize:
        w_hat, _, scale = paper.normalize_weight(weight, axis)
    else:
        w_hat, scale = weight, torch.ones((weight.shape[0] if per_channel else 1, 1), device=weight.device)
    qparams = paper.sign_magnitude_qparams(alpha.detach(), b=b, k=k)
    codes = paper.quantize(w_hat, qparams, axis)
    if bool((codes == sign_magnitude_table(b, k).nan_code).any()):
        raise ValueError("export_linear needs a weight without NaN (NaN has no code)")
    return ExportedLinear(
        codes=codes.to(torch.int8 if b <= 8 else torch.int16),
        alpha=qparams.alpha,
        gamma=qparams.gamma,
        scale=scale.reshape(-1, 1),
        bias=None if bias is None else bias.detach().to(torch.float32),
        b=b,
        k=k,
        per_channel=per_channel,
    )


def dequantize_weight(exported: ExportedLinear) -> Tensor:
    """float32 ``(out, in)`` weight: the codes' levels times the scale, equal
    bit for bit to the fake-quant weight of ``paper_weight_quant``."""
    qparams = paper.sign_magnitude_qparams(exported.alpha, b=exported.b, k=exported.k)
    return paper.dequantize(exported.codes, qparams, _axis(exported.per_channel)) * exported.scale


def linear_from_codes(x: Tensor, exported: ExportedLinear) -> Tensor:
    """``x (..., in)`` -> ``x @ dequantize_weight.T + bias`` ``(..., out)``."""
    return torch.nn.functional.linear(x.to(torch.float32), dequantize_weight(exported), exported.bias)


def integer_weights(exported: ExportedLinear) -> tuple[Tensor, int]:
    """``(I, D)``: the weight's levels are ``gamma * I / 2**D`` exactly, ``I``
    int64 ``(out, in)``, each a signed sum of at most ``n`` powers of two."""
    table = sign_magnitude_table(exported.b, exported.k).magnitude
    d = table.n * (2**table.k - 1) - 1
    magnitude = torch.tensor(table.base_sum, dtype=torch.float64, device=exported.codes.device)
    magnitude = torch.round(magnitude * 2.0**d).to(torch.int64)
    codes = exported.codes.to(torch.int64)
    return torch.sign(codes) * magnitude[codes.abs()], d


def shift_add_matmul(x_int: Tensor, exported: ExportedLinear) -> Tensor:
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
    table = sign_magnitude_table(exported.b, exported.k).magnitude
    n, k = table.n, table.k
    d = n * (2**k - 1) - 1
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
    "ExportedLinear",
    "dequantize_weight",
    "export_linear",
    "integer_weights",
    "linear_from_codes",
    "shift_add_matmul",
]
