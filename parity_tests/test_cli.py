"""``apot parity``: the table and the JSON report."""

from __future__ import annotations

import json

import pytest

from apot_cli.main import main
from apot_parity import backend_status


@pytest.mark.slow
def test_apot_parity_command(tmp_path, capsys):
    for name in ("jax-cpu", "torch-cpu"):
        if not backend_status(name).available:
            pytest.skip(f"needs {name}")
    path = tmp_path / "parity.json"
    rc = main(["parity", "--backends", "jax-cpu,torch-cpu,torch-cuda", "--json", str(path)])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    assert "== jax-cpu" in out and "golden" in out and "live" in out
    report = json.loads(path.read_text())
    assert report["total"]["failed"] == 0
    assert report["total"]["comparisons"] > 1_000_000
    rows = report["summary"]["jax-cpu"]
    assert {(r["source"], r["family"]) for r in rows} >= {("golden", "element"), ("golden", "qparams"),
                                                          ("golden", "observer"), ("live", "element")}
    rows = report["summary"]["torch-cpu"]
    assert {(r["source"], r["family"]) for r in rows} >= {("golden", "element"), ("golden", "observer")}
    assert out.index("== jax-cpu") < out.index("== torch-cpu") < out.index("== torch-cuda")
    skipped = [r for r in report["results"] if r["backend"] == "torch-cuda"]
    if not backend_status("torch-cuda").available:
        assert skipped and all(r["status"] == "skipped" and r["detail"] for r in skipped)
    for r in report["results"]:
        assert set(r) >= {"backend", "case", "check", "status", "comparisons", "max_ulp"}


def test_apot_parity_rejects_unknown_backend(capsys):
    assert main(["parity", "--backends", "jax-quantum"]) == 2
    assert "unknown backend" in capsys.readouterr().err
