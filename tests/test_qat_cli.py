"""``apot qat`` end to end with tiny settings (one epoch, a 32-unit MLP or a
4/8-channel CNN), and the digits job's pieces (``apot_cli.digits``)."""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apot_cli import digits as D
from apot_cli.main import main

TINY = ["--epochs", "1", "--hidden", "32", "--channels", "4", "8", "--batch-size", "128", "--lr", "0.01",
        "--no-progress", "--timing-rounds", "1", "--timing-steps", "2"]  # fmt: skip
#: the paper variant as before the paper's layer precision, sets and schedule
OLD_PAPER = ["--paper-level-set", "apot", "--paper-first-last-bits", "0", "--paper-optimizer", "adam",
             "--paper-init", "float"]  # fmt: skip


def test_digits_split_is_fixed_and_stratified():
    x_tr, y_tr, x_te, y_te = D.load_digits_split()
    assert x_tr.shape == (1347, 64) and x_te.shape == (450, 64)
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int32
    assert x_tr.min() == 0.0 and x_tr.max() == 1.0
    assert set(np.unique(y_te)) == set(range(10)) and np.bincount(y_te).min() >= 40
    again = D.load_digits_split()
    np.testing.assert_array_equal(again[0], x_tr)
    np.testing.assert_array_equal(again[3], y_te)


def test_quant_config_selects_the_fake_quants():
    x = jnp.zeros((2, 64))
    for quantize, expected in (
        ("weights", {"weight_quant"}),
        ("activations", {"input_quant"}),
        ("both", {"weight_quant", "input_quant"}),
    ):
        # eval_shape: only the variable tree is needed, not an eager init.
        model = D.MLP(hidden=(32,), quant=D.QuantConfig(bits=4, k=2, quantize=quantize), quantize_input=True)
        variables = jax.eval_shape(model.init, jax.random.key(0), x)
        assert set(variables["quant_stats"]["dense0"]) == expected
    assert "quant_stats" not in jax.eval_shape(D.MLP(hidden=(8,)).init, jax.random.key(0), x)
    with pytest.raises(ValueError, match="quantize"):
        D.QuantConfig(bits=4, quantize="all")
    with pytest.raises(ValueError, match="level_set"):
        D.QuantConfig(bits=3, recipe="paper", level_set="other")


def test_paper_cnn_keeps_first_and_last_layers_at_8_bits_with_float_input():
    """The paper variant's layer precision: conv0 and dense0 uniform 8-bit
    weights (observed), conv0's input float, dense0's input uniform 8-bit; the
    middle conv the paper's learnt sets (alphas as params)."""
    quant = D.QuantConfig(bits=3, k=1, recipe="paper", learn_activation_alpha=True, level_set="paper",
                          first_last_bits=8)  # fmt: skip
    variables = jax.eval_shape(D.CNN(channels=(4, 8), quant=quant).init, jax.random.key(0), jnp.zeros((2, 64)))
    stats, params = variables["quant_stats"], variables["params"]
    assert set(stats["conv0"]) == {"weight_quant"} and set(stats["dense0"]) == {"weight_quant", "input_quant"}
    assert "conv1" not in stats and set(params["conv1"]) == {"kernel", "bias", "weight_quant", "input_quant"}
    layers = {name: D.QuantConfig.layer_kwargs(quant, i, 3) for i, name in enumerate(("conv0", "conv1", "dense0"))}
    assert layers["conv0"] == dict(b=8, k=1, weight_quant="uniform", input_quant=None, signed_weights=True)
    assert layers["dense0"]["b"] == 8 and layers["dense0"]["input_quant"] == "uniform"
    assert layers["conv1"]["b"] == 3 and layers["conv1"]["level_set"] == "paper"


def test_plain_models_have_the_apot_models_parameter_names():
    """The Qwix path loads the float weights by name: the nn.Dense / nn.Conv
    networks have exactly the APoT networks' parameter trees (names, shapes)."""
    x = jnp.zeros((2, 64))
    for name in D.MODELS:
        sizes = dict(hidden=(32,), channels=(4, 8))
        apot = jax.eval_shape(D.make_model(name, D.QuantConfig(), **sizes).init, jax.random.key(0), x)["params"]
        plain = jax.eval_shape(D.plain_model(name, **sizes).init, jax.random.key(0), x)["params"]
        assert jax.tree_util.tree_map(lambda a: a.shape, apot) == jax.tree_util.tree_map(lambda a: a.shape, plain)


def test_paper_optimizer_is_sgd_momentum_with_decay_on_the_alphas_only():
    from apot_cli import qat

    args = argparse.Namespace(lr=1e-3, qat_lr=3e-4, paper_optimizer="sgd", paper_lr=0.1, paper_alpha_decay=0.5)
    quant = D.QuantConfig(bits=3, k=1, recipe="paper")
    tx = qat._optimizer(args, quant, steps=10)
    params = {"dense0": {"kernel": jnp.ones((2,)), "weight_quant": {"alpha": jnp.full((), 2.0)}}}
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, state = tx.update(zero, tx.init(params), params)
    assert float(updates["dense0"]["kernel"][0]) == 0.0  # no decay on the weights
    assert float(updates["dense0"]["weight_quant"]["alpha"]) == pytest.approx(-0.1 * 0.5 * 2.0)
    updates, _ = tx.update(zero, state, params)  # momentum 0.9 carries the first step, cosine lr
    lr1 = 0.1 * 0.5 * (1 + np.cos(np.pi * 1 / 10))
    assert float(updates["dense0"]["weight_quant"]["alpha"]) == pytest.approx(-lr1 * (0.9 + 1.0) * 0.5 * 2.0, rel=1e-5)
    assert qat._optimizer(argparse.Namespace(**{**vars(args), "paper_optimizer": "adam"}), quant, 10) is not None


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
