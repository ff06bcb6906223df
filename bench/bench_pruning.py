"""Time one pruning step at Yelp's size on 2 CPU threads; prints one JSON line.

Synthetic data with Yelp's shapes: 42,712 users + 26,822 items = 69,534 nodes, 182,357
interactions -> nnz(Â) = 2 * 182,357 + 69,534 = 434,248 edges (row-major; the real Yelp
train split gives the same count), d = 64, and a closure graph of ~5.6 M edges containing
every edge of Â. One step = looking up the
intermediate model's weights on Â's edges (``closure_weights_on_adj``) + ``compute_pruned_state``
with every score term on (sigmoid aug term, intermediate weights). ``seconds`` is the median
of ``--repeats`` steps; ``peak_rss_mb`` the process's peak resident memory (including
building the synthetic graphs).

    python bench/bench_pruning.py [--repeats 3] [--threads 2]
"""
import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from Utils.objective.Pruning import PruneConfig, PrunedState, closure_weights_on_adj, compute_pruned_state  # noqa: E402

N_USERS, N_ITEMS, N_INTERACTIONS, DIM, N_CLOSURE = 42_712, 26_822, 182_357, 64, 5_600_000


def yelp_sized_graphs(generator):
    n_nodes = N_USERS + N_ITEMS
    keys = torch.unique(torch.randint(0, N_USERS * N_ITEMS, (int(N_INTERACTIONS * 1.1),), generator=generator))
    keys = keys[torch.randperm(keys.numel(), generator=generator)[:N_INTERACTIONS]]
    users, items = keys // N_ITEMS, keys % N_ITEMS + N_USERS
    nodes = torch.arange(n_nodes)
    adj_key = torch.sort(torch.cat([users * n_nodes + items, items * n_nodes + users, nodes * n_nodes + nodes])).values
    extra = torch.randint(0, n_nodes * n_nodes, (N_CLOSURE - adj_key.numel(),), generator=generator)
    closure_key = torch.unique(torch.cat([adj_key, extra]))  # sorted = row-major
    return n_nodes, adj_key // n_nodes, adj_key % n_nodes, closure_key // n_nodes, closure_key % n_nodes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)

    n_nodes, adj_row, adj_col, closure_row, closure_col = yelp_sized_graphs(gen)
    n_edges = adj_row.numel()
    assert n_edges == 2 * N_INTERACTIONS + n_nodes == 434_248
    closure_weight = torch.rand(closure_row.numel(), generator=gen)
    edge_weight = torch.randn(n_edges, generator=gen)
    edge_mask = (torch.rand(n_edges, generator=gen) > 0.05).float()
    edge_weight *= edge_mask
    emb_mask = (torch.rand(n_nodes, DIM, generator=gen) > 0.2).float()
    embeds = torch.randn(n_nodes, DIM, generator=gen) * 0.1 * emb_mask
    aug_embeds = torch.randn(n_nodes, DIM, generator=gen) * 0.1

    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        mid_weight = closure_weights_on_adj(adj_row, adj_col, closure_row, closure_col, closure_weight, n_nodes)
        compute_pruned_state(
            PrunedState(edge_weight, edge_mask, embeds[:N_USERS], embeds[N_USERS:], emb_mask),
            PruneConfig(edge_cut=0.05, emb_cut=0.2, beta1=0.05, beta2=1.0),
            aug_embeds=aug_embeds, edges=(adj_row, adj_col), mid_weight=mid_weight,
        )
        times.append(time.perf_counter() - start)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({
        "seconds": round(sorted(times)[len(times) // 2], 4),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "threads": args.threads,
        "edges": n_edges,
        "closure_edges": closure_row.numel(),
        "nodes": n_nodes,
        "dim": DIM,
    }))


if __name__ == "__main__":
    main()
