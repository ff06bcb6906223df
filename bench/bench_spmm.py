"""Sparse-product benchmark on Yelp's Â (434,248 edges, 64-d): one product with
torch.sparse.mm (CSR), SciPy and the Numba kernel of Utils/kernels/Spmm.py (into a new and
into a reused output), the 8-layer propagation of an evaluation, and the propagation
of one stage-1 teacher step (forward + backward restricted to a batch's rows).
``chain_ms``: at 1 thread and at --threads, --layers products in a chain (each
output the next input, as a propagation does), the same number of products of one
fixed input ("repeated"), and the chain on Â with its nodes renumbered by reverse
Cuthill-McKee ("chain_rcm", rows keep their terms' order, so the same sums): how much
of a chain's time is memory behaviour rather than arithmetic.
Prints one JSON line; times are the median of --repeat runs, in milliseconds.

    python bench/bench_spmm.py [--data_dir ../shared/datasets] [--threads 2]
"""
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import DataHandler as dh  # noqa: E402
from Utils.runtime import Runtime  # noqa: E402
from Utils.kernels import Spmm  # noqa: E402
from bench_teacher import teacher_parser  # noqa: E402  (bench/ is on the path as the script's folder)


def median_ms(fn, repeat):
    fn()  # warm-up: Numba compilation, allocator
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(1000 * statistics.median(times), 2)


def chain_ms(adj, x, opts):
    """{threads: {"chain", "repeated", "chain_rcm"}}: see the module docstring."""
    from scipy.sparse.csgraph import reverse_cuthill_mckee
    order = reverse_cuthill_mckee(adj.tocsr(), symmetric_mode=True)
    graphs = {"chain": dh.Graph.from_scipy(adj), "chain_rcm": dh.Graph.from_scipy(adj[order][:, order])}
    buffers = [torch.empty_like(x), torch.empty_like(x)]

    def chain(graph, fixed_input):
        cur = x
        for layer in range(opts.layers):
            out = buffers[layer % 2]
            Spmm._product((graph.indptr, graph.col, graph.values), x if fixed_input else cur, graph.n_nodes, out=out)
            cur = out

    result = {}
    for threads in sorted({1, opts.threads}):
        Spmm.set_threads(threads)
        result[str(threads)] = {
            "chain": median_ms(lambda: chain(graphs["chain"], False), opts.repeat),
            "repeated": median_ms(lambda: chain(graphs["chain"], True), opts.repeat),
            "chain_rcm": median_ms(lambda: chain(graphs["chain_rcm"], False), opts.repeat),
        }
    Spmm.set_threads(opts.threads)
    return result


def main():
    parser = teacher_parser(__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    Spmm.set_threads(opts.threads)
    Runtime.keep_freed_memory()  # as the entry points do: no page faults on reused buffers
    data = dh.load_dataset(opts.data_dir, opts.dataset)
    adj = dh.propagation_matrix(data.train)
    graph = dh.Graph.from_scipy(adj)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(graph.n_nodes, opts.latdim, generator=gen)
    values = graph.values
    csr = torch.sparse_csr_tensor(graph.indptr, graph.col, values, size=(graph.n_nodes, graph.n_nodes),
                                  check_invariants=False)
    adj32 = adj.astype(np.float32)
    x_np = x.numpy()
    reused = torch.empty_like(x)
    result = {
        "bench": "spmm", "dataset": opts.dataset, "edges": graph.nnz, "latdim": opts.latdim,
        "layers": opts.layers, "threads": opts.threads,
        "one_product_ms": {
            "torch_sparse_csr": median_ms(lambda: torch.sparse.mm(csr, x), opts.repeat),
            "scipy": median_ms(lambda: adj32 @ x_np, opts.repeat),
            "numba": median_ms(lambda: Spmm._product((graph.indptr, graph.col, values), x, graph.n_nodes), opts.repeat),
            # as inside a propagation chain, where the output buffer is reused (no fresh pages)
            "numba_reused_output": median_ms(
                lambda: Spmm._product((graph.indptr, graph.col, values), x, graph.n_nodes, out=reused), opts.repeat),
        },
    }
    # one teacher step's propagation: the distinct users, positives and negatives of a batch
    rng = np.random.default_rng(0)
    users = rng.integers(0, data.n_users, opts.batch)
    items = data.n_users + rng.integers(0, data.n_items, 2 * opts.batch)
    rows = torch.from_numpy(np.unique(np.concatenate([users, items])))
    weight = torch.randn(rows.numel(), opts.latdim, generator=gen)
    e0 = x.clone().requires_grad_()

    def step():
        out = Spmm.propagate_sum(graph, values, e0, opts.layers, rows=rows)
        (out * weight).sum().backward()
        e0.grad = None

    result["chain_ms"] = chain_ms(adj, x, opts)
    result.update({
        "propagation_ms": median_ms(lambda: Spmm.propagate_sum(graph, values, x, opts.layers), opts.repeat),
        "teacher_step_propagation_ms": median_ms(step, opts.repeat), "step_rows": rows.numel(),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}",
    })
    print(json.dumps(result))


if __name__ == "__main__":
    main()
