"""``apot qat``: float vs APoT quantization-aware training on the bundled digits.

With no arguments: trains an MLP (64-1024-1024-10) in float, then for 4, 3 and 2
bits fine-tunes a copy of it with APoT fake quantization of weights (signed
table) and activations (unsigned table): calibration of the observers on the
training data, then QAT with optax adam. Prints a table of test accuracy and
step time (and its ratio to the float step) per variant. ``--out DIR`` writes
``results.json``; ``--plot`` adds PNG plots of the learning curves and of the
APoT level sets beside uniform levels.

``--recipe`` chooses the rows: ``prototype`` (the prototype-compatible
recipe above, at ``--bits``) and ``paper`` (the APoT paper's weight recipe at
``--paper-bits``, default 3 and 2: sign-magnitude weights with a learnable
alpha, initialised by least squares, after weight normalization; activations
as in the prototype recipe). Both by default. With a paper row, the first
paper model is exported to integer codes and the command prints its size
(packed codes vs float32 weights) and the accuracy of the model run from the
codes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

#: Default APoT base bit-width per total bits: k = 2 where it divides b; for
#: 3 bits k = 1 (three additive terms; k = 3 would leave pure powers of two,
#: which are very coarse near alpha).
DEFAULT_K = {1: 1, 2: 2, 3: 1, 4: 2, 5: 1, 6: 2, 8: 2}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--recipe",
        choices=["prototype", "paper"],
        nargs="+",
        default=["prototype", "paper"],
        help="QAT recipes to train: prototype (observer alpha, --bits) and/or paper (sign-magnitude weights, "
        "learnable alpha, weight normalization; --paper-bits) (default: both)",
    )
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 3, 2], help="APoT bit widths of the prototype recipe (default: 4 3 2)")
    parser.add_argument(
        "--paper-bits", type=int, nargs="+", default=[3, 2], help="bit widths (sign included) of the paper recipe (default: 3 2)"
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
        help="prototype recipe's base bit-width: one value for all --bits, or one per entry (default: 2, or 1 for odd bits)",
    )
    parser.add_argument("--epochs", type=int, default=40, help="float training epochs (default: 40)")
    parser.add_argument("--qat-epochs", type=int, default=None, help="QAT fine-tuning epochs (default: same as --epochs)")
    parser.add_argument("--batch-size", type=int, default=256, help="batch size (default: 256)")
    parser.add_argument("--lr", type=float, default=1e-3, help="adam learning rate for float training (default: 1e-3)")
    parser.add_argument("--qat-lr", type=float, default=3e-4, help="adam learning rate for QAT fine-tuning (default: 3e-4)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[1024, 1024], help="hidden layer widths (default: 1024 1024)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and shuffling seed (default: 0)")
    parser.add_argument(
        "--quantize", choices=["weights", "activations", "both"], default="both", help="what to fake-quantize (default: both)"
    )
    parser.add_argument(
        "--quantize-input",
        action="store_true",
        help="also fake-quantize the network input (the pixels); by default activations means the hidden layers' inputs",
    )
    parser.add_argument(
        "--unsigned-weights",
        action="store_true",
        help="use the unsigned APoT table for weights too (the prototype's default: negative weights become 0)",
    )
    parser.add_argument(
        "--qwix",
        action="store_true",
        help="also train each prototype variant as an unmodified linen MLP (nn.Dense) quantized through "
        "qwix.quantize_model with apot_jax.qwix.ApotQatProvider (needs apot[qwix]); its rows equal the APoT rows",
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


def _distinct_levels(bits: int | None, k: int, signed: bool) -> int | None:
    """Number of distinct level values of a quantizer (None for float)."""
    if bits is None:
        return None
    import numpy as np

    from apot_common.tables import level_table

    return int(np.unique(level_table(bits, k, signed).base_sum).size)


def _format_table(rows: list[dict[str, Any]]) -> str:
    header = ("variant", "bits", "k w/a", "levels w/a", "test acc (%)", "step (ms)", "ratio")
    lines = []
    for r in rows:
        levels = "-" if r["bits"] is None else f"{r['weight_levels'] or '-'}/{r['activation_levels'] or '-'}"
        lines.append(
            (
                r["variant"],
                "32 (float)" if r["bits"] is None else str(r["bits"]),
                "-" if r["bits"] is None else (str(r["k"]) if r["weight_k"] in (None, r["k"]) else f"{r['weight_k']}/{r['k']}"),
                levels,
                f"{100 * r['test_accuracy']:.2f}",
                f"{r['step_ms']:.3f}",
                f"{r['step_time_ratio']:.2f}",
            )
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), sep, *(fmt(line) for line in lines)])


def _validate_args(args: argparse.Namespace) -> None:
    """Check every argument of ``apot qat`` before anything is loaded or
    trained: counts (``--epochs``, ``--qat-epochs``, ``--batch-size``,
    ``--hidden``, ``--timing-steps``, ``--timing-rounds``) at least 1,
    learning rates finite and positive, ``--seed`` in ``[0, 2**32)``, every
    ``--bits``/``--k``/``--paper-bits`` combination valid for the quantizers
    it selects (``QuantConfig``), ``--plot`` only with ``--out``, and
    ``--out`` a directory that exists and is writable or can be created.

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
    for width in args.hidden:
        if width < 1:
            fail("--hidden", f"every width must be >= 1, got {width}")
    for option, value in (("--lr", args.lr), ("--qat-lr", args.qat_lr)):
        if not (math.isfinite(value) and value > 0):
            fail(option, f"must be a finite number > 0, got {value}")
    if not 0 <= args.seed < 2**32:
        fail("--seed", f"must be in [0, 2**32), got {args.seed}")

    from apot_jax import train as T

    try:
        ks = _k_values(args.bits, args.k)
    except ValueError as exc:
        fail("--k", str(exc))
    if "prototype" in args.recipe:
        for b, k in zip(args.bits, ks):
            try:
                T.QuantConfig(bits=b, k=k, quantize=args.quantize, signed_weights=not args.unsigned_weights)
            except ValueError as exc:
                fail("--bits/--k", f"--bits {b} with --k {k}: {exc}")
    if "paper" in args.recipe:
        for b in args.paper_bits:
            try:
                if b < 2:
                    raise ValueError(f"the sign-magnitude weights need b >= 2, got b={b}")
                weight_k, k = _paper_k(b)
                T.QuantConfig(bits=b, k=k, quantize=args.quantize, recipe="paper", weight_k=weight_k,
                              learn_activation_alpha=args.paper_activations == "learnable")  # fmt: skip
            except ValueError as exc:
                fail("--paper-bits", f"{b}: {exc}")
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
    import jax.numpy as jnp
    import numpy as np
    import optax
    from tqdm import tqdm

    _validate_args(args)  # SystemExit(2) with argparse's message, before any work
    from apot_jax import train as T

    ks = _k_values(args.bits, args.k)
    qat_epochs = args.epochs if args.qat_epochs is None else args.qat_epochs
    signed_weights = not args.unsigned_weights

    x_tr, y_tr, x_te, y_te = T.load_digits_split()
    if args.batch_size > len(x_tr):
        print(f"apot qat: --batch-size must be <= {len(x_tr)} (training set size)", file=sys.stderr)
        return 2
    steps_per_epoch = len(x_tr) // args.batch_size
    rng = jax.random.key(args.seed)
    sample = jnp.asarray(x_tr[: args.batch_size])

    variants: list[dict[str, Any]] = [{"variant": "float", "quant": T.QuantConfig()}]
    if "prototype" in args.recipe:
        for b, k in zip(args.bits, ks):
            variants.append(
                {
                    "variant": f"APoT {args.quantize}",
                    "quant": T.QuantConfig(bits=b, k=k, quantize=args.quantize, signed_weights=signed_weights),
                }
            )
            if args.qwix:
                variants.append({**variants[-1], "variant": f"qwix APoT {args.quantize}", "qwix": True})
    if "paper" in args.recipe:
        for b in args.paper_bits:
            weight_k, k = _paper_k(b)
            quant = T.QuantConfig(
                bits=b,
                k=k,
                quantize=args.quantize,
                recipe="paper",
                weight_k=weight_k,
                per_channel=args.per_channel,
                learn_activation_alpha=args.paper_activations == "learnable",
            )
            variants.append({"variant": f"paper {args.quantize}", "quant": quant})

    total_steps = steps_per_epoch * (args.epochs + qat_epochs * (len(variants) - 1))
    bar = tqdm(total=total_steps, desc="apot qat", unit="step", disable=args.no_progress, file=sys.stderr)
    float_state = float_model = None
    timers = []  # (variant, step_fn, state) for the interleaved timing
    export: dict[str, Any] | None = None  # the first paper model's export summary
    t_start = time.perf_counter()
    for v in variants:
        quant = v["quant"]
        if v.get("qwix"):
            model = _qwix_mlp(args.hidden, quant, args.quantize_input)
        else:
            model = T.MLP(hidden=tuple(args.hidden), quant=quant, quantize_input=args.quantize_input)
        is_float = quant.bits is None
        tx = optax.adam(args.lr if is_float else args.qat_lr)
        state = T.init_state(model, tx, rng, sample)
        epochs = args.epochs if is_float else qat_epochs
        if not is_float:
            # QAT starts from the trained float weights, with observers
            # calibrated on the float network (fake quant off).
            params = _with_float_weights(state.params, float_state.params)
            params = T.fit_paper_alphas(params, quant)  # paper recipe: least-squares initial alphas
            if quant.learn_activation_alpha:
                params = T.fit_activation_alphas(model, params, float_model, float_state.params, x_tr)
            state = state.replace(params=params, opt_state=tx.init(params))
            state = T.calibrate(model, state, [x_tr])  # the whole training set, one batch
        step_fn = T.make_train_step(model, tx)
        eval_fn = T.make_eval_fn(model)
        history = {"epoch": [], "train_loss": [], "test_accuracy": []}
        if not is_float:  # accuracy right after calibration, before any QAT step
            history["epoch"].append(0)
            history["train_loss"].append(None)
            history["test_accuracy"].append(T.accuracy(eval_fn, state, x_te, y_te))
        bar.set_description(f"{v['variant'].split()[0]} {quant.bits or 32}-bit")
        for epoch in range(epochs):
            losses = []
            for xb, yb in T.epoch_batches(x_tr, y_tr, args.batch_size, args.seed, epoch):
                state, metrics = step_fn(state, jnp.asarray(xb), jnp.asarray(yb))
                losses.append(metrics["loss"])
                bar.update(1)
            history["epoch"].append(epoch + 1)
            history["train_loss"].append(float(np.mean(jax.device_get(losses))))
            history["test_accuracy"].append(T.accuracy(eval_fn, state, x_te, y_te))
            bar.set_postfix(loss=f"{history['train_loss'][-1]:.3f}", acc=f"{100 * history['test_accuracy'][-1]:.1f}")
        if is_float:
            float_state, float_model = state, model
        v.update(
            bits=quant.bits,
            k=quant.k if not is_float else None,
            recipe=None if is_float else quant.recipe,
            weight_k=quant.magnitude_k if quant.recipe == "paper" and not is_float else None,
            quantize=None if is_float else quant.quantize,
            weight_levels=_weight_levels(quant, signed_weights) if quant.weight_quant else None,
            activation_levels=_distinct_levels(quant.bits, quant.k, False) if quant.input_quant else None,
            test_accuracy=T.accuracy(eval_fn, state, x_te, y_te),
            history=history,
        )
        timers.append((v, step_fn, state))
        if quant.recipe == "paper" and quant.weight_quant and export is None:
            export = _export_summary(model, state, quant, eval_fn, x_te, y_te, v)
    bar.close()

    # Step time: all variants timed in interleaved rounds on the same batch,
    # median per variant, so a busy machine slows every variant alike.
    xb, yb = next(T.epoch_batches(x_tr, y_tr, args.batch_size, args.seed, 0))
    xb, yb = jnp.asarray(xb), jnp.asarray(yb)
    samples: dict[int, list[float]] = {i: [] for i in range(len(timers))}
    for _ in range(max(1, args.timing_rounds)):
        for i, (_, step_fn, state) in enumerate(timers):
            samples[i].append(T.time_step(step_fn, state, xb, yb, max(1, args.timing_steps)))
    float_ms = 1e3 * float(np.median(samples[0]))
    for i, (v, _, _) in enumerate(timers):
        v["step_ms"] = 1e3 * float(np.median(samples[i]))
        v["step_time_ratio"] = v["step_ms"] / float_ms
    wall = time.perf_counter() - t_start

    rows = [{key: val for key, val in v.items() if key not in ("quant", "qwix")} for v in variants]
    print(_format_table(rows))
    float_acc = rows[0]["test_accuracy"]
    print(
        f"digits: {len(x_tr)} train / {len(x_te)} test; MLP 64-{'-'.join(map(str, args.hidden))}-10; "
        f"batch {args.batch_size}; float {args.epochs} epochs (adam {args.lr}), QAT {qat_epochs} epochs "
        f"(adam {args.qat_lr}) from the float weights after calibration; "
        f"weights {'signed' if signed_weights else 'unsigned'} table (prototype recipe) or sign-magnitude levels "
        f"with learnable alpha after weight normalization (paper recipe; k w/a = weight magnitude k / activation k), "
        f"activations unsigned{', alpha learnt in the paper recipe' if args.paper_activations == 'learnable' else ''} "
        f"({'network input and hidden layers' if args.quantize_input else 'hidden layers; network input float'}); "
        f"{jax.devices()[0].platform} ({jax.device_count()} devices); {wall:.1f} s"
    )
    for r in rows[1:]:
        recipe = "" if r["recipe"] == "prototype" else f" ({r['recipe']} recipe)"
        print(f"  {r['bits']}-bit{recipe}: {100 * (r['test_accuracy'] - float_acc):+.2f} points vs float")
    if export is not None:
        print(
            f"export ({export['bits']}-bit paper model): weights {export['code_bytes']} bytes of packed "
            f"{export['bits']}-bit codes + {export['scale_bytes']} bytes of alpha/gamma/scale "
            f"vs {export['float_bytes']} bytes float32 ({export['float_bytes'] / export['quantized_bytes']:.1f}x smaller); "
            f"test accuracy from the codes {100 * export['test_accuracy']:.2f}% "
            f"(fake-quant model {100 * export['fake_quant_accuracy']:.2f}%, identical logits: {export['identical_logits']})"
        )

    if args.out:
        os.makedirs(args.out, exist_ok=True)
        config = {key: val for key, val in vars(args).items() if not key.startswith("_")}
        config.update(k=ks, qat_epochs=qat_epochs, train_size=int(len(x_tr)), test_size=int(len(x_te)))
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump({"config": config, "results": rows, "export": export, "platform": jax.devices()[0].platform}, f, indent=2)
        if args.plot:
            _plot(args.out, rows, signed_weights)
        print(f"wrote {args.out}")
    return 0


def _weight_levels(quant: Any, signed_weights: bool) -> int:
    if quant.recipe == "paper":
        return 2**quant.bits - 1  # sign-magnitude: exactly 2**b - 1 distinct levels
    return _distinct_levels(quant.bits, quant.k, signed_weights)


def _qwix_mlp(hidden: list[int], quant: Any, quantize_input: bool) -> Any:
    """An unmodified linen MLP of ``nn.Dense`` layers (named like ``T.MLP``'s, so
    the float weights load as they are), quantized through the Qwix provider
    with the rules that mean ``quant`` (prototype recipe)."""
    import flax.linen as nn
    import qwix

    from apot_jax.qwix import ApotQatProvider, ApotRule

    widths = tuple(hidden) + (10,)

    class PlainMLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            for i, width in enumerate(widths):
                x = nn.Dense(width, name=f"dense{i}")(x)
                if i < len(widths) - 1:
                    x = nn.relu(x)
            return x

    weight = dict(
        weight_bits=quant.bits if quant.weight_quant else None,
        weight_k=quant.k,
        weight_scheme="signed" if quant.signed_weights else "unsigned",
    )
    act = dict(act_bits=quant.bits, act_k=quant.k) if quant.input_quant else {}
    first = {} if quantize_input else {"act_bits": None}
    rules = [ApotRule(module_path="dense0", **(weight | act | first)), ApotRule(module_path=".*", **(weight | act))]
    return qwix.quantize_model(PlainMLP(), ApotQatProvider(rules))


def _with_float_weights(params: dict[str, Any], float_params: dict[str, Any]) -> dict[str, Any]:
    """``params`` (a quantized model's, with e.g. learnable alphas) with every
    kernel and bias taken from the trained float model."""
    return {name: {**dict(layer), **dict(float_params[name])} for name, layer in params.items()}


def _export_summary(model, state, quant, eval_fn, x_te, y_te, variant) -> dict[str, Any]:
    """Export every layer of a paper-recipe MLP to codes, run the model from the
    dequantized codes (activation fake quants unchanged) and measure it."""
    import jax.numpy as jnp
    import numpy as np

    from apot_jax import export as X
    from apot_jax import train as T

    exported = {
        name: X.export_kernel(
            layer["kernel"],
            layer["weight_quant"]["alpha"],
            b=quant.bits,
            k=quant.magnitude_k,
            per_channel=quant.per_channel,
            bias=layer["bias"],
        )
        for name, layer in state.params.items()
    }
    # The same network with float weights: the kernels from the codes.
    plain_quant = T.QuantConfig(
        bits=quant.bits,
        k=quant.k,
        quantize="activations",
        recipe=quant.recipe,
        weight_k=quant.weight_k,
        learn_activation_alpha=quant.learn_activation_alpha,
    )
    plain = T.MLP(hidden=model.hidden, quant=plain_quant, quantize_input=model.quantize_input)
    # the activations' learnt alphas (if any) stay as they are
    params = {
        name: {
            **{key: value for key, value in state.params[name].items() if key == "input_quant"},
            "kernel": X.dequantize_kernel(e),
            "bias": jnp.asarray(e.bias),
        }
        for name, e in exported.items()
    }
    plain_state = state.replace(params=params)
    logits_codes = np.asarray(T.make_eval_fn(plain)(plain_state, jnp.asarray(x_te)))
    logits_fq = np.asarray(eval_fn(state, jnp.asarray(x_te)))
    float_bytes = 4 * sum(int(np.prod(layer["kernel"].shape)) for layer in state.params.values())
    code_bytes = sum(e.code_bytes() for e in exported.values())
    scale_bytes = sum(4 * (e.alpha.size + e.gamma.size + e.scale.size) for e in exported.values())
    return {
        "variant": variant["variant"],
        "bits": quant.bits,
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
        epochs = [e for e, l in zip(h["epoch"], h["train_loss"]) if l is not None]
        axes[0].plot(epochs, [l for l in h["train_loss"] if l is not None], label=label)
        axes[1].plot(h["epoch"], [100 * a for a in h["test_accuracy"]], label=label)
    axes[0].set(xlabel="epoch", ylabel="train loss", yscale="log", title="training loss")
    axes[1].set(xlabel="epoch (QAT epochs for APoT)", ylabel="test accuracy (%)", title="test accuracy")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "learning_curves.png"), dpi=120)
    plt.close(fig)

    quantized = [r for r in rows if r["bits"] is not None]
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
