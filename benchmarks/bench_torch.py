"""APoT fake quant in torch vs ``torch.fake_quantize_per_tensor_affine``, 4M float32 elements.

Run: ``python benchmarks/bench_torch.py [--size N] [--repeats R] [--threads T] [--device D]``.
Prints the median time of forward and forward+backward (output and input
gradient, via ``torch.autograd.grad``) of ``apot_torch.fake_quantize_function``
for b=4 and b=8 (k=2), eager and under ``torch.compile``, beside torch's uniform
fake quant on the same tensor (eager, and compiled the same way; its
forward+backward with ``requires_grad``), and the ratios APoT / eager uniform
and APoT / uniform in the same mode (< 1: APoT is faster), all in one run.
The qparams are the same at every call: eager and compiled code keep the
rounding tables for qparams they have seen (``apot_torch._lookup._rounding_tables``;
compiled graphs read them through the ``apot::`` operators), and the rows
``apot eager new`` and ``apot comp. new`` clear that cache before each call,
i.e. recompute them as in QAT with the observer on, where the qparams change
every step. The functions take turns within each repeat; on a shared machine
``--threads 1`` gives steadier numbers.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from typing import Callable

import torch

import apot_torch as at
import apot_torch._lookup as lk


def median_ms(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median wall time of each ``fn()`` in milliseconds, after two warm-up calls.

    The functions take turns within each repeat, so that load from other
    processes on a shared machine hits them alike.
    """

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in fns.values():
        for _ in range(2):
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def forward_backward(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dy: torch.Tensor):
    """``fn()`` running ``f`` on a leaf copy of ``x`` and back to its gradient."""
    leaf = x.detach().clone().requires_grad_()

    def run():
        return torch.autograd.grad(f(leaf), leaf, dy)[0]

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # torch.compile warns at each graph break; the data-dependent choice of
    # rounding strategy makes them expected, so keep the table readable.
    torch._logging.set_logs(dynamo=logging.ERROR)
    device = torch.device(args.device)
    x = torch.randn(args.size, generator=torch.Generator().manual_seed(0)).to(device)
    dy = torch.ones_like(x)
    print(
        f"torch {torch.__version__} on {device.type} ({torch.get_num_threads()} threads), "
        f"{args.size} float32 elements, median of {args.repeats}"
    )
    print("ratio: APoT / eager uniform; vs comp.: / the same-mode uniform (compiled rows: compiled uniform)")
    print(f"{'':>4} {'':>14}  {'fwd':>9} {'ratio':>6} {'vs c.':>6}  {'fwd+bwd':>9} {'ratio':>6} {'vs c.':>6}")
    for b in (4, 8):
        qp = at.calculate_qparams(torch.tensor(-3.0, device=device), torch.tensor(3.0, device=device), b, 2)
        qmax = 2 ** (b - 1) - 1
        scale = 3.0 / qmax

        def uniform(v: torch.Tensor, scale: float = scale, qmax: int = qmax) -> torch.Tensor:
            return torch.fake_quantize_per_tensor_affine(v, scale, 0, -qmax - 1, qmax)

        def apot(v: torch.Tensor, qp: tuple = qp) -> torch.Tensor:
            return at.fake_quantize_function.apply(v, *qp)

        def apot_new(v: torch.Tensor) -> torch.Tensor:
            lk._TABLE_CACHE.clear()  # as if the qparams were new
            return apot(v)

        apot_compiled = torch.compile(apot)

        def apot_compiled_new(v: torch.Tensor, f: Callable = apot_compiled) -> torch.Tensor:
            lk._TABLE_CACHE.clear()
            return f(v)

        rows = {
            "uniform": uniform,
            "uniform comp.": torch.compile(uniform),
            "apot eager": apot,
            "apot eager new": apot_new,
            "apot compiled": apot_compiled,
            "apot comp. new": apot_compiled_new,
        }
        fwd = median_ms({name: (lambda f=f: f(x)) for name, f in rows.items()}, args.repeats, device)
        fb = median_ms({name: forward_backward(f, x, dy) for name, f in rows.items()}, args.repeats, device)
        for name in rows:
            # eager rows against eager uniform; compiled rows against both
            base = "uniform comp." if "comp" in name else "uniform"
            print(
                f"b={b:<2} {name:>14}  {fwd[name]:>7.2f}ms {fwd[name] / fwd['uniform']:>6.2f} "
                f"{fwd[name] / fwd[base]:>6.2f}"
                f"  {fb[name]:>7.2f}ms {fb[name] / fb['uniform']:>6.2f} {fb[name] / fb[base]:>6.2f}"
            )


if __name__ == "__main__":
    main()
