"""qparams, codes, quant_dequant, fake quant and its gradient: every backend
against the brute-force reference, bit for bit, for every (b, k) with b <= 8,
signed and unsigned, seven statistics, float32/bfloat16/float16 inputs."""

from __future__ import annotations

import numpy as np
import pytest

from apot_parity import compare_elementwise, compare_qparams
from parity_tests import expected


@pytest.mark.parametrize("config", expected.CONFIGS, ids=expected.config_id)
def test_elementwise_bitwise(backend, config, parity):
    for stats_index in range(len(expected.STATS)):
        case = expected.case(*config, stats_index)
        qp, outs = backend.evaluate(*config, case.min_val, case.max_val, case.inputs)
        comps = compare_qparams(qp, case.qparams)
        for dtype in case.inputs:
            comps += compare_elementwise(f"{dtype}/", outs[dtype], case.expected[dtype])
        parity.record(backend.name, case.key, comps)
    parity.assert_ok()
    # every case compared qparams plus 4 element-wise results per dtype
    assert len(parity.results) == sum(4 + 4 * len(expected.case(*config, i).inputs) for i in range(7))


def test_low_precision_inputs_are_adversarial():
    """The bf16/f16 inputs bracket the decision boundaries to one ulp of their
    dtype: for most pairs of adjacent levels there are two consecutive
    values of the dtype that the reference sends to different levels."""
    for config in [(4, 2, False), (3, 1, True), (8, 2, False)]:
        case = expected.case(*config, 1)
        distinct = np.unique(case.qparams.levels).size
        for dtype in ("bfloat16", "float16"):
            x = case.inputs[dtype][0]
            y = case.expected[dtype].quant_dequant.astype(np.float32)
            bits = x.view(np.int16).astype(np.int64)
            key = np.where(bits >= 0, bits, -(bits & 0x7FFF))
            finite = np.isfinite(x.astype(np.float32))
            order = np.argsort(key[finite], kind="stable")
            k, v = key[finite][order], y[finite][order]
            step = (np.diff(k) == 1) & (v[1:] != v[:-1])
            bracketed = np.unique(v[1:][step]).size
            assert bracketed >= min(distinct - 1, 20), (config, dtype, bracketed, distinct)
