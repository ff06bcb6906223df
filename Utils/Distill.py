"""Stages 2 and 3: distil a frozen supervisor into a trainee, pruning the student between runs.

Stage 2 trains the intermediate model on the closure graph Ĉ under the teacher; stage 3
trains the student on Â under the intermediate model and prunes it after every pruning
run (``docs/method.md#stages-2-and-3-distillation``). :class:`DistillStage` holds one invocation's data,
graphs, frozen supervisor outputs and records; :meth:`DistillStage.run` walks the pruning
runs. Flags reach the kernels through small configs built here, in one place each:
:func:`run_settings` (what may change per run), :func:`kd_config` (the loss) and
:func:`prune_config` (the pruning step).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

import DataHandler as dh
import Params
from Model import LightGCN, LightGCN_sp, model_from_tensors
from Utils import Checkpoint, Pruning, Report, Resume, Runtime
from Utils.Parallel import SOLO, Group
from Utils.Losses import KDConfig, device_blocks, draw_contrast_sample, kd_objective, subspace_pair_index
from Utils.Training import EarlyStopper, Record, RunLog, build_eval_suite, fit, train_epoch


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


def load_model(path: str, role: str, dataset, device, graph=None, latdim: Optional[int] = None,
               n_layers: Optional[int] = None, warn: Callable[[str], object] = print) -> LightGCN:
    """A supervisor or break point from our checkpoint or a published ``.mod`` file.

    Its role and train-split fingerprint are checked first (they explain a shape mismatch),
    then its shapes; ``graph`` (Ĉ or Â) fixes the number of edge weights of a prunable model.
    """
    ckpt = Checkpoint.load_checkpoint(path, role=role)
    Checkpoint.check_identity(ckpt, role, dataset.fingerprint, warn)
    Checkpoint.check_compatible(ckpt, dataset.n_users, dataset.n_items, latdim=latdim,
                                n_edges=graph.nnz if graph is not None else None, what=role)
    layers = n_layers if n_layers is not None else int(ckpt.meta["gnn_layer"])
    return model_from_tensors(ckpt.tensors, dataset.n_users, dataset.n_items, layers).to(device)


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


def kd_config(args, settings: RunSettings, device="cpu") -> KDConfig:
    """The loss configuration of a run; the kernels' block shape is that of ``device``."""
    return KDConfig(
        use_pre_level_kd=args.use_pre_level_kd, softreg=args.softreg, tempsoft=args.tempsoft,
        use_emb_level_kd=args.use_emb_level_kd, cdreg=args.cdreg, tempcd=args.tempcd,
        use_contr_deno=args.use_contr_deno, screg=args.screg, tempsc=args.tempsc, reg=args.reg,
        use_ereg=args.use_ereg, ereg=args.ereg, use_subspcreg=settings.use_subspcreg,
        subspcreg=settings.subspcreg, tempsubsp=settings.tempsubsp, subspcreg_version=args.subspcreg_version,
        loosen=settings.loosen, use_ly0emb4subspcreg=args.use_ly0emb4subspcreg,
        resample_ratio=args.hyper_contr_resample_ratio if args.hyper_contr_resample else None,
        contrast_candidates=args.contrast_candidates, blocks=device_blocks(device, args.block_mb))


def prune_config(args, settings: RunSettings) -> Pruning.PruneConfig:
    """The pruning step between student runs, from the flags and this run's β₁/β₂."""
    scoring = None
    if args.use_adj_mask_aug:
        scoring = "teacher" if args.use_tea2drop_edges else "middle" if args.use_mTea2drop_edges else "student"
    return Pruning.PruneConfig(
        edge_pct=args.pruning_percent_adj, emb_pct=args.pruning_percent_emb,
        keep_weights=args.keep_adj_weights2next_prn, scoring=scoring, beta1=settings.beta1,
        use_middle_weights=args.use_SM_edgeW2aug, beta2=settings.beta2, use_tanh=args.use_tanh2aug,
        use_abs=args.adj_weights_abs, random_edges=args.use_adj_random_pruning,
        random_embeddings=args.use_emb_random_pruning)


def random_triples(generator: torch.Generator, top_range: int, n_users: int, n_items: int,
                   device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch's random users and two random item lists of the prediction-level KD."""
    return tuple(torch.randint(0, n, (top_range,), generator=generator).to(device)
                 for n in (n_users, n_items, n_items))


def distill_loss(model: LightGCN_sp, graph, sup: FrozenOutputs, cfg: KDConfig, top_range: int,
                 generator: torch.Generator, draw: Optional[Callable[[], Tuple[torch.Tensor, ...]]] = None,
                 group: Group = SOLO, list_pairs_once: bool = True):
    """The per-batch objective of stages 2–3 on the trainee's current outputs.

    ``draw()`` gives the batch's random (users, items, items) of the prediction-level KD;
    by default :func:`random_triples` from ``generator`` (tests inject fixed ones).
    ``group``: this process's share of the loss in a data-parallel run (:mod:`Utils.Parallel`).
    The trainee's embedding mask is fixed for the life of ``loss_fn`` (one pruning run), so the
    subspace term's positive pairs are listed here once (:func:`Utils.Losses.subspace_pair_index`);
    ``list_pairs_once=False`` lists them in every batch instead (same loss; for the benchmark).
    """
    n_users, n_items = model.n_users, model.n_items
    device = sup.users.device
    pair_index = None
    if list_pairs_once and cfg.use_subspcreg and cfg.subspcreg_version == "v3" and cfg.resample_ratio is None:
        mask = model.emb_mask2_fixed.detach()
        pair_index = subspace_pair_index(mask[:n_users], mask[n_users:], cfg.loosen, cfg.blocks)
    if draw is None:
        def draw():
            return random_triples(generator, top_range, n_users, n_items, device)

    def loss_fn(ancs, poss, negs):
        # first what reads back to the host or comes from it (the draws, the distinct anchors), in
        # the order the objective draws them: on a GPU this happens before the step's device work
        # is queued, so the only wait on that work is the loss parts' read-back (train_epoch)
        rand_users, rand_items1, rand_items2 = draw()
        sample = draw_contrast_sample(n_users, n_items, cfg.contrast_candidates, generator, device)
        anchors = (torch.unique(ancs), torch.unique(poss))
        users, items = model(graph)
        return kd_objective(cfg, stu_users=users, stu_items=items, stu_u_embeds=model.uEmbeds,
                            stu_i_embeds=model.iEmbeds, stu_edge_weight=model.adj_mask1_train,
                            sup_users=sup.users, sup_items=sup.items, sup_high_users=sup.high_users,
                            sup_high_items=sup.high_items, ancs=ancs, poss=poss, negs=negs,
                            rand_users=rand_users, rand_items1=rand_items1, rand_items2=rand_items2,
                            emb_mask=model.emb_mask2_fixed, generator=generator, sample=sample, group=group,
                            anchors=anchors, subspace_pairs=pair_index)

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
    """The five records of stages 2–3; the two "2nd best" ones follow their best with a gap."""
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


def update_records(run_best: Record, records: Dict[str, Record], keys, value: float, results, epoch: int,
                   run: int, kind: str, edge_pct: float, emb_pct: float) -> Optional[List[Record]]:
    """One evaluation's bookkeeping: None when it is not a new best of its run; otherwise the
    records among ``keys`` it improved, updated in order (a "2nd best" after its best), whose
    checkpoints are to be written."""
    if not run_best.update(value, results, epoch, run, kind, edge_pct, emb_pct):
        return None
    return [records[key] for key in keys if records[key].update(value, results, epoch, run, kind, edge_pct, emb_pct)]


def state_of(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- the stage
class DistillStage:
    """Everything one stage-2/3 invocation holds: data, graphs, frozen supervisor, records."""

    interrupted_line = "Interrupted: the records so far are kept"

    def __init__(self, args, device, log: RunLog, group: Group = SOLO):
        self.args, self.device, self.log, self.group = args, device, log, group
        self.trainee_is_student = not args.train_middle_model
        self.role = "student" if self.trainee_is_student else "middle_teacher"
        Resume.check_output_paths(args)
        log.line("Load Data")
        self.dataset = dh.load_dataset(args.data_dir, args.dataset)
        args.select_on = Params.resolve_select_on(args, self.dataset.val is not None)
        log.line(self.dataset.summary(), stamp=False)
        Runtime.require_model_memory(self.dataset.n_users, self.dataset.n_items, args.latdim, device)
        Runtime.require_triples_memory(args.topRange, device)
        self.adj = dh.Graph.from_scipy(dh.propagation_matrix(self.dataset.train)).to(device)
        self.closure = None
        if args.train_middle_model or args.distill_from_middle_model:
            self.closure = dh.closure_graph(self.dataset.train, vars(args)).to(device)
        self.graph = self.closure if args.train_middle_model else self.adj
        self.sampler = dh.NegativeSampler(self.dataset.train)
        self.suite = build_eval_suite(self.dataset, args.topk, args.tstBat, args.select_on, device, log, group)
        self.records = make_records(args)
        self.rng = np.random.default_rng(args.seed)
        self.generator = torch.Generator().manual_seed(args.seed)
        self._load_supervisors()
        Resume.check_outputs(args, self.role, self.input_files())
        self.resume = None
        if args.resume:
            self.resume = Resume.load_last(self.last_path, self.role, self.dataset.fingerprint, vars(args))
            for key, saved in self.resume["records"].items():
                self.records[key].restore(saved)
            log.line(f"Resuming pruning run {self.resume['run']} after epoch {self.resume['epoch']} "
                     f"from {self.last_path}")
            self.first_state = None
        else:
            self.first_state = self.initial_state()

    @property
    def last_path(self) -> str:
        return Resume.last_path(self.args.model_save_path)

    def _warn(self, line: str) -> None:
        self.log.line(line, stamp=False)

    @property
    def reads_teacher(self) -> bool:
        """The teacher is loaded to supervise (stage 2) or to score the student's edges."""
        args = self.args
        return args.distill_from_teacher_model or (self.trainee_is_student and args.use_adj_mask_aug
                                                   and args.use_tea2drop_edges)

    def input_files(self) -> Dict[str, Optional[str]]:
        """The checkpoints this stage reads, by flag (None: not read); none may be among its outputs."""
        args = self.args
        return {"middle_teacher_model": args.middle_teacher_model if args.distill_from_middle_model else None,
                "teacher_model": args.teacher_model if self.reads_teacher else None,
                "break_point": args.break_point if self.trainee_is_student and args.train_stu_from_break_point
                else None}

    # -- supervisors and what pruning reads, all frozen, computed once
    def _load_supervisors(self) -> None:
        args, log = self.args, self.log
        self.teacher_out = self.middle_out = None
        self.mid_weight_on_adj = None
        student = self.trainee_is_student
        if args.distill_from_middle_model:  # (Params makes every pruning use of the middle model need it)
            middle = load_model(args.middle_teacher_model, "middle_teacher", self.dataset, self.device,
                                graph=self.closure, latdim=args.latdim, warn=self._warn).eval()
            self.middle_out = frozen_outputs(middle, self.closure)
            self.supervisor_e0 = middle.layer0().detach().clone()
            if student and args.use_SM_edgeW2aug:
                self.mid_weight_on_adj = Pruning.closure_weights_on_adj(
                    self.adj.row, self.adj.col, self.closure.row, self.closure.col,
                    middle.adj_mask1_train.detach(), self.adj.n_nodes)
            log.line("Use the middle teacher (Intermediate KD model) to direct the training of student", stamp=False)
        if self.reads_teacher:
            teacher = load_model(args.teacher_model, "teacher", self.dataset, self.device, latdim=args.latdim,
                                 warn=self._warn)
            self.teacher_out = frozen_outputs(teacher, self.adj)
            if args.distill_from_teacher_model:
                self.supervisor_e0 = teacher.layer0().detach().clone()
            log.line("Use the teacher to direct the training", stamp=False)
        self.supervisor = self.middle_out if args.distill_from_middle_model else self.teacher_out

    def prune(self, state: Dict[str, torch.Tensor], settings: RunSettings) -> Dict[str, torch.Tensor]:
        """The state the next run starts from: one pruning step of the student's ``state``."""
        def student_outputs():
            with torch.no_grad():
                return torch.cat(self.build_trainee(state)(self.adj), dim=0)

        scorers = {"student": student_outputs}
        if self.teacher_out is not None:
            scorers["teacher"] = lambda: self.teacher_out.all
        if self.middle_out is not None:
            scorers["middle"] = lambda: self.middle_out.all
        return Pruning.prune_state(state, prune_config(self.args, settings), edge_row=self.adj.row,
                                   edge_col=self.adj.col, scorers=scorers,
                                   mid_edge_weight_on_adj=self.mid_weight_on_adj, generator=self.generator)

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
        if self.trainee_is_student and args.train_stu_from_break_point:
            model = load_model(args.break_point, "student", self.dataset, self.device, graph=self.graph,
                               latdim=args.latdim, n_layers=args.gnn_layer, warn=self._warn)
            self.log.line(f"Model Loaded: {args.break_point}")
            return state_of(model)
        if not args.init_from_supervisor:
            return None
        state = state_of(self.build_trainee(None))
        n_users = self.dataset.n_users
        state["uEmbeds"] = self.supervisor_e0[:n_users].clone()
        state["iEmbeds"] = self.supervisor_e0[n_users:].clone()
        self.log.line("Trainee embeddings initialised from the supervisor's layer-0 embeddings "
                      "(--init_from_supervisor)")
        return state

    # -- records and checkpoints
    def save_record(self, record: Record, model: LightGCN_sp) -> None:
        args = self.args
        name = f"_{record.suffix}_{int(record.edge_pct)}_{int(record.emb_pct)}"
        record.path = args.model_save_path + name + ".mod"
        if not self.group.lead:  # (every process keeps the record's path for its summary)
            return
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
                  n_epochs: int, resume: Optional[dict] = None) -> Dict[str, torch.Tensor]:
        """Train one pruning run; return the model's state at its best evaluation (the final
        state when none was evaluated). ``resume``: the resume file of a run stopped within it.
        After every epoch of a learned-edge run, the resume file is written."""
        args, log = self.args, self.log
        model.adj_mask1_train.requires_grad_(learn_edges)
        optimizer = Runtime.make_optimizer([p for p in model.parameters() if p.requires_grad], settings.lr)
        loss_fn = distill_loss(model, self.graph, self.supervisor, kd_config(args, settings, self.device),
                               args.topRange, self.generator, group=self.group)
        kind = "Train Mask" if learn_edges else "Fixed Mask"
        keys = ("global", "w", "w2") if learn_edges else ("global", "wo", "wo2")
        edge_pct, emb_pct = model.edge_kept_pct(), model.emb_kept_pct()
        run_best = Record(title="run")
        best = {}
        stopper = EarlyStopper(args.patience)
        start_epoch = 0
        if resume is not None:
            optimizer.load_state_dict(resume["optimizer"])
            run_best.restore(resume["run_best"])
            if resume["best_state"] is not None:
                best["state"] = resume["best_state"]
            stopper.load(resume["stopper"])
            Resume.restore_rngs(resume["rngs"], self.rng, self.generator)
            start_epoch = resume["epoch"] + 1
            if resume["stopped"]:  # stopped early: the run is over (one that ran out of epochs may go on)
                return best.get("state") or state_of(model)

        def train_one_epoch():
            model.train()
            return train_epoch(loss_fn, self.sampler.epoch_batches(self.rng, args.batch),
                               self.sampler.n_batches(args.batch), optimizer, self.device, log, self.group)

        def evaluate():
            model.eval()
            return self.suite.evaluate(lambda: model(self.graph))

        def on_evaluated(epoch, results):
            improved = update_records(run_best, self.records, keys, results[args.select_on]["Recall"], results,
                                      epoch, run, kind, edge_pct, emb_pct)
            if improved is not None:  # a new best of this run: its state is what the run hands on
                for record in improved:
                    self.save_record(record, model)
                best["state"] = state_of(model)
            sel = results[args.select_on]
            what = ("Train Edge Weights & Emb. before Pruning Run" if learn_edges
                    else "Train Emb. with Fixed Edge Weights in Pruning Run")
            lines = [f"{what} PRN:[{run}] (Dataset {args.dataset} Get Mask) Epoch:[{epoch}/{n_epochs}], "
                     f"Recall:[{sel['Recall']:.5f}] NDCG:[{sel['NDCG']:.5f}] | Best Recall:[{run_best.value:.5f}] "
                     f"Best NDCG:[{run_best.metrics[args.select_on]['NDCG']:.5f}] at Epoch:[{run_best.epoch}] | "
                     f"Adj:[{edge_pct:.5f}%] Emb:[{emb_pct:.5f}%]"]
            lines += [record_line(self.records[key], args.select_on) for key, _, _ in RECORD_SPECS]
            return lines + [""]

        def on_epoch_end(epoch, stopped):
            if not self.group.lead:
                return
            Resume.save_last(self.last_path, {
                "role": self.role, "train_fingerprint": self.dataset.fingerprint, "flags": vars(args), "run": run,
                "epoch": epoch, "stopped": stopped, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "run_best": run_best.as_dict(), "best_state": best.get("state"),
                "records": {key: record.as_dict() for key, record in self.records.items()},
                "stopper": stopper.state(), "rngs": Resume.capture_rngs(self.rng, self.generator),
                "history": log.history_rows()})

        fit(n_epochs=n_epochs, start_epoch=start_epoch, tst_every=args.tstEpoch, train_one_epoch=train_one_epoch,
            evaluate=evaluate, on_evaluated=on_evaluated, log=log, select_on=args.select_on,
            row_info={"stage": self.role, "prn_run": run, "kind": kind, "edge_kept_pct": edge_pct,
                      "emb_kept_pct": emb_pct}, patience=args.patience, stopper=stopper,
            on_epoch_end=on_epoch_end if learn_edges else None)
        return best.get("state") or state_of(model)

    def log_sparsity(self, model: LightGCN_sp) -> None:
        self.log.line("Model Prepared")
        n_edges = int((model.adj_mask2_fixed != 0).sum())
        self.log.line(f"{n_edges}\n{n_edges}", stamp=False)
        self.log.line("-" * 100, stamp=False)
        self.log.line(f"Sparsity: Adj:[{model.edge_kept_pct():.2f}%] | Emb:[{model.emb_kept_pct():.2f}%]", stamp=False)
        self.log.line("-" * 100, stamp=False)

    def train_fixed_copy(self, state, run: int, settings: RunSettings) -> None:
        """--run_no_adj_weights: train a copy with every mask frozen for --fix_epoch epochs."""
        model = self.build_trainee(state)
        self.log_sparsity(model)
        self.train_run(model, run, settings, learn_edges=False, n_epochs=self.args.fix_epoch)

    def run(self) -> None:
        """Pruning runs PRUNING_START..PRUNING_END; each starts from the state the last one left:
        the best point of its training, pruned once more for the student."""
        args, resume = self.args, self.resume
        # the inputs were all checked when the stage was built
        if resume is None and self.group.lead:
            Resume.clear_earlier_run(args, self.role, self._warn)
        self.log.reset_history(resume["history"] if resume is not None else ())
        state = self.first_state
        first_run = resume["run"] if resume is not None else args.PRUNING_START
        for run in range(first_run, args.PRUNING_END + 1):
            settings = run_settings(args, run, self.trainee_is_student)
            resuming = resume if resume is not None and run == first_run else None
            if args.run_no_adj_weights and run == args.PRUNING_START:
                self.train_fixed_copy(state, run, settings)
            model = self.build_trainee(resuming["model"] if resuming is not None else state)
            self.log_sparsity(model)
            if run == args.esc_train_prn_run:
                self.log.line(f"Skipping the training of pruning run {run} (--esc_train_prn_run)")
                state = state_of(model)
            else:
                state = self.train_run(model, run, settings, learn_edges=True, n_epochs=settings.epochs,
                                       resume=resuming)
            # the masks do not change within a run: this is the report of the run's best checkpoint
            if self.group.lead:
                Report.log_run_report(model.state_dict(), {"stage": self.role, "model_class": "LightGCN_sp",
                                                           "dataset": args.dataset, "gnn_layer": args.gnn_layer},
                                      f"{args.his_save_path}_compression_prn{run}.json", self._warn,
                                      title=f"Compression report, pruning run {run}")
            if self.trainee_is_student:
                state = self.prune(state, settings)
            if args.run_no_adj_weights:
                self.train_fixed_copy(state, run, settings)
