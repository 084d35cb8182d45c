"""Backend selection, the ``parity`` recorder and the JSON report.

Options:
  --backends=LIST       comma-separated subset of jax-cpu, jax-gpu, jax-tpu,
                        torch-cpu, torch-cuda (or jax, torch, all; default all).
                        Backends not listed, and absent ones, are skipped with
                        the reason.
  --parity-report=PATH  write every comparison made (backend, case, check,
                        status, comparisons, mismatches, max ulp) and the test
                        outcomes as JSON.

Tests ask for a backend through the fixtures ``backend`` (every backend),
``jax_backend`` or ``torch_backend``; each is parametrised over the known
backend names and yields the binding (``apot_parity.bindings``).
"""

from __future__ import annotations

import json
import time

import pytest

from apot_parity import ALL_BACKENDS, Result, backend_status, make_binding, parse_backends

_MARKS = {"jax-gpu": "gpu", "torch-cuda": "gpu", "jax-tpu": "tpu"}
_FIXTURES = {
    "backend": ALL_BACKENDS,
    "jax_backend": tuple(b for b in ALL_BACKENDS if b.startswith("jax-")),
    "torch_backend": tuple(b for b in ALL_BACKENDS if b.startswith("torch-")),
}
_LOG = pytest.StashKey["ParityLog"]()


def pytest_addoption(parser):
    group = parser.getgroup("apot parity")
    group.addoption("--backends", default="all",
                    help=f"parity backends to run: comma-separated subset of {', '.join(ALL_BACKENDS)} "
                         "(or jax, torch, all)")
    group.addoption("--parity-report", default=None, metavar="PATH",
                    help="write the parity comparisons and test outcomes as JSON to PATH")


class ParityLog:
    """Everything the parity tests compared, for the report."""

    def __init__(self, selected: tuple[str, ...], spec: str) -> None:
        self.selected = selected
        self.spec = spec
        self.results: list[Result] = []
        self.outcomes: list[dict] = []
        self.start = time.time()


def pytest_configure(config):
    try:
        selected = parse_backends(config.getoption("--backends"))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from exc
    config.stash[_LOG] = ParityLog(selected, config.getoption("--backends"))


def pytest_generate_tests(metafunc):
    for fixture, names in _FIXTURES.items():
        if fixture in metafunc.fixturenames:
            params = [
                pytest.param(n, id=n, marks=[getattr(pytest.mark, _MARKS[n])] if n in _MARKS else [])
                for n in names
            ]
            metafunc.parametrize(fixture, params, indirect=True)


def _binding(request):
    name = request.param
    log = request.config.stash[_LOG]
    if name not in log.selected:
        reason = f"{name} not selected (--backends={log.spec})"
    else:
        status = backend_status(name)
        reason = "" if status.available else f"{name} absent: {status.reason}"
    if reason:
        log.results.append(Result(name, request.node.nodeid, "-", "skipped", detail=reason, source="pytest"))
        pytest.skip(reason)
    return make_binding(name)


@pytest.fixture
def backend(request):
    """Binding of one backend (every JAX platform and torch device)."""
    return _binding(request)


@pytest.fixture
def jax_backend(request):
    """Binding of one JAX platform."""
    return _binding(request)


@pytest.fixture
def torch_backend(request):
    """Binding of one torch device."""
    return _binding(request)


class ParityRecorder:
    """Records comparisons for the report and fails the test on any mismatch."""

    def __init__(self, log: ParityLog, nodeid: str) -> None:
        self.log = log
        self.nodeid = nodeid
        self.results: list[Result] = []

    def record(self, backend: str, case: str, comparisons) -> None:
        for c in comparisons:
            r = Result.from_comparison(backend, case, c, "pytest")
            self.results.append(r)
            self.log.results.append(r)

    def add_results(self, results) -> None:
        self.results += list(results)
        self.log.results += list(results)

    def check(self, backend: str, case: str, comparisons) -> None:
        """Record and assert at once."""
        self.record(backend, case, comparisons)
        self.assert_ok()

    def assert_ok(self) -> None:
        assert self.results, "no comparison was made"
        failed = [r for r in self.results if r.status != "pass"]
        if failed:
            lines = [f"{r.backend} | {r.case} | {r.check}: {r.detail}" for r in failed[:8]]
            more = f"\n... and {len(failed) - 8} more" if len(failed) > 8 else ""
            pytest.fail(f"{len(failed)} of {len(self.results)} checks differ:\n" + "\n".join(lines) + more)

    @property
    def comparisons(self) -> int:
        return sum(r.comparisons for r in self.results)


_CALL_REPORT = pytest.StashKey["pytest.TestReport"]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[_CALL_REPORT] = report


@pytest.fixture
def parity(request):
    """The test's recorder. At teardown it fails the test (an error in the
    teardown phase) if any recorded comparison is not ``pass``, or if the
    test body passed without recording a single comparison: a test cannot
    forget to call :meth:`ParityRecorder.assert_ok`."""
    recorder = ParityRecorder(request.config.stash[_LOG], request.node.nodeid)
    yield recorder
    report = request.node.stash.get(_CALL_REPORT, None)
    if report is None or not report.passed:
        return  # the body skipped or already failed (assert_ok, an assert)
    failed = [r for r in recorder.results if r.status != "pass"]
    if failed:
        lines = [f"{r.backend} | {r.case} | {r.check}: {r.detail}" for r in failed[:8]]
        more = f"\n... and {len(failed) - 8} more" if len(failed) > 8 else ""
        pytest.fail(f"parity teardown: {len(failed)} of {len(recorder.results)} recorded checks differ:\n"
                    + "\n".join(lines) + more, pytrace=False)
    if not recorder.results:
        pytest.fail(f"parity teardown: {request.node.nodeid} used the parity fixture but recorded no "
                    "comparison", pytrace=False)


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when in ("setup", "teardown") and report.outcome != "passed"):
        log = _current_log
        if log is not None:
            log.outcomes.append({"test": report.nodeid, "outcome": report.outcome,
                                 "duration_s": round(report.duration, 3)})


_current_log: ParityLog | None = None


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    global _current_log
    _current_log = session.config.stash[_LOG]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    log = config.stash.get(_LOG, None)
    if log is None or not log.results:
        return
    done = [r for r in log.results if r.status != "skipped"]
    by_backend: dict[str, list[Result]] = {}
    for r in done:
        by_backend.setdefault(r.backend, []).append(r)
    tr = terminalreporter
    tr.section("apot parity")
    for name in list(ALL_BACKENDS) + sorted(set(by_backend) - set(ALL_BACKENDS)):
        rs = by_backend.get(name)
        if not rs:
            status = backend_status(name)
            if name not in log.selected:
                why = "not selected"
            elif not status.available:
                why = status.reason
            else:
                why = f"no check ran; available: {status.reason}"
            tr.write_line(f"{name:<17} skipped ({why})")
            continue
        tr.write_line(
            f"{name:<17} {len(rs):>6} checks, {sum(r.comparisons for r in rs):>9} comparisons, "
            f"{sum(r.status in ('fail', 'error') for r in rs)} failed"
        )
    tr.write_line(f"total: {sum(r.comparisons for r in done)} element comparisons in {len(done)} checks")


def _result_from_json(d: dict) -> Result:
    return Result(**{**d, "max_ulp": float(d["max_ulp"])})


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """xdist controller: take in a worker's comparisons (the workers run the
    tests; the summary and ``--parity-report`` are written here, and the
    test outcomes reach this process's ``pytest_runtest_logreport`` anyway)."""
    log = node.config.stash.get(_LOG, None)
    out = getattr(node, "workeroutput", {}).get("apot_parity")
    if log is not None and out:
        log.results += [_result_from_json(d) for d in out["results"]]


def pytest_sessionfinish(session, exitstatus):
    log = session.config.stash.get(_LOG, None)
    if log is None:
        return
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: hand the records to the controller
        workeroutput["apot_parity"] = {"results": [r.as_json() for r in log.results]}
        return
    path = session.config.getoption("--parity-report")
    if not path:
        return
    from apot_parity.report import summarize, totals

    payload = {
        "backends_selected": list(log.selected),
        "backends": {n: {"available": backend_status(n).available, "reason": backend_status(n).reason}
                     for n in ALL_BACKENDS},
        "elapsed_s": round(time.time() - log.start, 1),
        "exitstatus": int(exitstatus),
        "total": totals(log.results),
        "summary": summarize(log.results),
        "tests": log.outcomes,
        "results": [r.as_json() for r in log.results],
    }
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
