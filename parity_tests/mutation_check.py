"""Mutation check: move one result of each numeric area by one ulp and show
that the tests of that area fail, then that they pass again without it.

    .venv/bin/python parity_tests/mutation_check.py            # every mutation + the clean run
    .venv/bin/python parity_tests/mutation_check.py core export
    .venv/bin/python parity_tests/mutation_check.py --json out.json

Each mutation (``parity_tests/mutations.py``: a function wrapped at run time,
no file is edited) runs in its own ``pytest`` subprocess over the tests of
its area (:data:`TARGETS`), on the CPU backends; ``none`` runs every target
once without a mutation ("restored"). Prints one line per run: the mutation,
its area, the tests run and the number that failed (failures + errors).
Exit status 1 if any mutation is caught by no test, or if the clean run has
a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from parity_tests.mutations import MUTATIONS  # noqa: E402

#: mutation -> (pytest arguments). Only the backend a mutation touches runs,
#: to keep the check to minutes on 2 cores.
TARGETS: dict[str, list[str]] = {
    "core": ["parity_tests/test_shapes.py", "parity_tests/test_core.py", "--backends=torch-cpu"],
    "core-jax": ["parity_tests/test_shapes.py", "parity_tests/test_edge_cases.py", "--backends=jax-cpu"],
    "observer": ["parity_tests/test_observer.py", "--backends=torch-cpu"],
    "modules": ["parity_tests/test_modules.py", "-k", "fake_quantize_module", "--backends=jax-cpu,torch-cpu"],
    "paper-alpha-grad": ["parity_tests/test_paper_recipe.py", "-k", "alpha_gradient or activation_alpha or module",
                         "--backends=jax-cpu,torch-cpu"],
    "paper-levels": ["parity_tests/test_paper_recipe.py", "-k", "alpha_gradient", "--backends=jax-cpu,torch-cpu"],
    "export": ["parity_tests/test_paper_recipe.py", "-k", "export", "--backends=jax-cpu,torch-cpu"],
    "training": ["tests/jax/test_train.py", "-k", "sgd_rule or resume"],
}


def run(mutation: str, args: list[str]) -> dict:
    """One pytest subprocess; its test count and failures from the JUnit XML."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        env = dict(os.environ, APOT_MUTATION=mutation, PYTHONPATH=str(REPO))
        cmd = [sys.executable, "-m", "pytest", "-p", "parity_tests.mutations", "-q", "-p", "no:cacheprovider",
               f"--junitxml={xml}", *args]
        start = time.time()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        elapsed = time.time() - start
        if not xml.exists():
            raise RuntimeError(f"pytest wrote no report for {mutation}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        failing = sorted({
            f"{case.get('classname')}::{case.get('name')}"
            for case in suite.iter("testcase")
            if case.find("failure") is not None or case.find("error") is not None
        })  # fmt: skip
        return {
            "mutation": mutation,
            "area": MUTATIONS[mutation][0] if mutation in MUTATIONS else "-",
            "what": MUTATIONS[mutation][1] if mutation in MUTATIONS else "no mutation",
            "args": args,
            "tests": int(suite.get("tests")) - int(suite.get("skipped", 0)),
            "failing": len(failing),
            "failing_tests": failing,
            "seconds": round(elapsed, 1),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mutations", nargs="*", help=f"subset of {', '.join(MUTATIONS)}, or none (default: all + none)")
    parser.add_argument("--json", metavar="PATH", help="write the rows as JSON")
    opts = parser.parse_args(argv)
    names = opts.mutations or [*MUTATIONS, "none"]
    for n in names:
        if n != "none" and n not in MUTATIONS:
            parser.error(f"unknown mutation {n!r}; choose from {', '.join(MUTATIONS)}, none")
    rows = []
    for n in names:
        if n == "none":
            args = sorted(
                {a for m in (opts.mutations or MUTATIONS) if m != "none" for a in TARGETS[m] if a.endswith(".py")}
            )
            args += ["--backends=jax-cpu,torch-cpu"]
        else:
            args = TARGETS[n]
        row = run(n, args)
        rows.append(row)
        print(f"{row['mutation']:<17} {row['area']:<13} {row['tests']:>4} tests run, {row['failing']:>4} failing "
              f"({row['seconds']:.0f} s)  {row['what']}", flush=True)
    if opts.json:
        Path(opts.json).write_text(json.dumps(rows, indent=1))
    bad = [r for r in rows if (r["mutation"] == "none") == (r["failing"] > 0)]
    for r in bad:
        print(f"NOT OK: {r['mutation']}: {r['failing']} failing of {r['tests']}: {r['failing_tests'][:5]}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
