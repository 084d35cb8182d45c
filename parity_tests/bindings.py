"""The framework bindings the parity tests are written against.

One thin binding per framework (AQT's pattern for its TF/JAX parity tests):
``JaxBinding(platform)`` and ``TorchBinding(device)`` expose the same methods,
all numpy in, numpy out:

* ``qparams(min_val, max_val, b, k, signed) -> QParams`` (alpha, gamma,
  levels, level indices; statistics may be arrays),
* ``quantize`` / ``quant_dequant`` / ``fake_quant_and_grad`` for one input,
* ``elementwise(x, dy, ...) -> Elementwise`` (all of them at once),
* ``evaluate(b, k, signed, min_val, max_val, {dtype: (x, dy)})``: qparams and
  element-wise results of many inputs (JAX: fixed-size chunks, so each
  configuration compiles once per device),
* ``observe_stream(batches)``: observer state after each batch.

They live in ``apot_cli.parity`` because ``apot parity`` and the golden
checker use them too; this module is the suite's single import point.
"""

from apot_cli.parity import (  # noqa: F401
    ALL_BACKENDS,
    Comparison,
    Elementwise,
    JaxBinding,
    QParams,
    Result,
    TorchBinding,
    backend_status,
    compare,
    compare_elementwise,
    compare_qparams,
    compare_state,
    make_binding,
    numpy_dtype,
    parse_backends,
)
