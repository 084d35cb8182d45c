"""The convolution of the JAX layers and of ``apot_jax.export.conv_from_codes``
(channels last, like ``nn.Conv``), and its stride helper; no Flax. Internal,
not public API.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from jax import lax


def conv(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
) -> jax.Array:
    # Channels-last, like nn.Conv: x (N, *spatial, C_in), kernel (*window, C_in, C_out).
    spatial = "HWDXYZ"[: kernel.ndim - 2]
    dn = lax.conv_dimension_numbers(x.shape, kernel.shape, (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"))
    y = lax.conv_general_dilated(x, kernel, tuple(strides), padding, dimension_numbers=dn)
    return y if bias is None else y + bias


def as_tuple(value: int | Sequence[int], n: int) -> tuple[int, ...]:
    return (int(value),) * n if isinstance(value, int) else tuple(int(v) for v in value)


__all__ = [
    "as_tuple",
    "conv",
]
