"""What a model costs when it is used: time to every user's top-K, one user's top-K, memory, size.

    python bench/bench_inference.py LABEL=MODEL [LABEL=MODEL ...] [--data_dir ../shared/datasets]
        [--topk 20] [--batch 1024] [--repeats 3] [--threads 2] [--recall]
        [--relative_to teacher,student_run1] [--plot fig3.png] [--fig4 fig4.png] [--out lines.jsonl]
        [--lines earlier.jsonl ...]

MODEL is any model file the tools read: a checkpoint of any stage, a compact export
(``modelTools.py export``) or a published ``.mod``. Each is measured in a fresh process (so its
peak memory is its own), after its dataset is loaded:

* ``load_s``: reading the file and building what propagation needs (the graph: Â, Ĉ for an
  intermediate model, or the surviving edges of a compact export);
* ``propagation_s``: Ē = Σ_l M^l E₀ (median of ``--repeats``);
* every user's top-K, ``--batch`` users at a time: ``score_s`` (Ē_u·Ē_iᵀ), ``exclude_s`` (train
  items set to −∞) and ``topk_s``, summed over the batches (median of ``--repeats`` passes);
  ``all_users_s`` = propagation + the three;
* ``one_user_ms``: one user's top-K once Ē is there (median over 200 users);
* ``peak_rss_mb`` (and ``data_rss_mb``, the process after loading the dataset, before the
  model), or on CUDA ``peak_cuda_mb``;
* from ``Utils/tools/Report.py``: ``bytes_model`` (compact-export bytes: surviving edges + non-zero
  entries), ``bytes_dense`` (the same layout dense), ``macs_propagation`` (L · edges propagated
  · d: a full checkpoint propagates over all its edges, masked ones as zeros; a compact export
  over the surviving ones), ``macs_score_one_user`` (I · d) and ``bytes_serving`` (Ē, the
  (U + I)·d floats a server holds);
* with ``--recall``: test Recall@K (the Evaluator's, as logged).

One JSON line per model; ``--relative_to A,B`` adds a Markdown table of every figure as a
percentage of models A and B (the paper's Fig. 3 compares with the model replaced);
``--plot`` draws that table against A as bars; ``--fig4`` plots test Recall against bytes and
against propagation multiply-adds (needs ``--recall``), one series per label prefix before the
first ``_`` (e.g. ``student_run6``, ``dense_d16``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from Utils.runtime.Runtime import device_named  # noqa: E402
from Utils.tools import Report, Serve  # noqa: E402
from Utils.training.Metrics import Evaluator, csr_tensors, rows_to_coords, unseen_scores  # noqa: E402

FIGURES = ("bytes_model", "bytes_serving", "macs_propagation", "load_s", "propagation_s", "all_users_s",
           "one_user_ms", "peak_rss_mb")


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


class Clock:
    """Wall time of a call, the device synchronised before and after (CUDA runs asynchronously)."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn):
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if self.cuda:
            torch.cuda.synchronize()
        return out, time.perf_counter() - start


def build(path, dataset, device):
    """(loaded file, model, the graph it propagates over, that graph's name) on ``device``."""
    loaded = Serve.load_model_file(path)
    if loaded.compact is not None:
        return loaded, loaded.compact.model().to(device), loaded.compact.graph().to(device), "surviving edges"
    graph, kind = Serve.model_graph(loaded, dataset)
    return loaded, Serve.build_model(loaded, dataset, graph).to(device), graph.to(device), kind


@torch.no_grad()
def time_all_users(users, item_t, train, opts, clock) -> dict:
    """Seconds of scoring, exclusion and top-k over every user, ``opts.batch`` at a time: the
    quickest of ``opts.repeats`` passes (the least disturbed)."""
    all_ids = torch.arange(users.shape[0], device=users.device)
    passes = []
    for _ in range(opts.repeats):
        parts = {"score_s": 0.0, "exclude_s": 0.0, "topk_s": 0.0}
        for start in range(0, users.shape[0], opts.batch):
            chunk = all_ids[start:start + opts.batch]
            scores, parts_score = clock(lambda: users[chunk] @ item_t)
            _, parts_excl = clock(lambda: _exclude(scores, train, chunk))
            _, parts_topk = clock(lambda: torch.topk(scores, opts.topk, dim=1))
            parts["score_s"] += parts_score
            parts["exclude_s"] += parts_excl
            parts["topk_s"] += parts_topk
        passes.append(parts)
    return min(passes, key=lambda p: sum(p.values()))


@torch.no_grad()
def time_one_user(users, item_t, train, opts, clock) -> float:
    """Median seconds of one user's top-K once Ē is there, over 200 users drawn with seed 0."""
    seconds = []
    for u in np.random.default_rng(0).integers(0, users.shape[0], size=200).tolist():
        one = torch.tensor([u], device=users.device)
        seconds.append(clock(lambda: torch.topk(unseen_scores(users, item_t, one, train), opts.topk, dim=1))[1])
    return statistics.median(seconds)


@torch.no_grad()
def measure(path: str, opts) -> dict:
    """All figures of one model (run in its own process)."""
    torch.set_num_threads(opts.threads)
    device = device_named(opts.device)
    clock = Clock(device)
    probe = Serve.load_model_file(path)
    dataset = Serve.load_data(probe, opts.dataset, opts.data_dir)
    train = csr_tensors(dataset.train.tocsr(), device)
    del probe
    data_rss = rss_mb()
    if clock.cuda:
        torch.cuda.reset_peak_memory_stats()
    (loaded, model, graph, graph_kind), load_s = clock(lambda: build(path, dataset, device))
    propagations = []
    for _ in range(opts.repeats):
        (users, items), seconds = clock(lambda: model(graph))
        propagations.append(seconds)
    item_t = items.t().contiguous()
    parts = time_all_users(users, item_t, train, opts, clock)
    one_user_s = time_one_user(users, item_t, train, opts, clock)
    line = {"bench": "inference", "model": path, "compact": loaded.compact is not None, "graph": graph_kind,
            **counts(loaded, graph, dataset),
            "load_s": round(load_s, 4), "propagation_s": round(statistics.median(propagations), 4),
            **{k: round(v, 4) for k, v in parts.items()}, "one_user_ms": round(1000 * one_user_s, 4),
            "data_rss_mb": round(data_rss, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "threads": opts.threads, "device": str(device), "topk": opts.topk, "batch": opts.batch,
            "machine": f"{os.uname().machine} {os.cpu_count()} cpus, torch {torch.__version__}"}
    line["all_users_s"] = round(line["propagation_s"] + sum(parts.values()), 4)
    if clock.cuda:
        line["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    if opts.recall:
        evaluator = Evaluator(dataset.train, dataset.test, opts.topk, opts.batch, device)
        line["test_recall"] = evaluator.evaluate(users, items)["Recall"]
    return line


def counts(loaded, graph, dataset) -> dict:
    """Sizes and multiply-adds (Utils/tools/Report.py), with propagation over the graph it uses."""
    report = Report.compression_report(loaded.ckpt.tensors, loaded.meta,
                                       graph_nnz_full=graph.nnz if loaded.compact is None else None)
    d, layers = report["latdim"], report["gnn_layer"] or 0
    return {"role": loaded.meta.get("role") or report["stage"], "dataset": dataset.name,
            "n_users": dataset.n_users, "n_items": dataset.n_items, "latdim": d, "gnn_layer": layers,
            "edges_kept_pct": report["edges"]["kept_pct"],
            "entries_kept_pct": report["embedding_entries"]["kept_pct"],
            "bytes_model": report["bytes"]["compact_export"], "bytes_dense": report["bytes"]["dense_export"],
            "bytes_serving": (dataset.n_users + dataset.n_items) * d * 4,
            "macs_propagation": layers * int(graph.nnz) * d, "macs_score_one_user": report["macs"]["score_one_user"]}


def _exclude(scores, train, chunk):
    rows, cols = rows_to_coords(*train, chunk)
    scores[rows, cols] = float("-inf")


def relative_table(lines: list, bases: list) -> list:
    """Markdown: each model's figures as % of each base model's."""
    by_label = {line["label"]: line for line in lines}
    out = []
    for base in bases:
        ref = by_label[base]
        out.append(f"\nRelative to {base} (%):\n")
        out.append("| model | " + " | ".join(FIGURES) + " |")
        out.append("|---|" + "---|" * len(FIGURES))
        for line in lines:
            cells = []
            for name in FIGURES:
                value, whole = line.get(name), ref.get(name)
                cells.append("–" if value is None or not whole else f"{100.0 * value / whole:.1f}")
            out.append(f"| {line['label']} | " + " | ".join(cells) + " |")
    return out


def plot_relative(lines: list, base: str, path: str) -> None:
    import matplotlib  # loaded only when a plot is asked for

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = next(line for line in lines if line["label"] == base)
    figures = [f for f in FIGURES if ref.get(f)]
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(figures) * len(lines) / 3), 4.5))
    width = 0.8 / len(lines)
    for k, line in enumerate(lines):
        values = [100.0 * (line.get(f) or 0) / ref[f] for f in figures]
        ax.bar([i + k * width for i in range(len(figures))], values, width, label=line["label"])
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(figures))])
    ax.set_xticklabels(figures, rotation=20, ha="right")
    ax.set_ylabel(f"% of {base}")
    ax.set_yscale("log")
    ax.axhline(100, color="k", lw=0.6)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Inference cost relative to " + base + f" ({ref['dataset']})")
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def plot_fig4(lines: list, path: str) -> None:
    import matplotlib  # loaded only when a plot is asked for

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    series = {}
    for line in lines:
        if "test_recall" in line:
            series.setdefault(line["label"].split("_")[0], []).append(line)
    for name, points in sorted(series.items()):
        points.sort(key=lambda p: p["bytes_model"])
        for ax, key in zip(axes, ("bytes_model", "macs_propagation")):
            ax.plot([p[key] for p in points], [p["test_recall"] for p in points], "o-", label=name)
            for p in points:
                ax.annotate(p["label"].split("_", 1)[-1], (p[key], p["test_recall"]), fontsize=6)
    for ax, title in zip(axes, ("model bytes (compact export)", "propagation multiply-adds")):
        ax.set_xscale("log")
        ax.set_xlabel(title)
        ax.set_ylabel(f"test Recall@{lines[0]['topk']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def _inputs(parser, opts):
    """(label, model file) pairs to measure, and the earlier measurements of ``--lines``."""
    if not opts.models and not opts.lines:
        parser.error("give at least one LABEL=MODEL (or --lines)")
    earlier = []
    for path in opts.lines:
        try:
            with open(path) as fh:
                earlier += [json.loads(text) for text in fh if text.strip()]
        except (OSError, ValueError) as exc:
            parser.error(f"--lines {path}: {exc}")
    pairs = []
    for spec in opts.models:
        label, sep, path = spec.partition("=")
        if not sep:
            label, path = os.path.splitext(os.path.basename(spec))[0], spec
        if not os.path.isfile(path):
            parser.error(f"{path}: no such model file")
        pairs.append((label, path))
    return pairs, earlier


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", metavar="LABEL=MODEL")
    parser.add_argument("--data_dir", default=None, help="where sparse_<dataset>/ lives (default: as recorded)")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--topk", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1024, help="users scored at once")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--recall", action="store_true", help="also test Recall@K (for --fig4)")
    parser.add_argument("--relative_to", default=None, metavar="A,B", help="labels of the base models of the table")
    parser.add_argument("--plot", default=None, metavar="PNG", help="bars relative to the first --relative_to")
    parser.add_argument("--fig4", default=None, metavar="PNG", help="test Recall against bytes and MACs")
    parser.add_argument("--out", default=None, metavar="JSONL", help="also write the JSON lines here")
    parser.add_argument("--lines", nargs="+", default=[], metavar="JSONL",
                        help="earlier measurements (--out files) to put in the table and plots before this run's "
                             "models; with no LABEL=MODEL, only the table and plots are made")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # the child process: one model
    opts = parser.parse_args()
    if opts.one:
        print(json.dumps(measure(opts.one, opts)))
        return 0
    pairs, earlier = _inputs(parser, opts)
    bases = [b for b in (opts.relative_to or "").split(",") if b]
    unknown = [b for b in bases if b not in {label for label, _ in pairs} | {line["label"] for line in earlier}]
    if unknown:
        parser.error(f"--relative_to {unknown[0]} is not one of the labels")
    if opts.fig4 and not (opts.recall or any("test_recall" in line for line in earlier)):
        parser.error("--fig4 needs --recall")
    forwarded = [f"--{k}={v}" for k, v in (("data_dir", opts.data_dir), ("dataset", opts.dataset), ("topk", opts.topk),
                                            ("batch", opts.batch), ("repeats", opts.repeats),
                                            ("threads", opts.threads), ("device", opts.device)) if v is not None]
    lines = list(earlier)
    for label, path in pairs:
        proc = subprocess.run([sys.executable, __file__, "--one", path, *forwarded, *(["--recall"] if opts.recall else [])],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            return proc.returncode
        line = dict(json.loads(proc.stdout.strip().splitlines()[-1]), label=label)
        lines.append(line)
        print(json.dumps(line), flush=True)
    if opts.out:
        with open(opts.out, "w") as fh:
            fh.writelines(json.dumps(line) + "\n" for line in lines[len(earlier):])
    for row in relative_table(lines, bases) if bases else ():
        print(row)
    if opts.plot and bases:
        plot_relative(lines, bases[0], opts.plot)
        print(f"plot written: {opts.plot}")
    if opts.fig4:
        plot_fig4(lines, opts.fig4)
        print(f"plot written: {opts.fig4}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
