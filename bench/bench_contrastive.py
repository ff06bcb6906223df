"""Benchmark: blocked row-logsumexp of (A·Bᵀ)/τ against the naive dense version.

Shape of the Yelp all-node denominators: 3,600 anchors × 42,700 candidates, d = 64,
two threads. Each variant runs in its own subprocess so that its peak RSS is its own.
Prints one JSON line:

  blocked_s / naive_s     forward+backward seconds (median of ``--repeats``)
  blocked_gflops          useful GFLOP/s of the blocked version, counting 8·n·m·d flops
                          (forward product 2nmd; backward recomputed product 2nmd and
                          the two gradient products 4nmd)
  dense_peak_gflops       torch.mm GFLOP/s of a 2048³ product (compute-bound machine reference)
  full_logits_mm_gflops   torch.mm GFLOP/s of the naive n×d·d×m logits product alone (memory-bound)
  blocked_vs_peak         blocked_gflops / dense_peak_gflops
  blocked_peak_rss_mib / naive_peak_rss_mib   ru_maxrss of each subprocess
  max_abs_diff_*          blocked vs naive: values and both gradients

Usage: python bench/bench_contrastive.py [--anchors 3600] [--candidates 42700] [--dim 64]
       [--threads 2] [--repeats 3] [--block_rows 256] [--block_cols 4096]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from Utils.kernels.Kernels import row_logsumexp_matmul  # noqa: E402

TEMP = 1.0


def _inputs(args):
    gen = torch.Generator().manual_seed(0)
    a = (torch.randn(args.anchors, args.dim, generator=gen) * 0.3).requires_grad_()
    b = (torch.randn(args.candidates, args.dim, generator=gen) * 0.3).requires_grad_()
    g = torch.rand(args.anchors, generator=gen)
    return a, b, g


def _run_variant(args, variant):
    a, b, g = _inputs(args)

    def step():
        a.grad = b.grad = None
        if variant == "blocked":
            lse = row_logsumexp_matmul(a, b, TEMP, block_rows=args.block_rows, block_cols=args.block_cols)
        else:
            lse = torch.logsumexp(a @ b.T / TEMP, dim=1)
        (lse * g).sum().backward()
        return lse.detach()

    step()  # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        lse = step()
        times.append(time.perf_counter() - t0)
    times.sort()
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    torch.save({"lse": lse, "ga": a.grad, "gb": b.grad}, args.out)
    print(json.dumps({"seconds": times[len(times) // 2], "peak_rss_mib": rss_mib}))


def _gflops(m, k, n, repeats):
    """Best-of GFLOP/s of torch.mm for an (m×k)·(k×n) product into a preallocated output."""
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen)
    out = torch.empty(m, n)
    torch.mm(a, b.T, out=out)
    best = float("inf")
    for _ in range(max(3, repeats)):
        t0 = time.perf_counter()
        torch.mm(a, b.T, out=out)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * m * k * n / best / 1e9


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--anchors", type=int, default=3600)
    p.add_argument("--candidates", type=int, default=42700)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--block_rows", type=int, default=256)
    p.add_argument("--block_cols", type=int, default=4096)
    p.add_argument("--variant", choices=["blocked", "naive"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    if args.variant is not None:
        _run_variant(args, args.variant)
        return

    import tempfile

    results, tensors = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("blocked", "naive"):
            out = str(Path(tmp) / f"{variant}.pt")
            cmd = [sys.executable, __file__, "--variant", variant, "--out", out] + [
                f"--{k}={getattr(args, k)}" for k in
                ("anchors", "candidates", "dim", "threads", "repeats", "block_rows", "block_cols")]
            res = subprocess.run(cmd, check=True, capture_output=True, text=True)
            results[variant] = json.loads(res.stdout.strip().splitlines()[-1])
            tensors[variant] = torch.load(out)

    peak = _gflops(2048, 2048, 2048, args.repeats)  # compute-bound square product: the machine's dense peak
    full = _gflops(args.anchors, args.dim, args.candidates, args.repeats)  # the naive logits product alone
    flops = 8.0 * args.anchors * args.candidates * args.dim
    blocked_gflops = flops / results["blocked"]["seconds"] / 1e9
    diff = {k: float((tensors["blocked"][k] - tensors["naive"][k]).abs().max()) for k in ("lse", "ga", "gb")}
    print(json.dumps({
        "anchors": args.anchors, "candidates": args.candidates, "dim": args.dim, "threads": args.threads,
        "block": [args.block_rows, args.block_cols],
        "blocked_s": round(results["blocked"]["seconds"], 4),
        "naive_s": round(results["naive"]["seconds"], 4),
        "blocked_gflops": round(blocked_gflops, 2),
        "dense_peak_gflops": round(peak, 2),
        "full_logits_mm_gflops": round(full, 2),
        "blocked_vs_peak": round(blocked_gflops / peak, 3),
        "blocked_peak_rss_mib": round(results["blocked"]["peak_rss_mib"], 1),
        "naive_peak_rss_mib": round(results["naive"]["peak_rss_mib"], 1),
        "max_abs_diff_lse": diff["lse"], "max_abs_diff_grad_a": diff["ga"], "max_abs_diff_grad_b": diff["gb"],
    }))


if __name__ == "__main__":
    main()
