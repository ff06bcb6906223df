"""PNG plots of training histories (matplotlib, headless Agg backend).

Histories are the rows the training tools write (``Utils.training.Training.RunLog``): one JSON
object per epoch with ``stage``, ``epoch``, ``metrics`` ({'test': {'Recall', 'NDCG'},
'val': …} on evaluated epochs) and, in stages 2–3, ``prn_run``, ``kind``,
``edge_kept_pct``, ``emb_kept_pct``. :func:`load_history` reads both the JSON-lines
``<his_save_path>.his`` and the record files ``<his_save_path>_<record>_E_M.his``
(``{"record": …, "history": rows}``).

* :func:`plot_training` — Recall@K and NDCG@K per epoch, one series per stage and
  pruning run, laid end to end on one epoch axis (test solid, validation dashed).
* :func:`time_curve` / :func:`plot_time_curve` — Recall@K of every evaluated epoch
  against the wall time spent so far (CSV lines or a PNG): time-to-quality.
* :func:`plot_tradeoff` — for each pruning run of the student, Recall@K at the run's
  best epoch (chosen on validation when the history has it, as the records are)
  against the % of edges kept and the % of embedding entries kept.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402  (after the backend choice)

from Utils.config import Config  # noqa: E402
from Utils.files.Atomic import os_error_reason  # noqa: E402
from Utils.files.Checkpoint import load_checkpoint  # noqa: E402
from Utils.runtime.Errors import ConfigError, DataError, UserError  # noqa: E402
from Utils.files.History import read_history  # noqa: E402

Rows = List[dict]
Histories = Union[Mapping[str, Rows], Sequence[str]]
STAGE_NAMES = {"teacher": "teacher", "middle_teacher": "intermediate", "student": "student"}
KIND_NAMES = {"Train Mask": "learned edge weights", "Fixed Mask": "fixed edge weights"}


# ----------------------------------------------------------------------------- reading
def _is_metrics(metrics) -> bool:
    """``{'test': {'Recall': x, 'NDCG': y}, …}``, as the training tools log an evaluated epoch."""
    return (isinstance(metrics, dict) and isinstance(metrics.get("test"), dict)
            and all(isinstance(m, dict) and all(isinstance(m.get(k), (int, float)) for k in ("Recall", "NDCG"))
                    for m in metrics.values()))


def load_history(path: str) -> Rows:
    """Rows of a history file (JSON lines or a record file). A missing file, a binary file
    (a PNG, a checkpoint) and rows that are not epochs of a history are :class:`DataError`."""
    try:
        rows = read_history(path, missing_ok=False)
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a history file: it is binary (a PNG or a checkpoint?), not the JSON "
                        "lines of a .his file") from None
    except OSError as exc:
        raise DataError(f"cannot read history file {path}: {exc.strerror or exc}") from None
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or "epoch" not in row:
            raise DataError(f"{path} is not a history file: row {number} is not an epoch row "
                            "(a JSON object with an 'epoch')")
        if "metrics" in row and not _is_metrics(row["metrics"]):
            raise DataError(f"{path}: row {number} has malformed metrics (expected "
                            "{'test': {'Recall': …, 'NDCG': …}, …})")
    return rows


def load_histories(paths: Iterable[str]) -> Dict[str, Rows]:
    """{label: rows} for several files; the label is the file name without ``.his``."""
    out: Dict[str, Rows] = {}
    for path in paths:
        label = os.path.basename(path)
        label = label[:-4] if label.endswith(".his") else label
        base, n = label, 2
        while label in out:
            label, n = f"{base} ({n})", n + 1
        out[label] = load_history(path)
    return out


def _as_histories(histories: Histories) -> Dict[str, Rows]:
    if isinstance(histories, Mapping):
        return dict(histories)
    return load_histories(histories)


def _series_key(row: dict) -> Tuple[str, Optional[int], str]:
    return row.get("stage", "?"), row.get("prn_run"), row.get("kind", "")


def _series_name(label: str, key: Tuple[str, Optional[int], str]) -> str:
    stage, run, kind = key
    name = STAGE_NAMES.get(stage, stage)
    if run is not None:
        name += f" run {run}"
    if kind == "Fixed Mask":
        name += " (fixed mask)"
    return f"{label}: {name}"


def _selection_split(rows: Rows, select_on: Optional[str]) -> str:
    if select_on:
        return select_on
    return "val" if any("val" in row.get("metrics", {}) for row in rows) else "test"


def check_out_dir(out_dir: str, prefix: str = "", names: Sequence[str] = ("training", "tradeoff")) -> str:
    """Create the output folder; a path that is an existing file (a .png, a .mod), or a
    plot name that is taken by something other than a file, is a :class:`ConfigError`
    raised before anything is written."""
    folder = out_dir or "."
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ConfigError(f"--out {out_dir} is an existing file, not a folder: the plots are written into a "
                          "folder (as training.png and tradeoff.png); nothing was written")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out_dir}: cannot create the folder ({exc.strerror or exc})") from None
    for name in names:
        path = os.path.join(folder, f"{prefix}{name}.png")
        if os.path.lexists(path) and not os.path.isfile(path):
            raise ConfigError(f"{path} exists and is not a file: cannot write the plot there")
    return folder


def _out_path(out_dir: str, prefix: str, name: str) -> str:
    return os.path.join(check_out_dir(out_dir, prefix, (name,)), f"{prefix}{name}.png")


def _save(fig, path: str) -> str:
    """Write ``fig`` to ``path`` through a temporary file beside it (never a half-written PNG);
    a folder that cannot be written (permissions, a read-only or full disk) is a one-line error."""
    tmp = f"{path}.{os.getpid()}.tmp.png"
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot write the plot {path}: {os_error_reason(exc, path)}") from None
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# ----------------------------------------------------------------------------- plots
def plot_training(histories: Histories, out_dir: str, topk: int = 20, prefix: str = "") -> str:
    """Recall@K and NDCG@K per epoch for each stage / pruning run; returns the PNG path.

    ``histories``: {label: rows} or history file paths, drawn in the given order on one
    epoch axis (each file and run after the previous one), test solid, validation dashed.
    """
    histories = _as_histories(histories)
    fig, axes = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    offset, n_series, boundaries = 0, 0, []
    for label, rows in histories.items():
        series: Dict[tuple, Dict[str, list]] = {}
        for index, row in enumerate(rows):
            if "metrics" not in row:
                continue
            points = series.setdefault(_series_key(row), {"x": [], "test": [], "val": []})
            points["x"].append(offset + index)
            for split in ("test", "val"):
                points[split].append(row["metrics"].get(split))
        for key, points in series.items():
            color = colors[n_series % len(colors)]
            n_series += 1
            for ax, metric in zip(axes, ("Recall", "NDCG")):
                for split, style in (("test", "-"), ("val", "--")):
                    values = [(x, m[metric]) for x, m in zip(points["x"], points[split]) if m is not None]
                    if not values:
                        continue
                    xs, ys = zip(*values)
                    name = _series_name(label, key) + (" (val)" if split == "val" else "")
                    ax.plot(xs, ys, style, color=color, marker="o" if len(xs) < 30 else None, markersize=3,
                            linewidth=1.5 if split == "test" else 1.0, label=name if metric == "Recall" else None)
        offset += len(rows)
        boundaries.append(offset)
    for ax, metric in zip(axes, ("Recall", "NDCG")):
        ax.set_ylabel(f"{metric}@{topk}")
        ax.grid(alpha=0.3)
        for x in boundaries[:-1]:
            ax.axvline(x - 0.5, color="grey", linewidth=0.8, linestyle=":")
    axes[-1].set_xlabel("epoch (stages and pruning runs laid end to end)")
    axes[0].set_title("Training: test (solid) and validation (dashed)")
    if n_series:
        axes[0].legend(fontsize=7, ncol=1 + n_series // 12, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        axes[0].text(0.5, 0.5, "no evaluated epochs", ha="center", transform=axes[0].transAxes)
    return _save(fig, _out_path(out_dir, prefix, "training"))


def _best_row(rows: Rows, split: str) -> dict:
    """The row with the highest Recall on ``split``, the latest among equals (records accept ≥)."""
    best = None
    for row in rows:
        value = row["metrics"].get(split, row["metrics"]["test"])["Recall"]
        if best is None or value >= best[0]:
            best = (value, row)
    return best[1]


def run_bests(rows: Rows, select_on: Optional[str] = None) -> List[dict]:
    """Per pruning run (and kind) of the student — of any pruned stage when there is no
    student — the row of its best epoch on ``select_on``."""
    pruned = [r for r in rows if r.get("prn_run") is not None and "metrics" in r]
    pruned = [r for r in pruned if r.get("stage") == "student"] or pruned
    split = _selection_split(pruned, select_on)
    groups: Dict[tuple, Rows] = {}
    for row in pruned:
        groups.setdefault(_series_key(row), []).append(row)
    return [_best_row(groups[k], split) for k in sorted(groups, key=lambda k: (k[1], k[2], k[0]))]


def summary_table(histories: Histories, select_on: Optional[str] = None,
                  extra: Optional[Tuple[List[str], Callable[[dict], List[str]]]] = None) -> List[str]:
    """A Markdown table, one line per stage / pruning run / kind of each history: the best
    epoch on the selection split, its kept percentages, validation and test Recall/NDCG,
    the best test Recall of any epoch (how the published tool selects), the epochs run and
    their wall time (training + evaluation), and the running total. ``extra`` = (column
    titles, function of the best row giving their cells) adds columns before the epochs run."""
    titles, cells = extra if extra is not None else ([], lambda row: [])
    lines = ["| history | model | edges kept | entries kept | best epoch | val Recall | val NDCG "
             "| test Recall | test NDCG | best test Recall (any epoch) | " + "".join(f"{t} | " for t in titles)
             + "epochs run | wall time | cumulative |",
             "|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(titles) + "---|---|---|"]
    cumulative = 0.0
    fmt = lambda m, k: f"{m[k]:.4f}" if m else "–"  # noqa: E731
    for label, rows in _as_histories(histories).items():
        groups: Dict[tuple, Rows] = {}
        for row in rows:
            groups.setdefault(_series_key(row), []).append(row)
        for key, group in groups.items():
            seconds = sum(r.get("seconds", 0.0) for r in group)
            cumulative += seconds
            evaluated = [r for r in group if "metrics" in r]
            if not evaluated:
                continue
            best = _best_row(evaluated, _selection_split(evaluated, select_on))
            val, test = best["metrics"].get("val"), best["metrics"]["test"]
            on_test = _best_row(evaluated, "test")["metrics"]["test"]
            lines.append(
                f"| {label} | {_series_name('', key)[2:]} | {best.get('edge_kept_pct', 100.0):.2f} % "
                f"| {best.get('emb_kept_pct', 100.0):.2f} % | {best['epoch']} | {fmt(val, 'Recall')} "
                f"| {fmt(val, 'NDCG')} | {fmt(test, 'Recall')} | {fmt(test, 'NDCG')} | {fmt(on_test, 'Recall')} | "
                + "".join(f"{cell} | " for cell in cells(best))
                + f"{len(group)} | {seconds / 60:.1f} min | {cumulative / 60:.1f} min |")
    return lines


def time_curve(histories: Histories) -> List[dict]:
    """Quality against wall time: one row per evaluated epoch of the histories, laid end
    to end in the given order (a pipeline's teacher, intermediate and student files).

    Each row: ``history`` (file label), ``model`` (stage / pruning run), ``epoch``, the
    kept percentages, ``wall_min`` (training + evaluation seconds of every epoch up to and
    including this one, over all earlier files too, in minutes) and the Recall / NDCG of
    each logged split (``test_Recall``, ``val_NDCG``, …).
    """
    out, seconds = [], 0.0
    for label, rows in _as_histories(histories).items():
        for row in rows:
            seconds += row.get("seconds", 0.0)
            if "metrics" not in row:
                continue
            point = {"history": label, "model": _series_name("", _series_key(row))[2:], "epoch": row["epoch"],
                     "edge_kept_pct": row.get("edge_kept_pct", 100.0), "emb_kept_pct": row.get("emb_kept_pct", 100.0),
                     "wall_min": seconds / 60}
            for split, metrics in row["metrics"].items():
                for name, value in metrics.items():
                    point[f"{split}_{name}"] = value
            out.append(point)
    return out


def curve_lines(points: List[dict]) -> List[str]:
    """:func:`time_curve`'s rows as CSV lines (header first); a split a row lacks is empty."""
    present = {k for p in points for k in p if k.split("_")[0] in ("test", "val")}
    order = [f"{split}_{name}" for split in ("val", "test") for name in ("Recall", "NDCG")]
    metric_keys = [k for k in order if k in present] + sorted(present - set(order))
    header = ["history", "model", "epoch", "edge_kept_pct", "emb_kept_pct", "wall_min", *metric_keys]
    lines = [",".join(header)]
    for p in points:
        cells = [p["history"], p["model"], str(p["epoch"]), f"{p['edge_kept_pct']:.2f}", f"{p['emb_kept_pct']:.2f}",
                 f"{p['wall_min']:.2f}", *(f"{p[k]:.5f}" if k in p else "" for k in metric_keys)]
        lines.append(",".join(cells))
    return lines


def plot_time_curve(points: List[dict], out_dir: str, topk: int = 20, prefix: str = "") -> str:
    """Test Recall@K (solid) and validation Recall@K (dashed, when logged) against wall
    minutes, one colour per stage / pruning run; writes ``curve.png`` in ``out_dir``."""
    path = _out_path(out_dir, prefix, "curve")
    fig, ax = plt.subplots(figsize=(11, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    series: Dict[Tuple[str, str], List[dict]] = {}
    for p in points:
        series.setdefault((p["history"], p["model"]), []).append(p)
    for n, ((label, model), rows) in enumerate(series.items()):
        color = colors[n % len(colors)]
        xs = [r["wall_min"] for r in rows]
        ax.plot(xs, [r["test_Recall"] for r in rows], "-", color=color, marker="o" if len(xs) < 30 else None,
                markersize=3, label=f"{label}: {model}")
        if all("val_Recall" in r for r in rows):
            ax.plot(xs, [r["val_Recall"] for r in rows], "--", color=color, linewidth=0.8)
    ax.set_xlabel("wall time, training + evaluation (min)")
    ax.set_ylabel(f"Recall@{topk}")
    ax.grid(alpha=0.3)
    ax.set_title("Quality against wall time: test (solid), validation (dashed)")
    if series:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.text(0.5, 0.5, "no evaluated epochs", ha="center", transform=ax.transAxes)
    return _save(fig, path)


def _reference_lines(histories: Mapping[str, Rows], split: str) -> List[Tuple[str, float]]:
    """Test Recall at the best epoch (on ``split``) of the teacher and intermediate histories."""
    out = []
    for label, rows in histories.items():
        for stage in ("teacher", "middle_teacher"):
            rows_s = [r for r in rows if r.get("stage") == stage and "metrics" in r]
            if rows_s:
                out.append((f"{label}: {STAGE_NAMES[stage]}", _best_row(rows_s, split)["metrics"]["test"]["Recall"]))
    return out


def plot_tradeoff(histories: Histories, out_dir: str, topk: int = 20, prefix: str = "",
                  select_on: Optional[str] = None) -> Optional[str]:
    """Recall@K of each pruning run's best epoch against % edges kept and % embedding entries kept.

    The best epoch is chosen on ``select_on`` (default: validation when the history has
    it, else test); test Recall is drawn solid, the selection split's dashed. The
    teacher's and intermediate model's best test Recall, when their histories are
    given, are horizontal reference lines. Returns the PNG path, or None when no
    history has pruning runs.
    """
    histories = _as_histories(histories)
    all_rows = [row for rows in histories.values() for row in rows]
    bests = run_bests(all_rows, select_on)
    if not bests:
        return None
    split = _selection_split([r for r in all_rows if r.get("prn_run") is not None], select_on)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    groups: Dict[str, List[dict]] = {}
    for row in bests:
        groups.setdefault(row.get("kind", ""), []).append(row)
    references = _reference_lines(histories, split)
    for ax, field, xlabel in zip(axes, ("edge_kept_pct", "emb_kept_pct"),
                                 ("edges kept (%)", "embedding entries kept (%)")):
        for kind, rows in groups.items():
            xs = [r[field] for r in rows]
            name = KIND_NAMES.get(kind, kind or "run")
            ax.plot(xs, [r["metrics"]["test"]["Recall"] for r in rows], "-o", label=f"{name}: test")
            if split != "test":
                ax.plot(xs, [r["metrics"][split]["Recall"] for r in rows], "--s", markersize=4,
                        label=f"{name}: {split} (selects)")
            for r, x in zip(rows, xs):
                ax.annotate(f"r{r['prn_run']}", (x, r["metrics"]["test"]["Recall"]), textcoords="offset points",
                            xytext=(3, 4), fontsize=7)
        for (name, value), style in zip(references, (":", "-.", ":", "-.")):
            ax.axhline(value, color="grey", linestyle=style, linewidth=1, label=f"{name} (test)")
        ax.set_xlabel(xlabel)
        ax.invert_xaxis()  # pruning proceeds to the right
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"Recall@{topk} at the run's best epoch")
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(f"Pruning trade-off (best epoch of each run chosen on {split})")
    return _save(fig, _out_path(out_dir, prefix, "tradeoff"))


def plot_all(histories: Histories, out_dir: str, topk: int = 20, prefix: str = "") -> List[str]:
    """Both plots; returns the PNG paths written (the trade-off only when there are pruning runs)."""
    histories = _as_histories(histories)
    check_out_dir(out_dir, prefix)  # before the first plot is written
    paths = [plot_training(histories, out_dir, topk, prefix)]
    tradeoff = plot_tradeoff(histories, out_dir, topk, prefix)
    if tradeoff:
        paths.append(tradeoff)
    return paths


def supervisor_histories(middle_checkpoint: str) -> List[str]:
    """History files of the stages before a student: [teacher .his, intermediate .his] as far as
    the checkpoints' recorded configs lead (their history file, the intermediate model's teacher)
    and the files exist."""
    found: List[str] = []
    path: Optional[str] = middle_checkpoint
    for _ in range(2):  # intermediate model, then its teacher
        try:
            his, teacher = Config.recorded_upstream(load_checkpoint(path).meta)
        except UserError:
            break
        if his and os.path.isfile(his):
            found.insert(0, his)
        path = teacher
        if not path:
            break
    return found


def plot_after_training(his_save_path: str, middle_checkpoint: Optional[str] = None, topk: int = 20,
                        print_line=print) -> List[str]:
    """The end-of-stage-3 hook: both plots beside the history, ``<his_save_path>_training.png``
    and ``<his_save_path>_tradeoff.png``, drawn from the student's history and, when they
    can be found through ``middle_checkpoint``, the teacher's and intermediate model's.
    Training is over when this runs, so a failure is reported in one line, not raised."""
    his = his_save_path[:-4] if his_save_path.endswith(".his") else his_save_path
    try:
        sources = (supervisor_histories(middle_checkpoint) if middle_checkpoint else []) + [his + ".his"]
        paths = plot_all(sources, os.path.dirname(os.path.abspath(his)), topk, os.path.basename(his) + "_")
    except Exception as exc:  # noqa: BLE001 - the run's results are saved; never fail it for a plot
        print_line(f"Plots not drawn: {type(exc).__name__}: {exc}")
        return []
    for path in paths:
        print_line(f"Plot saved: {path}")
    return paths
