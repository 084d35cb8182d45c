"""gamma (correctly rounded alpha / p_sum) on thousands of statistics per n,
and the level tables of k = 8, k = 4, signed and k = 3 on many statistics."""

from __future__ import annotations

import numpy as np
import pytest

from apot_common.tables import level_table
from apot_parity import QParams, compare_qparams, golden
from parity_tests import expected

GAMMA_STATS = 4096


@pytest.mark.parametrize("n", range(1, 9))
def test_gamma_correctly_rounded(backend, n, parity):
    mn, mx = golden.qparams_stats(GAMMA_STATS, seed=9000 + n)
    qp = backend.qparams(mn, mx, n, 1, False)
    alpha = np.maximum(-mn, mx).astype(np.float32)
    # a zero or subnormal alpha is +0.0 (docs/numerics.md section 2)
    alpha = np.where(np.abs(alpha) < np.finfo(np.float32).tiny, np.float32(0), alpha).astype(np.float32)
    table = level_table(n, 1, False)
    ref = QParams(alpha, expected.exact_gamma(alpha, n), qp.levels, table.level_indices)
    comps = compare_qparams(qp, ref)[:2]
    assert comps[1].comparisons == GAMMA_STATS
    parity.check(backend.name, f"qparams gamma n={n}", comps)


@pytest.mark.parametrize("config", golden.LEVEL_CONFIGS, ids=expected.config_id)
def test_levels_many_statistics(backend, config, parity):
    b, k, s = config
    mn, mx = golden.qparams_stats(24, seed=777 + b * 10 + k)
    qp = backend.qparams(mn, mx, b, k, s)
    assert np.shape(qp.levels) == (24, level_table(b, k, s).num_levels)
    for i in range(24):
        ref = expected.qparams(b, k, s, float(mn[i]), float(mx[i]))
        got = QParams(np.asarray(qp.alpha)[i], np.asarray(qp.gamma)[i], np.asarray(qp.levels)[i], qp.indices)
        parity.record(backend.name, f"qparams levels {expected.config_id(config)} stats={i}",
                      compare_qparams(got, ref))
    parity.assert_ok()
