"""Stage 1: pretrain the LightGCN teacher (SPEC §4).

    python pretrainTeacher.py --dataset=yelp --epoch_tea=300 --lr=4e-4 --reg=1.5e-6 \
        --latdim=64 --gnn_layer=8 --model_save_path=outModels/yelp/teacher --his_save_path=outModels/yelp/teacher

Writes ``<model_save_path>.mod`` (the best checkpoint, selected on ``--select_on``) and
``<his_save_path>.his`` (one JSON line per epoch).
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

import DataHandler as dh
import Params
from Model import LightGCN
from Utils import Checkpoint
from Utils.Errors import interrupt_exit_code
from Utils.Losses import bpr_loss, embedding_reg
from Utils.Training import Record, RunLog, build_eval_suite, fit, format_metrics, read_history, train_epoch


def teacher_loss(model: LightGCN, graph, reg: float):
    """Stage-1 objective: BPR on the batch + reg·(‖uEmbeds‖² + ‖iEmbeds‖²) (SPEC §4)."""

    def loss_fn(ancs, poss, negs):
        # only the batch's rows of Ē are needed: propagate for those (same numbers as model(graph))
        nodes, where = torch.unique(torch.cat([ancs, poss + model.n_users, negs + model.n_users]),
                                    return_inverse=True)
        anc_emb, pos_emb, neg_emb = model.forward_rows(graph, nodes)[where].split(ancs.numel())
        main = bpr_loss(anc_emb, pos_emb, neg_emb)
        reg_loss = embedding_reg(model.uEmbeds, model.iEmbeds, reg)
        return {"total": main + reg_loss, "main": main, "reg": reg_loss}

    return loss_fn


def teacher_meta(args, dataset, graph, record: Record) -> dict:
    return {"stage": "teacher", "role": "teacher", "model_class": "LightGCN", "dataset": args.dataset,
            "data_dir": args.data_dir, "train_fingerprint": dataset.fingerprint,
            "n_users": dataset.n_users, "n_items": dataset.n_items, "latdim": args.latdim,
            "gnn_layer": args.gnn_layer, "n_edges": graph.nnz, "edge_kept_pct": 100.0, "emb_kept_pct": 100.0,
            "epoch": record.epoch, "select_on": args.select_on, "metrics": record.metrics,
            "flags": vars(args)}


def best_line(record: Record) -> str:
    return (f"Epoch {record.epoch}, selected on {record.title}: "
            + "; ".join(f"{split}: {format_metrics(m)}" for split, m in record.metrics.items()))


def print_best(log: RunLog, title: str, record: Record) -> None:
    log.line(title, stamp=False)
    log.line(best_line(record), stamp=False)


def main(args) -> int:
    device = Params.select_device(args)
    Params.seed_everything(args.seed)
    log = RunLog(Params.history_file(args.his_save_path))
    log.line(Params.format_args(args), stamp=False)
    log.line("Start")
    log.line("Load Data")
    dataset = dh.load_dataset(args.data_dir, args.dataset)
    args.select_on = Params.resolve_select_on(args, dataset.val is not None)
    log.line(dataset.summary(), stamp=False)
    graph = dh.Graph.from_scipy(dh.propagation_matrix(dataset.train)).to(device)
    sampler = dh.NegativeSampler(dataset.train)
    suite = build_eval_suite(dataset, args.topk, args.tstBat, args.select_on, device, log)

    model = LightGCN(dataset.n_users, dataset.n_items, args.latdim, args.gnn_layer).to(device)
    record = Record(title=args.select_on)
    start_epoch = 0
    if args.load_model_tea:
        ckpt = Checkpoint.load_checkpoint(args.load_model_tea)
        Checkpoint.check_identity(ckpt, "teacher", dataset.fingerprint, lambda line: log.line(line, stamp=False))
        Checkpoint.check_compatible(ckpt, dataset.n_users, dataset.n_items, args.latdim, what="teacher")
        model.load_state_dict({k: ckpt.tensors[k] for k in ("uEmbeds", "iEmbeds")})
        log.line(f"Model Loaded: {args.load_model_tea}")
    history = read_history(Params.history_file(args.load_his_tea)) if args.load_his_tea else []
    if not (args.load_his_tea and Params.history_file(args.load_his_tea) == log.history_path):
        log.reset_history(history)  # the output history restarts, holding the resumed rows first
    for row in history:
        if "metrics" in row:
            record.update(row["metrics"][args.select_on]["Recall"], row["metrics"], row["epoch"])
    if history:
        start_epoch = history[-1]["epoch"] + 1
        log.line(f"History Loaded: {len(history)} epochs, resuming at epoch {start_epoch}")
    log.line("Model Prepared")

    optimizer = Params.make_optimizer(model.parameters(), args.lr)
    rng = np.random.default_rng(args.seed)
    loss_fn = teacher_loss(model, graph, args.reg)
    save_path = args.model_save_path + ".mod"

    def train_one_epoch():
        model.train()
        return train_epoch(loss_fn, sampler.epoch_batches(rng, args.batch), sampler.n_batches(args.batch),
                           optimizer, device, log)

    def evaluate():
        model.eval()
        return suite.evaluate(lambda: model(graph))

    def on_evaluated(epoch, results):
        if not record.update(results[args.select_on]["Recall"], results, epoch):
            return []
        Checkpoint.save_checkpoint(save_path, model.state_dict(), teacher_meta(args, dataset, graph, record))
        log.line(f"Model Saved: {args.model_save_path}")
        return ["#################best for now###########################", best_line(record)]

    try:
        fit(n_epochs=args.epoch_tea, start_epoch=start_epoch, tst_every=args.tstEpoch,
            train_one_epoch=train_one_epoch, evaluate=evaluate, on_evaluated=on_evaluated, log=log,
            select_on=args.select_on, row_info={"stage": "teacher"}, patience=args.patience)
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (Utils.Errors.Terminated)
        log.line("Interrupted: the best checkpoint so far is kept")
        print_best(log, "#########################Final Best Acc###########################", record)
        return interrupt_exit_code(err)
    print_best(log, "#########################Final Best Acc###########################", record)
    if os.path.exists(save_path):
        log.line(f"Best checkpoint: {save_path}", stamp=False)
    return 0


if __name__ == "__main__":
    sys.exit(Params.run_cli(main, stage="teacher"))
