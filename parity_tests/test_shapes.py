"""Shapes (scalar, empty, 1-D, 3-D) and dtypes through the one-call API."""

from __future__ import annotations

import numpy as np
import pytest

from apot_parity import compare_elementwise, golden, numpy_dtype
from parity_tests import expected

SHAPES = [(), (0,), (3, 5, 7), (2, 1, 64)]


@pytest.mark.parametrize("config", [(4, 2, False), (3, 1, True)], ids=expected.config_id)
def test_shapes_and_dtypes(backend, config, parity):
    mn, mx = expected.STATS[1]
    qp = expected.qparams(*config, mn, mx)
    pool, _ = golden.float32_inputs(qp.alpha, qp.levels, seed=5)
    for shape in SHAPES:
        for dtype in ("float32", "bfloat16", "float16"):
            if dtype != "float32" and shape not in ((), (3, 5, 7)):
                continue
            size = int(np.prod(shape, dtype=np.int64))
            with np.errstate(over="ignore"):
                x = np.resize(pool, size).reshape(shape).astype(numpy_dtype(dtype))
            dy = golden.dy_pattern(size, x.dtype).reshape(shape)
            got = backend.elementwise(x, dy, mn, mx, *config)
            ref = expected.elementwise(x, dy, qp)
            parity.record(backend.name, f"shape {expected.config_id(config)} {shape} {dtype}",
                          compare_elementwise(f"{dtype}/", got, ref))
    parity.assert_ok()
    assert sum(r.comparisons for r in parity.results) > 0
