"""The parity run: live checks, the report table and its JSON.

:func:`run_checks` is what ``python -m apot_parity`` and ``apot parity`` run:
the golden vectors on every backend present and, when torch is installed,
the golden cases recomputed live with torch on the CPU with every other
backend compared to it, bit for bit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Sequence

from apot_parity import golden
from apot_parity.backends import ALL_BACKENDS, backend_status, make_binding
from apot_parity.compare import Result, compare_elementwise, compare_qparams


def run_checks(backends: Iterable[str], *, golden_checks: bool = True, live: bool = True,
               golden_dir: str | Path = golden.GOLDEN_DIR,
               configs: Sequence[tuple[int, int, bool]] | None = None) -> list[Result]:
    """Every check of the report on the named backends.

    Args:
      backends: names from :data:`apot_parity.backends.ALL_BACKENDS`.
      golden_checks: check each available backend against the golden files.
      live: recompute the golden cases with torch on the CPU and compare
        every other available backend to it.
      golden_dir: the folder of the golden files and their manifest.
      configs: only these ``(b, k, signed)`` (default: every stored one), in
        the golden and the live checks; the golden observer streams have no
        configuration and are always checked.

    Returns:
      One :class:`Result` per comparison; an absent backend is one
      ``"skipped"`` record carrying the reason.

    Raises:
      apot_parity.golden.GoldenFileError: a golden file does not match its
        manifest (checked before any comparison).
      apot_parity.golden.UnknownConfigError: a config has no stored case
        (checked before any comparison).
    """
    backends = list(backends)
    golden.select_configs(configs, golden_dir)  # an unknown config fails before any comparison
    results: list[Result] = []
    for name in backends:
        status = backend_status(name)
        if not status.available:
            results.append(Result(name, "backend", "available", "skipped", detail=status.reason))
    present = [b for b in backends if backend_status(b).available]
    if golden_checks:
        for name in present:
            results += golden.check_golden(name, golden_dir, configs)
    if live:
        results += live_results(present, golden_dir, configs)
    return results


def live_results(backends: Iterable[str], golden_dir: str | Path = golden.GOLDEN_DIR,
                 configs: Sequence[tuple[int, int, bool]] | None = None) -> list[Result]:
    """Recompute the golden cases (those of ``configs``, default all) with
    torch on the CPU and compare every other available backend to it, bit
    for bit."""
    backends = [b for b in backends if b != "torch-cpu"]
    base_status = backend_status("torch-cpu")
    if not base_status.available:
        return [Result(b, "live", "all", "skipped", detail=f"live checks need torch: {base_status.reason}",
                       source="live") for b in backends]
    base = make_binding("torch-cpu")
    select = golden.select_configs(configs, golden_dir)
    cases = [c for c in golden.element_cases(golden_dir) if select is None or c.config in select]
    reference = {c.key: base.evaluate(*c.config, c.min_val, c.max_val, c.inputs) for c in cases}
    results = []
    for name in backends:
        status = backend_status(name)
        if not status.available:
            results.append(Result(name, "live", "all", "skipped", detail=status.reason, source="live"))
            continue
        binding = make_binding(name)
        for c in cases:
            qp, outs = binding.evaluate(*c.config, c.min_val, c.max_val, c.inputs)
            ref_qp, ref_outs = reference[c.key]
            comps = compare_qparams(qp, ref_qp)
            for dt in c.inputs:
                comps += compare_elementwise(f"{dt}/", outs[dt], ref_outs[dt])
            results += [Result.from_comparison(name, c.key, comp, "live") for comp in comps]
    return results



def summarize(results: Sequence[Result]) -> dict[str, list[dict]]:
    """Per backend, one row per (source, family) with totals."""
    rows: dict[str, dict[tuple, dict]] = {}
    for r in results:
        family = r.case.split(" ", 1)[0]
        key = (r.source, family)
        row = rows.setdefault(r.backend, {}).setdefault(
            key, {"source": r.source, "family": family, "checks": 0, "passed": 0, "failed": 0,
                  "skipped": 0, "comparisons": 0, "max_ulp": 0.0, "detail": ""})
        row["checks"] += 1
        row["comparisons"] += r.comparisons
        if r.status == "pass":
            row["passed"] += 1
        elif r.status == "skipped":
            row["skipped"] += 1
            row["detail"] = r.detail
        else:
            row["failed"] += 1
            row["max_ulp"] = max(row["max_ulp"], r.max_ulp)
            row["detail"] = row["detail"] or f"{r.case} {r.check}: {r.detail}"
    return {b: list(v.values()) for b, v in rows.items()}


def format_table(results: Sequence[Result]) -> str:
    """The per-backend table printed by ``apot parity``. ``max ulp`` is over
    the failed checks only (0 when everything is bitwise equal)."""
    lines = []
    summary = summarize(results)
    order = [b for b in ALL_BACKENDS if b in summary] + [b for b in summary if b not in ALL_BACKENDS]
    for backend in order:
        rows = summary[backend]
        lines.append(f"== {backend}")
        lines.append(f"  {'source':<7} {'family':<9} {'checks':>7} {'passed':>7} {'failed':>7} "
                     f"{'skipped':>7} {'comparisons':>12} {'max ulp':>8}")
        for row in rows:
            ulp = row["max_ulp"]
            ulp_s = "inf" if math.isinf(ulp) else f"{ulp:g}"
            lines.append(f"  {row['source'] or '-':<7} {row['family']:<9} {row['checks']:>7} {row['passed']:>7} "
                         f"{row['failed']:>7} {row['skipped']:>7} {row['comparisons']:>12} {ulp_s:>8}")
            if row["detail"] and (row["failed"] or row["skipped"]):
                lines.append(f"      {row['detail'][:200]}")
    return "\n".join(lines)


def totals(results: Sequence[Result]) -> dict:
    """Counts over all records: checks, passed, failed (incl. errors), skipped, comparisons."""
    return {
        "checks": len(results),
        "passed": sum(r.status == "pass" for r in results),
        "failed": sum(r.status in ("fail", "error") for r in results),
        "skipped": sum(r.status == "skipped" for r in results),
        "comparisons": sum(r.comparisons for r in results),
    }


def write_json(path: str, results: Sequence[Result], extra: dict | None = None) -> None:
    """``{"results": [...], "summary": {backend: rows}, "total": {...}}``
    plus ``extra``."""
    payload = {
        "results": [r.as_json() for r in results],
        "summary": summarize(results),
        "total": totals(results),
    }
    payload.update(extra or {})
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


__all__ = ["format_table", "live_results", "run_checks", "summarize", "totals", "write_json"]
