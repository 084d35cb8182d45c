"""``apot qat`` end to end with tiny settings (one epoch, a 32-unit MLP or a
4/8-channel CNN): the printed table and results file, the paper recipe's
rows and export summary, ``--qwix`` rows equal to the apot layers' rows, and
every bad argument refused before any work."""

from __future__ import annotations

import json
import re

import pytest

from apot_cli import digits as D
from apot_cli.main import main

TINY = ["--epochs", "1", "--hidden", "32", "--channels", "4", "8", "--batch-size", "128", "--lr", "0.01",
        "--no-progress", "--timing-rounds", "1", "--timing-steps", "2"]  # fmt: skip


#: the paper variant as before the paper's layer precision, sets and schedule
OLD_PAPER = ["--paper-level-set", "apot", "--paper-first-last-bits", "0", "--paper-optimizer", "adam",
             "--paper-init", "float"]  # fmt: skip


@pytest.mark.slow
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
    assert main(["qat", "--recipe", "prototype", "--bits", "3", "--k", "3", "--quantize", "weights",
                 "--unsigned-weights", *TINY]) == 0  # fmt: skip
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


@pytest.mark.slow
def test_qat_paper_recipe_rows_and_export_summary(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["qat", "--bits", "2", "--paper-bits", "3", "2", *OLD_PAPER, *TINY, "--out", str(out)]) == 0
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


@pytest.mark.slow
def test_qat_cnn_paper_recipe_defaults(tmp_path, capsys):
    """--model cnn with the paper variant's defaults: the paper's level sets
    (k column "paper", 7/8 levels at 3 bits, 3/4 at 2), the first and last
    layers at 8 bits, SGD, progressive initialisation (the 2-bit row from the
    3-bit row); the export's codes give the fake-quant logits exactly.
    --paper-activations observed: the activations the prototype's observer."""
    out = tmp_path / "run"
    args = ["qat", "--model", "cnn", "--recipe", "paper", "--paper-bits", "3", "2", "--paper-activations", "observed",
            *TINY, "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[3].split()[:5] == ["paper", "both", "3", "paper", "7/8"]  # activations observed: the (3, 1) APoT table
    data = json.loads((out / "results.json").read_text())
    rows = data["results"]
    assert [(r["level_set"], r["first_last_bits"], r["optimizer"]) for r in rows[1:]] == [("paper", 8, "sgd")] * 2
    assert [r["init_from"] for r in rows[1:]] == ["float", "paper 3-bit"]
    export = data["export"]
    # conv0 3*3*1*4 = 36 and dense0 4*4*8*10 = 1280 weights at 8 bits; conv1 3*3*4*8 = 288 at 3 bits: 108 bytes
    assert export["code_bytes"] == 36 + 108 + 1280 and export["first_last_bits"] == 8
    assert export["identical_logits"] is True and export["test_accuracy"] == rows[1]["test_accuracy"]


def test_qat_refuses_bad_paper_bits(capsys):
    with pytest.raises(SystemExit) as info:
        main(["qat", "--recipe", "paper", "--paper-bits", "1", *TINY])
    assert info.value.code == 2 and "b >= 2" in capsys.readouterr().err


@pytest.mark.slow
def test_qat_qwix_cnn_rows_equal_the_apot_layer_rows(tmp_path):
    """An unmodified nn.Conv/nn.Dense CNN through the Qwix provider trains
    exactly like the same CNN of APoTConv/APoTDense layers: same accuracy and
    learning curve (the MLP's Qwix model shares the code; its parameter names
    are checked above)."""
    pytest.importorskip("qwix")  # optional third-party extra apot[qwix]
    out = tmp_path / "run"
    assert main(["qat", "--model", "cnn", "--recipe", "prototype", "--bits", "4", "--qwix", *TINY,
                 "--out", str(out)]) == 0  # fmt: skip
    rows = json.loads((out / "results.json").read_text())["results"]
    assert [r["variant"] for r in rows] == ["float", "APoT both", "qwix APoT both"]
    apot, through_qwix = rows[1], rows[2]
    assert through_qwix["test_accuracy"] == apot["test_accuracy"]
    assert through_qwix["history"]["train_loss"] == apot["history"]["train_loss"]
    assert through_qwix["history"]["test_accuracy"] == apot["history"]["test_accuracy"]


@pytest.mark.parametrize("argv, named", [(["--epochs", "0"], "--epochs: must be >= 1, got 0"),
                                         (["--epochs", "-3"], "--epochs: must be >= 1, got -3"),
                                         (["--qat-epochs", "0"], "--qat-epochs: must be >= 1"),
                                         (["--batch-size", "0"], "--batch-size: must be >= 1"),
                                         (["--hidden", "32", "0"], "--hidden: every width must be >= 1, got 0"),
                                         (["--lr", "nan"], "--lr: must be a finite number > 0, got nan"),
                                         (["--lr", "inf"], "--lr: must be a finite number > 0, got inf"),
                                         (["--qat-lr=-1e-3"], "--qat-lr: must be a finite number > 0"),
                                         (["--lr", "0"], "--lr: must be a finite number > 0"),
                                         (["--seed", "-1"], "--seed: must be in"),
                                         (["--timing-steps", "0"], "--timing-steps: must be >= 1"),
                                         (["--bits", "0"], "--bits/--k: --bits 0"),
                                         (["--bits", "17", "--k", "1"], "--bits/--k: --bits 17 with --k 1: .*limit"),
                                         (["--recipe", "paper", "--paper-bits", "40"], "--paper-bits: 40"),
                                         (["--plot"], "--plot: needs --out")])  # fmt: skip
def test_qat_cli_refuses_each_bad_argument_before_any_work(argv, named, capsys, monkeypatch):
    from apot_cli.main import main

    monkeypatch.setattr(D, "load_digits_split", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(SystemExit) as info:
        main(["qat", "--no-progress", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: apot qat" in err and re.search("error: argument " + named, err), err


def test_qat_cli_refuses_an_unwritable_out(tmp_path, capsys, monkeypatch):
    import os

    from apot_cli.main import main

    monkeypatch.setattr(D, "load_digits_split", lambda *a, **k: pytest.fail("work started"))
    a_file = tmp_path / "file"
    a_file.write_text("")
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access  # root may write anywhere: the permission answer is faked
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(locked) else real_access(p, mode))
    cases = [(a_file, "exists and is not a directory"), (a_file / "sub", "is not a directory"),
             (locked / "run", "is not writable")]  # fmt: skip
    for out, named in cases:
        with pytest.raises(SystemExit) as info:
            main(["qat", "--out", str(out)])
        assert info.value.code == 2 and re.search("argument --out: .*" + named, capsys.readouterr().err)


def test_qat_refuses_a_batch_larger_than_the_training_set(capsys):
    assert main(["qat", "--recipe", "prototype", "--bits", "4", *TINY, "--batch-size", "100000"]) == 2
    err = capsys.readouterr().err
    assert "--batch-size must be <= 1347 (training set size), got 100000" in err
