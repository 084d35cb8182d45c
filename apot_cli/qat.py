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
import time
from typing import TYPE_CHECKING, Any

from apot_cli.digits import DEFAULT_K, FIRST_LAST_BITS, MODELS

if TYPE_CHECKING:
    import flax.linen as nn

    from apot_common.tables import LevelSet
    from apot_jax.train import TrainState


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


def _optimizer(args: argparse.Namespace, quant: Any, steps: int) -> Any:
    """The optax transformation of a row: adam for float and prototype rows
    (and ``--paper-optimizer adam``); the paper's SGD (momentum 0.9, cosine
    decay over the row's steps, weight decay on the alphas only) otherwise."""
    import jax
    import optax

    if quant.bits is None:
        return optax.adam(args.lr)
    if quant.recipe != "paper" or args.paper_optimizer == "adam":
        return optax.adam(args.qat_lr)

    def alphas(params: Any) -> Any:
        return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) == "alpha", params)

    return optax.chain(
        optax.masked(optax.add_decayed_weights(args.paper_alpha_decay), alphas),
        optax.sgd(optax.cosine_decay_schedule(args.paper_lr, max(1, steps)), momentum=0.9),
    )


def run(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from tqdm import tqdm

    _validate_args(args)  # SystemExit(2) with argparse's message, before any work
    from apot_cli import digits as D
    from apot_jax import train as T

    ks = _k_values(args.bits, args.k)
    qat_epochs = args.epochs if args.qat_epochs is None else args.qat_epochs
    signed_weights = not args.unsigned_weights
    sizes: dict[str, Any] = dict(hidden=tuple(args.hidden), channels=tuple(args.channels))

    x_tr, y_tr, x_te, y_te = D.load_digits_split()
    if args.batch_size > len(x_tr):
        print(f"apot qat: --batch-size must be <= {len(x_tr)} (training set size)", file=sys.stderr)
        return 2
    steps_per_epoch = len(x_tr) // args.batch_size
    rng = jax.random.key(args.seed)
    sample = jnp.asarray(x_tr[: args.batch_size])

    variants: list[dict[str, Any]] = [{"variant": "float", "quant": D.QuantConfig()}]
    if "prototype" in args.recipe:
        for b, k in zip(args.bits, ks):
            variants.append(
                {
                    "variant": f"APoT {args.quantize}",
                    "quant": D.QuantConfig(bits=b, k=k, quantize=args.quantize, signed_weights=signed_weights),
                }
            )
            if args.qwix:
                variants.append({**variants[-1], "variant": f"qwix APoT {args.quantize}", "qwix": True})
    if "paper" in args.recipe:
        for b in args.paper_bits:
            variants.append({"variant": f"paper {args.quantize}", "quant": _paper_quant(args, b)})

    total_steps = steps_per_epoch * (args.epochs + qat_epochs * (len(variants) - 1))
    bar = tqdm(total=total_steps, desc="apot qat", unit="step", disable=args.no_progress, file=sys.stderr)
    float_state: TrainState | None
    float_model: nn.Module | None
    float_state = float_model = None
    previous_paper = None  # the last paper row's trained params (progressive initialisation)
    timers = []  # (variant, step_fn, state) for the interleaved timing
    export: dict[str, Any] | None = None  # the first paper model's export summary
    t_start = time.perf_counter()
    for v in variants:
        quant = v["quant"]
        if v.get("qwix"):
            model = D.qwix_model(args.model, quant, args.quantize_input, **sizes)
        else:
            model = D.make_model(args.model, quant, quantize_input=args.quantize_input, **sizes)
        is_float = quant.bits is None
        epochs = args.epochs if is_float else qat_epochs
        tx = _optimizer(args, quant, epochs * steps_per_epoch)
        state = T.init_state(model, tx, rng, sample)
        if not is_float:
            # QAT starts from trained weights (the float model's; a paper row
            # with --paper-init progressive: the previous paper row's), with
            # observers calibrated on them (fake quant off).
            assert float_state is not None and float_model is not None  # variants[0] is the float model
            source, v["init_from"] = float_state.params, "float"
            if quant.recipe == "paper" and args.paper_init == "progressive" and previous_paper is not None:
                source, v["init_from"] = previous_paper
            params = D.with_weights(state.params, source)
            params = D.fit_paper_alphas(params, quant)  # paper recipe: least-squares initial alphas
            if quant.learn_activation_alpha:
                params = D.fit_activation_alphas(model, params, float_model, float_state.params, x_tr)
            state = state.replace(params=params, opt_state=tx.init(params))
            state = T.calibrate(model, state, [x_tr])  # the whole training set, one batch
        step_fn = T.make_train_step(model, tx)
        eval_fn = T.make_eval_fn(model)
        history: dict[str, list[Any]] = {"epoch": [], "train_loss": [], "test_accuracy": []}
        if not is_float:  # accuracy right after calibration, before any QAT step
            history["epoch"].append(0)
            history["train_loss"].append(None)
            history["test_accuracy"].append(T.accuracy(eval_fn, state, x_te, y_te))
        bar.set_description(f"{v['variant'].split()[0]} {quant.bits or 32}-bit")
        for epoch in range(epochs):
            losses = []
            for xb, yb in D.epoch_batches(x_tr, y_tr, args.batch_size, args.seed, epoch):
                state, metrics = step_fn(state, jnp.asarray(xb), jnp.asarray(yb))
                losses.append(metrics["loss"])
                bar.update(1)
            history["epoch"].append(epoch + 1)
            history["train_loss"].append(float(np.mean(jax.device_get(losses))))
            history["test_accuracy"].append(T.accuracy(eval_fn, state, x_te, y_te))
            bar.set_postfix(loss=f"{history['train_loss'][-1]:.3f}", acc=f"{100 * history['test_accuracy'][-1]:.1f}")
        if is_float:
            float_state, float_model = state, model
        if quant.recipe == "paper" and not is_float:
            previous_paper = state.params, f"paper {quant.bits}-bit"
        paper_row = quant.recipe == "paper" and not is_float
        v.update(
            bits=quant.bits,
            k=quant.k if not is_float else None,
            recipe=None if is_float else quant.recipe,
            weight_k=quant.magnitude_k if paper_row else None,
            level_set=quant.level_set if paper_row else None,
            first_last_bits=quant.first_last_bits if paper_row else None,
            optimizer=("adam" if not paper_row else args.paper_optimizer),
            quantize=None if is_float else quant.quantize,
            weight_levels=_weight_levels(quant, signed_weights) if quant.weight_quant else None,
            activation_levels=_activation_levels(quant) if quant.input_quant else None,
            test_accuracy=T.accuracy(eval_fn, state, x_te, y_te),
            history=history,
        )
        timers.append((v, step_fn, state))
        if paper_row and quant.weight_quant and export is None:
            export = _export_summary(args.model, sizes, model, state, quant, eval_fn, x_te, y_te, v)
    bar.close()

    # Step time: all variants timed in interleaved rounds on the same batch,
    # median per variant, so a busy machine slows every variant alike.
    xb, yb = next(D.epoch_batches(x_tr, y_tr, args.batch_size, args.seed, 0))
    x_timing, y_timing = jnp.asarray(xb), jnp.asarray(yb)
    samples: dict[int, list[float]] = {i: [] for i in range(len(timers))}
    for _ in range(max(1, args.timing_rounds)):
        for i, (_, step_fn, state) in enumerate(timers):
            samples[i].append(D.time_step(step_fn, state, x_timing, y_timing, max(1, args.timing_steps)))
    float_ms = 1e3 * float(np.median(samples[0]))
    for i, (v, _, _) in enumerate(timers):
        v["step_ms"] = 1e3 * float(np.median(samples[i]))
        v["step_time_ratio"] = v["step_ms"] / float_ms
    wall = time.perf_counter() - t_start

    rows = [{key: val for key, val in v.items() if key not in ("quant", "qwix")} for v in variants]
    print(_format_table(rows))
    float_acc = rows[0]["test_accuracy"]
    if args.model == "mlp":
        arch = f"MLP 64-{'-'.join(map(str, args.hidden))}-10"
    else:
        arch = f"CNN conv3x3-{args.channels[0]}, conv3x3/2-{args.channels[1]}, dense-10"
    print(
        f"digits: {len(x_tr)} train / {len(x_te)} test; {arch}; "
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
        config.update(k=ks, qat_epochs=qat_epochs, train_size=int(len(x_tr)), test_size=int(len(x_te)))
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


def _weight_levels(quant: Any, signed_weights: bool) -> int | None:
    from apot_cli.digits import distinct_levels

    if quant.recipe == "paper":
        return 2**quant.bits - 1  # sign-magnitude: exactly 2**b - 1 distinct levels
    return distinct_levels(quant.bits, quant.k, signed_weights)


def _activation_levels(quant: Any) -> int | None:
    from apot_cli.digits import distinct_levels

    level_set: LevelSet = quant.level_set if quant.learn_activation_alpha else "apot"
    return distinct_levels(quant.bits, quant.k, False, level_set)


def _export_summary(model_name, sizes, model, state, quant, eval_fn, x_te, y_te, variant) -> dict[str, Any]:
    """Export every paper-recipe layer of the model to codes, run the model from
    the dequantized codes (activation fake quants and the 8-bit first/last
    layers' uniform fake quants unchanged) and measure it. The 8-bit layers
    count as 8-bit codes plus one float32 scale."""
    import jax.numpy as jnp
    import numpy as np

    from apot_cli import digits as D
    from apot_jax import export as X
    from apot_jax import train as T

    exported = {
        name: X.export_kernel(layer["kernel"], layer["weight_quant"]["alpha"], b=quant.bits, k=quant.magnitude_k,
                              per_channel=quant.per_channel, bias=layer["bias"], level_set=quant.level_set)
        for name, layer in state.params.items()
        if "alpha" in layer.get("weight_quant", {})
    }  # fmt: skip
    # The same network with the paper weights' fake quant off: their kernels from the codes.
    plain = D.make_model(model_name, quant, quantize_input=model.quantize_input, codes=True, **sizes)
    params = {}
    for name, layer in state.params.items():
        if name in exported:
            e = exported[name]
            # the activations' learnt alphas (if any) stay as they are
            params[name] = {**{key: val for key, val in layer.items() if key == "input_quant"},
                            "kernel": X.dequantize_kernel(e), "bias": jnp.asarray(e.bias)}  # fmt: skip
        else:
            params[name] = layer
    plain_state = state.replace(params=params)
    logits_codes = np.asarray(T.make_eval_fn(plain)(plain_state, jnp.asarray(x_te)))
    logits_fq = np.asarray(eval_fn(state, jnp.asarray(x_te)))
    float_bytes = 4 * sum(int(np.prod(layer["kernel"].shape)) for layer in state.params.values())
    edge = [layer for name, layer in state.params.items() if name not in exported]
    code_bytes = sum(e.code_bytes() for e in exported.values())
    code_bytes += sum(int(np.prod(layer["kernel"].shape)) * (quant.first_last_bits or 32) // 8 for layer in edge)
    scale_bytes = sum(4 * (e.alpha.size + e.gamma.size + e.scale.size) for e in exported.values()) + 4 * len(edge)
    return {
        "variant": variant["variant"],
        "bits": quant.bits,
        "first_last_bits": quant.first_last_bits,
        "code_bytes": code_bytes,
        "scale_bytes": scale_bytes,
        "quantized_bytes": code_bytes + scale_bytes,
        "float_bytes": float_bytes,
        "test_accuracy": float(np.mean(np.argmax(logits_codes, -1) == y_te)),
        "fake_quant_accuracy": float(np.mean(np.argmax(logits_fq, -1) == y_te)),
        "identical_logits": bool(np.array_equal(logits_codes, logits_fq)),
    }


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
