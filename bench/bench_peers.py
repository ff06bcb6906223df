"""One stage-1 training epoch of the same LightGCN done three ways: this tool's teacher, and
PyTorch Geometric's ``LightGCN`` as its own example runs it and with the adjacency normalised once.

    python bench/bench_peers.py [--dataset yelp] [--impls ours,pyg_prenorm,pyg_example]

Every implementation trains on the same BPR triples (one epoch of ``NegativeSampler`` at seed 0,
8 layers, 64-d, batch 4096, Adam at 4e-4 by default) after a warm-up of --warmup batches, and
prints one JSON line: ``impl``, ``train_epoch_s`` and the per-part split of the epoch.
``--rounds R`` times them R times, alternating (this VM's speed drifts by ±20 % within minutes,
so a ratio is only meaningful between epochs timed close together), and ends with a line of
each one's median and ``times_ours``: the median over the rounds of its epoch / ours.

* ``ours``: ``Model.LightGCN`` and ``Utils.training.Teacher.teacher_loss``, as ``pretrainTeacher.py`` runs them.
* ``pyg_example``: ``torch_geometric.nn.models.LightGCN`` called as PyG's ``examples/lightgcn.py``
  calls it: ``model(edge_index, edge_label_index)`` with the bidirected train edges, so every
  layer of every step recomputes the symmetric normalisation (``LGConv(normalize=True)``);
  loss ``recommendation_loss(pos, neg, node_id=edge_label_index.unique())``.
* ``pyg_prenorm``: the same model with ``normalize=False``, given the normalised adjacency
  built once as a ``torch.sparse`` CSR tensor (the fastest PyG way found on this machine).

PyTorch Geometric is a bench-only dependency (``pip install torch_geometric``, pure Python;
no torch-scatter / torch-sparse needed); without it only ``ours`` runs and the PyG lines say so.
"""
import json
import os
import platform
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import DataHandler as dh  # noqa: E402
from Model import LightGCN  # noqa: E402
from Utils.runtime import Runtime  # noqa: E402
from Utils.training.Teacher import teacher_loss  # noqa: E402
from bench_teacher import teacher_parser, timed_steps  # noqa: E402  (bench/ is on the path as the script's folder)

IMPLS = ("ours", "pyg_prenorm", "pyg_example")


def ours(data, opts, device):
    """(model, loss_fn(ancs, poss, negs) -> {"total": loss}) of this tool's stage 1."""
    graph = dh.Graph.from_scipy(dh.propagation_matrix(data.train)).to(device)
    model = LightGCN(data.n_users, data.n_items, opts.latdim, opts.layers).to(device)
    return model, teacher_loss(model, graph, opts.reg)


def normalised_csr(train) -> torch.Tensor:
    """This tool's Â = D^-½(A + I)D^-½ as a ``torch.sparse`` CSR tensor, built once."""
    g = dh.Graph.from_scipy(dh.propagation_matrix(train))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(g.indptr, g.col, g.values, (g.n_nodes, g.n_nodes), check_invariants=False)


def edge_list(train) -> torch.Tensor:
    """The 2 x (2·nnz + N) edge_index of A + I over users 0..U-1 and items U..U+I-1: the train
    interactions both ways, as PyG's example passes them, plus the self-loops of this tool's Â."""
    train = train.tocoo()
    users = torch.as_tensor(train.row, dtype=torch.long)
    items = torch.as_tensor(train.col, dtype=torch.long) + train.shape[0]
    loops = torch.arange(sum(train.shape))
    return torch.stack([torch.cat([users, items, loops]), torch.cat([items, users, loops])])


def pyg(data, opts, device, prenorm):
    """(model, loss_fn) of PyG's LightGCN over users 0..U-1 and items U..U+I-1, propagating over the
    normalised CSR adjacency (``prenorm``) or over the edge list as PyG's example does. Both are this
    tool's model: Â = D^-½(A + I)D^-½ and the sum of the layers (``alpha=1``); PyG's own example
    leaves out the self-loops and averages the layers, which costs the same."""
    from torch_geometric.nn.models import LightGCN as PygLightGCN
    n_users = data.n_users
    if prenorm:
        edges = normalised_csr(data.train).to(device)
    else:
        edges = edge_list(data.train).to(device)
    model = PygLightGCN(n_users + data.n_items, opts.latdim, opts.layers, alpha=1.0, normalize=not prenorm).to(device)

    def loss_fn(ancs, poss, negs):
        label = torch.stack([torch.cat([ancs, ancs]), torch.cat([poss, negs]) + n_users])
        pos_rank, neg_rank = model(edges, label).chunk(2)
        return {"total": model.recommendation_loss(pos_rank, neg_rank, node_id=label.unique(),
                                                   lambda_reg=opts.reg)}
    return model, loss_fn


def pyg_missing():
    """The reason PyG cannot run here, or None."""
    try:
        import torch_geometric  # noqa: F401
    except ImportError as exc:
        return f"torch_geometric is not installed ({exc}); pip install torch_geometric"
    return None


def time_epoch(model, loss_fn, batches, opts, device):
    """(epoch seconds, parts) of one epoch over ``batches`` after a warm-up on its first batches."""
    torch.manual_seed(0)
    optimizer = Runtime.make_optimizer(model.parameters(), opts.lr)
    parts = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    timed_steps(loss_fn, optimizer, batches[:opts.warmup], device, parts)
    parts = dict.fromkeys(parts, 0.0)
    t = time.perf_counter()
    timed_steps(loss_fn, optimizer, batches, device, parts)
    return time.perf_counter() - t, parts


def build(impl, data, opts, device):
    """The (model, loss_fn) pair of ``impl``."""
    if impl == "ours":
        return ours(data, opts, device)
    return pyg(data, opts, device, prenorm=impl == "pyg_prenorm")


def main():
    parser = teacher_parser(__doc__.splitlines()[0])
    parser.add_argument("--impls", default=",".join(IMPLS), help="comma-separated, of " + ", ".join(IMPLS))
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--reg", type=float, default=1.5e-6, help="L2 weight (the Yelp teacher's)")
    parser.add_argument("--warmup", type=int, default=2, help="batches trained before the timed epoch")
    parser.add_argument("--rounds", type=int, default=1,
                        help="time every implementation this many times, alternating them; with more than one, "
                             "a last line gives each one's median and its median ratio to ours over the rounds")
    opts = parser.parse_args()
    impls = opts.impls.split(",")
    if set(impls) - set(IMPLS):
        parser.error(f"--impls takes {', '.join(IMPLS)}, not {opts.impls}")
    if opts.rounds < 1:
        parser.error(f"--rounds must be at least 1, not {opts.rounds}")
    torch.set_num_threads(opts.threads)
    device = Runtime.device_named(opts.device)
    Runtime.set_deterministic(False, device)  # PyG's scatter has no deterministic CPU kernel; ours runs alike
    data = dh.load_dataset(opts.data_dir, opts.dataset)
    batches = list(dh.NegativeSampler(data.train).epoch_batches(np.random.default_rng(0), opts.batch))
    common = {"bench": "peers", "dataset": opts.dataset, "train_interactions": int(data.train.nnz),
              "layers": opts.layers, "latdim": opts.latdim, "batch": opts.batch, "batches": len(batches),
              "threads": opts.threads, "device": opts.device,
              "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}"}
    missing = {impl: pyg_missing() for impl in impls if impl != "ours"}
    for impl in impls:
        if missing.get(impl):
            print(json.dumps({**common, "impl": impl, "skipped": missing[impl]}), flush=True)
    timed = [impl for impl in impls if not missing.get(impl)]
    seconds = {impl: [] for impl in timed}
    for rnd in range(opts.rounds):  # alternating, so that a slow spell of the machine hits every one
        for impl in timed:
            torch.manual_seed(0)
            model, loss_fn = build(impl, data, opts, device)
            epoch_s, parts = time_epoch(model, loss_fn, batches, opts, device)
            seconds[impl].append(epoch_s)
            line = {**common, "impl": impl, "train_epoch_s": round(epoch_s, 3),
                    "train_parts_s": {k: round(v, 3) for k, v in parts.items()}}
            if opts.rounds > 1:
                line["round"] = rnd
            print(json.dumps(line), flush=True)
    if opts.rounds > 1 and timed:  # nothing to summarise when every implementation asked for was skipped
        print(json.dumps(rounds_summary(common, seconds)), flush=True)


def rounds_summary(common: dict, seconds: dict) -> dict:
    """Each implementation's median epoch over the rounds and, when ours ran, the median over the
    rounds of its epoch divided by ours of the same round (how many times faster ours is)."""
    line = {**common, "rounds": len(next(iter(seconds.values()))),
            "median_train_epoch_s": {impl: round(float(np.median(s)), 3) for impl, s in seconds.items()}}
    if "ours" in seconds:
        line["times_ours"] = {impl: round(float(np.median(np.divide(s, seconds["ours"]))), 2)
                              for impl, s in seconds.items() if impl != "ours"}
    return line


if __name__ == "__main__":
    main()
