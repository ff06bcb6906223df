"""Inspect, plot, export and serve LightGNN models.

    python modelTools.py report CHECKPOINT [--json OUT]
    python modelTools.py plot HISTORY... --out DIR
    python modelTools.py export CHECKPOINT OUT
    python modelTools.py recommend CHECKPOINT --users 0,5,9 --topk 20
    python modelTools.py evaluate CHECKPOINT --split test
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
import json
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

import DataHandler as dh
import Params
from Model import LightGCN, model_from_tensors
from Utils import Checkpoint, Compare, Plots, Report
from Utils.Errors import (CheckpointError, ConfigError, DataError, OneLineErrorParser, UserError, quiet_library_warnings,
                          report_user_error)
from Utils.Metrics import Evaluator, popularity_embeddings, top_k_unseen
from Utils.Runtime import device_named


# ----------------------------------------------------------------------------- loading
@dataclass
class Loaded:
    """A model file: its checkpoint, or its compact form when it is a compact export."""

    ckpt: Checkpoint.Checkpoint
    compact: Optional[Report.CompactModel]

    @property
    def meta(self) -> dict:
        return self.ckpt.meta

    @property
    def flags(self) -> dict:
        return self.ckpt.meta.get("flags") or {}


def load_model_file(path: str, role: Optional[str] = None) -> Loaded:
    ckpt = Checkpoint.load_checkpoint(path, role=role)
    if Report.is_compact(ckpt.meta):
        return Loaded(ckpt, Report.compact_from_checkpoint_data(ckpt.tensors, ckpt.meta, ckpt.path))
    if "uEmbeds" not in ckpt.tensors or "iEmbeds" not in ckpt.tensors:
        raise CheckpointError(f"checkpoint {path} holds no uEmbeds/iEmbeds: not a LightGCN model")
    return Loaded(ckpt, None)


def default_flags() -> argparse.Namespace:
    """The training tool's defaults (for published files, which store no flags)."""
    return Params.build_parser().parse_args([])


def load_data(loaded: Loaded, args) -> dh.Dataset:
    """The dataset of ``--dataset``/``--data_dir``, else the one recorded in the checkpoint,
    checked against the checkpoint (its shapes, then :func:`check_train_split`)."""
    name = args.dataset or loaded.flags.get("dataset") or loaded.meta.get("dataset")
    if not name:
        raise ConfigError(f"{loaded.ckpt.path} does not say which dataset it was trained on: pass --dataset")
    data_dir = args.data_dir or loaded.flags.get("data_dir") or default_flags().data_dir
    dataset = dh.load_dataset(data_dir, name)
    n_users, n_items = int(loaded.meta.get("n_users", -1)), int(loaded.meta.get("n_items", -1))
    if loaded.compact is None:
        Checkpoint.check_compatible(loaded.ckpt, dataset.n_users, dataset.n_items, what="model")
    elif (n_users, n_items) != (dataset.n_users, dataset.n_items):
        raise CheckpointError(f"compact export {loaded.ckpt.path} is for {n_users} users x {n_items} items but "
                              f"dataset {dataset.directory} has {dataset.n_users} x {dataset.n_items}")
    check_train_split(loaded, dataset)
    return dataset


def check_train_split(loaded: Loaded, dataset: dh.Dataset) -> None:
    """Refuse a model trained on another train split, as the stages refuse such a supervisor
    (:func:`Utils.Checkpoint.check_identity` on the train-split fingerprint; there is no flag to
    override it there either): its scores would be those of another dataset of the same shape,
    with other train items excluded. Files that record no fingerprint (published ``.mod`` files,
    older checkpoints and exports) cannot be checked and are used as they are."""
    try:
        Checkpoint.check_identity(loaded.ckpt, Checkpoint.checkpoint_role(loaded.meta), dataset.fingerprint,
                                  warn=lambda line: None)
    except CheckpointError as err:
        raise CheckpointError(f"{err}; the dataset read here is {dataset.directory}: pass the --dataset/--data_dir "
                              "the model was trained on") from None


def _closure_graph(train, flags: dict) -> dh.Graph:
    return dh.closure_graph(train, Params.closure_config({**vars(default_flags()), **flags}))


def model_graph(loaded: Loaded, dataset: dh.Dataset, choice: str = "auto") -> Tuple[dh.Graph, str]:
    """The graph a full checkpoint propagates on: Â, or Ĉ for an intermediate model.

    ``choice`` 'adjacency'/'closure' forces it; 'auto' takes the checkpoint's meta
    (``graph``), and for a published file, which does not say, the graph whose edge
    count equals the length of its edge vectors.
    """
    tensors, meta = loaded.ckpt.tensors, loaded.meta
    adj = dh.Graph.from_scipy(dh.propagation_matrix(dataset.train))
    n_edges = int(tensors["adj_mask1_train"].numel()) if "adj_mask1_train" in tensors else None
    kind = choice if choice != "auto" else meta.get("graph")
    if kind is None:
        if n_edges is None or n_edges == adj.nnz:
            kind = "adjacency"
        else:
            closure = _closure_graph(dataset.train, loaded.flags)
            if n_edges != closure.nnz:
                raise CheckpointError(
                    f"checkpoint {loaded.ckpt.path} has {n_edges} edge weights, but on dataset {dataset.directory} "
                    f"the graph Â has {adj.nnz} edges and the closure Ĉ {closure.nnz}: another dataset?")
            return closure, "closure"
    graph = adj if kind == "adjacency" else _closure_graph(dataset.train, loaded.flags)
    if n_edges is not None and n_edges != graph.nnz:
        raise CheckpointError(f"checkpoint {loaded.ckpt.path} has {n_edges} edge weights but the {kind} graph of "
                              f"{dataset.directory} has {graph.nnz} edges (another dataset, or the other graph?)")
    return graph, kind


def _layers(loaded: Loaded) -> int:
    layers = loaded.meta.get("gnn_layer")
    if layers is None:
        raise CheckpointError(f"checkpoint {loaded.ckpt.path} does not say how many layers it propagates")
    return int(layers)


def build_model(loaded: Loaded, dataset: dh.Dataset, graph: dh.Graph) -> LightGCN:
    """The training tool's model class holding the checkpoint's tensors."""
    has_edges = "adj_mask1_train" in loaded.ckpt.tensors
    Checkpoint.check_compatible(loaded.ckpt, dataset.n_users, dataset.n_items,
                                n_edges=graph.nnz if has_edges else None, what="model")
    return model_from_tensors(loaded.ckpt.tensors, dataset.n_users, dataset.n_items, _layers(loaded)).eval()


@torch.no_grad()
def propagated(loaded: Loaded, dataset: dh.Dataset, device, graph_choice: str = "auto"):
    """(Ē_users, Ē_items) of a full checkpoint or a compact export, on ``device``."""
    if loaded.compact is not None:
        return loaded.compact.embeddings(device)
    graph, _ = model_graph(loaded, dataset, graph_choice)
    model = build_model(loaded, dataset, graph).to(device)
    return model(graph.to(device))


def read_idmap(dataset: dh.Dataset) -> Optional[Dict[str, list]]:
    """``<dataset dir>/idmap.json`` ({"users": [...], "items": [...]}, index k -> original id), if present."""
    path = os.path.join(dataset.directory, "idmap.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            idmap = json.load(fh)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read id map {path}: {exc}") from None
    if not (isinstance(idmap, dict) and len(idmap.get("users", ())) == dataset.n_users
            and len(idmap.get("items", ())) == dataset.n_items):
        raise DataError(f"id map {path} does not list {dataset.n_users} users and {dataset.n_items} items")
    return idmap


def parse_users(text: str, dataset: dh.Dataset, idmap: Optional[dict], by_index: bool) -> List[int]:
    """User indices of ``--users``: original ids when an id map exists (unless --by_index), else indices."""
    tokens = [t for t in text.replace(",", " ").split() if t]
    if not tokens:
        raise ConfigError("--users is empty: give comma-separated user ids, e.g. --users 0,5,9")
    if idmap is not None and not by_index:
        index = {str(orig): k for k, orig in enumerate(idmap["users"])}
        unknown = [t for t in tokens if t not in index]
        if unknown:
            raise ConfigError(f"unknown user id {unknown[0]!r} (not in the dataset's idmap.json; "
                              "--by_index takes row indices instead)")
        return [index[t] for t in tokens]
    try:
        users = [int(t) for t in tokens]
    except ValueError:
        raise ConfigError(f"--users must be integer user indices, got {text!r}") from None
    bad = [u for u in users if not 0 <= u < dataset.n_users]
    if bad:
        raise ConfigError(f"user index {bad[0]} is out of range: the dataset has {dataset.n_users} users (0..{dataset.n_users - 1})")
    return users


def top_k(user_emb: torch.Tensor, item_emb: torch.Tensor, users: List[int], train, k: int):
    """Top-``k`` (items, scores) per user by Ē_u·Ē_i, the user's train items excluded (the Evaluator's rule).

    ``k`` is clipped to the item count, and a user's train items are dropped from the list,
    so a user with fewer than ``k`` unseen items gets them all (fewer than ``k``), never an error."""
    k = min(k, item_emb.shape[0])
    values, indices = top_k_unseen(user_emb, item_emb.t(), torch.tensor(users, device=user_emb.device), train, k)
    out = []
    for row in range(len(users)):
        keep = torch.isfinite(values[row])
        out.append((indices[row][keep].tolist(), values[row][keep].tolist()))
    return out


# ----------------------------------------------------------------------------- commands
def cmd_report(args) -> int:
    loaded = load_model_file(args.checkpoint, args.role)
    nnz = None
    if args.dataset and loaded.compact is None and "n_edges" not in loaded.meta:
        dataset = load_data(loaded, args)
        nnz = 2 * dataset.train.nnz + dataset.n_nodes  # nnz(Â), docs/method.md#propagation-graph
    report = Report.compression_report(loaded.ckpt.tensors, loaded.meta, graph_nnz_full=nnz)
    report["checkpoint"] = loaded.ckpt.path
    print(Report.format_report(report, f"Compression report of {loaded.ckpt.path}"))
    if args.json:
        Report.save_report(args.json, report)
        print(f"JSON written: {args.json}")
    return 0


def cmd_plot(args) -> int:
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
            dataset = load_data(loaded, args)
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
        print(f"Plot written: {Plots.plot_time_curve(points, args.out, args.topk, args.prefix)}", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    loaded = load_model_file(args.checkpoint, args.role)
    if loaded.compact is not None:
        raise ConfigError(f"{args.checkpoint} is already a compact export")
    if os.path.abspath(args.out) == os.path.abspath(args.checkpoint):
        raise ConfigError("OUT must differ from CHECKPOINT")
    if os.path.exists(args.out) and not args.overwrite:
        raise ConfigError(f"{args.out} exists: pass --overwrite to replace it, or choose another OUT")
    dataset = load_data(loaded, args)
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


def _format_items(items: List[int], idmap: Optional[dict]) -> str:
    return " ".join(str(idmap["items"][i]) if idmap else str(i) for i in items)


def cmd_recommend(args) -> int:
    loaded = load_model_file(args.checkpoint, args.role)
    dataset = load_data(loaded, args)
    if args.topk <= 0:
        raise ConfigError(f"--topk must be a positive integer, got {args.topk}")
    idmap = read_idmap(dataset)
    users = parse_users(args.users, dataset, idmap, args.by_index)
    user_emb, item_emb = propagated(loaded, dataset, device_named(args.device), args.graph)
    for u, (items, scores) in zip(users, top_k(user_emb, item_emb, users, dataset.train, args.topk)):
        name = f"{idmap['users'][u]} (index {u})" if idmap else str(u)
        line = f"user {name}: {_format_items(items, idmap)}"
        if args.scores:
            line += "  [scores: " + " ".join(f"{s:.4f}" for s in scores) + "]"
        print(line)
    return 0


def cmd_evaluate(args) -> int:
    loaded = load_model_file(args.checkpoint, args.role)
    dataset = load_data(loaded, args)
    split = dataset.split(args.split)
    topk = args.topk or int(loaded.flags.get("topk", default_flags().topk))
    batch = args.tstBat or int(loaded.flags.get("tstBat", default_flags().tstBat))
    if topk <= 0 or batch <= 0:
        raise ConfigError(f"--topk and --tstBat must be positive integers, got {topk} and {batch}")
    device = device_named(args.device)
    evaluator = Evaluator(dataset.train, split, topk, batch, device)  # checks --topk against the item count
    user_emb, item_emb = propagated(loaded, dataset, device, args.graph)
    result = evaluator.evaluate(user_emb, item_emb)
    n_users = int(evaluator.users.numel())
    print(f"{args.split}: Recall@{topk} = {result['Recall']:.5f}, NDCG@{topk} = {result['NDCG']:.5f} "
          f"({n_users} users, {loaded.ckpt.path})")
    recorded = Report.recorded_metrics(loaded.meta).get(args.split)
    if recorded and topk == int(loaded.flags.get("topk", topk)):
        print(f"{args.split} as logged in training: Recall@{topk} = {recorded['Recall']:.5f}, "
              f"NDCG@{topk} = {recorded['NDCG']:.5f}")
    popularity = None
    if args.baseline == "popularity":
        popularity = evaluator.evaluate(*popularity_embeddings(dataset.train, device))
        print(f"{args.split}, popularity ranking: Recall@{topk} = {popularity['Recall']:.5f}, "
              f"NDCG@{topk} = {popularity['NDCG']:.5f}")
    if args.json:
        Report.save_report(args.json, {"checkpoint": loaded.ckpt.path, "split": args.split, "topk": topk,
                                       "users": n_users, "Recall": result["Recall"], "NDCG": result["NDCG"],
                                       "recorded": recorded, "popularity": popularity})
    return 0


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
    _data_options(p, graph=False)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("plot", help="training curves and the pruning trade-off from history files (PNG)")
    p.add_argument("histories", nargs="+", metavar="HISTORY", help=".his files (JSON lines or record files)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for training.png and tradeoff.png")
    p.add_argument("--topk", type=int, default=20, help="K in the axis labels (default: %(default)s)")
    p.add_argument("--prefix", default="", help="prefix of the PNG file names")
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
    p.set_defaults(func=cmd_curve)

    p = sub.add_parser("compare", help="compare the outputs of two runs (every tensor of their .mod/_last.ckpt "
                                       "files, every history row but its timings); exit 1 when they differ")
    p.add_argument("a", metavar="FOLDER_A", help="folder of the first run's outputs")
    p.add_argument("b", metavar="FOLDER_B", help="folder of the second run's outputs")
    p.set_defaults(func=cmd_compare)


def _add_model_commands(sub):
    """The commands that load a model: export, recommend, evaluate."""
    p = sub.add_parser("export", help="write the compact export (surviving edges + non-zero entries)")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--overwrite", action="store_true", help="replace OUT when it exists")
    _data_options(p)
    p.set_defaults(func=cmd_export)

    for name, text in (("recommend", "top-K items for some users, their train items excluded"),
                       ("evaluate", "Recall@K and NDCG@K on a split, as the training tool computes them")):
        p = sub.add_parser(name, help=text)
        p.add_argument("checkpoint", metavar="CHECKPOINT", help="full checkpoint, published .mod or compact export")
        _data_options(p)
        p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu",
                       help="where to propagate and score (default: %(default)s)")
        if name == "recommend":
            p.add_argument("--users", required=True, help="comma-separated user ids (original ids when the dataset "
                                                          "has idmap.json, else row indices)")
            p.add_argument("--by_index", action="store_true", help="--users are row indices even with an id map")
            p.add_argument("--topk", type=int, default=20,
                           help="items per user (default: %(default)s); a user gets fewer when fewer items are "
                                "left once their train items are excluded (K above the item count is not an error)")
            p.add_argument("--scores", action="store_true", help="also print the scores")
            p.set_defaults(func=cmd_recommend)
        else:
            p.add_argument("--split", choices=("test", "val"), default="test", help="(default: %(default)s)")
            p.add_argument("--topk", type=int, default=None, help="K (default: the checkpoint's --topk, else 20)")
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
