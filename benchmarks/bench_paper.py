"""The paper recipe's weight fake quant, per tensor and per channel, torch and JAX.

Run: ``python benchmarks/bench_paper.py [--rows R] [--cols C] [--b B] [--repeats N]``.
Prints the median milliseconds of, on a float32 ``(R, C)`` weight with
sign-magnitude ``b``-bit levels (``k`` from ``default_magnitude_k``):

* ``quant_dequant`` per tensor, and per channel (one alpha per row): torch's
  batched search, and beside it the loop over channels that torch used
  before (one per-tensor lookup per channel, kept here as the baseline that
  the batched search replaced);
* ``paper_weight_quant`` (normalization + learnable fake quant) forward and
  forward+backward (weight and alpha gradients), per tensor and per channel,
  torch eager and JAX ``jit``.

The functions take turns within each repeat, so that load from other
processes hits them alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch

from apot_common.tables import default_magnitude_k
from apot_jax import paper as jpaper
from apot_torch import paper as tpaper
from apot_torch._lookup import lookup


def median_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    for fn in fns.values():
        for _ in range(2):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def torch_loop_per_channel(w: torch.Tensor, qp: tpaper.SignMagnitudeQParams) -> torch.Tensor:
    """The earlier per-channel quant_dequant: one per-tensor lookup per row."""
    rows = [
        lookup(w[c], qp.alpha[c], qp.gamma[c], qp.quantization_levels[c], qp.quantization_levels[c], float("nan"))
        for c in range(w.shape[0])
    ]
    return torch.stack(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--cols", type=int, default=1024)
    parser.add_argument("--b", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    b, k = args.b, default_magnitude_k(args.b)
    rng = np.random.default_rng(0)
    w_np = (rng.normal(size=(args.rows, args.cols)) * 0.05).astype(np.float32)
    alphas_np = rng.uniform(1.5, 3.0, args.rows).astype(np.float32)

    w = torch.from_numpy(w_np)
    alpha_c = torch.from_numpy(alphas_np)
    alpha_t = torch.tensor(2.0)
    qp_t = tpaper.sign_magnitude_qparams(alpha_t * 0.05, b=b, k=k)
    qp_c = tpaper.sign_magnitude_qparams(alpha_c * 0.05, b=b, k=k)
    assert torch.equal(torch_loop_per_channel(w, qp_c), tpaper.quant_dequant(w, qp_c, channel_axis=0))

    def torch_fwd_bwd(alpha: torch.Tensor, axis: int | None) -> Callable[[], object]:
        leaf_w = w.clone().requires_grad_()
        leaf_a = alpha.clone().requires_grad_()

        def run():
            y = tpaper.paper_weight_quant(leaf_w, leaf_a, b=b, k=k, channel_axis=axis)
            return torch.autograd.grad(y, (leaf_w, leaf_a), torch.ones_like(y))

        return run

    w_j = jnp.asarray(w_np)
    alpha_cj = jnp.asarray(alphas_np)

    def jax_fns(alpha: jax.Array, axis: int | None) -> tuple[Callable[[], object], Callable[[], object]]:
        fwd = jax.jit(lambda v, a: jpaper.paper_weight_quant(v, a, b=b, k=k, channel_axis=axis))
        grad = jax.jit(
            jax.grad(lambda v, a: jnp.sum(jpaper.paper_weight_quant(v, a, b=b, k=k, channel_axis=axis)), (0, 1))
        )
        return (lambda: fwd(w_j, alpha).block_until_ready()), (lambda: jax.block_until_ready(grad(w_j, alpha)))

    jf_t, jg_t = jax_fns(jnp.float32(2.0), None)
    jf_c, jg_c = jax_fns(alpha_cj, 0)

    fns = {
        "torch quant_dequant per tensor": lambda: tpaper.quant_dequant(w, qp_t),
        "torch quant_dequant per channel (batched)": lambda: tpaper.quant_dequant(w, qp_c, channel_axis=0),
        "torch quant_dequant per channel (loop, before)": lambda: torch_loop_per_channel(w, qp_c),
        "torch paper_weight_quant fwd per tensor": lambda: tpaper.paper_weight_quant(w, alpha_t, b=b, k=k),
        "torch paper_weight_quant fwd per channel": lambda: tpaper.paper_weight_quant(
            w, alpha_c, b=b, k=k, channel_axis=0
        ),
        "torch paper_weight_quant fwd+bwd per tensor": torch_fwd_bwd(alpha_t, None),
        "torch paper_weight_quant fwd+bwd per channel": torch_fwd_bwd(alpha_c, 0),
        "jax paper_weight_quant fwd per tensor": jf_t,
        "jax paper_weight_quant fwd per channel": jf_c,
        "jax paper_weight_quant fwd+bwd per tensor": jg_t,
        "jax paper_weight_quant fwd+bwd per channel": jg_c,
    }
    results = median_ms(fns, args.repeats)
    print(f"paper recipe weight fake quant, ({args.rows}, {args.cols}) float32, b={b} k={k}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"jax {jax.__version__} ({jax.default_backend()})")
    width = max(map(len, results))
    for name, ms in results.items():
        print(f"  {name.ljust(width)}  {ms:9.3f} ms")
    loop = results["torch quant_dequant per channel (loop, before)"]
    batched = results["torch quant_dequant per channel (batched)"]
    print(f"  per-channel speed-up of the batched search over the loop: {loop / batched:.1f}x")


if __name__ == "__main__":
    main()
