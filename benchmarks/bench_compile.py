"""XLA compile time of apot_jax's quantizers: one fake quant, forward and
backward, as a training step holds it.

Run: ``python benchmarks/bench_compile.py [--repeats R]``. For each quantizer
it lowers ``jax.grad`` of a small loss through the quantizer (qparams computed
inside the program, as in a QAT step) and prints the median wall time of
``compile()`` over R compilations (each a distinct program, so no cache
answers), and the number of kernels XLA emits (fusions and loops of the
optimized module; on the CPU each is compiled by LLVM on its own, so the
count drives the time).

JAX's persistent compilation cache is switched off here. Most of the test
suite's time is this compilation, and so is the first step of a user's
training run.
"""

from __future__ import annotations

import argparse
import re
import time

import jax

jax.config.update("jax_enable_compilation_cache", False)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import apot_jax as aj  # noqa: E402
from apot_jax import paper  # noqa: E402


def _observer(b: int, k: int, signed: bool):
    def loss(x):
        # as apot_jax's modules do: observe stop_gradient(x), qparams from the statistics
        stats = aj.observe(aj.init_observer_state(), jax.lax.stop_gradient(x))
        qp = aj.calculate_qparams(stats.min_val, stats.max_val, b=b, k=k, signed=signed)
        return (aj.fake_quantize(x, qp) ** 2).sum()

    return jax.grad(loss), (jnp.ones((8, 256), jnp.float32),)


def _learnable(scheme: str, channel_axis):
    def loss(x, alpha):
        y = paper.learnable_fake_quantize(x, alpha, b=4, k=1 if scheme == "sign-magnitude" else 2,
                                          channel_axis=channel_axis, scheme=scheme)
        return (y**2).sum()

    x = jnp.ones((16, 3, 3, 8) if channel_axis is not None else (8, 256), jnp.float32)
    alpha = jnp.ones((8,) if channel_axis is not None else (), jnp.float32)
    return jax.grad(loss, argnums=(0, 1)), (x, alpha)


CASES = {
    "observer b4k2 unsigned (16 levels)": lambda: _observer(4, 2, False),
    "observer b4k2 signed (49 levels)": lambda: _observer(4, 2, True),
    "observer b8k2 unsigned (256 levels)": lambda: _observer(8, 2, False),
    "learnable activation b4k2": lambda: _learnable("unsigned", None),
    "learnable weight b4k1 per channel": lambda: _learnable("sign-magnitude", -1),
}

_KERNEL = re.compile(r"= \S+ (fusion|while|conditional|sort|custom-call)\(")


def compile_once(f, args, salt: float) -> tuple[float, int]:
    # the salt makes each program distinct, so no in-process cache answers
    lowered = jax.jit(lambda *a: (f(*a), jnp.float32(salt))).lower(*args)
    t0 = time.perf_counter()
    compiled = lowered.compile()
    seconds = time.perf_counter() - t0
    return seconds, len(_KERNEL.findall(compiled.as_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"jax {jax.__version__}, {jax.default_backend()}: compile time of grad through one quantizer, "
          f"median of {args.repeats}")
    print(f"{'quantizer':38s} {'compile ms':>10s} {'kernels':>8s}")
    total = 0.0
    for name, make in CASES.items():
        f, f_args = make()
        runs = [compile_once(f, f_args, i + 0.5) for i in range(args.repeats)]
        ms = float(np.median([r[0] for r in runs]) * 1e3)
        total += ms
        print(f"{name:38s} {ms:10.0f} {runs[0][1]:8d}")
    print(f"{'sum':38s} {total:10.0f}")


if __name__ == "__main__":
    main()
