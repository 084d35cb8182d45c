"""QAT step time of an unmodified Flax NNX MLP through the Qwix provider vs float.

Times one jitted ``nnx.Optimizer`` adam step (forward, backward, update,
observer updates) of the ``apot qat`` MLP shape (64-1024-1024-10, batch 64)
in float and quantized with ``ApotQatProvider`` (4-bit signed weights, 4-bit
unsigned inputs of the hidden layers), and of the same network built from
``apot_jax.nnx.APoTDense``. Rounds are interleaved so a busy machine slows
every variant alike; prints the median per variant and its ratio to float.

    .venv/bin/python benchmarks/bench_qwix.py [--rounds 7] [--steps 20]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import optax
import qwix
from flax import nnx

from apot_jax import nnx as anx
from apot_jax.qwix import ApotQatProvider, ApotRule

WIDTHS = (64, 1024, 1024, 10)


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(WIDTHS[:-1], WIDTHS[1:])])

    def __call__(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == 0 else layer(nnx.relu(x))
        return x


class ApotMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.layers = nnx.List(
            [
                anx.APoTDense(a, b, b=4, k=2, signed_weights=True, input_quant=None if i == 0 else "apot", rngs=rngs)
                for i, (a, b) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:]))
            ]
        )

    def __call__(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == 0 else layer(nnx.relu(x))
        return x


def make_step():
    @nnx.jit
    def step(model, opt, x, y):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    x = jax.random.uniform(jax.random.key(0), (64, 64))
    y = jax.random.randint(jax.random.key(1), (64,), 0, 10)
    rules = [
        ApotRule(module_path="layers/0", weight_bits=4, weight_k=2),
        ApotRule(module_path=".*", weight_bits=4, weight_k=2, act_bits=4, act_k=2),
    ]
    variants = {
        "float": MLP(nnx.Rngs(0)),
        "qwix APoT 4-bit": qwix.quantize_model(MLP(nnx.Rngs(0)), ApotQatProvider(rules), x),
        "apot layers 4-bit": ApotMLP(nnx.Rngs(0)),
    }
    runs = {}
    for name, model in variants.items():
        opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
        step = make_step()
        jax.block_until_ready(step(model, opt, x, y))  # compile
        runs[name] = (model, opt, step)
    samples = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (model, opt, step) in runs.items():
            t = time.perf_counter()
            for _ in range(args.steps):
                loss = step(model, opt, x, y)
            jax.block_until_ready(loss)
            samples[name].append((time.perf_counter() - t) / args.steps)
    base = float(np.median(samples["float"]))
    print(
        f"{'variant':20s} {'step (ms)':>10s} {'ratio':>6s}   "
        f"({jax.devices()[0].platform}, median of {args.rounds} rounds)"
    )
    for name, s in samples.items():
        med = float(np.median(s))
        print(f"{name:20s} {1e3 * med:10.3f} {med / base:6.2f}")


if __name__ == "__main__":
    main()
