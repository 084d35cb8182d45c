"""The ``parity`` fixture itself: a recorded mismatch fails the test at
teardown even if the test never calls ``assert_ok``, and a test that asks for
the fixture but records nothing fails too.

Each case runs a small inner pytest session (a subprocess, in ``tmp_path``)
with ``parity_tests.conftest`` loaded as a plugin, and reads its outcome.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

INNER = textwrap.dedent(
    '''
    import numpy as np
    from apot_parity import compare

    def test_mismatch_without_assert(parity):
        a = np.array([1.0, 2.0], np.float32)
        b = np.nextafter(a, np.float32(3))  # one ulp away
        parity.record("cpu", "inner", [compare("x", a, b)])

    def test_match_without_assert(parity):
        a = np.array([1.0, 2.0], np.float32)
        parity.record("cpu", "inner", [compare("x", a, a.copy())])

    def test_records_nothing(parity):
        assert 1 + 1 == 2

    def test_body_fails_first(parity):
        parity.record("cpu", "inner", [compare("x", np.ones(1, np.float32), np.zeros(1, np.float32))])
        parity.assert_ok()

    def test_skipped(parity):
        import pytest
        pytest.skip("not here")
    '''
)


@pytest.fixture(scope="module")
def inner_outcomes(tmp_path_factory) -> dict[str, set[str]]:
    """``{test name: {phase outcomes}}`` of the inner session, from ``-rA``."""
    root = tmp_path_factory.mktemp("inner")
    (root / "test_inner.py").write_text(INNER)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "parity_tests.conftest", "-rA", "-q", "-p", "no:cacheprovider",
         "--backends=jax-cpu", "--rootdir", str(root), str(root / "test_inner.py")],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    outcomes: dict[str, set[str]] = {}
    for line in out.stdout.splitlines():
        m = re.match(r"^(PASSED|FAILED|ERROR|SKIPPED)\s+(?:\[\d+\]\s+)?\S*::(\w+)", line)
        if m:
            outcomes.setdefault(m.group(2), set()).add(m.group(1))
    assert outcomes, out.stdout[-3000:] + out.stderr[-3000:]
    outcomes["__stdout__"] = {out.stdout}
    return outcomes


def test_mismatch_fails_without_assert_ok(inner_outcomes):
    assert "ERROR" in inner_outcomes["test_mismatch_without_assert"]
    text = next(iter(inner_outcomes["__stdout__"]))
    assert "1 of 1 recorded checks differ" in text


def test_matching_record_passes_without_assert_ok(inner_outcomes):
    assert inner_outcomes["test_match_without_assert"] == {"PASSED"}


def test_recording_nothing_fails(inner_outcomes):
    assert "ERROR" in inner_outcomes["test_records_nothing"]
    assert "recorded no comparison" in next(iter(inner_outcomes["__stdout__"]))


def test_failed_body_is_reported_once(inner_outcomes):
    assert inner_outcomes["test_body_fails_first"] == {"FAILED"}


def test_skip_stays_a_skip(inner_outcomes):
    text = next(iter(inner_outcomes["__stdout__"]))
    assert "test_skipped" not in inner_outcomes  # neither passed nor failed nor errored
    assert re.search(r"SKIPPED \[1\] \S*test_inner.py:\d+: not here", text), text[-2000:]
    assert re.search(r"1 failed, 3 passed, 1 skipped, 2 errors", text), text[-2000:]
