"""Inspect, plot, export and serve LightGNN models.

    python modelTools.py report CHECKPOINT [--json OUT]
    python modelTools.py plot HISTORY... --out DIR
    python modelTools.py export CHECKPOINT OUT [--embeddings]
    python modelTools.py recommend CHECKPOINT --users 0,5,9 --topk 20 [--all_users --out FILE]
    python modelTools.py evaluate CHECKPOINT --split test [--ks 10,20,40 --metrics all --per_user FILE]
    python modelTools.py compare RUN_A_FOLDER RUN_B_FOLDER
    python modelTools.py summary HISTORY... [--checkpoints DIR --topk 20,40]

CHECKPOINT is any model file: our checkpoints (teacher, intermediate, student), a
published ``.mod`` file, or a compact export written by ``export``. The commands that
need the data read ``<data_dir>/sparse_<dataset>/``, by default the dataset and data
directory stored in the checkpoint (``--dataset``/``--data_dir`` override them;
published files store neither). Models are rebuilt with the training tool's classes
and propagation, and evaluated with its Evaluator, so numbers match its log.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional

import torch

from Utils.config import Config
from Utils.files import Checkpoint, Outputs
from Utils.files.Atomic import atomic_write
from Utils.tools import Compare, Plots, Report
from Utils.runtime.Errors import ConfigError, OneLineErrorParser, UserError, quiet_library_warnings, report_user_error
from Utils.tools import Serve
from Utils.training.Metrics import ALL_METRICS, Evaluator, parse_ks, parse_metrics, popularity_embeddings
from Utils.runtime.Runtime import device_named
from Utils.tools.Serve import (Loaded, build_model, load_data, load_model_file,  # noqa: F401 (re-exported)
                         model_graph, parse_users, propagated, read_idmap, top_k)


# ----------------------------------------------------------------------------- commands
def cmd_report(args) -> int:
    if args.json:
        Outputs.claim(args.json, [args.checkpoint], args.overwrite, "report")
    loaded = load_model_file(args.checkpoint, args.role)
    nnz = None
    if args.dataset and loaded.compact is None and "n_edges" not in loaded.meta:
        dataset = load_data(loaded, args.dataset, args.data_dir)
        nnz = 2 * dataset.train.nnz + dataset.n_nodes  # nnz(Â), docs/method.md#propagation-graph
    report = Report.compression_report(loaded.ckpt.tensors, loaded.meta, graph_nnz_full=nnz)
    report["checkpoint"] = loaded.ckpt.path
    print(Report.format_report(report, f"Compression report of {loaded.ckpt.path}"))
    if args.json:
        Report.save_report(args.json, report)
        print(f"JSON written: {args.json}")
    return 0


def cmd_plot(args) -> int:
    for name in ("training", "tradeoff"):
        Outputs.claim(os.path.join(args.out, f"{args.prefix}{name}.png"), args.histories, args.overwrite, "plot")
    histories = Plots.load_histories(args.histories)
    paths = Plots.plot_all(histories, args.out, topk=args.topk, prefix=args.prefix)
    for path in paths:
        print(f"Plot written: {path}")
    if len(paths) < 2:
        print("No pruning runs in these histories: no trade-off plot")
    return 0


def cmd_summary(args) -> int:
    extra = None
    if args.checkpoints:
        extra = run_checkpoint_metrics(args)
    elif args.topk:
        raise ConfigError("--topk needs --checkpoints (the folder of the runs' checkpoints, evaluated at each K)")
    for line in Plots.summary_table(Plots.load_histories(args.histories), args.select_on, extra):
        print(line)
    return 0


def run_checkpoint_metrics(args):
    """The extra columns of ``summary --checkpoints DIR --topk K,...``: Recall@K and NDCG@K on
    ``--split`` of the checkpoint each run saved at its best epoch (a record whose pruning run,
    kind and epoch are that row's), or "–" when none of the folder's checkpoints is that point."""
    ks = [int(k) for k in (args.topk or "20,40").split(",") if k]
    if not ks or min(ks) <= 0:
        raise ConfigError(f"--topk must be positive integers, got {args.topk}")
    points = {}
    for name in sorted(os.listdir(args.checkpoints)):
        if not name.endswith(".mod"):
            continue
        path = os.path.join(args.checkpoints, name)
        record = Checkpoint.load_checkpoint(path).meta.get("record") or {}
        if "prn_run" in record:
            points.setdefault((record["prn_run"], record.get("kind"), record.get("epoch")), path)
    titles = [f"{args.split} {m}@{k}" for k in ks for m in ("Recall", "NDCG")]
    cache: Dict[str, List[str]] = {}

    def cells(row):
        path = points.get((row.get("prn_run"), row.get("kind"), row.get("epoch")))
        if path is None:
            return ["–"] * len(titles)
        if path not in cache:
            loaded = load_model_file(path)
            dataset = load_data(loaded, args.dataset, args.data_dir)
            user_emb, item_emb = propagated(loaded, dataset, torch.device("cpu"))
            values = []
            for k in ks:
                result = Evaluator(dataset.train, dataset.split(args.split), k, 256, "cpu").evaluate(user_emb, item_emb)
                values += [f"{result['Recall']:.4f}", f"{result['NDCG']:.4f}"]
            cache[path] = values
        return cache[path]

    return titles, cells


def cmd_curve(args) -> int:
    points = Plots.time_curve(Plots.load_histories(args.histories))
    for line in Plots.curve_lines(points):
        print(line)
    if args.out:
        Outputs.claim(os.path.join(args.out, f"{args.prefix}curve.png"), args.histories, args.overwrite, "plot")
        print(f"Plot written: {Plots.plot_time_curve(points, args.out, args.topk, args.prefix)}", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    loaded = load_model_file(args.checkpoint, args.role)
    if os.path.abspath(args.out) == os.path.abspath(args.checkpoint):
        raise ConfigError("OUT must differ from CHECKPOINT")
    if args.embeddings:
        return _export_embeddings(loaded, args)
    if loaded.compact is not None:
        raise ConfigError(f"{args.checkpoint} is already a compact export (--embeddings writes its propagated "
                          "embeddings)")
    Outputs.claim(args.out, [args.checkpoint], args.overwrite, "compact export")
    dataset = load_data(loaded, args.dataset, args.data_dir)
    graph, kind = model_graph(loaded, dataset, args.graph)
    meta = dict(loaded.meta, graph=kind)
    meta.setdefault("dataset", dataset.name)
    meta.setdefault("flags", {"dataset": dataset.name, "data_dir": os.path.dirname(dataset.directory)})
    compact = Report.export_compact(Checkpoint.Checkpoint(loaded.ckpt.tensors, meta, loaded.ckpt.path),
                                    graph, args.out)
    report = Report.compression_report(compact.tensors(), compact.meta)
    print(Report.format_report(report, f"Compact export of {loaded.ckpt.path}"))
    print(f"Compact export written: {args.out} ({os.path.getsize(args.out):,} bytes on disk, "
          f"{compact.nbytes():,} in arrays; {compact.meta['edges_kept']:,} edges, "
          f"{compact.emb_values.numel():,} embedding entries)")
    return 0


def _export_embeddings(loaded, args) -> int:
    """``export --embeddings``: OUT is a folder of NumPy tables and their ids (Utils.tools.Serve.export_embeddings)."""
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ConfigError(f"{args.out} is a file: with --embeddings OUT is a folder")
    for name in Serve.EMBEDDING_FILES:
        Outputs.claim(os.path.join(args.out, name), [args.checkpoint], args.overwrite, "embeddings")
    dataset = load_data(loaded, args.dataset, args.data_dir)
    user_emb, item_emb = propagated(loaded, dataset, torch.device("cpu"), args.graph)
    meta = {"checkpoint": os.path.abspath(loaded.ckpt.path), "dataset": dataset.name,
            "data_dir": os.path.dirname(dataset.directory), "role": Checkpoint.checkpoint_role(loaded.meta),
            "exclude": "a user's train items (trnMat.pkl) are excluded from their recommendations"}
    paths = Serve.export_embeddings(args.out, user_emb, item_emb, read_idmap(dataset), meta)
    print(f"Embeddings written: {', '.join(paths)} ({user_emb.shape[0]:,} users and {item_emb.shape[0]:,} items, "
          f"{user_emb.shape[1]} dimensions; score = dot product)")
    return 0


def _format_items(items: List[int], idmap: Optional[dict]) -> str:
    return " ".join(str(idmap["items"][i]) if idmap else str(i) for i in items)


def cmd_recommend(args) -> int:
    loaded = load_model_file(args.checkpoint, args.role)
    if args.topk <= 0:
        raise ConfigError(f"--topk must be a positive integer, got {args.topk}")
    if args.all_users == (args.users is not None):
        raise ConfigError("give either --users or --all_users")
    if args.all_users and not args.out:
        raise ConfigError("--all_users needs --out FILE (one tab-separated line per user)")
    if args.out:
        Outputs.claim(args.out, [args.checkpoint], args.overwrite, "recommendations")
    dataset = load_data(loaded, args.dataset, args.data_dir)
    idmap = read_idmap(dataset)
    device = device_named(args.device)
    users = (list(range(dataset.n_users)) if args.all_users else parse_users(args.users, dataset, idmap, args.by_index))
    user_emb, item_emb = propagated(loaded, dataset, device, args.graph)
    if args.out:
        rows = Serve.top_k_batches(user_emb, item_emb, torch.tensor(users), dataset.train, args.topk, args.batch)
        written = Serve.write_top_k(args.out, rows, idmap, args.scores)
        print(f"Recommendations written: {args.out} (top-{args.topk} of {written:,} users)")
        return 0
    for u, (items, scores) in zip(users, top_k(user_emb, item_emb, users, dataset.train, args.topk)):
        name = f"{idmap['users'][u]} (index {u})" if idmap else str(u)
        line = f"user {name}: {_format_items(items, idmap)}"
        if args.scores:
            line += "  [scores: " + " ".join(f"{s:.4f}" for s in scores) + "]"
        print(line)
    return 0


def cmd_evaluate(args) -> int:
    loaded = load_model_file(args.checkpoint, args.role)
    if args.ks is not None and args.topk is not None:
        raise ConfigError("give --topk (one cut-off) or --ks (several), not both")
    for path, what in ((args.per_user, "per-user metrics"), (args.json, "metrics")):
        if path:
            Outputs.claim(path, [args.checkpoint], args.overwrite, what)
    dataset = load_data(loaded, args.dataset, args.data_dir)
    split = dataset.split(args.split)
    recorded = Config.recorded_section(loaded.meta, "evaluation")
    logged_k = int(recorded.topk)
    batch = args.tstBat or int(recorded.batch_users)
    ks = parse_ks(args.ks, dataset.n_items) if args.ks is not None else (args.topk or logged_k,)
    if min(ks) <= 0 or batch <= 0:
        raise ConfigError(f"--topk and --tstBat must be positive integers, got {ks[0]} and {batch}")
    metrics = parse_metrics(args.metrics)
    device = device_named(args.device)
    evaluator = Evaluator(dataset.train, split, ks[0], batch, device)  # checks K against the item count
    user_emb, item_emb = propagated(loaded, dataset, device, args.graph)
    n_users = int(evaluator.users.numel())
    summary, rows = evaluator.evaluate_many(user_emb, item_emb, ks, metrics, per_user=bool(args.per_user))
    one_line = args.ks is None and metrics == ("Recall", "NDCG")  # the one-line form of a single cut-off
    _print_metrics(args.split, summary, ks, metrics, one_line, f"{n_users} users, {loaded.ckpt.path}")
    recorded = Report.recorded_metrics(loaded.meta).get(args.split)
    if recorded and logged_k in ks:
        print(f"{args.split} as logged in training: Recall@{logged_k} = {recorded['Recall']:.5f}, "
              f"NDCG@{logged_k} = {recorded['NDCG']:.5f}")
    popularity = None
    if args.baseline == "popularity":
        popularity, _ = evaluator.evaluate_many(*popularity_embeddings(dataset.train, device), ks, metrics)
        _print_metrics(f"{args.split}, popularity ranking", popularity, ks, metrics, one_line)
    if args.per_user:
        _write_per_user(args.per_user, rows, read_idmap(dataset))
        print(f"Per-user metrics written: {args.per_user} ({n_users} users)")
    if args.json:
        result = {"checkpoint": loaded.ckpt.path, "split": args.split, "topk": ks[0] if len(ks) == 1 else list(ks),
                  "users": n_users, "metrics": summary, "recorded": recorded}
        if len(ks) == 1:  # the single-cut-off keys earlier versions wrote
            result.update(Recall=summary.get(f"Recall@{ks[0]}"), NDCG=summary.get(f"NDCG@{ks[0]}"))
            if popularity is not None:
                popularity = dict(popularity, Recall=popularity.get(f"Recall@{ks[0]}"),
                                  NDCG=popularity.get(f"NDCG@{ks[0]}"))
        result["popularity"] = popularity
        Report.save_report(args.json, result)
    return 0


def _print_metrics(label: str, summary: Dict[str, float], ks, metrics, one_line: bool, about: str = "") -> None:
    """``label: Recall@K = …, NDCG@K = … (about)`` for one K, else ``label: about`` and the table."""
    if one_line:
        k = ks[0]
        print(f"{label}: Recall@{k} = {summary[f'Recall@{k}']:.5f}, NDCG@{k} = {summary[f'NDCG@{k}']:.5f}"
              + (f" ({about})" if about else ""))
        return
    print(f"{label}:" + (f" {about}" if about else ""))
    for line in metrics_table(summary, ks, metrics):
        print(line)


def metrics_table(summary: Dict[str, float], ks, metrics) -> List[str]:
    """One row per metric, one column per cut-off (5 decimals; AvgPop, a count, with 2)."""
    lines = ["metric    " + "".join(f"{'@' + str(k):>11}" for k in ks)]
    for m in metrics:
        digits = 2 if m == "AvgPop" else 5
        lines.append(f"{m:<10}" + "".join(f"{summary[f'{m}@{k}']:>11.{digits}f}" for k in ks))
    return lines


def _write_per_user(path: str, rows: Dict[str, torch.Tensor], idmap: Optional[dict]) -> None:
    """CSV of the per-user metrics: user index, original id, |split items|, then metric@K columns."""
    columns = [name for name in rows if name not in ("user", "n_truth")]
    users, n_truth = rows["user"].tolist(), rows["n_truth"].tolist()
    values = [rows[name].tolist() for name in columns]

    def write(handle) -> None:
        handle.write(",".join(["user", "user_id", "n_truth"] + columns) + "\n")
        for r, user in enumerate(users):
            uid = str(idmap["users"][user]) if idmap else str(user)
            if any(ch in uid for ch in ',"\n'):
                uid = '"' + uid.replace('"', '""') + '"'
            handle.write(",".join([str(user), uid, str(n_truth[r])] + [repr(col[r]) for col in values]) + "\n")

    atomic_write(path, "w", write, "per-user metrics")


def cmd_compare(args) -> int:
    """Compare two runs' output folders; exit 0 when identical, 1 when anything differs."""
    result = Compare.compare_runs(Compare.run_outputs(args.a), Compare.run_outputs(args.b))
    for name in result.only_in_a:
        print(f"{name}: only in {args.a}")
    for name in result.only_in_b:
        print(f"{name}: only in {args.b}")
    for name, largest in result.different.items():
        print(f"{name}: differs" + (f", largest absolute difference {largest:.3g}" if largest else ""))
    if result.identical:
        print(f"identical: {result.files} files (every tensor equal, every history row equal but for its timings)")
        return 0
    print(f"different: {len(result.different)} of the {result.files} files both hold differ"
          + (f", largest absolute difference {result.max_abs_diff:.3g}" if result.max_abs_diff else ""))
    return 1


# ----------------------------------------------------------------------------- the parser
def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="modelTools.py", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineErrorParser)

    _add_history_commands(sub)
    _add_model_commands(sub)
    return parser


def _data_options(p, graph=True):
    p.add_argument("--dataset", default=None, help="dataset name (default: the one stored in the checkpoint)")
    p.add_argument("--data_dir", default=None, help="folder holding sparse_NAME/ (default: the checkpoint's)")
    p.add_argument("--role", choices=Checkpoint.ROLES, default=None,
                   help="model to take from a published stage-2/3 .mod file (default: the one it trained)")
    if graph:
        p.add_argument("--graph", choices=("auto", "adjacency", "closure"), default="auto",
                       help="graph of a full checkpoint: auto = as recorded, or inferred from the edge count "
                            "for published files (default: %(default)s)")


def _add_history_commands(sub):
    """The commands that read checkpoints' reports and history files: report, plot, summary, curve, compare."""
    p = sub.add_parser("report", help="compression report of a checkpoint (table; JSON with --json)")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("--json", metavar="OUT", default=None, help="also write the report as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace the JSON file when it exists (never a "
                                                            "checkpoint or history a stage wrote)")
    _data_options(p, graph=False)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("plot", help="training curves and the pruning trade-off from history files (PNG)")
    p.add_argument("histories", nargs="+", metavar="HISTORY", help=".his files (JSON lines or record files)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for training.png and tradeoff.png")
    p.add_argument("--topk", type=int, default=20, help="K in the axis labels (default: %(default)s)")
    p.add_argument("--prefix", default="", help="prefix of the PNG file names")
    p.add_argument("--overwrite", action="store_true", help="replace earlier plots of the same names")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("summary", help="table of each stage and pruning run from history files: best epoch, "
                                       "kept %%, val/test metrics, wall time (Markdown)")
    p.add_argument("histories", nargs="+", metavar="HISTORY", help=".his files, in pipeline order")
    p.add_argument("--select_on", choices=("val", "test"), default=None,
                   help="split that picks each run's best epoch (default: val when logged, else test)")
    p.add_argument("--checkpoints", metavar="DIR", default=None,
                   help="folder of the runs' checkpoints: adds Recall@K and NDCG@K (--topk) on --split of the "
                        "checkpoint saved at each run's best epoch")
    p.add_argument("--topk", default=None, metavar="K,...", help="cut-offs with --checkpoints (default: 20,40)")
    p.add_argument("--split", choices=("test", "val"), default="test", help="split of those columns (default: test)")
    p.add_argument("--dataset", default=None, help="dataset of the checkpoints (default: as recorded)")
    p.add_argument("--data_dir", default=None, metavar="DIR", help="where sparse_<dataset>/ lives (default: as recorded)")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("curve", help="Recall/NDCG of every evaluated epoch against the wall time spent so far "
                                     "(CSV on stdout; curve.png with --out)")
    p.add_argument("histories", nargs="+", metavar="HISTORY", help=".his files, in pipeline order")
    p.add_argument("--out", default=None, metavar="DIR", help="also draw test/val Recall against wall time "
                                                                 "as curve.png in this folder")
    p.add_argument("--topk", type=int, default=20, help="K in the axis label (default: %(default)s)")
    p.add_argument("--prefix", default="", help="prefix of the PNG file name")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier curve.png")
    p.set_defaults(func=cmd_curve)

    p = sub.add_parser("compare", help="compare the outputs of two runs (every tensor of their .mod/_last.ckpt "
                                       "files, every history row but its timings); exit 1 when they differ")
    p.add_argument("a", metavar="FOLDER_A", help="folder of the first run's outputs")
    p.add_argument("b", metavar="FOLDER_B", help="folder of the second run's outputs")
    p.set_defaults(func=cmd_compare)


def _add_model_commands(sub):
    """The commands that load a model: export, recommend, evaluate."""
    p = sub.add_parser("export", help="write the compact export (surviving edges + non-zero entries), or with "
                                      "--embeddings the propagated embeddings for a nearest-neighbour index")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("out", metavar="OUT", help="the compact export's file; with --embeddings a folder")
    p.add_argument("--embeddings", action="store_true",
                   help="write OUT/user_embeddings.npy and item_embeddings.npy (float32, one row per user/item, "
                        "score = dot product), OUT/ids.json (original id of each row) and OUT/meta.json; any "
                        "model file, compact exports included")
    p.add_argument("--overwrite", action="store_true", help="replace OUT (or its files) when it exists; never a "
                                                            "checkpoint or history a training stage wrote")
    _data_options(p)
    p.set_defaults(func=cmd_export)

    for name, text in (("recommend", "top-K items for some users or all, their train items excluded"),
                       ("evaluate", "ranking metrics on a split (Recall and NDCG as the training tool computes "
                                    "them, and more) at one or several K")):
        p = sub.add_parser(name, help=text)
        p.add_argument("checkpoint", metavar="CHECKPOINT", help="full checkpoint, published .mod or compact export")
        _data_options(p)
        p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu",
                       help="where to propagate and score (default: %(default)s)")
        p.add_argument("--overwrite", action="store_true", help="replace the output file when it exists (never a "
                                                                "checkpoint or history a training stage wrote)")
        if name == "recommend":
            p.add_argument("--users", default=None, help="comma-separated user ids (original ids when the dataset "
                                                         "has idmap.json, else row indices)")
            p.add_argument("--all_users", action="store_true",
                           help="every user of the dataset, written to --out in batches (never all scores at once)")
            p.add_argument("--out", metavar="FILE", default=None,
                           help="write tab-separated lines 'user<TAB>item,item,...' (with --scores a third column) "
                                "instead of printing")
            p.add_argument("--batch", type=int, default=1024, help="users scored at once with --out "
                                                                   "(default: %(default)s)")
            p.add_argument("--by_index", action="store_true", help="--users are row indices even with an id map")
            p.add_argument("--topk", type=int, default=20,
                           help="items per user (default: %(default)s); a user gets fewer when fewer items are "
                                "left once their train items are excluded (K above the item count is not an error)")
            p.add_argument("--scores", action="store_true", help="also print the scores")
            p.set_defaults(func=cmd_recommend)
        else:
            p.add_argument("--split", choices=("test", "val"), default="test", help="(default: %(default)s)")
            p.add_argument("--topk", type=int, default=None, help="K (default: the checkpoint's --topk, else 20)")
            p.add_argument("--ks", default=None, metavar="K,...",
                           help="several cut-offs, e.g. 10,20,40: a table with a column per K")
            p.add_argument("--metrics", default="Recall,NDCG", metavar="NAME,...",
                           help=f"any of {', '.join(ALL_METRICS)}, or all (default: %(default)s); formulas in "
                                "docs/method.md#evaluation")
            p.add_argument("--per_user", metavar="FILE", default=None,
                           help="also write each evaluated user's per-user metrics as CSV (for significance tests)")
            p.add_argument("--tstBat", type=int, default=None,
                           help="users per evaluation batch (default: the checkpoint's --tstBat, else 64)")
            p.add_argument("--json", metavar="OUT", default=None, help="also write the metrics as JSON")
            p.add_argument("--baseline", choices=("none", "popularity"), default="none",
                           help="also evaluate a baseline ranking on the same split (default: %(default)s)")
            p.set_defaults(func=cmd_evaluate)


def main(argv: Optional[List[str]] = None) -> int:
    quiet_library_warnings()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as err:
        return report_user_error(err)


if __name__ == "__main__":
    sys.exit(main())
