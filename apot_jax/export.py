"""Export of a paper-recipe layer to integer APoT codes, and inference from them.

Mirrors ``apot_torch/export.py``. A Dense or Conv kernel (Flax layout, the
output features last) trained with ``apot_jax.paper.paper_weight_quant`` is
stored as its signed sign-magnitude codes (int8 for ``b <= 8``), alpha and
gamma (per tensor or per output channel), the normalization scale (the
weight's std, see ``paper_weight_quant``) and the float bias. Two inference
paths:

* :func:`dequantize_kernel`, then :func:`dense_from_codes` /
  :func:`conv_from_codes`: the codes' levels times the scale, then the float
  matmul or convolution. The kernel equals the fake-quant kernel bit for
  bit, so the layer output equals the fake-quant layer's.
* :func:`shift_add_matmul`: the prototype's ``LinearAPoT`` idea for integer
  activations: every weight level is ``gamma * I / 2**D`` with ``I`` a sum of
  ``n`` powers of two, so ``x @ I`` is shifts and adds of ``x``; exact in
  integers (``docs/numerics.md`` 9); dense kernels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from apot_common.tables import LevelSet, check_export_codes, export_code_dtype, sign_magnitude_table
from apot_jax import paper
from apot_jax._conv import as_tuple, conv


@dataclasses.dataclass(frozen=True)
class ExportedKernel:
    """An exported Dense kernel ``(in, out)`` or Conv kernel ``(*window, in, out)``.

    Attributes:
      codes: int8 (``b <= 8``), int16 (``b <= 16``) or int32 signed codes, the kernel's shape.
      alpha, gamma: float32 ``()`` or ``(out,)`` (per channel).
      scale: float32 ``(1, ..., 1, 1)`` or ``(1, ..., 1, out)`` (the kernel's
        rank): the normalization std (1 if the layer did not normalize).
      bias: float32 ``(out,)`` or ``None``.
      b, k: the sign-magnitude configuration; per_channel: alpha per output.
      level_set: ``"apot"`` (the ``(b, k)`` tables), ``"paper"`` or
        ``"paper-pot"`` (the paper's ``build_power_value`` magnitudes; codes
        ``+-`` the magnitude's ascending position, ``k`` is 0).
    """

    codes: np.ndarray
    alpha: np.ndarray
    gamma: np.ndarray
    scale: np.ndarray
    bias: np.ndarray | None
    b: int
    k: int
    per_channel: bool
    level_set: LevelSet = "apot"

    def code_bytes(self) -> int:
        """Bytes of the codes packed at ``b`` bits each."""
        return -(-self.codes.size * self.b // 8)

    def total_bytes(self) -> int:
        """Packed codes plus the float32 alpha, gamma, scale and bias."""
        floats = self.alpha.size + self.gamma.size + self.scale.size + (0 if self.bias is None else self.bias.size)
        return self.code_bytes() + 4 * floats


def _axis(per_channel: bool) -> int | None:
    return -1 if per_channel else None


def export_kernel(
    kernel: jax.Array,
    alpha: jax.Array,
    *,
    b: int,
    k: int,
    normalize: bool = True,
    per_channel: bool = False,
    bias: jax.Array | None = None,
    level_set: LevelSet = "apot",
) -> ExportedKernel:
    """Codes and scales of a trained kernel (``(in, out)`` or ``(*window, in,
    out)``, output features last) and its alpha (``()``, or ``(out,)`` with
    ``per_channel``), as ``paper_weight_quant`` with ``channel_axis=-1``
    quantized it (``level_set`` as there: ``"apot"``, ``"paper"`` or ``"paper-pot"``).

    Raises:
      ValueError: a kernel of rank < 2, or with NaN (no code); a ``(b, k)``
        or ``level_set`` that ``sign_magnitude_qparams`` refuses.
    """
    kernel = jnp.asarray(kernel, jnp.float32)
    if kernel.ndim < 2:
        raise ValueError(f"export_kernel needs a kernel of rank >= 2, got shape {kernel.shape}")
    axis = _axis(per_channel)
    scale_shape = (1,) * (kernel.ndim - 1) + (kernel.shape[-1] if per_channel else 1,)
    if normalize:
        w_hat, _, scale = paper.normalize_weight(kernel, axis)
    else:
        w_hat, scale = kernel, jnp.ones(scale_shape, jnp.float32)
    qparams = paper.sign_magnitude_qparams(alpha, b=b, k=k, level_set=level_set)
    codes = np.asarray(paper.quantize(w_hat, qparams, axis))
    if (codes == sign_magnitude_table(b, k, level_set).nan_code).any():
        raise ValueError("export_kernel needs a kernel without NaN (NaN has no code)")
    return ExportedKernel(
        codes=codes.astype(export_code_dtype(b)),
        alpha=np.asarray(qparams.alpha),
        gamma=np.asarray(qparams.gamma),
        scale=np.asarray(scale, np.float32).reshape(scale_shape),
        bias=None if bias is None else np.asarray(bias, np.float32),
        b=b,
        k=qparams.k,
        per_channel=per_channel,
        level_set=qparams.level_set,
    )


def dequantize_kernel(exported: ExportedKernel) -> jax.Array:
    """float32 kernel (the codes' shape): the codes' levels times the scale,
    equal bit for bit to the fake-quant kernel of ``paper_weight_quant``."""
    qparams = paper.sign_magnitude_qparams(
        jnp.asarray(exported.alpha), b=exported.b, k=exported.k, level_set=exported.level_set
    )
    values = paper.dequantize(jnp.asarray(exported.codes), qparams, _axis(exported.per_channel))
    return values * jnp.asarray(exported.scale)


def dense_from_codes(x: jax.Array, exported: ExportedKernel) -> jax.Array:
    """``x (..., in)`` float32 -> ``x @ dequantize_kernel + bias`` ``(..., out)``
    (a Dense kernel)."""
    if exported.codes.ndim != 2:
        raise ValueError(f"dense_from_codes needs a 2-D kernel, got shape {exported.codes.shape}")
    y = jnp.matmul(jnp.asarray(x, jnp.float32), dequantize_kernel(exported))
    return y if exported.bias is None else y + jnp.asarray(exported.bias)


def conv_from_codes(
    x: jax.Array,
    exported: ExportedKernel,
    strides: int | Sequence[int] = 1,
    padding: str | Sequence[tuple[int, int]] = "SAME",
) -> jax.Array:
    """The convolution of ``x`` ``(N, *spatial, in)`` (channels last, like
    ``APoTConv``) with the dequantized ``(*window, in, out)`` kernel, plus
    the bias: ``(N, *spatial_out, out)``, float32."""
    kernel = dequantize_kernel(exported)
    if kernel.ndim < 3:
        raise ValueError(f"conv_from_codes needs a (*window, in, out) kernel, got shape {kernel.shape}")
    bias = None if exported.bias is None else jnp.asarray(exported.bias)
    return conv(jnp.asarray(x, jnp.float32), kernel, bias, as_tuple(strides, kernel.ndim - 2), padding)


def _apot_magnitude(exported: ExportedKernel, what: str):
    """The APoT magnitude table of an ``"apot"`` export; ``ValueError`` for the
    paper's level sets, whose levels ``alpha * fl(s / max)`` are not
    ``gamma * I / 2**D`` with ``I`` an integer sum of powers of two (they are
    normalised by a max such as 5/8 and rounded), so no exact integer path."""
    if exported.level_set != "apot":
        raise ValueError(
            f"{what} needs an export of the APoT (b, k) tables; level_set={exported.level_set!r} "
            "(the paper's sets, normalised by their max) has no exact shift-and-add form: use dequantize_kernel"
        )
    return sign_magnitude_table(exported.b, exported.k).magnitude


def integer_weights(exported: ExportedKernel) -> tuple[np.ndarray, int]:
    """``(I, D)``: the kernel's levels are ``gamma * I / 2**D`` exactly, ``I``
    int64 ``(in, out)`` (sign included), each a sum of at most ``n`` powers of
    two (the APoT terms in units of ``2**-D``).

    Raises:
      ValueError: an export of the paper's level sets (see :func:`_apot_magnitude`),
        or a code outside the ``b``-bit range.
    """
    table = _apot_magnitude(exported, "integer_weights")
    check_export_codes(exported.codes, exported.b)
    d = table.n * (2**table.k - 1) - 1  # the finest term is 2**-d
    magnitude = np.rint(table.base_sum.astype(np.float64) * 2.0**d).astype(np.int64)
    codes = exported.codes.astype(np.int64)
    return np.sign(codes) * magnitude[np.abs(codes)], d


def shift_add_matmul(x_int: np.ndarray, exported: ExportedKernel) -> np.ndarray:
    """Exact ``x_int @ I`` (see :func:`integer_weights`) by shifts and adds.

    Args:
      x_int: integer ``(rows, in)`` activations.

    Returns:
      int64 ``(rows, out)``. For each term ``i`` and each exponent choice of
      it, the ``{-1, 0, 1}`` plane of the weights using that power of two is
      multiplied with ``x_int`` and shifted into place, as ``LinearAPoT``
      does with its bit planes. The float output of the layer is then
      ``result * gamma * 2**-D * scale + bias`` (float rounding differs from
      :func:`dense_from_codes`; see ``docs/numerics.md`` 9).
    """
    x = np.asarray(x_int)
    if not np.issubdtype(x.dtype, np.integer) or x.ndim != 2:
        raise ValueError("shift_add_matmul needs a 2-D integer activation")
    if exported.codes.ndim != 2:
        raise ValueError(f"shift_add_matmul needs a 2-D (Dense) kernel, got shape {exported.codes.shape}")
    table = _apot_magnitude(exported, "shift_add_matmul")
    check_export_codes(exported.codes, exported.b)
    n, k = table.n, table.k
    d = n * (2**k - 1) - 1
    # overflow check on Python ints of the extremes, before any cast:
    # |x @ I| <= max|x| * in * max|I|, max|I| < 2**(d + 1)
    peak = max(int(x.max()), -int(x.min())) if x.size else 0
    if peak * x.shape[1] * 2 ** (d + 1) >= 2**63:
        raise ValueError(f"shift_add_matmul: max|x_int| = {peak} times in = {x.shape[1]} times 2**{d + 1} "
                         "would overflow int64")
    codes = exported.codes.astype(np.int64)
    sign, magnitude = np.sign(codes), np.abs(codes)
    x = x.astype(np.int64)
    out = np.zeros((x.shape[0], codes.shape[1]), np.int64)
    for i in range(n):
        # term i of code c is block i (most significant first), j > 0 meaning 2**-(i + (j - 1) * n)
        block = (magnitude >> (k * (n - 1 - i))) & (2**k - 1)
        for j in range(1, 2**k):
            plane = np.where(block == j, sign, 0)
            out += (x @ plane) << (d - i - (j - 1) * n)
    return out


__all__ = [
    "ExportedKernel",
    "conv_from_codes",
    "dense_from_codes",
    "dequantize_kernel",
    "export_kernel",
    "integer_weights",
    "shift_add_matmul",
]
