"""Stage-1 benchmark on Yelp: one training epoch and one full evaluation of an
8-layer, 64-d LightGCN teacher (batch 4096), printed as one JSON line.

    python bench/bench_teacher.py [--data_dir ../shared/datasets] [--threads 2] [--device cuda]

Reports seconds per epoch and per evaluation, a per-part breakdown of the epoch
(sampling, forward, backward, optimiser) and the peak RSS of the process.
"""
import argparse
import json
import os
import platform
import resource
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import DataHandler as dh  # noqa: E402
from Utils.runtime import Runtime  # noqa: E402
from Model import LightGCN  # noqa: E402
from Utils.training.Teacher import teacher_loss  # noqa: E402
from Utils.training.Metrics import Evaluator  # noqa: E402


def sync(value=None):
    """Wait for the GPU's queued work (nothing on the CPU), so that a clock read after it counts
    that work; returns ``value``. The benches of stages 1-3 share it."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return value


def teacher_parser(description: str) -> argparse.ArgumentParser:
    """The options of the stage-1 benches (this one and bench_spmm.py): data, threads, teacher shape."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data_dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets"))
    parser.add_argument("--dataset", default="yelp")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--latdim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4096, help="BPR triples per step")
    return parser


def deterministic_modes(parser: argparse.ArgumentParser, text: str) -> list:
    """The entries of ``--deterministic`` ("1,0,1,0"), each "1" or "0" (the benches of stages 1-3)."""
    modes = text.split(",")
    if set(modes) - {"0", "1"}:
        parser.error(f"--deterministic takes comma-separated 1 and 0, not {text}")
    return modes


def timed_steps(loss_fn, optimizer, batches, device, parts):
    """Train on ``batches``, adding the seconds of each step's forward, backward and update to ``parts``."""
    for ancs, poss, negs in batches:
        ancs, poss, negs = (torch.from_numpy(a).to(device) for a in (ancs, poss, negs))
        t0 = time.perf_counter()
        loss = loss_fn(ancs, poss, negs)["total"]
        sync()
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sync()
        t2 = time.perf_counter()
        optimizer.step()
        sync()
        t3 = time.perf_counter()
        parts["forward"] += t1 - t0
        parts["backward"] += t2 - t1
        parts["optimizer"] += t3 - t2


def timed_evaluation(model, graph, evaluator):
    """(propagation seconds, evaluation seconds, test metrics) of one evaluation."""
    t = time.perf_counter()
    with torch.no_grad():
        users, items = model(graph)
        sync()
        prop_s = time.perf_counter() - t
        metrics = evaluator.evaluate(users, items)
    return prop_s, time.perf_counter() - t, metrics


def main():
    parser = teacher_parser(__doc__.splitlines()[0])
    parser.add_argument("--tstBat", type=int, default=64)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--deterministic", default="1",
                        help="comma-separated 1/0: time one epoch per entry in turn in this process, e.g. 1,0,1,0 "
                             "(train_epoch_s is the first; all are in train_epoch_s_by_deterministic); 1 = "
                             "deterministic kernels, as the stages run by default (default: %(default)s)")
    opts = parser.parse_args()
    modes = deterministic_modes(parser, opts.deterministic)
    torch.set_num_threads(opts.threads)
    torch.manual_seed(0)
    device = Runtime.device_named(opts.device)
    Runtime.set_deterministic(modes[0] == "1", device)
    data = dh.load_dataset(opts.data_dir, opts.dataset)
    graph = dh.Graph.from_scipy(dh.propagation_matrix(data.train)).to(device)
    sampler = dh.NegativeSampler(data.train)
    model = LightGCN(data.n_users, data.n_items, opts.latdim, opts.layers).to(device)
    Runtime.keep_freed_memory()
    optimizer = Runtime.make_optimizer(model.parameters(), 4e-4)
    loss_fn = teacher_loss(model, graph, 1.5e-6)
    rng = np.random.default_rng(0)
    parts = {"sampling": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}

    def epoch():
        t = time.perf_counter()
        batches = list(sampler.epoch_batches(rng, opts.batch))
        parts["sampling"] += time.perf_counter() - t
        timed_steps(loss_fn, optimizer, batches, device, parts)

    epoch()  # warm-up: Numba compilation, allocator
    by_mode = {mode: [] for mode in modes}
    first_parts = None
    for mode in modes:
        Runtime.set_deterministic(mode == "1", device)
        parts.update(dict.fromkeys(parts, 0.0))
        t = time.perf_counter()
        epoch()
        by_mode[mode].append(round(time.perf_counter() - t, 3))
        first_parts = first_parts or dict(parts)  # the breakdown is the first epoch's
    epoch_s = by_mode[modes[0]][0]
    Runtime.set_deterministic(modes[0] == "1", device)
    prop_s, eval_s, metrics = timed_evaluation(model, graph, Evaluator(data.train, data.test, 20, opts.tstBat, device))
    print(json.dumps({
        "bench": "stage1_teacher", "dataset": opts.dataset, "layers": opts.layers, "latdim": opts.latdim,
        "batch": opts.batch, "tstBat": opts.tstBat, "threads": opts.threads, "deterministic": int(modes[0]),
        "train_epoch_s": round(epoch_s, 3), "train_epoch_s_by_deterministic": by_mode,
        "train_parts_s": {k: round(v, 3) for k, v in first_parts.items()},
        "eval_s": round(eval_s, 3), "eval_propagation_s": round(prop_s, 3), "eval_recall": round(metrics["Recall"], 5),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "device": opts.device,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}"
                   + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
    }))


if __name__ == "__main__":
    main()
