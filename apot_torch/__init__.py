"""The installable torch reference of PyTorch's APoT prototype, fixed and vectorised."""

from apot_common.config import APoTConfig, LearnableAPoTConfig, SignMagnitudeConfig, UniformConfig
from apot_torch.export import (
    ExportedWeight,
    conv_from_codes,
    dequantize_weight,
    export_weight,
    linear_from_codes,
    shift_add_matmul,
)
from apot_torch.fake_quantize_function import fake_quantize_function, ste_mask
from apot_torch.fake_quantize_module import (
    APoTFakeQuantize,
    LearnableAPoTFakeQuantize,
    SignMagnitudeFakeQuantize,
    from_config,
)
from apot_torch.linear import LinearAPoT
from apot_torch.observer import APoTObserver, calculate_qparams, observe, observed_alpha
from apot_torch.paper import (
    SignMagnitudeQParams,
    alpha_grad_elements,
    learnable_fake_quantize,
    learnable_fake_quantize_function,
    normalize_weight,
    paper_weight_quant,
    sign_magnitude_qparams,
)
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
    "APoTConfig",
    "APoTFakeQuantize",
    "APoTObserver",
    "APoTQuantizer",
    "ExportedWeight",
    "LearnableAPoTConfig",
    "LearnableAPoTFakeQuantize",
    "LinearAPoT",
    "SignMagnitudeConfig",
    "SignMagnitudeFakeQuantize",
    "SignMagnitudeQParams",
    "TensorAPoT",
    "UniformConfig",
    "alpha_grad_elements",
    "calculate_qparams",
    "conv_from_codes",
    "dequantize_APoT",
    "dequantize_weight",
    "export_weight",
    "fake_quantize_function",
    "from_config",
    "learnable_fake_quantize",
    "learnable_fake_quantize_function",
    "linear_from_codes",
    "normalize_weight",
    "observe",
    "observed_alpha",
    "paper_weight_quant",
    "quant_dequant_APoT",
    "quantize_APoT",
    "shift_add_matmul",
    "sign_magnitude_qparams",
    "ste_mask",
]
