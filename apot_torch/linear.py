"""``LinearAPoT``: the prototype's shift-add linear layer, vectorised.

The prototype quantizes the weight to APoT codes and multiplies each integer
activation ``r`` by each code ``c`` with shifts and adds: for every set bit
``t`` of ``c`` it adds ``r << t``, so each product is exactly ``r * c`` and the
layer computes ``activation @ codes.T`` (its own test compares it with an
``nn.Linear`` whose weight is the codes as floats). This module keeps that
result and the prototype's public methods, but works on whole tensors: one
matmul per bit plane of the codes instead of three nested Python loops over
elements and the bits of their ``bin()`` strings.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.ao.nn.quantized.modules.utils import WeightedQuantizedModule

from apot_common.tables import validate_bits
from apot_torch.observer import APoTObserver
from apot_torch.quantizer import NAN_CODE, quantize_APoT

#: float64 represents every integer below this exactly, so a matmul of integers
#: whose absolute values sum to less is exact in any summation order.
_FLOAT64_EXACT = 2**53
_INT64_LIMIT = 2**63


class LinearAPoT(WeightedQuantizedModule):
    """Linear layer (no bias) with an APoT-quantized weight and integer activations.

    Args:
      weight2quantize: floating ``(out_features, in_features)`` weight, no NaN.
        It is observed and quantized once, with the unsigned table like the
        prototype (negative weights round to the code of level 0).
      b, k: APoT bits (``b % k == 0``).

    Buffers: ``weight`` (int32 ``(out_features, in_features)`` APoT codes) and
    the qparams ``alpha``, ``gamma`` (float32 scalars),
    ``quantization_levels`` (float32 ``(2**b,)``), ``level_indices`` (int32
    ``(2**b,)``).

    Raises:
      ValueError: weight not 2-D or containing NaN, or invalid ``(b, k)``.
    """

    weight: Tensor
    alpha: Tensor
    gamma: Tensor
    quantization_levels: Tensor
    level_indices: Tensor

    def __init__(self, weight2quantize: Tensor, b: int, k: int) -> None:
        if weight2quantize.dim() != 2:
            raise ValueError(f"LinearAPoT needs a 2-D weight, got shape {tuple(weight2quantize.shape)}")
        n = validate_bits(b, k)
        super().__init__()
        self.n = n
        self.b = int(b)
        self.k = int(k)
        observer = APoTObserver(b=self.b, k=self.k).to(weight2quantize.device)
        observer(weight2quantize)
        qparams = observer.calculate_qparams(signed=False)
        codes = quantize_APoT(weight2quantize, *qparams).int_repr()
        if bool((codes == NAN_CODE).any()):
            raise ValueError("LinearAPoT needs a weight without NaN (NaN has no APoT code)")
        for name, value in zip(("alpha", "gamma", "quantization_levels", "level_indices"), qparams):
            self.register_buffer(name, value)
        self.register_buffer("weight", codes)

    @property
    def weight_transposed(self) -> Tensor:
        """The codes as ``(in_features, out_features)``, for ``y = x @ W.T``."""
        return self.weight.t()

    def decompose_APoT(self, x: Tensor) -> Tensor:  # noqa: N802 (prototype name)
        """Split integer APoT codes into their ``n`` k-bit blocks.

        Args:
          x: integer tensor of codes in ``[0, 2**b)``, any shape.

        Returns:
          int64 tensor of shape ``x.shape + (n,)``; block 0 holds the most
          significant bits, i.e. the index into ``P_0`` of the term of each code.
          (The prototype split ``bin(code)`` without leading zeros, so its
          blocks were misaligned when the bit length was not a multiple of
          ``k``; only their concatenation mattered there, and it is the same.)
        """
        x = x.to(torch.int64)
        shifts = self.k * torch.arange(self.n - 1, -1, -1, device=x.device)
        return (x[..., None] >> shifts) & (2**self.k - 1)

    def bitshift_mul(self, weight_val: Tensor, r: Tensor) -> Tensor:
        """``r * code`` by shifts and adds, element-wise.

        Args:
          weight_val: ``(..., n)`` blocks from ``decompose_APoT``.
          r: integer activations, broadcastable to ``weight_val.shape[:-1]``.

        Returns:
          int64 products ``sum over set bits t of the code of (r << t)``, with
          the blocks read from the least significant one up, as the prototype.
        """
        r = r.to(torch.int64)
        shape = torch.broadcast_shapes(weight_val.shape[:-1], r.shape)
        product = torch.zeros(shape, dtype=torch.int64, device=r.device)
        place = 0
        for block in reversed(weight_val.unbind(-1)):
            for bit in range(self.k):
                product += torch.where((block >> bit) & 1 == 1, r << place, 0)
                place += 1
        return product

    def matmul(self, decomposed_weight: Tensor, activation: Tensor) -> Tensor:
        """Shift-add product of integer activations and decomposed codes.

        Args:
          decomposed_weight: ``(in_features, out_features, n)`` blocks of the
            transposed weight (``decompose_APoT(weight_transposed)``).
          activation: ``(rows, in_features)`` integer values (int64).

        Returns:
          int64 ``(rows, out_features)``, exactly ``activation @ codes``: for
          each bit ``t`` of the codes, ``(activation @ bit_plane_t) << t``.

        Raises:
          ValueError: activations too large for the product to be exact
            (``max|activation| * in_features`` must stay below ``2**53`` and
            times ``2**b - 1`` below ``2**63``).
        """
        if activation.is_floating_point() or activation.is_complex():
            raise TypeError(f"LinearAPoT.matmul needs integer activations, got dtype {activation.dtype}")
        # the bound from Python ints of the extremes: abs() of int64's minimum
        # wraps, and a cast of a wider or unsigned dtype could too
        peak = max(int(activation.max()), -int(activation.min())) if activation.numel() else 0
        bound = peak * activation.shape[1]
        activation = activation.to(torch.int64)
        if bound >= _FLOAT64_EXACT or bound * (2**self.b - 1) >= _INT64_LIMIT:
            raise ValueError(
                f"LinearAPoT: max|activation| * in_features = {bound} is too large for an exact product"
            )
        # Each bit plane is a 0/1 matrix: the float64 matmul of integers whose
        # absolute values sum below 2**53 is exact whatever the BLAS order.
        a = activation.to(torch.float64)
        result = torch.zeros(activation.shape[0], decomposed_weight.shape[1], dtype=torch.int64, device=a.device)
        place = 0
        for block in reversed(decomposed_weight.unbind(-1)):
            for bit in range(self.k):
                plane = ((block >> bit) & 1).to(torch.float64)
                result += (a @ plane).to(torch.int64) << place
                place += 1
        return result

    def forward(self, activation: Tensor) -> Tensor:
        """Shift-add linear layer.

        Args:
          activation: ``(rows, in_features)`` uniformly quantized activation:
            a quantized tensor (its dequantized values are used) or a real
            tensor of integer values; values are truncated toward zero, as the
            prototype's ``int()``.

        Returns:
          float32 ``(rows, out_features)``: the exact integer product
          ``trunc(activation) @ codes.T``, rounded once to float32.

        Raises:
          ValueError: not 2-D, or non-finite values.
        """
        if activation.dim() != 2:
            raise ValueError(f"LinearAPoT needs a 2-D activation, got shape {tuple(activation.shape)}")
        if activation.is_quantized:
            activation = activation.dequantize()
        if activation.is_complex():
            raise TypeError(f"LinearAPoT needs real activations, got dtype {activation.dtype}")
        if activation.is_floating_point():
            if not bool(torch.isfinite(activation).all()):
                raise ValueError("LinearAPoT needs finite activations")
            # range-check before the cast to int64 (1e30 would wrap there)
            peak = float(activation.detach().abs().max().trunc()) if activation.numel() else 0.0
            if peak * activation.shape[1] >= _FLOAT64_EXACT:
                raise ValueError(
                    f"LinearAPoT: max|activation| = {peak:g} times in_features = {activation.shape[1]} is too "
                    f"large for an exact product (limit 2**53)"
                )
        decomposed = self.decompose_APoT(self.weight_transposed)
        return self.matmul(decomposed, activation.to(torch.int64)).to(torch.float32)

    @classmethod
    def from_reference(cls, ref_qlinear, alpha, gamma, quantization_levels, level_indices):  # type: ignore[override]
        """Not implemented, as in the prototype (required by ``WeightedQuantizedModule``)."""
        raise NotImplementedError("LinearAPoT.from_reference is not implemented (nor was it in the prototype)")

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, b={self.b}, k={self.k}"


__all__ = [
    "LinearAPoT",
]
