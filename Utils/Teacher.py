"""Stage 1: pretrain the LightGCN teacher (``docs/method.md#stage-1-teacher-pretraining``).

:class:`TeacherStage` holds one invocation's data, graph, model and its one record;
:meth:`TeacherStage.run` trains with the loop every stage shares (:func:`Utils.Training.fit`)
and keeps the best checkpoint on the selection split.
"""
from __future__ import annotations

import os
from typing import List, Optional

import numpy as np
import torch

import DataHandler as dh
import Params
from Model import LightGCN
from Utils import Checkpoint, Resume, Runtime
from Utils.Errors import DataError
from Utils.Parallel import SOLO, Group
from Utils.Losses import bpr_loss, embedding_reg
from Utils.Training import (EarlyStopper, Record, RunLog, build_eval_suite, fit, format_metrics, read_history,
                            train_epoch)


def teacher_loss(model: LightGCN, graph, reg: float, group: Group = SOLO):
    """Stage-1 objective: BPR on the batch + reg·(‖uEmbeds‖² + ‖iEmbeds‖²).

    ``group`` (a data-parallel run, :mod:`Utils.Parallel`): this process's share of the
    batch's BPR mean; rank 0 alone adds the weight decay."""

    def loss_fn(ancs, poss, negs):
        (ancs, poss, negs), n_triples = group.split_rows(ancs, poss, negs)
        # only the batch's rows of Ē are needed: propagate for those (same numbers as model(graph))
        nodes, where = torch.unique(torch.cat([ancs, poss + model.n_users, negs + model.n_users]),
                                    return_inverse=True)
        anc_emb, pos_emb, neg_emb = model.forward_rows(graph, nodes)[where].split(ancs.numel())
        main = bpr_loss(anc_emb, pos_emb, neg_emb, n_triples)
        reg_loss = embedding_reg(model.uEmbeds, model.iEmbeds, reg) if group.lead else main.new_zeros(())
        return {"total": main + reg_loss, "main": main, "reg": reg_loss}

    return loss_fn


def continued_history(path: str, ckpt: Optional[Checkpoint.Checkpoint]) -> list:
    """The rows of ``--load_his_tea``: a teacher history that exists and holds only teacher rows
    (each row carries its ``stage``). When ``ckpt`` (``--load_model_tea``) records its best
    epoch and metrics, as ours do, the history must hold that epoch with those metrics: a
    history of another run, dataset or train split does not (a published ``.mod`` records
    neither, and is not checked)."""
    file = Params.history_file(path)
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


class TeacherStage:
    """Everything one ``pretrainTeacher.py`` invocation holds."""

    interrupted_line = "Interrupted: the best checkpoint so far is kept"

    def __init__(self, args, device, log: RunLog, group: Group = SOLO):
        self.args, self.device, self.log, self.group = args, device, log, group
        Resume.check_output_paths(args)
        log.line("Load Data")
        self.dataset = dh.load_dataset(args.data_dir, args.dataset)
        args.select_on = Params.resolve_select_on(args, self.dataset.val is not None)
        log.line(self.dataset.summary(), stamp=False)
        Runtime.require_model_memory(self.dataset.n_users, self.dataset.n_items, args.latdim, device)
        self.graph = dh.Graph.from_scipy(dh.propagation_matrix(self.dataset.train)).to(device)
        self.sampler = dh.NegativeSampler(self.dataset.train)
        self.suite = build_eval_suite(self.dataset, args.topk, args.tstBat, args.select_on, device, log, group)
        self.model = LightGCN(self.dataset.n_users, self.dataset.n_items, args.latdim, args.gnn_layer).to(device)
        self.record = Record(title=args.select_on)
        self.save_path = args.model_save_path + ".mod"
        self.start_epoch = 0
        self.history: list = []
        ckpt = None
        if args.load_model_tea:
            ckpt = Checkpoint.load_checkpoint(args.load_model_tea)
            Checkpoint.check_identity(ckpt, "teacher", self.dataset.fingerprint, lambda line: log.line(line, stamp=False))
            Checkpoint.check_compatible(ckpt, self.dataset.n_users, self.dataset.n_items, args.latdim, what="teacher")
            self.model.load_state_dict({k: ckpt.tensors[k] for k in ("uEmbeds", "iEmbeds")})
            log.line(f"Model Loaded: {args.load_model_tea}")
        if args.load_his_tea and not args.resume:  # (a resumed run takes its history from the resume file)
            self.history = continued_history(args.load_his_tea, ckpt)
        # --load_model_tea with --load_his_tea continues the run they name, in its own files when the save
        # paths are theirs: the history keeps their rows first and the .mod is replaced only by a point at
        # least as good. Any other overlap of an input with the outputs is refused.
        continuing = bool(args.load_model_tea and args.load_his_tea) and not args.overwrite
        inputs = {} if continuing else {"load_model_tea": args.load_model_tea,
                                        "load_his_tea": args.load_his_tea and Params.history_file(args.load_his_tea)}
        Resume.check_outputs(args, "teacher", inputs, continuing)
        self.resume = None
        if args.resume:
            self.resume = Resume.load_last(Resume.last_path(args.model_save_path), "teacher",
                                           self.dataset.fingerprint, vars(args))
            self.model.load_state_dict(self.resume["model"])
            self.record.restore(self.resume["record"])
            self.history = self.resume["history"]
            log.line(f"Resuming after epoch {self.resume['epoch']} from {Resume.last_path(args.model_save_path)}")

    def start_history(self) -> None:
        """Replace the output history (holding a resumed run's rows first); restore the record."""
        args, log = self.args, self.log
        if self.resume is None and self.group.lead:
            Resume.clear_earlier_run(args, "teacher", lambda line: log.line(line, stamp=False))
        log.reset_history(self.history)
        if self.resume is not None:
            self.start_epoch = self.resume["epoch"] + 1
            return
        for row in self.history:
            if "metrics" in row:
                self.record.update(row["metrics"][args.select_on]["Recall"], row["metrics"], row["epoch"])
        if self.history:
            self.start_epoch = self.history[-1]["epoch"] + 1
            log.line(f"History Loaded: {len(self.history)} epochs, resuming at epoch {self.start_epoch}")

    def meta(self) -> dict:
        args, dataset, record = self.args, self.dataset, self.record
        return {"stage": "teacher", "role": "teacher", "model_class": "LightGCN", "dataset": args.dataset,
                "data_dir": args.data_dir, "train_fingerprint": dataset.fingerprint,
                "n_users": dataset.n_users, "n_items": dataset.n_items, "latdim": args.latdim,
                "gnn_layer": args.gnn_layer, "n_edges": self.graph.nnz, "edge_kept_pct": 100.0,
                "emb_kept_pct": 100.0, "epoch": record.epoch, "select_on": args.select_on,
                "metrics": record.metrics, "flags": vars(args)}

    def run(self) -> None:
        args, log, model = self.args, self.log, self.model
        self.start_history()
        log.line("Model Prepared")
        optimizer = Runtime.make_optimizer(model.parameters(), args.lr)
        rng = np.random.default_rng(args.seed)
        loss_fn = teacher_loss(model, self.graph, args.reg, self.group)
        stopper = EarlyStopper(args.patience)
        if self.resume is not None:
            optimizer.load_state_dict(self.resume["optimizer"])
            stopper.load(self.resume["stopper"])
            Resume.restore_rngs(self.resume["rngs"], rng)
            if self.resume["stopped"]:
                log.line("The resumed run had stopped early: nothing left to train")
                return

        def train_one_epoch():
            model.train()
            return train_epoch(loss_fn, self.sampler.epoch_batches(rng, args.batch),
                               self.sampler.n_batches(args.batch), optimizer, self.device, log, self.group)

        def evaluate():
            model.eval()
            return self.suite.evaluate(lambda: model(self.graph))

        def on_evaluated(epoch, results):
            if not self.record.update(results[args.select_on]["Recall"], results, epoch):
                return []
            if self.group.lead:
                Checkpoint.save_checkpoint(self.save_path, model.state_dict(), self.meta())
            log.line(f"Model Saved: {args.model_save_path}")
            return ["#################best for now###########################", best_line(self.record)]

        def on_epoch_end(epoch, stopped):
            if not self.group.lead:
                return
            Resume.save_last(Resume.last_path(args.model_save_path), {
                "role": "teacher", "train_fingerprint": self.dataset.fingerprint, "flags": vars(args),
                "epoch": epoch, "stopped": stopped, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "record": self.record.as_dict(), "stopper": stopper.state(), "rngs": Resume.capture_rngs(rng),
                "history": log.history_rows()})

        fit(n_epochs=args.epoch_tea, start_epoch=self.start_epoch, tst_every=args.tstEpoch,
            train_one_epoch=train_one_epoch, evaluate=evaluate, on_evaluated=on_evaluated, log=log,
            select_on=args.select_on, row_info={"stage": "teacher"}, patience=args.patience, stopper=stopper,
            on_epoch_end=on_epoch_end)

    def summary(self) -> List[str]:
        lines = ["#########################Final Best Acc###########################", best_line(self.record)]
        if os.path.exists(self.save_path):
            lines.append(f"Best checkpoint: {self.save_path}")
        return lines
