"""apot_parity: the JAX/torch parity engine, its golden vectors and report.

Layer: ``apot_common`` <- ``apot_jax`` / ``apot_torch`` <- ``apot_parity`` <-
``apot_cli``. Nothing here imports a framework at module level, so the golden
checker runs where only JAX is installed (a Colab TPU)::

    python -m apot_parity --backends jax-tpu --no-live

* :mod:`apot_parity.backends`: which backends exist here, and why not;
* :mod:`apot_parity.bindings`: ``JaxBinding`` / ``TorchBinding``, one method
  set, numpy in and out;
* :mod:`apot_parity.compare`: bitwise comparison with a measured ulp distance;
* :mod:`apot_parity.golden`: the torch reference's results, stored with a
  manifest, and :func:`~apot_parity.golden.check_golden`;
* :mod:`apot_parity.report`: :func:`~apot_parity.report.run_checks`, the
  table and the JSON.

>>> from apot_parity import compare
>>> import numpy as np
>>> c = compare("levels", np.float32([1.0, 2.0]), np.float32([1.0, np.nextafter(2.0, 3.0, dtype=np.float32)]))
>>> (c.mismatches, c.max_ulp)
(1, 1.0)
"""

from apot_parity.backends import ALL_BACKENDS, BackendStatus, backend_status, make_binding, parse_backends
from apot_parity.compare import Comparison, Result, compare, compare_elementwise, compare_qparams, compare_state
from apot_parity.records import DTYPE_NAMES, Elementwise, QParams, numpy_dtype

__all__ = [
    "ALL_BACKENDS",
    "DTYPE_NAMES",
    "BackendStatus",
    "Comparison",
    "Elementwise",
    "QParams",
    "Result",
    "backend_status",
    "compare",
    "compare_elementwise",
    "compare_qparams",
    "compare_state",
    "make_binding",
    "numpy_dtype",
    "parse_backends",
]
