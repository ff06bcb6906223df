"""The training/evaluation loop and record keeping shared by all three stages.

* :class:`Stage` — the epoch loop every stage runs (:meth:`Stage.fit`: train, evaluate,
  keep the records, log, stop early, write the resume file) and what its files hold;
  :class:`Utils.training.Teacher.TeacherStage` and :class:`Utils.training.Distill.DistillStage` fill it in.
* :func:`train_epoch` — one pass over freshly sampled, shuffled BPR triples, calling a
  stage's loss function per batch and stepping the optimiser; returns mean loss parts.
* :func:`mean_bpr_gradient` — the BPR gradient of the layer-0 tables over an epoch's triples
  (the taylor entry score of a pruning step).
* :class:`EvalSuite` — propagates ONCE per evaluation and scores every split it holds.
* :class:`Record` — a "best so far" record: its metrics, epoch, run, sparsity, and the
  checkpoint it writes when it improves.
* :class:`RunLog` — console lines in the published format plus a JSON-lines history;
  :class:`Progress` — how far a long epoch or evaluation has gone, while it runs.
* :func:`open_run` / :func:`run_stage` — what an entry point does before and around a stage.
"""
from __future__ import annotations

import contextlib
import datetime
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional

import numpy as np
import torch

import DataHandler as dh

from Utils.runtime import Parallel, Runtime
from Utils.config import Config
from Utils.config.Config import recorded_flags
from Utils.files import History, Resume
from Utils.runtime.Errors import (NonFiniteError, discard_closed_stdout, interrupt_exit_code,
                          stdout_may_drop)
from Utils.objective.Losses import bpr_loss
from Utils.runtime.Parallel import SOLO, Group
from Utils.training.Metrics import Evaluator


# ----------------------------------------------------------------------------- logging
class RunLog:
    """Timestamped console lines (the published ``log()`` format) and a history file.

    ``history_path`` receives one JSON object per line per epoch (loss parts, metrics,
    sparsity, seconds). :meth:`reset_history` starts it afresh (holding a resumed run's
    rows first); :meth:`record` adds one row per epoch. The file is rewritten whole and
    atomically each time (a temporary file, then a rename), so a kill or a full disk
    leaves the previous complete file, never a partial line.
    """

    PROGRESS_SECONDS = 30.0  # at most one plain progress line per this many seconds in a log,
    FIRST_PROGRESS_SECONDS = 15.0  # the first one this long after the run's log opened

    def __init__(self, history_path: Optional[str] = None, stream=None, clock: Callable[[], float] = time.monotonic):
        self.stream = stream or sys.stdout
        self.interactive = sys.stderr.isatty()  # a live progress counter on the terminal's stderr
        self.plain_progress = not _isatty(self.stream)  # the console read by | tee or a file: plain lines
        self.clock = clock
        self.last_plain = clock() - (self.PROGRESS_SECONDS - self.FIRST_PROGRESS_SECONDS)
        self._live = False
        self.history_path = history_path
        self.rows: list = []  # this invocation's history rows, also kept in memory
        # (its folder is made, and tested, with the other outputs' by Resume.check_output_paths)

    def line(self, message: str, stamp: bool = True) -> None:
        """Print one console line. When the console's reader is gone (``| tee`` ended by the
        same Ctrl-C), the lines go to stderr from then on instead of raising BrokenPipeError."""
        prefix = f"{datetime.datetime.now()}: " if stamp else ""
        if self._live:  # the live counter sits on the terminal's current line: clear it first
            self.end_progress()
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
            self._live = True

    def end_progress(self) -> None:
        if self.interactive and self._live:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
        self._live = False

    def start(self, label: str, total: int) -> "Progress":
        """A :class:`Progress` of ``total`` steps named ``label`` (e.g. 'train step')."""
        return Progress(self, label, total)

    def reset_history(self, rows=()) -> None:
        """Start the history file afresh, holding ``rows`` (those of a resumed run)."""
        self.rows = list(rows)
        self._write()

    def _write(self) -> None:
        if self.history_path:
            History.write_rows(self.history_path, self.rows)

    def history_rows(self) -> list:
        return list(self.rows)

    def record(self, row: Dict) -> None:
        self.rows.append(row)
        self._write()


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """How far one long phase (an epoch's batches, an evaluation's users) has gone, while it runs.

    On a terminal, a live counter on stderr after every step (steps done, rate, time left); in a
    console that is not a terminal (``| tee``, a file) a plain line at most every
    :attr:`RunLog.PROGRESS_SECONDS`, the first :attr:`RunLog.FIRST_PROGRESS_SECONDS` after the run's
    log opened (a sign of life in a log someone is watching):
    ``Progress: <label> i/n, E s elapsed, about L s left``. The published lines are unchanged."""

    def __init__(self, log: RunLog, label: str, total: int):
        self.log, self.label, self.total = log, label, int(total)
        self.started = log.clock()

    def update(self, done: int, detail: str = "") -> None:
        log = self.log
        now = log.clock()
        elapsed = max(now - self.started, 1e-9)
        left = (self.total - done) * elapsed / max(done, 1)
        if log.interactive:
            rate = done / elapsed
            speed = f"{rate:.1f}/s" if rate >= 1 else f"{1 / max(rate, 1e-9):.1f} s each"
            log.progress(f"{self.label} {done}/{self.total}, {speed}, {left:.0f} s left{detail}")
        if log.plain_progress and now - log.last_plain >= log.PROGRESS_SECONDS:
            log.last_plain = now
            if log.interactive:  # the same console also holds the live counter
                log.end_progress()
            log.line(f"Progress: {self.label} {done}/{self.total}, {elapsed:.0f} s elapsed, about {left:.0f} s left")

    def of_total(self, done: int, total: int) -> None:
        """:meth:`update` for a caller that reports the total with each step (``Evaluator.evaluate``)."""
        self.total = int(total)
        self.update(done)

    def close(self) -> None:
        self.log.end_progress()


# ----------------------------------------------------------------------------- training
def train_epoch(loss_fn: Callable, batches: Iterable, n_batches: int, optimizer: torch.optim.Optimizer,
                device, log: Optional[RunLog] = None, group: Group = SOLO) -> Dict[str, float]:
    """One epoch: for each (ancs, poss, negs) batch, ``loss_fn`` returns a dict of scalar
    tensors with a ``'total'`` entry; step on it. Returns the mean of every part.

    A part that is NaN or infinite raises :class:`NonFiniteError` before the step, so the
    weights stay those of the last finite step.

    ``group`` (a data-parallel run, :mod:`Utils.runtime.Parallel`): ``loss_fn`` returns this process's
    share of the batch's loss; the parts and the gradients are summed over the processes
    before the check and the step, so every process takes the same step."""
    params = [p for pg in optimizer.param_groups for p in pg["params"]]
    sums: Dict[str, float] = {}
    count = 0
    progress = log.start("train step", n_batches) if log is not None else None
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
        if progress is not None:
            progress.update(step + 1, f", loss {values['total']:.4f}")
    if progress is not None:
        progress.close()
    return {name: total / max(1, count) for name, total in sums.items()}


def mean_bpr_gradient(model: torch.nn.Module, graph, triples, device, chunk: int = 1 << 16) -> torch.Tensor:
    """N×d gradient of the BPR loss, averaged over ``triples`` (ancs, poss, negs int64 arrays,
    all of an epoch's), with respect to the layer-0 tables [uEmbeds; iEmbeds] at their values
    now; nothing is stepped. One propagation forward and back: the loss is taken ``chunk``
    triples at a time on a detached copy of the outputs, whose summed gradient then goes back
    through propagation once (the numbers of one backward pass over the whole epoch)."""
    total = len(triples[0])
    with torch.enable_grad():
        users, items = model(graph)
        outputs = [users.detach().requires_grad_(), items.detach().requires_grad_()]
        for start in range(0, total, chunk):
            ancs, poss, negs = (torch.from_numpy(a[start:start + chunk]).to(device) for a in triples)
            bpr_loss(outputs[0][ancs], outputs[1][poss], outputs[1][negs], total=total).backward()
        grads = torch.autograd.grad([users, items], [model.uEmbeds, model.iEmbeds],
                                    grad_outputs=[out.grad for out in outputs])
    return torch.cat(grads, dim=0)


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
            shown = self.log.start(f"evaluate {name}: users", 0) if self.log is not None else None
            results[name] = ev.evaluate(users, items, shown.of_total if shown else None, self.group)
        if self.log is not None:
            self.log.end_progress()
        return results


@dataclass(frozen=True)
class RunContext:
    """Where a stage runs and reports: the one device, the console and history log, and the process
    group (one process, or a torchrun group: :mod:`Utils.runtime.Parallel`). :func:`open_run` makes it."""

    device: torch.device
    log: "RunLog"
    group: Group = SOLO


@dataclass
class TrainRun:
    """What one pass of :meth:`Stage.fit` trains: the model, its optimiser, the per-batch loss
    (:func:`train_epoch`), the early stopper, the labels of its history rows, and ``run``, the
    stage's own state of this pass (stages 2-3: the pruning run's bests; the teacher: None)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable
    stopper: "EarlyStopper"
    labels: Dict
    run: Any = None


class Stage:
    """What every stage shares: its data, the epoch loop (:meth:`fit`) and the record-keeping hooks.

    A stage is constructed from objects (its frozen config, the dataset, the graph it trains
    on, the :class:`RunContext`); each subclass's ``from_files`` reads those from disk first.
    :meth:`fit` trains one :class:`TrainRun` (the teacher one, stages 2-3 one per pruning run) and
    hands it to the hooks a subclass overrides: :meth:`keep` (what an evaluation changes in its
    records, and the lines printed after it) and :meth:`end_epoch` (its resume file).
    :meth:`checkpoint_meta` and :meth:`resume_payload` build what every checkpoint and resume
    file of a stage holds.
    """

    role = stage_name = "teacher"  # the role (``Utils.files.Checkpoint``) and the stage a checkpoint records
    model_class = "LightGCN"
    interrupted_line = "Interrupted: the records so far are kept"

    def __init__(self, cfg, dataset, graph, ctx: RunContext, role: Optional[str] = None,
                 stage_name: Optional[str] = None, identity: Optional[Dict] = None):
        self.cfg, self.dataset, self.graph, self.ctx = cfg, dataset, graph, ctx
        self.identity = identity if identity is not None else run_identity(cfg, ctx)
        self.log, self.device, self.group = ctx.log, ctx.device, ctx.group
        self.role, self.stage_name = role or type(self).role, stage_name or type(self).stage_name
        self.select_on = cfg.evaluation.split(dataset.val is not None, cfg.data.folder)
        self.flags = recorded_flags(cfg.flags, self.select_on)
        self.sampler = dh.NegativeSampler(dataset.train)
        self.suite = build_eval_suite(dataset, cfg.evaluation.topk, cfg.evaluation.batch_users, self.select_on,
                                      ctx.device, ctx.log, ctx.group)
        self.rng = np.random.default_rng(cfg.loop.seed)

    # -- one epoch's parts
    def train_one_epoch(self, trainee: TrainRun) -> Dict[str, float]:
        trainee.model.train()
        if hasattr(trainee.loss_fn, "start_epoch"):  # (a loss with per-epoch state: Utils.training.Distill.DistillLoss)
            trainee.loss_fn.start_epoch()
        batch = self.cfg.loop.batch
        return train_epoch(trainee.loss_fn, self.sampler.epoch_batches(self.rng, batch), self.sampler.n_batches(batch),
                           trainee.optimizer, self.device, self.log, self.group)

    def evaluate(self, trainee: TrainRun) -> Dict[str, Dict[str, float]]:
        trainee.model.eval()
        return self.suite.evaluate(lambda: trainee.model(self.graph))

    def keep(self, epoch: int, results: Dict[str, Dict[str, float]], trainee: TrainRun) -> List[str]:
        """Update the records with an evaluation (saving what improved); return the lines to print."""
        raise NotImplementedError

    def end_epoch(self, epoch: int, stopped: bool, trainee: TrainRun) -> None:
        """Called after each epoch is logged (``stopped``: early stopping ends the loop now)."""

    # -- the loop
    def fit(self, trainee: TrainRun, n_epochs: int, start_epoch: int = 0) -> Dict[str, Dict[str, float]]:
        """Epochs ``start_epoch``..``n_epochs``-1 of ``trainee``: train, evaluate every ``tst_every`` epochs, keep,
        log, stop early after ``patience`` evaluations without a new best (≥ the best so far).
        Returns the results of a final evaluation (the last epoch's when it was evaluated).

        A :class:`NonFiniteError` is raised again naming the stage, run and epoch: nothing of
        that epoch is recorded or saved. Console lines keep the published formats."""
        results = None
        for epoch in range(start_epoch, n_epochs):
            elapsed = timer()
            with self._naming_failures(epoch, trainee.labels):
                parts = self.train_one_epoch(trainee)
                train_s = elapsed()
                self.log.line(f"Epoch {epoch}/{n_epochs}, Train: Loss = {parts['total']:.4f}, "
                              f"preLoss = {parts['main']:.4f}  ")
                results = self.evaluate(trainee) if epoch % self.cfg.loop.tst_every == 0 else None
            row = dict(trainee.labels, epoch=epoch, loss=parts, train_seconds=train_s)
            if results is not None:
                row["metrics"] = results
                self._log_results(epoch, n_epochs, results, self.keep(epoch, results, trainee))
            row["seconds"] = elapsed()
            self.log.record(row)
            self.log.line(f"Epoch {epoch}/{n_epochs}, Time: train {train_s:.1f} s, total {row['seconds']:.1f} s")
            stop = results is not None and trainee.stopper.should_stop(results[self.select_on]["Recall"], epoch)
            if stop:
                self.log.line(f"Early stop after epoch {epoch}/{n_epochs}: no new best {self.select_on} Recall in "
                              f"{trainee.stopper.patience} evaluations (best {trainee.stopper.best:.5f} at epoch "
                              f"{trainee.stopper.best_epoch})")
            self.end_epoch(epoch, stop, trainee)
            if stop:
                break
        if results is None:
            results = self.evaluate(trainee)
        self.log.line(f"Epoch {n_epochs}/{n_epochs}, Test: {format_metrics(results['test'])}  ")
        return results

    def _log_results(self, epoch: int, n_epochs: int, results, after: List[str]) -> None:
        self.log.line(f"Epoch {epoch}/{n_epochs}, Test: {format_metrics(results['test'])}  ")
        if self.select_on != "test":
            self.log.line(f"Epoch {epoch}/{n_epochs}, Val: {format_metrics(results[self.select_on])}  ")
        for text in after:
            self.log.line(text, stamp=False)

    @contextlib.contextmanager
    def _naming_failures(self, epoch: int, labels: Dict):
        try:
            yield
        except NonFiniteError as err:
            where = ", ".join(f"{k} {v}" for k, v in labels.items() if k in ("stage", "prn_run"))
            raise NonFiniteError(f"{where + ', ' if where else ''}epoch {epoch}: {err}; stopped, the records "
                                 "and checkpoints of the last finite evaluation are kept") from None

    # -- what the files hold
    def checkpoint_meta(self, **extra) -> Dict:
        """The metadata of a checkpoint of this stage; ``extra``: the stage's own fields."""
        dataset, data = self.dataset, self.cfg.data
        return {"stage": self.stage_name, "role": self.role, "model_class": self.model_class, "dataset": data.dataset,
                "data_dir": data.data_dir, "dataset_path": os.path.abspath(dataset.directory), "train_fingerprint": dataset.fingerprint, "n_users": dataset.n_users,
                "n_items": dataset.n_items, "latdim": data.latdim, "gnn_layer": data.gnn_layer,
                "n_edges": self.graph.nnz, **extra, "select_on": self.select_on,
                "config": Config.record(self.cfg), "flags": self.flags}

    def resume_payload(self, trainee: TrainRun, epoch: int, stopped: bool, **extra) -> Dict:
        """What the resume file holds after ``epoch``; ``extra``: the stage's records and generators."""
        return {"role": self.role, "train_fingerprint": self.dataset.fingerprint, "flags": self.flags,
                "identity": self.identity,
                "epoch": epoch, "stopped": stopped, "model": trainee.model.state_dict(),
                "optimizer": trainee.optimizer.state_dict(), **extra, "stopper": trainee.stopper.state(),
                "history": self.log.history_rows()}


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


def open_run(runtime, args_dump: str, history_path: str):
    """The opening every stage shares: the device (``runtime``, a :class:`Utils.config.Config.Execution`),
    the process group (:mod:`Utils.runtime.Parallel`: one process unless started by torchrun), seeds, the
    log (its history at ``history_path``) with the args dump and "Start".

    Returns the :class:`RunContext`. Only rank 0 writes the console log and the history;
    the other processes' log lines go nowhere."""
    device = Runtime.select_device(runtime)
    group = Parallel.join(device)
    Runtime.seed_everything(runtime.seed)
    if group.lead:
        log = RunLog(history_path)
    else:
        log = RunLog(None, stream=open(os.devnull, "w"))
        log.interactive = log.plain_progress = False
    log.line(args_dump, stamp=False)
    if group.world > 1:
        log.line(f"Data-parallel run: {group.world} processes ({torch.distributed.get_backend()})", stamp=False)
    log.line("Start")
    return RunContext(device, log, group)


def run_identity(cfg, ctx: RunContext) -> Dict:
    """How this run begins, as its resume files record it and a resume compares it
    (:func:`Utils.files.Resume.run_identity`): config, digests of the splits and supervisors,
    and the execution settings that change only the rounding."""
    execution = {"threads": torch.get_num_threads(), "processes": ctx.group.world, "device": str(ctx.device),
                 "deterministic": torch.are_deterministic_algorithms_enabled()}
    return Resume.run_identity(cfg, cfg.supervisors(), execution)


def run_stage(stage) -> int:
    """Run a built stage (``stage.run()``), then print its ``summary()`` lines; return the exit status.

    Ctrl-C or SIGTERM (:class:`Utils.runtime.Errors.Terminated`) ends the stage as its last epoch
    would: what was saved stays, the summary is printed after ``stage.interrupted_line``,
    and the status is 130 / 143. The same Ctrl-C may kill the reader of a piped stdout
    (``| tee log``) before it reads them, so these lines then go to stderr as well
    (:func:`print_summary`). In a data-parallel run every process has checked its
    inputs and earlier outputs (while building the stage) before rank 0 writes anything.
    """
    log, group = stage.log, stage.group
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
    pipe that may drop them (:func:`Utils.runtime.Errors.stdout_may_drop`): the best record always
    reaches the user, at worst twice (when tee survived, on a terminal that shows both)."""
    lines = ([(stage.interrupted_line, True)] if interrupted else []) + [(text, False) for text in stage.summary()]
    echo = interrupted and stdout_may_drop()
    lines.append((Runtime.peak_memory_line(), False))
    for text, stamp in lines:
        log.line(text, stamp=stamp)
        if echo and log.stream is sys.stdout:  # (once stdout broke, RunLog.line writes to stderr itself)
            print(text, file=sys.stderr, flush=True)


def build_eval_suite(dataset, topk: int, batch_users: int, select_on: str, device,
                     log: Optional[RunLog] = None, group: Group = SOLO) -> EvalSuite:
    """Evaluators for test (always) and validation (when the dataset has it)."""
    evaluators = {"test": Evaluator(dataset.train, dataset.test, topk, batch_users, device)}
    if dataset.val is not None:
        evaluators["val"] = Evaluator(dataset.train, dataset.val, topk, batch_users, device)
    return EvalSuite(evaluators, select_on, log, group)
