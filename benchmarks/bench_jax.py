"""Jitted APoT fake quant vs a jitted uniform fake quant, 4M float32 elements;
and the first eager calls of a fresh process.

Run: ``python benchmarks/bench_jax.py [--size N] [--repeats R]``. Prints the
median time of forward and forward+backward (``jax.vjp``: output and input
gradient) for b=4 (unsigned: 16 levels, signed: 49) and b=8 (256), k=2, and
the ratio to the uniform fake quant
``clip(round(x/s)) * s`` with the same clipped straight-through gradient.

``--eager`` instead times, in fresh subprocesses, the first eager calls of
observe, calculate_qparams, fake_quantize, its gradient and quantize for five
``(b, k, signed)``: as the library runs them (its cores are jitted, one
program per shape and configuration) and op by op (``jax.disable_jit()``,
every primitive compiled on first use), with the XLA compilations counted.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import apot_jax as aj


@jax.custom_vjp
def uniform_fake_quant(x, scale, qmax):
    return jnp.clip(jnp.round(x / scale), -qmax - 1, qmax) * scale


def _uniform_fwd(x, scale, qmax):
    y = uniform_fake_quant(x, scale, qmax)
    return y, (x >= -(qmax + 1) * scale) & (x <= qmax * scale)


def _uniform_bwd(mask, dy):
    return jnp.where(mask, dy, 0), None, None


uniform_fake_quant.defvjp(_uniform_fwd, _uniform_bwd)


def median_ms(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def forward_backward(f):
    def run(x, *rest):
        y, vjp = jax.vjp(lambda v: f(v, *rest), x)
        return y, vjp(jnp.ones_like(y))[0]

    return jax.jit(run)


#: The first eager calls of ``--eager``, run by ``python -c`` (argv[1]: "jit" or "op-by-op").
EAGER_CHILD = """
import sys, time, contextlib
import jax
from jax._src import compiler
import apot_jax as aj
count = [0]
compile_ = compiler.backend_compile_and_load
def counted(*a, **k):
    count[0] += 1
    return compile_(*a, **k)
compiler.backend_compile_and_load = counted
x = jax.random.normal(jax.random.key(0), (64, 33))
start = time.perf_counter()
with jax.disable_jit() if sys.argv[1] == "op-by-op" else contextlib.nullcontext():
    for b, k, signed in [(4, 2, False), (4, 2, True), (8, 2, False), (6, 3, True), (3, 1, False)]:
        st = aj.observe(aj.init_observer_state(), x)
        qp = aj.calculate_qparams(st.min_val, st.max_val, b=b, k=k, signed=signed)
        y = aj.fake_quantize(x, qp)
        g = jax.grad(lambda v: aj.fake_quantize(v, qp).sum())(x)
        jax.block_until_ready((y, g, aj.quantize(x, qp)))
print(time.perf_counter() - start, count[0])
"""


def eager_first_calls(repeats: int) -> None:
    print(f"jax {jax.__version__}: first eager calls of a fresh process, 5 configs, median of {repeats} processes")
    for mode in ("jit", "op-by-op"):
        runs = [subprocess.run([sys.executable, "-c", EAGER_CHILD, mode], capture_output=True, text=True,
                               check=True).stdout.split() for _ in range(repeats)]
        seconds = float(np.median([float(r[0]) for r in runs]))
        print(f"{mode:>9}: {seconds:6.2f} s, {runs[0][1]} XLA compilations")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--eager", action="store_true", help="time the first eager calls (fresh processes)")
    args = parser.parse_args()
    if args.eager:
        eager_first_calls(args.repeats)
        return
    x = jax.random.normal(jax.random.key(0), (args.size,), jnp.float32)
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, {args.size} float32 elements, "
        f"median of {args.repeats}"
    )
    print(
        f"{'b':>2} {'k':>2} {'signed':>6} {'levels':>6}  {'apot fwd':>9} {'unif fwd':>9} {'ratio':>6}  "
        f"{'apot f+b':>9} {'unif f+b':>9} {'ratio':>6}"
    )
    for b, signed in ((4, False), (4, True), (8, False)):
        qp = aj.calculate_qparams(-3.0, 3.0, b=b, k=2, signed=signed)
        qmax = jnp.float32(2 ** (b - 1) - 1)
        scale = jnp.float32(3.0) / qmax
        apot_f = median_ms(jax.jit(aj.fake_quantize), x, qp, repeats=args.repeats)
        unif_f = median_ms(jax.jit(uniform_fake_quant), x, scale, qmax, repeats=args.repeats)
        apot_fb = median_ms(forward_backward(aj.fake_quantize), x, qp, repeats=args.repeats)
        unif_fb = median_ms(forward_backward(uniform_fake_quant), x, scale, qmax, repeats=args.repeats)
        print(
            f"{b:>2} {2:>2} {signed!s:>6} {qp.quantization_levels.shape[0]:>6}"
            f"  {apot_f:>7.2f}ms {unif_f:>7.2f}ms {apot_f / unif_f:>6.2f}"
            f"  {apot_fb:>7.2f}ms {unif_fb:>7.2f}ms {apot_fb / unif_fb:>6.2f}"
        )


if __name__ == "__main__":
    main()
