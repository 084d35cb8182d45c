"""``apot qat`` end to end with tiny settings (one epoch, a 32-unit MLP)."""

from __future__ import annotations

import json

import pytest

from apot_cli.main import main

TINY = ["--epochs", "1", "--hidden", "32", "--batch-size", "128", "--lr", "0.01", "--no-progress",
        "--timing-rounds", "1", "--timing-steps", "2"]  # fmt: skip


def test_qat_prints_table_and_writes_results(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["qat", "--recipe", "prototype", "--bits", "4", *TINY, "--out", str(out), "--plot"]) == 0
    stdout = capsys.readouterr().out
    lines = stdout.splitlines()
    header = lines[0].split()
    assert header[:2] == ["variant", "bits"] and "ratio" in header and "(ms)" in header
    float_row, apot_row = lines[2].split(), lines[3].split()
    assert float_row[:3] == ["float", "32", "(float)"] and float_row[-1] == "1.00"
    assert apot_row[:4] == ["APoT", "both", "4", "2"]
    assert apot_row[4] == "39/16"  # signed 4-bit weight table: 39 distinct levels; activations 16

    data = json.loads((out / "results.json").read_text())
    rows = data["results"]
    assert [r["bits"] for r in rows] == [None, 4] and rows[1]["k"] == 2 and rows[1]["quantize"] == "both"
    assert data["config"]["epochs"] == 1 and data["config"]["k"] == [2]
    for r, printed in zip(rows, (float_row, apot_row)):
        assert 0.5 < r["test_accuracy"] <= 1.0  # one epoch at lr 0.01 already learns digits
        assert f"{100 * r['test_accuracy']:.2f}" in printed  # the table shows the JSON's numbers
        assert r["step_ms"] > 0 and len(r["history"]["test_accuracy"]) == len(r["history"]["epoch"])
    assert rows[0]["step_time_ratio"] == 1.0
    assert rows[1]["step_time_ratio"] == pytest.approx(rows[1]["step_ms"] / rows[0]["step_ms"])
    assert rows[1]["history"]["epoch"] == [0, 1]  # after calibration, then after the QAT epoch
    for name in ("learning_curves.png", "levels.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_qat_weights_only_and_k_per_bits(capsys):
    assert main(["qat", "--recipe", "prototype", "--bits", "3", "--k", "3", "--quantize", "weights", "--unsigned-weights",
                 *TINY]) == 0  # fmt: skip
    row = capsys.readouterr().out.splitlines()[3].split()
    # unsigned b=3, k=3: one term of 8 powers of two (0 and 2**0..2**-6); no activation quant
    assert row[:5] == ["APoT", "weights", "3", "3", "8/-"]


def test_qat_refuses_bad_arguments(capsys):
    with pytest.raises(SystemExit) as info:  # argparse's error, before any training
        main(["qat", "--bits", "4", "--k", "3", *TINY])
    assert info.value.code == 2 and "multiple" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["qat", "--bits", "4", "3", "--k", "2", "1", "1", *TINY])
    assert info.value.code == 2 and "--k" in capsys.readouterr().err


def test_qat_paper_recipe_rows_and_export_summary(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["qat", "--bits", "2", "--paper-bits", "3", "2", *TINY, "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["variant", "bits", "k", "w/a"]
    prototype, paper3, paper2 = (line.split() for line in lines[3:6])
    assert prototype[:5] == ["APoT", "both", "2", "2", "7/4"]
    # sign-magnitude weights: 2**b - 1 levels (magnitude k=2 at 3 bits, ternary at 2);
    # activations: the unsigned table with the default k (1 at 3 bits, 2 at 2)
    assert paper3[:5] == ["paper", "both", "3", "2/1", "7/8"]
    assert paper2[:5] == ["paper", "both", "2", "1/2", "3/4"]
    assert any("3-bit (paper recipe)" in line for line in lines)
    export_line = next(line for line in lines if line.startswith("export (3-bit paper model)"))
    data = json.loads((out / "results.json").read_text())
    export = data["export"]
    # MLP 64-32-10: 64*32 + 32*10 = 2368 weights, packed at 3 bits -> 888 bytes
    assert export["code_bytes"] == 888 and export["float_bytes"] == 4 * 2368
    assert export["scale_bytes"] == 2 * 3 * 4  # alpha, gamma, scale per layer (per tensor)
    assert export["identical_logits"] is True  # the model run from the codes is the fake-quant model
    assert export["test_accuracy"] == export["fake_quant_accuracy"] == data["results"][2]["test_accuracy"]
    assert f"{100 * export['test_accuracy']:.2f}%" in export_line and "888 bytes" in export_line
    assert [r["recipe"] for r in data["results"]] == [None, "prototype", "paper", "paper"]
    assert data["config"]["paper_activations"] == "learnable"


def test_qat_paper_recipe_with_observed_activation_alpha(tmp_path, capsys):
    """--paper-activations observed: the paper rows' activations are the
    prototype's observer-based fake quant; the table has the same shape."""
    out = tmp_path / "run"
    args = ["qat", "--recipe", "paper", "--paper-bits", "3", "--paper-activations", "observed", *TINY, "--out", str(out)]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[3].split()[:5] == ["paper", "both", "3", "2/1", "7/8"]
    data = json.loads((out / "results.json").read_text())
    assert data["export"]["identical_logits"] is True


def test_qat_refuses_bad_paper_bits(capsys):
    with pytest.raises(SystemExit) as info:
        main(["qat", "--recipe", "paper", "--paper-bits", "1", *TINY])
    assert info.value.code == 2 and "b >= 2" in capsys.readouterr().err


def test_qat_qwix_rows_equal_the_apot_layer_rows(tmp_path):
    """An unmodified nn.Dense MLP through the Qwix provider trains exactly like
    the same MLP of APoTDense layers: same accuracy and learning curve."""
    pytest.importorskip("qwix")  # optional third-party extra apot[qwix]
    out = tmp_path / "run"
    assert main(["qat", "--recipe", "prototype", "--bits", "4", "--qwix", *TINY, "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["results"]
    assert [r["variant"] for r in rows] == ["float", "APoT both", "qwix APoT both"]
    apot, through_qwix = rows[1], rows[2]
    assert through_qwix["test_accuracy"] == apot["test_accuracy"]
    assert through_qwix["history"]["train_loss"] == apot["history"]["train_loss"]
    assert through_qwix["history"]["test_accuracy"] == apot["history"]["test_accuracy"]
