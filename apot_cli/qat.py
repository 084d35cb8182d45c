"""``apot qat``: float vs APoT quantization-aware training on the bundled digits.

With no arguments: trains an MLP (64-1024-1024-10; ``--model cnn``: a small
CNN, two 3x3 convolutions of 16 and 32 channels and a dense classifier) in
float, then fine-tunes quantized copies of it and prints a table of test
accuracy and step time (and its ratio to the float step) per variant.
``--out DIR`` writes ``results.json``; ``--plot`` adds PNG plots of the
learning curves and of the APoT level sets beside uniform levels.

``--recipe`` chooses the rows (both by default):

* ``prototype`` at ``--bits`` (4 3 2): observer-calibrated alpha, the
  prototype-compatible signed APoT table for weights and the unsigned
  ``(bits, k)`` table for the hidden layers' inputs, adam, each from the
  float weights.
* ``paper`` at ``--paper-bits`` (4 3 2), the APoT paper's recipe: weights
  sign-magnitude with a learnable alpha (least-squares start) after weight
  normalization; activations (the ReLU outputs) with a learnable alpha over
  the unsigned set of the same bits. ``--paper-level-set paper`` (default)
  takes both sets from the paper's code (``build_power_value``: weights sign
  + ``build_power_value(b - 1)``, activations ``build_power_value(b)``; at 3
  bits the activations are 0, .1, .2, .3, .4, .6, .8, 1 times alpha), while
  ``apot`` uses apot's ``(b, k)`` tables (weights sign + ``(b - 1, k)``,
  activations ``(b, k)``). The first and last layers at
  ``--paper-first-last-bits`` (8, uniform; 0: at the row's bits), the
  network input float; SGD with momentum 0.9, a cosine schedule and weight
  decay on the alphas (``--paper-optimizer``); progressive initialisation
  (``--paper-init``: each row from the previous row's trained weights, in
  the order of ``--paper-bits``).

With a paper row, the first paper model is exported to integer codes and the
command prints its size (packed codes vs float32 weights) and the accuracy of
the model run from the codes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from apot_cli.digits import DEFAULT_K, FIRST_LAST_BITS, MODELS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", choices=list(MODELS), default="mlp",
        help="mlp (64-HIDDEN-10) or cnn (3x3 conv CHANNELS[0], 3x3 stride-2 conv CHANNELS[1], dense 10) (default: mlp)",
    )
    parser.add_argument("--channels", type=int, nargs=2, default=[16, 32],
                        help="--model cnn: channels of the two convolutions (default: 16 32)")
    parser.add_argument(
        "--recipe",
        choices=["prototype", "paper"],
        nargs="+",
        default=["prototype", "paper"],
        help="QAT recipes to train: prototype (observer alpha, --bits) and/or paper (sign-magnitude weights, "
        "learnable alpha, weight normalization; --paper-bits) (default: both)",
    )
    parser.add_argument(
        "--bits", type=int, nargs="+", default=[4, 3, 2],
        help="APoT bit widths of the prototype recipe (default: 4 3 2)",
    )
    parser.add_argument(
        "--paper-bits", type=int, nargs="+", default=[4, 3, 2],
        help="bit widths (sign included) of the paper recipe, in training order (default: 4 3 2)",
    )
    parser.add_argument(
        "--paper-level-set", choices=["paper", "apot", "paper-pot"], default="paper",
        help="paper recipe's level sets: paper (the paper code's build_power_value sets: weights sign + b-1 bits, "
        "activations b bits), apot (apot's (b, k) tables) or paper-pot (non-additive powers of two) (default: paper)",
    )
    parser.add_argument(
        "--paper-first-last-bits", type=int, default=FIRST_LAST_BITS,
        help=f"paper recipe: bits of the first and last layers (uniform weights; the first layer's input float, the "
        f"last layer's input uniform), as the paper; 0: every layer at the row's bits (default: {FIRST_LAST_BITS})",
    )
    parser.add_argument(
        "--paper-optimizer", choices=["sgd", "adam"], default="sgd",
        help="paper recipe's optimizer: sgd (the paper's: momentum 0.9, cosine decay of --paper-lr, weight decay "
        "--paper-alpha-decay on the alphas) or adam (--qat-lr, as the prototype rows) (default: sgd)",
    )
    parser.add_argument("--paper-lr", type=float, default=0.01, help="paper recipe's SGD learning rate (default: 0.01)")
    parser.add_argument("--paper-alpha-decay", type=float, default=1e-4,
                        help="paper recipe's SGD weight decay on the alphas (default: 1e-4)")
    parser.add_argument(
        "--paper-init", choices=["progressive", "float"], default="progressive",
        help="paper recipe's starting weights: progressive (each row from the previous paper row's trained weights, "
        "the first from the float model, as the paper's float -> 4 -> 3 -> 2 bits) or float (every row from the "
        "float model) (default: progressive)",
    )
    parser.add_argument(
        "--per-channel", action="store_true", help="paper recipe: one weight alpha per output feature"
    )
    parser.add_argument(
        "--paper-activations",
        choices=["learnable", "observed"],
        default="learnable",
        help="paper recipe's activation alpha: learnt as in the paper (initialised by least squares on the float "
        "network's activations) or observed like the prototype recipe (default: learnable)",
    )
    parser.add_argument(
        "--k",
        type=int,
        nargs="+",
        default=None,
        help="prototype recipe's base bit-width: one value for all --bits, or one per entry "
        "(default: 2, or 1 for odd bits)",
    )
    parser.add_argument("--epochs", type=int, default=40, help="float training epochs (default: 40)")
    parser.add_argument(
        "--qat-epochs", type=int, default=None, help="QAT fine-tuning epochs (default: same as --epochs)"
    )
    parser.add_argument("--batch-size", type=int, default=256, help="batch size (default: 256)")
    parser.add_argument("--lr", type=float, default=1e-3, help="adam learning rate for float training (default: 1e-3)")
    parser.add_argument(
        "--qat-lr", type=float, default=3e-4, help="adam learning rate for QAT fine-tuning (default: 3e-4)"
    )
    parser.add_argument("--hidden", type=int, nargs="+", default=[1024, 1024],
                        help="--model mlp: hidden layer widths (default: 1024 1024)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and shuffling seed (default: 0)")
    parser.add_argument(
        "--quantize",
        choices=["weights", "activations", "both"],
        default="both",
        help="what to fake-quantize (default: both)",
    )
    parser.add_argument(
        "--quantize-input",
        action="store_true",
        help="also fake-quantize the network input (the pixels); "
        "by default activations means the hidden layers' inputs",
    )
    parser.add_argument(
        "--unsigned-weights",
        action="store_true",
        help="use the unsigned APoT table for weights too (the prototype's default: negative weights become 0)",
    )
    parser.add_argument(
        "--qwix",
        action="store_true",
        help="also train each prototype variant as the unmodified linen model (nn.Dense / nn.Conv) quantized "
        "through qwix.quantize_model with apot_jax.qwix.ApotQatProvider (needs apot[qwix]); its rows equal the "
        "APoT rows",
    )
    parser.add_argument("--timing-steps", type=int, default=20, help="steps per timing round (default: 20)")
    parser.add_argument("--timing-rounds", type=int, default=5, help="interleaved timing rounds (default: 5)")
    parser.add_argument("--out", default=None, help="directory for results.json (and plots with --plot)")
    parser.add_argument("--plot", action="store_true", help="with --out: write learning_curves.png and levels.png")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _k_values(bits: list[int], k: list[int] | None) -> list[int]:
    if k is None:
        return [DEFAULT_K.get(b, 1) for b in bits]
    if len(k) == 1:
        return k * len(bits)
    if len(k) != len(bits):
        raise ValueError(f"--k takes one value or one per --bits entry ({len(bits)}), got {len(k)}")
    return list(k)


def _paper_k(bits: int) -> tuple[int, int]:
    """(weight magnitude k, activation k) of a paper-recipe row."""
    from apot_common.tables import default_magnitude_k

    return default_magnitude_k(bits), DEFAULT_K.get(bits, 1)


def _paper_quant(args: argparse.Namespace, b: int) -> Any:
    """The ``QuantConfig`` of the paper row at ``b`` bits."""
    from apot_cli.digits import QuantConfig

    weight_k, k = _paper_k(b)
    return QuantConfig(bits=b, k=k, quantize=args.quantize, recipe="paper", weight_k=weight_k,
                       per_channel=args.per_channel, learn_activation_alpha=args.paper_activations == "learnable",
                       level_set=args.paper_level_set,
                       first_last_bits=args.paper_first_last_bits or None)  # fmt: skip


def _format_table(rows: list[dict[str, Any]]) -> str:
    header = ("variant", "bits", "k w/a", "levels w/a", "test acc (%)", "step (ms)", "ratio")
    lines = []
    for r in rows:
        levels = "-" if r["bits"] is None else f"{r['weight_levels'] or '-'}/{r['activation_levels'] or '-'}"
        if r["bits"] is None:
            k = "-"
        elif r.get("level_set") not in (None, "apot"):
            k = r["level_set"]  # the paper's sets have no k
        else:
            k = str(r["k"]) if r["weight_k"] in (None, r["k"]) else f"{r['weight_k']}/{r['k']}"
        lines.append(
            (
                r["variant"],
                "32 (float)" if r["bits"] is None else str(r["bits"]),
                k,
                levels,
                f"{100 * r['test_accuracy']:.2f}",
                f"{r['step_ms']:.3f}",
                f"{r['step_time_ratio']:.2f}",
            )
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), sep, *(fmt(line) for line in lines)])


def _validate_args(args: argparse.Namespace) -> None:
    """Check every argument of ``apot qat`` before anything is loaded or
    trained: counts (``--epochs``, ``--qat-epochs``, ``--batch-size``,
    ``--hidden``, ``--channels``, ``--timing-steps``, ``--timing-rounds``) at
    least 1, learning rates finite and positive, ``--paper-alpha-decay``
    finite and >= 0, ``--seed`` in ``[0, 2**32)``, every
    ``--bits``/``--k``/``--paper-bits``/``--paper-level-set``/
    ``--paper-first-last-bits`` combination valid for the quantizers it
    selects (``QuantConfig``), ``--qwix`` only with the prototype recipe's
    rows to add to, ``--plot`` only with ``--out``, and ``--out`` a directory
    that exists and is writable or can be created.

    Raises:
      SystemExit: status 2, after argparse's usage and an error message
        naming the argument (``parser.error``).
    """
    import math

    parser = argparse.ArgumentParser(prog="apot qat")
    add_arguments(parser)

    def fail(option: str, message: str) -> None:
        parser.error(f"argument {option}: {message}")

    for option, value in (("--epochs", args.epochs), ("--qat-epochs", args.qat_epochs),
                          ("--batch-size", args.batch_size), ("--timing-steps", args.timing_steps),
                          ("--timing-rounds", args.timing_rounds)):  # fmt: skip
        if value is not None and value < 1:
            fail(option, f"must be >= 1, got {value}")
    for option, values in (("--hidden", args.hidden), ("--channels", args.channels)):
        for width in values:
            if width < 1:
                fail(option, f"every width must be >= 1, got {width}")
    for option, value in (("--lr", args.lr), ("--qat-lr", args.qat_lr), ("--paper-lr", args.paper_lr)):
        if not (math.isfinite(value) and value > 0):
            fail(option, f"must be a finite number > 0, got {value}")
    if not (math.isfinite(args.paper_alpha_decay) and args.paper_alpha_decay >= 0):
        fail("--paper-alpha-decay", f"must be a finite number >= 0, got {args.paper_alpha_decay}")
    if not 0 <= args.seed < 2**32:
        fail("--seed", f"must be in [0, 2**32), got {args.seed}")
    if args.paper_first_last_bits < 0:
        fail("--paper-first-last-bits", f"must be >= 0 (0: off), got {args.paper_first_last_bits}")

    from apot_cli.digits import QuantConfig

    try:
        ks = _k_values(args.bits, args.k)
    except ValueError as exc:
        fail("--k", str(exc))
    if "prototype" in args.recipe:
        for b, k in zip(args.bits, ks):
            try:
                QuantConfig(bits=b, k=k, quantize=args.quantize, signed_weights=not args.unsigned_weights)
            except ValueError as exc:
                fail("--bits/--k", f"--bits {b} with --k {k}: {exc}")
    if "paper" in args.recipe:
        for b in args.paper_bits:
            try:
                if b < 2:
                    raise ValueError(f"the sign-magnitude weights need b >= 2, got b={b}")
                _paper_quant(args, b)
            except ValueError as exc:
                fail("--paper-bits", f"{b} (--paper-level-set {args.paper_level_set}): {exc}")
    if args.qwix and "prototype" not in args.recipe:
        fail("--qwix", "adds rows to the prototype recipe (--recipe prototype)")
    if args.plot and not args.out:
        fail("--plot", "needs --out (the directory the plots are written to)")
    if args.out:
        out = os.path.abspath(args.out)
        existing = out
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if existing == out and not os.path.isdir(out):
            fail("--out", f"{args.out} exists and is not a directory")
        if not os.path.isdir(existing):
            fail("--out", f"cannot create {args.out}: {existing} is not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            fail("--out", f"{existing} is not writable")


def run(args: argparse.Namespace) -> int:
    import jax

    _validate_args(args)  # SystemExit(2) with argparse's message, before any work
    from apot_cli import digits as D

    ks = _k_values(args.bits, args.k)
    qat_epochs = args.epochs if args.qat_epochs is None else args.qat_epochs
    signed_weights = not args.unsigned_weights
    rows_in = [D.Row(variant="float", quant=D.QuantConfig())]
    if "prototype" in args.recipe:
        for b, k in zip(args.bits, ks):
            quant = D.QuantConfig(bits=b, k=k, quantize=args.quantize, signed_weights=signed_weights)
            rows_in.append(D.Row(variant=f"APoT {args.quantize}", quant=quant))
            if args.qwix:
                rows_in.append(D.Row(variant=f"qwix APoT {args.quantize}", quant=quant, qwix=True))
    if "paper" in args.recipe:
        rows_in += [D.Row(variant=f"paper {args.quantize}", quant=_paper_quant(args, b)) for b in args.paper_bits]
    job = D.Job(model=args.model, hidden=tuple(args.hidden), channels=tuple(args.channels),
                quantize_input=args.quantize_input, signed_weights=signed_weights, batch_size=args.batch_size,
                epochs=args.epochs, qat_epochs=qat_epochs, lr=args.lr, qat_lr=args.qat_lr, seed=args.seed,
                paper_optimizer=args.paper_optimizer, paper_lr=args.paper_lr,
                paper_alpha_decay=args.paper_alpha_decay, paper_init=args.paper_init,
                timing_rounds=args.timing_rounds, timing_steps=args.timing_steps,
                progress=not args.no_progress)  # fmt: skip
    try:
        result = D.run_job(job, rows_in)
    except ValueError as exc:  # the batch size against the training set, known once the data is loaded
        print(f"apot qat: --batch-size {exc}", file=sys.stderr)
        return 2
    rows, export, wall = result.rows, result.export, result.wall_s
    n_train, n_test = result.train_size, result.test_size

    print(_format_table(rows))
    float_acc = rows[0]["test_accuracy"]
    if args.model == "mlp":
        arch = f"MLP 64-{'-'.join(map(str, args.hidden))}-10"
    else:
        arch = f"CNN conv3x3-{args.channels[0]}, conv3x3/2-{args.channels[1]}, dense-10"
    print(
        f"digits: {n_train} train / {n_test} test; {arch}; "
        f"batch {args.batch_size}; float {args.epochs} epochs (adam {args.lr}), QAT {qat_epochs} epochs "
        f"after calibration; prototype: adam {args.qat_lr} from the float weights, weights "
        f"{'signed' if signed_weights else 'unsigned'} table, activations unsigned (k w/a = weight k / activation k)"
    )
    if "paper" in args.recipe:
        first_last = (f"first/last layers {args.paper_first_last_bits}-bit uniform"
                      if args.paper_first_last_bits else "every layer at the row's bits")  # fmt: skip
        opt = (f"SGD momentum 0.9, lr {args.paper_lr} cosine, alpha weight decay {args.paper_alpha_decay}"
               if args.paper_optimizer == "sgd" else f"adam {args.qat_lr}")  # fmt: skip
        acts = "learnt alpha" if args.paper_activations == "learnable" else "observed alpha"
        init = ("progressive initialisation in --paper-bits order"
                if args.paper_init == "progressive" else "each from the float weights")  # fmt: skip
        print(
            f"paper: level set {args.paper_level_set}; sign-magnitude weights, learnt alpha after weight "
            f"normalization; activations unsigned, {acts}; {first_last}; {opt}; "
            f"{init}"
        )
    print(
        f"network input {'quantized' if args.quantize_input else 'float'}; "
        f"{jax.devices()[0].platform} ({jax.device_count()} devices); {wall:.1f} s"
    )
    for r in rows[1:]:
        recipe = "" if r["recipe"] == "prototype" else f" ({r['recipe']} recipe)"
        recipe += " (qwix)" if r["variant"].startswith("qwix") else ""
        print(f"  {r['bits']}-bit{recipe}: {100 * (r['test_accuracy'] - float_acc):+.2f} points vs float")
    if export is not None:
        print(
            f"export ({export['bits']}-bit paper model): weights {export['code_bytes']} bytes of packed "
            f"codes + {export['scale_bytes']} bytes of alpha/gamma/scale "
            f"vs {export['float_bytes']} bytes float32 "
            f"({export['float_bytes'] / export['quantized_bytes']:.1f}x smaller); "
            f"test accuracy from the codes {100 * export['test_accuracy']:.2f}% "
            f"(fake-quant model {100 * export['fake_quant_accuracy']:.2f}%, "
            f"identical logits: {export['identical_logits']})"
        )

    if args.out:
        os.makedirs(args.out, exist_ok=True)
        config = {key: val for key, val in vars(args).items() if not key.startswith("_")}
        config.update(k=ks, qat_epochs=qat_epochs, train_size=int(n_train), test_size=int(n_test))
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(
                {"config": config, "results": rows, "export": export, "platform": jax.devices()[0].platform},
                f,
                indent=2,
            )
        if args.plot:
            _plot(args.out, rows, signed_weights)
        print(f"wrote {args.out}")
    return 0


def _plot(out: str, rows: list[dict[str, Any]], signed_weights: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from apot_common.tables import level_table

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        label = "float" if r["bits"] is None else f"APoT {r['bits']}-bit (k={r['k']})"
        h = r["history"]
        epochs = [e for e, loss in zip(h["epoch"], h["train_loss"]) if loss is not None]
        axes[0].plot(epochs, [loss for loss in h["train_loss"] if loss is not None], label=label)
        axes[1].plot(h["epoch"], [100 * a for a in h["test_accuracy"]], label=label)
    axes[0].set(xlabel="epoch", ylabel="train loss", yscale="log", title="training loss")
    axes[1].set(xlabel="epoch (QAT epochs for APoT)", ylabel="test accuracy (%)", title="test accuracy")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "learning_curves.png"), dpi=120)
    plt.close(fig)

    quantized = [r for r in rows if r["bits"] is not None and r["recipe"] == "prototype"]
    fig, axes = plt.subplots(len(quantized) or 1, 1, figsize=(9, 1.6 * max(1, len(quantized))), squeeze=False)
    for ax, r in zip(axes[:, 0], quantized):
        table = level_table(r["bits"], r["k"], False)
        apot = np.unique(table.base_sum) / table.p_sum  # alpha = 1
        uniform = np.linspace(0, 1, 2 ** r["bits"])
        ax.eventplot([apot, uniform], lineoffsets=[1, 0], linelengths=0.8, colors=["C0", "C1"])
        ax.set_yticks([0, 1], [f"uniform ({uniform.size})", f"APoT k={r['k']} ({apot.size})"])
        ax.set_title(f"{r['bits']}-bit levels on [0, alpha], alpha = 1", fontsize=9)
    axes[-1, 0].set_xlabel("level / alpha")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "levels.png"), dpi=120)
    plt.close(fig)


__all__ = ["add_arguments", "run"]
