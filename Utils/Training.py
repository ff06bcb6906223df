"""The training/evaluation loop and record keeping shared by all three stages.

* :func:`train_epoch` — one pass over freshly sampled, shuffled BPR triples, calling a
  stage's loss function per batch and stepping the optimiser; returns mean loss parts.
* :class:`EvalSuite` — propagates ONCE per evaluation and scores every split it holds.
* :class:`Record` — a "best so far" record: its metrics, epoch, run, sparsity, and the
  checkpoint it writes when it improves.
* :class:`RunLog` — console lines in the published format plus a JSON-lines history.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Optional

import torch

from Utils import Parallel
from Utils.Checkpoint import atomic_write, os_error_reason
from Utils.Errors import (CheckpointError, DataError, NonFiniteError, discard_closed_stdout, interrupt_exit_code,
                          stdout_may_drop)
from Utils.Parallel import SOLO, Group


# ----------------------------------------------------------------------------- logging
class RunLog:
    """Timestamped console lines (the published ``log()`` format) and a history file.

    ``history_path`` receives one JSON object per line per epoch (loss parts, metrics,
    sparsity, seconds). :meth:`reset_history` starts it afresh (holding a resumed run's
    rows first); :meth:`record` adds one row per epoch. The file is rewritten whole and
    atomically each time (a temporary file, then a rename), so a kill or a full disk
    leaves the previous complete file, never a partial line.
    """

    def __init__(self, history_path: Optional[str] = None, stream=None):
        self.stream = stream or sys.stdout
        self.interactive = sys.stderr.isatty()  # progress lines only on a terminal, never in a tee'd log
        self.history_path = history_path
        self.rows: list = []  # this invocation's history rows, also kept in memory
        if history_path:
            folder = os.path.dirname(os.path.abspath(history_path))
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as exc:
                raise CheckpointError(f"cannot create {folder} for the history {history_path}: "
                                      f"{os_error_reason(exc, folder)}") from None

    def line(self, message: str, stamp: bool = True) -> None:
        """Print one console line. When the console's reader is gone (``| tee`` ended by the
        same Ctrl-C), the lines go to stderr from then on instead of raising BrokenPipeError."""
        prefix = f"{datetime.datetime.now()}: " if stamp else ""
        try:
            print(prefix + message, file=self.stream, flush=True)
        except BrokenPipeError:
            if self.stream is sys.stderr:
                return
            if self.stream is sys.stdout:
                discard_closed_stdout()
            self.stream = sys.stderr
            self.line(message, stamp)

    def progress(self, message: str) -> None:
        """A transient progress line, only on an interactive terminal (never in a tee'd log)."""
        if self.interactive:
            print("\r" + message + "\033[K", end="", file=sys.stderr, flush=True)

    def end_progress(self) -> None:
        if self.interactive:
            print("\r\033[K", end="", file=sys.stderr, flush=True)

    def reset_history(self, rows=()) -> None:
        """Start the history file afresh, holding ``rows`` (those of a resumed run)."""
        self.rows = list(rows)
        self._write()

    def _write(self) -> None:
        if self.history_path:
            text = "".join(json.dumps(row) + "\n" for row in self.rows)
            atomic_write(self.history_path, "w", lambda handle: handle.write(text), "history")

    def history_rows(self) -> list:
        return list(self.rows)

    def record(self, row: Dict) -> None:
        self.rows.append(row)
        self._write()


def read_history(path: str, missing_ok: bool = True) -> list:
    """The rows of a history file: the JSON lines :meth:`RunLog.record` writes, or a record
    file ``{"record": …, "history": rows}``. A missing file is no rows (an error when not
    ``missing_ok``); a line that is not a JSON object is a :class:`DataError` naming it."""
    if not path or not os.path.isfile(path):
        if missing_ok:
            return []
        raise DataError(f"history file not found: {path}")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict) and isinstance(whole.get("history"), list):
        return whole["history"]
    if isinstance(whole, list):
        return whole
    if isinstance(whole, dict):  # a JSON-lines file of a single row
        return [whole]
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not a history row ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: not a history row (expected a JSON object)")
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- training
def train_epoch(loss_fn: Callable, batches: Iterable, n_batches: int, optimizer: torch.optim.Optimizer,
                device, log: Optional[RunLog] = None, group: Group = SOLO) -> Dict[str, float]:
    """One epoch: for each (ancs, poss, negs) batch, ``loss_fn`` returns a dict of scalar
    tensors with a ``'total'`` entry; step on it. Returns the mean of every part.

    A part that is NaN or infinite raises :class:`NonFiniteError` before the step, so the
    weights stay those of the last finite step.

    ``group`` (a data-parallel run, :mod:`Utils.Parallel`): ``loss_fn`` returns this process's
    share of the batch's loss; the parts and the gradients are summed over the processes
    before the check and the step, so every process takes the same step."""
    params = [p for pg in optimizer.param_groups for p in pg["params"]]
    sums: Dict[str, float] = {}
    count = 0
    for step, (ancs, poss, negs) in enumerate(batches):
        ancs, poss, negs = (torch.from_numpy(a).to(device) for a in (ancs, poss, negs))
        parts = loss_fn(ancs, poss, negs)
        # one host read per step for all parts (on a GPU, one synchronisation instead of one per part)
        stacked = group.sum_(torch.stack([value.detach() for value in parts.values()]))
        values = dict(zip(parts, stacked.tolist()))
        bad = [name for name, value in values.items() if not math.isfinite(value)]
        if bad:  # stop before the step spreads it to the weights; name a part rather than the total
            name = next((name for name in bad if name != "total"), "total")
            raise NonFiniteError(f"loss part '{name}' is {values[name]} at batch {step + 1}/{n_batches}")
        optimizer.zero_grad(set_to_none=True)
        parts["total"].backward()
        group.sum_gradients(params)
        optimizer.step()
        for name, value in values.items():
            sums[name] = sums.get(name, 0.0) + value
        count += 1
        if log is not None and log.interactive:
            log.progress(f"Step {step + 1}/{n_batches}: loss = {values['total']:.4f}")
    if log is not None:
        log.end_progress()
    return {name: total / max(1, count) for name, total in sums.items()}


class EvalSuite:
    """Evaluators for the test split and, when present, the validation split.

    ``select_on`` names the split whose Recall chooses checkpoints and "best" records.
    """

    def __init__(self, evaluators: Dict[str, "object"], select_on: str, log: Optional[RunLog] = None,
                 group: Group = SOLO):
        if select_on not in evaluators:
            raise ValueError(f"cannot select on {select_on!r}: no such split")
        self.evaluators = evaluators
        self.select_on = select_on
        self.log = log
        self.group = group

    @torch.no_grad()
    def evaluate(self, embed: Callable) -> Dict[str, Dict[str, float]]:
        """``embed()`` returns (user_emb, item_emb); it is called once for all splits."""
        users, items = embed()
        if not (bool(torch.isfinite(users).all()) and bool(torch.isfinite(items).all())):
            raise NonFiniteError("the model's outputs hold NaN or infinite values (its weights diverged)")
        results = {}
        for name, ev in self.evaluators.items():
            progress = None
            if self.log is not None and self.log.interactive:
                progress = lambda done, total, name=name: self.log.progress(  # noqa: E731
                    f"Evaluating {name}: {done}/{total} users")
            results[name] = ev.evaluate(users, items, progress, self.group)
        if self.log is not None:
            self.log.end_progress()
        return results


def fit(*, n_epochs: int, start_epoch: int, tst_every: int, train_one_epoch: Callable[[], Dict[str, float]],
        evaluate: Callable[[], Dict[str, Dict[str, float]]], on_evaluated: Callable, log: RunLog,
        select_on: str, row_info: Optional[Dict] = None, patience: int = 0,
        stopper: Optional["EarlyStopper"] = None,
        on_epoch_end: Optional[Callable[[int, bool], None]] = None) -> Optional[Dict[str, Dict[str, float]]]:
    """The epoch loop of every stage: train, evaluate every ``tst_every`` epochs, log, record.

    ``on_evaluated(epoch, results)`` keeps the stage's records (and saves checkpoints,
    logging "Model Saved"); it returns lines printed after the epoch's Test line.
    Console lines keep the published formats. Returns the results of a final
    evaluation (reused from the last epoch when that one was evaluated).

    ``patience`` > 0 (``--patience``): stop after that many evaluations in a row without a
    new best Recall on ``select_on`` (a new best is ≥ the best so far of this call, the
    rule of the records); one line says so. The stage's records and carried state are
    kept by ``on_evaluated`` at the best point, so stopping early loses nothing.

    A :class:`NonFiniteError` from training or evaluation is raised again with the stage,
    pruning run and epoch in its message: nothing of that epoch is recorded or saved.

    ``stopper`` continues an early-stopping count (a resumed run); ``on_epoch_end(epoch, stopped)``
    is called after each epoch is logged and recorded (``stopped``: early stopping ends the loop
    after it), where the stage writes its resume file.
    """
    results = None
    stopper = stopper or EarlyStopper(patience)
    for epoch in range(start_epoch, n_epochs):
        elapsed = timer()
        try:
            parts = train_one_epoch()
            train_s = elapsed()
            log.line(f"Epoch {epoch}/{n_epochs}, Train: Loss = {parts['total']:.4f}, "
                     f"preLoss = {parts['main']:.4f}  ")
            evaluated = evaluate() if epoch % tst_every == 0 else None
        except NonFiniteError as err:
            where = ", ".join(f"{k} {v}" for k, v in (row_info or {}).items() if k in ("stage", "prn_run"))
            raise NonFiniteError(f"{where + ', ' if where else ''}epoch {epoch}: {err}; stopped, the records "
                                 "and checkpoints of the last finite evaluation are kept") from None
        row = dict(row_info or {}, epoch=epoch, loss=parts, train_seconds=train_s)
        results = evaluated
        if results is not None:
            row["metrics"] = results
            after = on_evaluated(epoch, results)
            log.line(f"Epoch {epoch}/{n_epochs}, Test: {format_metrics(results['test'])}  ")
            if select_on != "test":
                log.line(f"Epoch {epoch}/{n_epochs}, Val: {format_metrics(results[select_on])}  ")
            for text in after:
                log.line(text, stamp=False)
        row["seconds"] = elapsed()
        log.record(row)
        log.line(f"Epoch {epoch}/{n_epochs}, Time: train {train_s:.1f} s, total {row['seconds']:.1f} s")
        stop = results is not None and stopper.should_stop(results[select_on]["Recall"], epoch)
        if stop:
            log.line(f"Early stop after epoch {epoch}/{n_epochs}: no new best {select_on} Recall in "
                     f"{stopper.patience} evaluations (best {stopper.best:.5f} at epoch {stopper.best_epoch})")
        if on_epoch_end is not None:
            on_epoch_end(epoch, stop)
        if stop:
            break
    if results is None:
        results = evaluate()
    log.line(f"Epoch {n_epochs}/{n_epochs}, Test: {format_metrics(results['test'])}  ")
    return results


class EarlyStopper:
    """``--patience``: counts evaluations since the last new best (≥ the best so far)."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best: Optional[float] = None
        self.best_epoch = -1
        self.since_best = 0

    def should_stop(self, value: float, epoch: int) -> bool:
        if self.best is None or value >= self.best:
            self.best, self.best_epoch, self.since_best = value, epoch, 0
            return False
        self.since_best += 1
        return 0 < self.patience <= self.since_best

    def state(self) -> Dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "since_best": self.since_best}

    def load(self, state: Dict) -> "EarlyStopper":
        self.best, self.best_epoch, self.since_best = state["best"], state["best_epoch"], state["since_best"]
        return self


# ----------------------------------------------------------------------------- records
@dataclass
class Record:
    """One "best" record (docs/method.md#records; stage 1 keeps just one).

    With ``gap`` set it is a "2nd best" record: it accepts the latest point whose metric
    is ≥ (1 − gap)·best of ``reference`` (the matching best record), favouring sparser models.
    """

    title: str
    suffix: str = ""
    gap: Optional[float] = None
    reference: Optional["Record"] = None
    value: float = 0.0
    metrics: Dict[str, Dict[str, float]] = field(default_factory=dict)
    epoch: int = 0
    prn_run: int = 0
    kind: str = "default"
    edge_pct: float = 1.0
    emb_pct: float = 1.0
    path: Optional[str] = None

    def accepts(self, value: float) -> bool:
        if self.gap is None:
            return value >= self.value
        return value >= (1.0 - self.gap) * self.reference.value

    def update(self, value: float, metrics, epoch: int, prn_run: int = 0, kind: str = "default",
               edge_pct: float = 100.0, emb_pct: float = 100.0) -> bool:
        if not self.accepts(value):
            return False
        self.value, self.metrics, self.epoch = value, metrics, epoch
        self.prn_run, self.kind, self.edge_pct, self.emb_pct = prn_run, kind, edge_pct, emb_pct
        return True

    def as_dict(self) -> Dict:
        return {"title": self.title, "value": self.value, "metrics": self.metrics, "epoch": self.epoch,
                "prn_run": self.prn_run, "kind": self.kind, "edge_pct": self.edge_pct,
                "emb_pct": self.emb_pct, "path": self.path}

    def restore(self, saved: Dict) -> "Record":
        """Take back the values of :meth:`as_dict` (a resumed run)."""
        for name in ("value", "metrics", "epoch", "prn_run", "kind", "edge_pct", "emb_pct", "path"):
            setattr(self, name, saved[name])
        return self


def timer() -> Callable[[], float]:
    start = time.perf_counter()
    return lambda: time.perf_counter() - start


def format_metrics(metrics: Dict[str, float]) -> str:
    return f"Recall = {metrics['Recall']:.4f}, NDCG = {metrics['NDCG']:.4f}"


def open_run(args):
    """The opening every stage shares: the device, the process group (:mod:`Utils.Parallel`:
    one process unless started by torchrun), seeds, the log with the args dump and "Start".

    Returns ``(device, log, group)``. Only rank 0 writes the console log and the history;
    the other processes' log lines go nowhere."""
    import Params
    from Utils import Runtime

    device = Runtime.select_device(args)
    group = Parallel.join(device)
    Runtime.seed_everything(args.seed)
    if group.lead:
        log = RunLog(Params.history_file(args.his_save_path))
    else:
        log = RunLog(None, stream=open(os.devnull, "w"))
        log.interactive = False
    log.line(Params.format_args(args), stamp=False)
    if group.world > 1:
        log.line(f"Data-parallel run: {group.world} processes ({torch.distributed.get_backend()})", stamp=False)
    log.line("Start")
    return device, log, group


def run_stage(stage, log: RunLog, group: Group = SOLO) -> int:
    """Run a built stage (``stage.run()``), then print its ``summary()`` lines; return the exit status.

    Ctrl-C or SIGTERM (:class:`Utils.Errors.Terminated`) ends the stage as its last epoch
    would: what was saved stays, the summary is printed after ``stage.interrupted_line``,
    and the status is 130 / 143. The same Ctrl-C may kill the reader of a piped stdout
    (``| tee log``) before it reads them, so these lines then go to stderr as well
    (:func:`print_summary`). In a data-parallel run every process has checked its
    inputs and earlier outputs (while building the stage) before rank 0 writes anything.
    """
    try:
        group.barrier()
        stage.run()
        group.barrier()  # no process tears the group down while another still talks in it
    except KeyboardInterrupt as err:
        print_summary(stage, log, interrupted=True)
        return interrupt_exit_code(err)
    finally:
        group.close()
    print_summary(stage, log)
    return 0


def print_summary(stage, log: RunLog, interrupted: bool = False) -> None:
    """The stage's ``summary()`` lines (after ``stage.interrupted_line`` when ``interrupted``) on
    the console log. After an interrupt they are also printed on stderr when the log writes to a
    pipe that may drop them (:func:`Utils.Errors.stdout_may_drop`): the best record always
    reaches the user, at worst twice (when tee survived, on a terminal that shows both)."""
    lines = ([(stage.interrupted_line, True)] if interrupted else []) + [(text, False) for text in stage.summary()]
    echo = interrupted and stdout_may_drop()
    for text, stamp in lines:
        log.line(text, stamp=stamp)
        if echo and log.stream is sys.stdout:  # (once stdout broke, RunLog.line writes to stderr itself)
            print(text, file=sys.stderr, flush=True)


def build_eval_suite(dataset, topk: int, batch_users: int, select_on: str, device,
                     log: Optional[RunLog] = None, group: Group = SOLO) -> EvalSuite:
    """Evaluators for test (always) and validation (when the dataset has it)."""
    from Utils.Metrics import Evaluator

    evaluators = {"test": Evaluator(dataset.train, dataset.test, topk, batch_users, device)}
    if dataset.val is not None:
        evaluators["val"] = Evaluator(dataset.train, dataset.val, topk, batch_users, device)
    return EvalSuite(evaluators, select_on, log, group)
