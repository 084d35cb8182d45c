"""The ``parity`` fixture itself: a recorded mismatch fails the test at
teardown even if the test never calls ``assert_ok``, and a test that asks for
the fixture but records nothing fails too.

Each case runs a small inner pytest session (a subprocess, in ``tmp_path``)
with ``parity_tests.conftest`` loaded as a plugin, and reads its outcome.
"""

from __future__ import annotations

import json
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


XDIST_INNER = textwrap.dedent(
    '''
    import os

    import numpy as np
    import pytest
    from apot_parity import compare

    @pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
    def test_records(parity, n):
        a = np.arange(n, dtype=np.float32)
        parity.record(os.environ["PYTEST_XDIST_WORKER"], f"case {n}", [compare("x", a, a.copy())])
    '''
)


@pytest.mark.slow
def test_worker_comparisons_reach_the_summary_and_report(tmp_path):
    """Under pytest-xdist the workers run the tests and the controller prints
    the summary and writes ``--parity-report``: every worker's comparisons
    must reach it (recorded under the worker's id as backend name)."""
    pytest.importorskip("xdist")
    (tmp_path / "test_inner.py").write_text(XDIST_INNER)
    report = tmp_path / "report.json"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "parity_tests.conftest", "-n", "2", "-q", "-p", "no:cacheprovider",
         "--backends=jax-cpu", f"--parity-report={report}", "--rootdir", str(tmp_path),
         str(tmp_path / "test_inner.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert "total: 21 element comparisons in 6 checks" in text, text[-3000:]
    per_worker = dict(re.findall(r"^(gw\d+)\s+\d+ checks,\s+(\d+) comparisons", text, re.M))
    assert set(per_worker) == {"gw0", "gw1"}, text[-3000:]  # both workers ran tests
    assert sum(map(int, per_worker.values())) == 21
    recorded = json.loads(report.read_text())
    cases = sorted(r["case"] for r in recorded["results"])
    assert cases == [f"case {n}" for n in range(1, 7)], cases
