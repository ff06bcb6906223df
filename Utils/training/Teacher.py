"""Stage 1: pretrain the LightGCN teacher (``docs/method.md#stage-1-teacher-pretraining``).

:class:`TeacherStage` holds one invocation's data, graph, model and its one record;
:meth:`TeacherStage.run` trains with the loop every stage shares (:meth:`Utils.training.Training.Stage.fit`)
and keeps the best checkpoint on the selection split.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

import DataHandler as dh
from Model import LightGCN
from Utils.files import Checkpoint, Resume
from Utils.runtime import Runtime
from Utils.config.Config import TeacherConfig, history_file, recorded_flags
from Utils.runtime.Errors import DataError
from Utils.runtime.Parallel import SOLO, Group
from Utils.objective.Losses import batch_embedding_reg, bpr_loss, embedding_reg
from Utils.files.History import read_history
from Utils.training.Training import EarlyStopper, Record, RunContext, Stage, TrainRun, format_metrics, run_identity


def teacher_loss(model: LightGCN, graph, reg: float, group: Group = SOLO, reg_batch: bool = False):
    """Stage-1 objective: BPR on the batch + reg·(‖uEmbeds‖² + ‖iEmbeds‖²), or with ``reg_batch``
    (``--reg_batch``, LightGCN's recipe) + reg·½·mean_b(‖e⁰_u‖² + ‖e⁰_i‖² + ‖e⁰_j‖²) over the
    batch's layer-0 rows (:func:`Utils.objective.Losses.batch_embedding_reg`).

    ``group`` (a data-parallel run, :mod:`Utils.runtime.Parallel`): this process's share of the
    batch's BPR mean (and of the batch's weight decay); rank 0 alone adds the whole tables'."""

    def loss_fn(ancs, poss, negs):
        (ancs, poss, negs), n_triples = group.split_rows(ancs, poss, negs)
        # only the batch's rows of Ē are needed: propagate for those (same numbers as model(graph))
        nodes, where = torch.unique(torch.cat([ancs, poss + model.n_users, negs + model.n_users]),
                                    return_inverse=True)
        anc_emb, pos_emb, neg_emb = model.forward_rows(graph, nodes)[where].split(ancs.numel())
        main = bpr_loss(anc_emb, pos_emb, neg_emb, n_triples)
        if reg_batch:
            rows = (model.uEmbeds[ancs], model.iEmbeds[poss], model.iEmbeds[negs])
            reg_loss = batch_embedding_reg(rows, reg, n_triples)
        else:
            reg_loss = embedding_reg(model.uEmbeds, model.iEmbeds, reg) if group.lead else main.new_zeros(())
        return {"total": main + reg_loss, "main": main, "reg": reg_loss}

    return loss_fn


def continued_history(path: str, ckpt: Optional[Checkpoint.Checkpoint]) -> list:
    """The rows of ``--load_his_tea``: a teacher history that exists and holds only teacher rows
    (each row carries its ``stage``). When ``ckpt`` (``--load_model_tea``) records its best
    epoch and metrics, as ours do, the history must hold that epoch with those metrics: a
    history of another run, dataset or train split does not (a published ``.mod`` records
    neither, and is not checked)."""
    file = history_file(path)
    if not os.path.isfile(file):
        raise DataError(f"--load_his_tea={path}: there is no history file {file} (check the path: the teacher "
                        "stage writes <his_save_path>.his)")
    rows = read_history(file)
    other = next((row for row in rows if row.get("stage") != "teacher"), None)
    if other is not None:
        raise DataError(f"--load_his_tea={path}: {file} is not a teacher history (it holds rows of stage "
                        f"{other.get('stage')!r}); give the .his file the teacher stage wrote")
    meta = ckpt.meta if ckpt is not None else {}
    if "epoch" in meta and "metrics" in meta:
        if not rows:
            raise DataError(f"--load_his_tea={path}: {file} holds no epoch to continue after; leave out "
                            "--load_his_tea to train --load_model_tea's weights from epoch 0")
        best = [row for row in rows if row.get("epoch") == meta["epoch"]]
        if not best or best[-1].get("metrics") != meta["metrics"]:
            raise DataError(f"--load_his_tea={path}: {file} is not the history of --load_model_tea={ckpt.path}: "
                            f"it does not hold that checkpoint's epoch {meta['epoch']} with its metrics (a history "
                            "of another run, dataset or train split?)")
    return rows


def best_line(record: Record) -> str:
    return (f"Epoch {record.epoch}, selected on {record.title}: "
            + "; ".join(f"{split}: {format_metrics(m)}" for split, m in record.metrics.items()))


@dataclass
class TeacherStart:
    """Where a teacher run starts: ``weights`` (``--load_model_tea``'s embeddings), the history
    it continues (``--load_his_tea``), or a resume file (``--resume``); nothing: from Xavier."""

    weights: Optional[Dict[str, torch.Tensor]] = None
    history: List[Dict] = field(default_factory=list)
    resume: Optional[Dict] = None
    identity: Optional[Dict] = None  # how the run begins (Training.run_identity), computed once


class TeacherStage(Stage):
    """One ``pretrainTeacher.py`` invocation: a LightGCN trained with BPR, its one record."""

    role = stage_name = "teacher"
    interrupted_line = "Interrupted: the best checkpoint so far is kept"

    def __init__(self, cfg: TeacherConfig, dataset, graph, ctx: RunContext, start: Optional[TeacherStart] = None):
        self.start = start or TeacherStart()
        super().__init__(cfg, dataset, graph, ctx, identity=self.start.identity)
        self.record = Record(title=self.select_on)
        self.save_path = cfg.outputs.model_path + ".mod"
        self.start_epoch = 0
        if self.start.resume is not None:
            self.record.restore(self.start.resume["record"])

    def build_model(self) -> LightGCN:
        """The teacher at its starting point: Xavier, ``--load_model_tea``'s weights, or the resumed run's."""
        data = self.cfg.data
        model = LightGCN(self.dataset.n_users, self.dataset.n_items, data.latdim, data.gnn_layer).to(self.device)
        if self.start.weights is not None:
            model.load_state_dict(self.start.weights)
        if self.start.resume is not None:
            model.load_state_dict(self.start.resume["model"])
        return model

    @classmethod
    def from_files(cls, cfg: TeacherConfig, ctx: RunContext) -> "TeacherStage":
        """Read and check every input (data, ``--load_model_tea``/``--load_his_tea``, a resume file)
        and the outputs it would replace, then build the stage. (The save paths were
        checked, and their folders made, by the entry point's ``Lock.own``.)"""
        log, device = ctx.log, ctx.device
        log.line("Load Data")
        dataset = dh.load_dataset(cfg.data.data_dir, cfg.data.dataset)
        cfg.evaluation.split(dataset.val is not None, cfg.data.folder)
        log.line(dataset.summary(), stamp=False)
        Runtime.require_model_memory(dataset.n_users, dataset.n_items, cfg.data.latdim, device)
        graph = dh.Graph.from_scipy(dh.propagation_matrix(dataset.train)).to(device)
        start, ckpt = TeacherStart(), None
        if cfg.load_model:
            ckpt = Checkpoint.load_checkpoint(cfg.load_model)
            Checkpoint.check_identity(ckpt, "teacher", dataset.fingerprint, lambda line: log.line(line, stamp=False))
            Checkpoint.check_compatible(ckpt, dataset.n_users, dataset.n_items, cfg.data.latdim, what="teacher")
            start.weights = {k: ckpt.tensors[k] for k in ("uEmbeds", "iEmbeds")}
            log.line(f"Model Loaded: {cfg.load_model}")
        if cfg.load_history and not cfg.outputs.resume:  # (a resumed run takes its history from the resume file)
            start.history = continued_history(cfg.load_history, ckpt)
        # --load_model_tea with --load_his_tea continues the run they name, in its own files when the save
        # paths are theirs: the history keeps their rows first and the .mod is replaced only by a point at
        # least as good. Any other overlap of an input with the outputs is refused.
        continuing = bool(cfg.load_model and cfg.load_history) and not cfg.outputs.overwrite
        inputs = {} if continuing else {"load_model_tea": cfg.load_model,
                                        "load_his_tea": cfg.load_history and history_file(cfg.load_history)}
        Resume.check_outputs(cfg.outputs, "teacher", inputs, continuing)
        start.identity = run_identity(cfg, ctx)
        if cfg.outputs.resume:
            flags = recorded_flags(cfg.flags, cfg.evaluation.split(dataset.val is not None))
            start.resume = Resume.load_last(cfg.outputs.last_path, "teacher", dataset.fingerprint, start.identity,
                                            flags, lambda line: log.line(line, stamp=False))
            start.history = start.resume["history"]
            log.line(f"Resuming after epoch {start.resume['epoch']} from {cfg.outputs.last_path}")
        return cls(cfg, dataset, graph, ctx, start)

    def start_history(self) -> None:
        """Replace the output history (holding a resumed run's rows first); restore the record."""
        log, history = self.log, self.start.history
        if self.start.resume is None and self.group.lead:
            Resume.clear_earlier_run(self.cfg.outputs, "teacher", lambda line: log.line(line, stamp=False))
        log.reset_history(history)
        if self.start.resume is not None:
            self.start_epoch = self.start.resume["epoch"] + 1
            return
        for row in history:
            if "metrics" in row:
                self.record.update(row["metrics"][self.select_on]["Recall"], row["metrics"], row["epoch"])
        if history:
            self.start_epoch = history[-1]["epoch"] + 1
            log.line(f"History Loaded: {len(history)} epochs, resuming at epoch {self.start_epoch}")

    def meta(self) -> dict:
        return self.checkpoint_meta(edge_kept_pct=100.0, emb_kept_pct=100.0, epoch=self.record.epoch,
                                    metrics=self.record.metrics)

    def run(self) -> None:
        self.start_history()
        model = self.build_model()
        self.log.line("Model Prepared")
        trainee = TrainRun(model, Runtime.make_optimizer(model.parameters(), self.cfg.lr),
                          teacher_loss(model, self.graph, self.cfg.reg, self.group, self.cfg.reg_batch),
                          EarlyStopper(self.cfg.loop.patience), labels={"stage": self.role})
        resume = self.start.resume
        if resume is not None:
            trainee.optimizer.load_state_dict(resume["optimizer"])
            trainee.stopper.load(resume["stopper"])
            Resume.restore_rngs(resume["rngs"], self.rng)
            if resume["stopped"]:
                self.log.line("The resumed run had stopped early: nothing left to train")
                return
        self.fit(trainee, self.cfg.epochs, self.start_epoch)

    def keep(self, epoch: int, results, trainee: TrainRun) -> List[str]:
        if not self.record.update(results[self.select_on]["Recall"], results, epoch):
            return []
        if self.group.lead:
            Checkpoint.save_checkpoint(self.save_path, trainee.model.state_dict(), self.meta())
        self.log.line(f"Model Saved: {self.cfg.outputs.model_path}")
        return ["#################best for now###########################", best_line(self.record)]

    def end_epoch(self, epoch: int, stopped: bool, trainee: TrainRun) -> None:
        if self.group.lead:
            Resume.save_last(self.cfg.outputs.last_path, self.resume_payload(
                trainee, epoch, stopped, record=self.record.as_dict(), rngs=Resume.capture_rngs(self.rng)))

    def summary(self) -> List[str]:
        lines = ["#########################Final Best Acc###########################", best_line(self.record)]
        if os.path.exists(self.save_path):
            lines.append(f"Best checkpoint: {self.save_path}")
        return lines
