"""Observer state after a stream of batches (non-finite values, empty
batches, subnormals, bf16/f16 batches), bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from apot_parity import compare_state, golden
from parity_tests import expected

STREAMS = golden.observer_streams() + [
    # both signs of zero (and subnormals) as the extreme: observed as +0.0
    # in both frameworks (docs/numerics.md section 2); test_edge_cases too
    [np.array([0.0, -0.0, 1.0], np.float32), np.array([-0.0], np.float32)],
    [np.array([-1e-40, 1e-40], np.float32)],
]


@pytest.mark.parametrize("stream", range(len(STREAMS)))
def test_observer_stream(backend, stream, parity):
    batches = STREAMS[stream]
    states = backend.observe_stream(batches)
    ref = expected.observer_states(batches)
    assert len(states) == len(batches)
    got_min = np.array([m for m, _ in states], np.float32)
    got_max = np.array([m for _, m in states], np.float32)
    parity.check(backend.name, f"observer stream={stream}", [
        compare_state("min_val", got_min, np.array([m for m, _ in ref], np.float32)),
        compare_state("max_val", got_max, np.array([m for _, m in ref], np.float32)),
    ])
