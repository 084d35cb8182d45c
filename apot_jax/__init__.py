"""APoT (Additive Powers-of-Two) quantization for JAX, bit-exact to ``apot_torch``."""

from apot_common.config import APoTConfig, LearnableAPoTConfig, SignMagnitudeConfig, UniformConfig
from apot_jax.fake_quantize_function import fake_quantize, ste_mask
from apot_jax.observer import (
    APoTQParams,
    ObserverState,
    calculate_qparams,
    init_observer_state,
    observe,
    observed_alpha,
)
from apot_jax.paper import (
    SignMagnitudeQParams,
    alpha_grad_elements,
    learnable_fake_quantize,
    normalize_weight,
    paper_weight_quant,
    sign_magnitude_qparams,
)
from apot_jax.quantizer import NAN_CODE, dequantize, quant_dequant, quantize

__all__ = [
    "APoTConfig",
    "APoTQParams",
    "LearnableAPoTConfig",
    "SignMagnitudeConfig",
    "UniformConfig",
    "NAN_CODE",
    "ObserverState",
    "SignMagnitudeQParams",
    "alpha_grad_elements",
    "calculate_qparams",
    "dequantize",
    "fake_quantize",
    "init_observer_state",
    "learnable_fake_quantize",
    "normalize_weight",
    "observe",
    "observed_alpha",
    "paper_weight_quant",
    "quant_dequant",
    "quantize",
    "sign_magnitude_qparams",
    "ste_mask",
]

# Flax modules, conversion and training helpers: imported on first use, so
# that ``import apot_jax`` for the pure functions does not import Flax.
_LAZY_EXPORTS = {
    "APoTFakeQuantize": "apot_jax.fake_quantize_module",
    "LearnableAPoTFakeQuantize": "apot_jax.fake_quantize_module",
    "NNXLearnableAPoTFakeQuantize": "apot_jax.fake_quantize_module",
    "ExportedKernel": "apot_jax.export",
    "export_kernel": "apot_jax.export",
    "dequantize_kernel": "apot_jax.export",
    "dense_from_codes": "apot_jax.export",
    "conv_from_codes": "apot_jax.export",
    "shift_add_matmul": "apot_jax.export",
    "NNXAPoTFakeQuantize": "apot_jax.fake_quantize_module",
    "UniformFakeQuantize": "apot_jax.fake_quantize_module",
    "NNXUniformFakeQuantize": "apot_jax.fake_quantize_module",
    "SignMagnitudeFakeQuantize": "apot_jax.fake_quantize_module",
    "NNXSignMagnitudeFakeQuantize": "apot_jax.fake_quantize_module",
    "QuantStat": "apot_jax.fake_quantize_module",
    "set_flags": "apot_jax.fake_quantize_module",
    "linen_from_config": "apot_jax.fake_quantize_module",
    "nnx_from_config": "apot_jax.fake_quantize_module",
    "APoTDense": "apot_jax.layers",
    "APoTConv": "apot_jax.layers",
    "NNXAPoTDense": "apot_jax.layers",
    "NNXAPoTConv": "apot_jax.layers",
    "torch_state_dict_to_flax": "apot_jax.convert",
    "flax_to_torch_state_dict": "apot_jax.convert",
}
__all__ += sorted(_LAZY_EXPORTS)


#: Submodules imported on first attribute access: ``apot_jax.nnx.APoTDense``
#: and ``apot_jax.linen.APoTDense`` (Flax's two namespaces, same class names).
_LAZY_SUBMODULES = ("nnx", "linen")


def __getattr__(name: str):
    import importlib

    if name in _LAZY_EXPORTS:
        value = getattr(importlib.import_module(_LAZY_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"apot_jax.{name}")
    raise AttributeError(f"module 'apot_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_EXPORTS) | set(_LAZY_SUBMODULES))
