"""APoT (Additive Powers-of-Two) quantization for JAX, bit-exact to ``apot_torch``."""

from apot_jax.fake_quantize_function import fake_quantize, ste_mask
from apot_jax.observer import (
    APoTQParams,
    ObserverState,
    calculate_qparams,
    init_observer_state,
    observe,
)
from apot_jax.quantizer import NAN_CODE, dequantize, quant_dequant, quantize

__all__ = [
    "APoTQParams",
    "NAN_CODE",
    "ObserverState",
    "calculate_qparams",
    "dequantize",
    "fake_quantize",
    "init_observer_state",
    "observe",
    "quant_dequant",
    "quantize",
    "ste_mask",
]
