"""``apot parity``: the table and the JSON report."""

from __future__ import annotations

import json

import pytest

from apot_cli.main import main
from apot_parity import backend_status

#: a select-chain table (49 levels) and a grid table (256 levels), both with
#: stored qparams cases: the CLI's plumbing; test_golden.py checks all 40
CONFIGS = "4:2:s,8:8:u"
CASES = {f"element b={b} k={k} {s} stats={i}" for b, k, s in ((4, 2, "signed"), (8, 8, "unsigned")) for i in range(7)}


def test_apot_parity_command(tmp_path, capsys):
    for name in ("jax-cpu", "torch-cpu"):
        if not backend_status(name).available:
            pytest.skip(f"needs {name}")
    path = tmp_path / "parity.json"
    rc = main(["parity", "--backends", "jax-cpu,torch-cpu,torch-cuda", "--configs", CONFIGS, "--json", str(path)])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    assert "== jax-cpu" in out and "golden" in out and "live" in out
    report = json.loads(path.read_text())
    assert report["total"]["failed"] == 0
    assert report["total"]["comparisons"] > 100_000
    rows = report["summary"]["jax-cpu"]
    assert {(r["source"], r["family"]) for r in rows} >= {("golden", "element"), ("golden", "qparams"),
                                                          ("golden", "observer"), ("live", "element")}
    rows = report["summary"]["torch-cpu"]
    assert {(r["source"], r["family"]) for r in rows} >= {("golden", "element"), ("golden", "observer")}
    for backend, source in (("jax-cpu", "golden"), ("torch-cpu", "golden"), ("jax-cpu", "live")):
        cases = {r["case"] for r in report["results"]
                 if r["backend"] == backend and r["source"] == source and r["case"].startswith("element")}
        assert cases == CASES, (backend, source)  # the chosen configurations, every statistic
    assert out.index("== jax-cpu") < out.index("== torch-cpu") < out.index("== torch-cuda")
    skipped = [r for r in report["results"] if r["backend"] == "torch-cuda"]
    if not backend_status("torch-cuda").available:
        assert skipped and all(r["status"] == "skipped" and r["detail"] for r in skipped)
    for r in report["results"]:
        assert set(r) >= {"backend", "case", "check", "status", "comparisons", "max_ulp"}


@pytest.mark.parametrize("spec, message", [("4:2", "is not b:k:s or b:k:u"), ("4:2:x", "is not b:k:s or b:k:u"),
                                           ("a:2:s", "is not b:k:s or b:k:u"), (",", "no config")])
def test_apot_parity_rejects_a_malformed_config(spec, message, capsys):
    with pytest.raises(SystemExit) as info:  # argparse's error, before any check
        main(["parity", "--configs", spec])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_apot_parity_rejects_a_config_without_golden_cases(capsys):
    # k must divide b: there is no (3, 2) table, so no stored case; refused before any comparison
    assert main(["parity", "--backends", "jax-cpu", "--no-live", "--configs", "4:2:s,3:2:s"]) == 2
    assert "no golden case for configs [(3, 2, True)]" in capsys.readouterr().err


def test_apot_parity_rejects_unknown_backend(capsys):
    assert main(["parity", "--backends", "jax-quantum"]) == 2
    assert "unknown backend" in capsys.readouterr().err
