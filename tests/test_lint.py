"""Lint and type check as part of the test command: ruff with the project's
configuration (pyproject.toml ``[tool.ruff]``) over the whole tree, and mypy
with its configuration (``[tool.mypy]``: the five packages) from the repo
root, against the installed jax, flax, torch and torchao (the ``all`` extra).
Both tools are in the test extra, so a missing one fails rather than skips."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ruff_passes():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.fail("ruff is not installed: it is part of the test extra (pip install -e '.[test]')")
    out = subprocess.run([ruff, "check", "--output-format", "concise", str(REPO)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


@pytest.mark.slow
def test_mypy_passes():
    # beside the interpreter: mypy resolves the imports (jax, torch, ...) in
    # the environment it is installed in, which must be the tested one
    mypy = Path(sys.executable).with_name("mypy")
    if not mypy.exists():
        pytest.fail("mypy is not installed: it is part of the test extra (pip install -e '.[test]')")
    out = subprocess.run([str(mypy)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
