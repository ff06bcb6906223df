"""Stages 2 and 3 of LightGNN: hierarchical distillation and pruning (SPEC §6).

Stage 2 — distil the teacher into the intermediate model on the closure graph Ĉ:

    python Main.py --train_middle_model=True --distill_from_middle_model=False \
        --distill_from_teacher_model=True --teacher_model=outModels/yelp/teacher.mod ...

Stage 3 — distil the intermediate model into the student on Â while pruning:

    python Main.py --distill_from_middle_model=True \
        --middle_teacher_model=outModels/yelp/mid_best_global_100_100.mod ...

The trainee S (intermediate model or student) learns from a frozen supervisor T whose
outputs are computed once per invocation. Pruning runs PRUNING_START..PRUNING_END each
train a fresh model from the state the previous run's best point left behind.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch

import DataHandler as dh
import Params
from Model import LightGCN, LightGCN_sp
from Utils import Checkpoint, Pruning, Report
from Utils.Errors import ConfigError, interrupt_exit_code
from Utils.Losses import KDConfig, kd_objective
from Utils.Training import Record, RunLog, build_eval_suite, fit, train_epoch

PRUNABLE_KEYS = ("uEmbeds", "iEmbeds", "adj_mask1_train", "adj_mask2_fixed", "emb_mask2_fixed")


# ----------------------------------------------------------------------------- frozen models
@dataclass
class FrozenOutputs:
    """A frozen model's outputs, computed once: Ē (users, items) and H = Σ_{l≥2} E_l."""

    users: torch.Tensor
    items: torch.Tensor
    high_users: torch.Tensor
    high_items: torch.Tensor

    @property
    def all(self) -> torch.Tensor:
        return torch.cat([self.users, self.items], dim=0)


@torch.no_grad()
def frozen_outputs(model: LightGCN, graph) -> FrozenOutputs:
    layers = model.layers(graph)
    out = torch.stack(layers).sum(0)
    high = torch.stack(layers[2:]).sum(0) if len(layers) > 2 else torch.zeros_like(out)
    n = model.n_users
    return FrozenOutputs(out[:n], out[n:], high[:n], high[n:])


def load_teacher(path: str, dataset, device, warn=print) -> LightGCN:
    """The stage-1 teacher from our checkpoint or a published ``.mod`` file."""
    ckpt = Checkpoint.load_checkpoint(path, role="teacher")
    Checkpoint.check_identity(ckpt, "teacher", dataset.fingerprint, warn)  # first: it explains a shape mismatch
    Checkpoint.check_compatible(ckpt, dataset.n_users, dataset.n_items, what="teacher")
    latdim = ckpt.tensors["uEmbeds"].shape[1]
    model = LightGCN(dataset.n_users, dataset.n_items, latdim, int(ckpt.meta["gnn_layer"]))
    model.load_state_dict({k: ckpt.tensors[k] for k in ("uEmbeds", "iEmbeds")})
    return model.to(device).eval()


def load_prunable(path: str, dataset, graph, role: str, device, latdim: Optional[int] = None,
                  n_layers: Optional[int] = None, warn=print) -> LightGCN_sp:
    """A LightGCN_sp (intermediate model or student) with all its masks."""
    ckpt = Checkpoint.load_checkpoint(path, role=role)
    Checkpoint.check_identity(ckpt, role, dataset.fingerprint, warn)  # first: it explains a shape mismatch
    Checkpoint.check_compatible(ckpt, dataset.n_users, dataset.n_items, latdim=latdim, n_edges=graph.nnz, what=role)
    layers = n_layers if n_layers is not None else int(ckpt.meta["gnn_layer"])
    model = LightGCN_sp(dataset.n_users, dataset.n_items, ckpt.tensors["uEmbeds"].shape[1], layers, graph.nnz)
    model.load_state_dict({k: ckpt.tensors[k] for k in PRUNABLE_KEYS})
    return model.to(device)


# ----------------------------------------------------------------------------- per-run settings
@dataclass
class RunSettings:
    """Flags that may change from one pruning run to the next (the ``--use_dynamic_*`` lists)."""

    epochs: int
    lr: float
    beta1: float
    beta2: float
    subspcreg: float
    tempsubsp: float
    use_subspcreg: bool
    loosen: float


def run_settings(args, run: int, trainee_is_student: bool) -> RunSettings:
    def pick(use_list: bool, values, default):
        return values[run] if use_list else default

    return RunSettings(
        epochs=int(pick(args.use_dynamic_epoch, args.epoch_list, args.mask_epoch)),
        lr=float(pick(args.use_dynamic_lr, args.lr_list, args.lr)),
        beta1=float(pick(args.use_dynamic_adj_mask_aug1, args.adj_mask_aug_list1, args.adj_mask_aug1)),
        beta2=float(pick(args.use_dynamic_adj_mask_aug2, args.adj_mask_aug_list2, args.adj_mask_aug2)),
        subspcreg=float(pick(args.use_dynamic_subspcreg, args.subspcreg_list, args.subspcreg)),
        tempsubsp=float(pick(args.use_dynamic_tempsubsp, args.tempsubsp_list, args.tempsubsp)),
        use_subspcreg=bool(args.use_subspcreg and trainee_is_student
                           and args.hyper_contr_start_prn_run <= run <= args.hyper_contr_end_prn_run),
        loosen=float(args.hyper_contr_loosen_factor[run]) if run < len(args.hyper_contr_loosen_factor) else 0.0,
    )


def kd_config(args, settings: RunSettings) -> KDConfig:
    return KDConfig(
        use_pre_level_kd=args.use_pre_level_kd, softreg=args.softreg, tempsoft=args.tempsoft,
        use_emb_level_kd=args.use_emb_level_kd, cdreg=args.cdreg, tempcd=args.tempcd,
        use_contr_deno=args.use_contr_deno, screg=args.screg, tempsc=args.tempsc, reg=args.reg,
        use_ereg=args.use_ereg, ereg=args.ereg, use_subspcreg=settings.use_subspcreg,
        subspcreg=settings.subspcreg, tempsubsp=settings.tempsubsp, subspcreg_version=args.subspcreg_version,
        loosen=settings.loosen, use_ly0emb4subspcreg=args.use_ly0emb4subspcreg,
        resample_ratio=args.hyper_contr_resample_ratio if args.hyper_contr_resample else None,
        contrast_candidates=args.contrast_candidates)


def distill_loss(model: LightGCN_sp, graph, sup: FrozenOutputs, cfg: KDConfig, top_range: int,
                 generator: torch.Generator):
    """The per-batch objective of stages 2–3 on the trainee's current outputs."""
    n_users, n_items = model.n_users, model.n_items
    device = sup.users.device

    def loss_fn(ancs, poss, negs):
        users, items = model(graph)
        rand = [torch.randint(0, n, (top_range,), generator=generator).to(device)
                for n in (n_users, n_items, n_items)]
        return kd_objective(cfg, stu_users=users, stu_items=items, stu_u_embeds=model.uEmbeds,
                            stu_i_embeds=model.iEmbeds, stu_edge_weight=model.adj_mask1_train,
                            sup_users=sup.users, sup_items=sup.items, sup_high_users=sup.high_users,
                            sup_high_items=sup.high_items, ancs=ancs, poss=poss, negs=negs,
                            rand_users=rand[0], rand_items1=rand[1], rand_items2=rand[2],
                            emb_mask=model.emb_mask2_fixed, generator=generator)

    return loss_fn


# ----------------------------------------------------------------------------- records
RECORD_SPECS = (  # key, published title (log prefix), checkpoint suffix
    ("global", "Best for Global Recall:", "best_global"),
    ("w", "Best with Edge Weights, Recall:", "best_w_edge_wei"),
    ("w2", "2nd Best with Edge Weights, Recall:", "2nd_best_w_edge_wei"),
    ("wo", "Best without Edge Weights,  Recall:", "best_wo_edge_wei"),
    ("wo2", "2nd Best without Edge Weights,", "2nd_best_wo_edge_wei"),
)


def make_records(args) -> Dict[str, Record]:
    records = {key: Record(title=title, suffix=suffix) for key, title, suffix in RECORD_SPECS}
    records["w2"].gap, records["w2"].reference = args.train_2nd_best_gap, records["w"]
    records["wo2"].gap, records["wo2"].reference = args.fixed_2nd_best_gap, records["wo"]
    return records


def record_line(record: Record, select_on: str) -> str:
    sel = record.metrics.get(select_on, {"Recall": record.value, "NDCG": 0.0})
    text = (f"{record.title}[{record.value:.5f}] Best NDCG:[{sel['NDCG']:.5f}] at Epoch:[{record.epoch}] "
            f"in PRN:[{record.prn_run}] with [{record.kind}] | Best Adj:[{record.edge_pct:.5f}%] "
            f"Best Emb:[{record.emb_pct:.5f}%]")
    if select_on != "test" and "test" in record.metrics:
        text += f" | Test Recall:[{record.metrics['test']['Recall']:.5f}] NDCG:[{record.metrics['test']['NDCG']:.5f}]"
    return text


# ----------------------------------------------------------------------------- the stage
class DistillStage:
    """Everything one ``Main.py`` invocation holds: data, graphs, frozen supervisor, records."""

    def __init__(self, args, device, log: RunLog):
        self.args, self.device, self.log = args, device, log
        self.trainee_is_student = not args.train_middle_model
        self.role = "student" if self.trainee_is_student else "middle_teacher"
        log.line("Load Data")
        self.dataset = dh.load_dataset(args.data_dir, args.dataset)
        args.select_on = Params.resolve_select_on(args, self.dataset.val is not None)
        log.line(self.dataset.summary(), stamp=False)
        self.adj = dh.Graph.from_scipy(dh.propagation_matrix(self.dataset.train)).to(device)
        self.closure = None
        if args.train_middle_model or args.distill_from_middle_model:
            self.closure = dh.Graph.from_scipy(dh.closure_matrix(
                self.dataset.train, args.adj_aug_layer, args.adj_aug_sample, args.adj_aug_sample_ratio,
                args.adj_aug_sample_random, args.seed)).to(device)
        self.graph = self.closure if args.train_middle_model else self.adj
        self.sampler = dh.NegativeSampler(self.dataset.train)
        self.suite = build_eval_suite(self.dataset, args.topk, args.tstBat, args.select_on, device, log)
        self.records = make_records(args)
        self.rng = np.random.default_rng(args.seed)
        self.generator = torch.Generator().manual_seed(args.seed)
        self._load_supervisors()

    # -- supervisors and pruning helpers, all frozen, computed once
    def _load_supervisors(self) -> None:
        args, log = self.args, self.log
        self.teacher_out = self.middle = self.middle_out = None
        if args.distill_from_middle_model or (self.trainee_is_student and args.use_SM_edgeW2aug) or (
                self.trainee_is_student and args.use_adj_mask_aug and args.use_mTea2drop_edges
                and not args.use_tea2drop_edges):
            if not args.distill_from_middle_model:
                raise ConfigError("pruning with --use_SM_edgeW2aug or --use_mTea2drop_edges needs an intermediate "
                                  "model: use --distill_from_middle_model=True")
            self.middle = load_prunable(args.middle_teacher_model, self.dataset, self.closure, "middle_teacher",
                                        self.device, latdim=args.latdim,
                                        warn=lambda line: log.line(line, stamp=False)).eval()
            self.middle_out = frozen_outputs(self.middle, self.closure)
            middle_e0 = torch.cat([self.middle.uEmbeds, self.middle.iEmbeds], dim=0) * self.middle.emb_mask2_fixed
            log.line("Use the middle teacher (Intermediate KD model) to direct the training of student", stamp=False)
        if args.distill_from_teacher_model or (self.trainee_is_student and args.use_adj_mask_aug
                                               and args.use_tea2drop_edges):
            teacher = load_teacher(args.teacher_model, self.dataset, self.device,
                                   warn=lambda line: log.line(line, stamp=False))
            if teacher.uEmbeds.shape[1] != args.latdim:
                raise ConfigError(f"--latdim={args.latdim} but the teacher {args.teacher_model} has "
                                  f"{teacher.uEmbeds.shape[1]}-d embeddings")
            self.teacher_out = frozen_outputs(teacher, self.adj)
            teacher_e0 = torch.cat([teacher.uEmbeds, teacher.iEmbeds], dim=0)
            log.line("Use the teacher to direct the training", stamp=False)
        self.supervisor = self.middle_out if args.distill_from_middle_model else self.teacher_out
        # the supervisor's layer-0 embeddings, for --init_from_supervisor
        self.supervisor_e0 = (middle_e0 if args.distill_from_middle_model else teacher_e0).detach().clone()
        self.mid_weight_on_adj = None
        if self.trainee_is_student and args.use_SM_edgeW2aug:
            self.mid_weight_on_adj = Pruning.closure_weights_on_adj(
                self.adj.row, self.adj.col, self.closure.row, self.closure.col,
                self.middle.adj_mask1_train.detach(), self.adj.n_nodes)

    def _edge_scoring_embeddings(self, model: LightGCN_sp) -> Optional[torch.Tensor]:
        args = self.args
        if not args.use_adj_mask_aug:
            return None
        if args.use_tea2drop_edges:
            return self.teacher_out.all
        if args.use_mTea2drop_edges:
            return self.middle_out.all
        with torch.no_grad():
            return torch.cat(model(self.adj), dim=0)

    def pruned_state(self, model: LightGCN_sp, settings: RunSettings) -> Dict[str, torch.Tensor]:
        """The state the next run starts from: SPEC §6 pruning of the current model."""
        args = self.args
        state = Pruning.compute_pruned_state(
            model.adj_mask1_train.detach(), model.adj_mask2_fixed, model.uEmbeds.detach(), model.iEmbeds.detach(),
            model.emb_mask2_fixed, edge_pct=args.pruning_percent_adj, emb_pct=args.pruning_percent_emb,
            keep_weights=args.keep_adj_weights2next_prn, aug_embeds=self._edge_scoring_embeddings(model),
            edge_row=self.adj.row, edge_col=self.adj.col, beta1=settings.beta1, use_tanh=args.use_tanh2aug,
            mid_edge_weight_on_adj=self.mid_weight_on_adj, beta2=settings.beta2, use_abs=args.adj_weights_abs,
            random_edges=args.use_adj_random_pruning, random_embeddings=args.use_emb_random_pruning,
            generator=self.generator)
        return {"uEmbeds": state.u_embeds, "iEmbeds": state.i_embeds, "adj_mask1_train": state.edge_weight,
                "adj_mask2_fixed": state.edge_mask, "emb_mask2_fixed": state.emb_mask}

    # -- models
    def build_trainee(self, state: Optional[Dict[str, torch.Tensor]]) -> LightGCN_sp:
        model = LightGCN_sp(self.dataset.n_users, self.dataset.n_items, self.args.latdim, self.args.gnn_layer,
                            self.graph.nnz).to(self.device)
        if state is not None:
            model.load_state_dict({k: v.to(self.device) for k, v in state.items()})
        return model

    def initial_state(self) -> Optional[Dict[str, torch.Tensor]]:
        """The first run's starting state: a break point, the supervisor's E₀, or None (fresh)."""
        args = self.args
        if not (self.trainee_is_student and args.train_stu_from_break_point):
            if not args.init_from_supervisor:
                return None
            state = {k: v.detach().clone() for k, v in self.build_trainee(None).state_dict().items()}
            n_users = self.dataset.n_users
            state["uEmbeds"] = self.supervisor_e0[:n_users].clone()
            state["iEmbeds"] = self.supervisor_e0[n_users:].clone()
            self.log.line("Trainee embeddings initialised from the supervisor's layer-0 embeddings "
                          "(--init_from_supervisor)")
            return state
        model = load_prunable(args.break_point, self.dataset, self.graph, "student", self.device,
                              latdim=args.latdim, n_layers=args.gnn_layer,
                              warn=lambda line: self.log.line(line, stamp=False))
        self.log.line(f"Model Loaded: {args.break_point}")
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    # -- records and checkpoints
    def save_record(self, record: Record, model: LightGCN_sp) -> None:
        args = self.args
        name = f"_{record.suffix}_{int(record.edge_pct)}_{int(record.emb_pct)}"
        record.path = args.model_save_path + name + ".mod"
        meta = {"stage": "intermediate" if args.train_middle_model else "student", "role": self.role,
                "model_class": "LightGCN_sp", "graph": "closure" if args.train_middle_model else "adjacency",
                "adj_aug_layer": args.adj_aug_layer, "adj_aug_sample": args.adj_aug_sample,
                "dataset": args.dataset, "data_dir": args.data_dir, "train_fingerprint": self.dataset.fingerprint,
                "n_users": self.dataset.n_users, "n_items": self.dataset.n_items,
                "latdim": args.latdim, "gnn_layer": args.gnn_layer, "n_edges": self.graph.nnz,
                "edge_kept_pct": record.edge_pct, "emb_kept_pct": record.emb_pct, "record": record.as_dict(),
                "select_on": args.select_on, "flags": vars(args)}
        Checkpoint.save_checkpoint(record.path, model.state_dict(), meta)
        Checkpoint.save_json(args.his_save_path + name + ".his", {"record": record.as_dict(),
                                                                  "history": self.log.history_rows()})
        self.log.line(f"Model Saved: {args.model_save_path}")

    def summary(self) -> List[str]:
        lines = ["#" * 34 + "Best results for now" + "#" * 46]
        for key, _, _ in RECORD_SPECS:
            record = self.records[key]
            lines.append(record_line(record, self.args.select_on))
            if record.path:
                lines.append(f"    checkpoint: {record.path}")
        return lines

    # -- training
    def train_run(self, model: LightGCN_sp, run: int, settings: RunSettings, learn_edges: bool,
                  n_epochs: int) -> Dict[str, torch.Tensor]:
        """Train one pruning run; return the state at its best point (pruned for the student)."""
        args, log = self.args, self.log
        model.adj_mask1_train.requires_grad_(learn_edges)
        optimizer = Params.make_optimizer([p for p in model.parameters() if p.requires_grad], settings.lr)
        loss_fn = distill_loss(model, self.graph, self.supervisor, kd_config(args, settings), args.topRange,
                               self.generator)
        kind = "Train Mask" if learn_edges else "Fixed Mask"
        keys = ("global", "w", "w2") if learn_edges else ("global", "wo", "wo2")
        edge_pct, emb_pct = model.edge_kept_pct(), model.emb_kept_pct()
        run_best = Record(title="run")
        best = {}

        def train_one_epoch():
            model.train()
            return train_epoch(loss_fn, self.sampler.epoch_batches(self.rng, args.batch),
                               self.sampler.n_batches(args.batch), optimizer, self.device, log)

        def evaluate():
            model.eval()
            return self.suite.evaluate(lambda: model(self.graph))

        def on_evaluated(epoch, results):
            value = results[args.select_on]["Recall"]
            if run_best.update(value, results, epoch, run, kind, edge_pct, emb_pct):
                for key in keys:
                    record = self.records[key]
                    if record.update(value, results, epoch, run, kind, edge_pct, emb_pct):
                        self.save_record(record, model)
                if learn_edges:
                    best["state"] = self.carried_state(model, settings)
            sel = results[args.select_on]
            what = ("Train Edge Weights & Emb. before Pruning Run" if learn_edges
                    else "Train Emb. with Fixed Edge Weights in Pruning Run")
            lines = [f"{what} PRN:[{run}] (Dataset {args.dataset} Get Mask) Epoch:[{epoch}/{n_epochs}], "
                     f"Recall:[{sel['Recall']:.5f}] NDCG:[{sel['NDCG']:.5f}] | Best Recall:[{run_best.value:.5f}] "
                     f"Best NDCG:[{run_best.metrics[args.select_on]['NDCG']:.5f}] at Epoch:[{run_best.epoch}] | "
                     f"Adj:[{edge_pct:.5f}%] Emb:[{emb_pct:.5f}%]"]
            lines += [record_line(self.records[key], args.select_on) for key, _, _ in RECORD_SPECS]
            return lines + [""]

        fit(n_epochs=n_epochs, start_epoch=0, tst_every=args.tstEpoch, train_one_epoch=train_one_epoch,
            evaluate=evaluate, on_evaluated=on_evaluated, log=log, select_on=args.select_on,
            row_info={"stage": self.role, "prn_run": run, "kind": kind, "edge_kept_pct": edge_pct,
                      "emb_kept_pct": emb_pct}, patience=args.patience)
        if "state" not in best:  # nothing was evaluated in this run: carry the final model
            best["state"] = self.carried_state(model, settings)
        return best["state"]

    def carried_state(self, model: LightGCN_sp, settings: RunSettings) -> Dict[str, torch.Tensor]:
        if self.trainee_is_student:
            return self.pruned_state(model, settings)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def train_fixed_copy(self, state, run: int, settings: RunSettings) -> None:
        """--run_no_adj_weights: train a copy with every mask frozen for --fix_epoch epochs."""
        model = self.build_trainee(state)
        self.log_sparsity(model)
        self.train_run(model, run, settings, learn_edges=False, n_epochs=self.args.fix_epoch)

    def log_sparsity(self, model: LightGCN_sp) -> None:
        self.log.line("Model Prepared")
        n_edges = int((model.adj_mask2_fixed != 0).sum())
        self.log.line(f"{n_edges}\n{n_edges}", stamp=False)
        self.log.line("-" * 100, stamp=False)
        self.log.line(f"Sparsity: Adj:[{model.edge_kept_pct():.2f}%] | Emb:[{model.emb_kept_pct():.2f}%]", stamp=False)
        self.log.line("-" * 100, stamp=False)

    def run(self) -> None:
        args = self.args
        state = self.initial_state()
        for run in range(args.PRUNING_START, args.PRUNING_END + 1):
            settings = run_settings(args, run, self.trainee_is_student)
            if args.run_no_adj_weights and run == args.PRUNING_START:
                self.train_fixed_copy(state, run, settings)
            model = self.build_trainee(state)
            self.log_sparsity(model)
            if run == args.esc_train_prn_run:
                self.log.line(f"Skipping the training of pruning run {run} (--esc_train_prn_run)")
                state = self.carried_state(model, settings)
            else:
                state = self.train_run(model, run, settings, learn_edges=True, n_epochs=settings.epochs)
            # the masks do not change within a run: this is the report of the run's best checkpoint
            Report.log_run_report(model.state_dict(), {"stage": self.role, "model_class": "LightGCN_sp",
                                                       "dataset": args.dataset, "gnn_layer": args.gnn_layer},
                                  f"{args.his_save_path}_compression_prn{run}.json",
                                  lambda line: self.log.line(line, stamp=False),
                                  title=f"Compression report, pruning run {run}")
            if args.run_no_adj_weights:
                self.train_fixed_copy(state, run, settings)


def main(args) -> int:
    device = Params.select_device(args)
    Params.seed_everything(args.seed)
    log = RunLog(Params.history_file(args.his_save_path))
    log.line(Params.format_args(args), stamp=False)
    log.line("Start")
    stage = DistillStage(args, device, log)  # reads and checks every input first
    log.reset_history()  # only then is an earlier history replaced
    try:
        stage.run()
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (Utils.Errors.Terminated)
        log.line("Interrupted: the records so far are kept")
        for line in stage.summary():
            log.line(line, stamp=False)
        return interrupt_exit_code(err)
    for line in stage.summary():
        log.line(line, stamp=False)
    if not args.train_middle_model and args.plots:
        from Utils import Plots  # matplotlib is loaded only when plots are drawn

        Plots.plot_after_training(args.his_save_path,
                                  args.middle_teacher_model if args.distill_from_middle_model else None,
                                  args.topk, lambda line: log.line(line, stamp=False))
    return 0


if __name__ == "__main__":
    sys.exit(Params.run_cli(main, stage="main"))
