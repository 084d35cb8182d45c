"""Jitted APoT fake quant vs a jitted uniform fake quant, 4M float32 elements.

Run: ``python benchmarks/bench_jax.py [--size N] [--repeats R]``. Prints the
median time of forward and forward+backward (``jax.vjp``: output and input
gradient) for b=4 and b=8 (k=2), and the ratio to the uniform fake quant
``clip(round(x/s)) * s`` with the same clipped straight-through gradient.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    x = jax.random.normal(jax.random.key(0), (args.size,), jnp.float32)
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, {args.size} float32 elements, "
        f"median of {args.repeats}"
    )
    print(
        f"{'b':>2} {'k':>2}  {'apot fwd':>9} {'unif fwd':>9} {'ratio':>6}  "
        f"{'apot f+b':>9} {'unif f+b':>9} {'ratio':>6}"
    )
    for b in (4, 8):
        qp = aj.calculate_qparams(-3.0, 3.0, b=b, k=2)
        qmax = jnp.float32(2 ** (b - 1) - 1)
        scale = jnp.float32(3.0) / qmax
        apot_f = median_ms(jax.jit(aj.fake_quantize), x, qp, repeats=args.repeats)
        unif_f = median_ms(jax.jit(uniform_fake_quant), x, scale, qmax, repeats=args.repeats)
        apot_fb = median_ms(forward_backward(aj.fake_quantize), x, qp, repeats=args.repeats)
        unif_fb = median_ms(forward_backward(uniform_fake_quant), x, scale, qmax, repeats=args.repeats)
        print(
            f"{b:>2} {2:>2}  {apot_f:>7.2f}ms {unif_f:>7.2f}ms {apot_f / unif_f:>6.2f}"
            f"  {apot_fb:>7.2f}ms {unif_fb:>7.2f}ms {apot_fb / unif_fb:>6.2f}"
        )


if __name__ == "__main__":
    main()
