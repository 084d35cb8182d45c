"""The installable torch reference of PyTorch's APoT prototype, fixed and vectorised."""

from apot_torch.fake_quantize_module import APoTFakeQuantize
from apot_torch.fake_quantize_function import fake_quantize_function, ste_mask
from apot_torch.linear import LinearAPoT
from apot_torch.observer import APoTObserver, calculate_qparams, observe
from apot_torch.quantizer import (
    NAN_CODE,
    APoTQuantizer,
    TensorAPoT,
    dequantize_APoT,
    quant_dequant_APoT,
    quantize_APoT,
)

__all__ = [
    "NAN_CODE",
    "APoTFakeQuantize",
    "APoTObserver",
    "APoTQuantizer",
    "LinearAPoT",
    "TensorAPoT",
    "calculate_qparams",
    "dequantize_APoT",
    "fake_quantize_function",
    "observe",
    "quant_dequant_APoT",
    "quantize_APoT",
    "ste_mask",
]
