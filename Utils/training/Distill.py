"""Stages 2 and 3: distil a frozen supervisor into a trainee, pruning the student between runs.

Stage 2 trains the intermediate model on the closure graph Ĉ under the teacher; stage 3
trains the student on Â under the intermediate model (or the teacher) and prunes it after
every pruning run (``docs/method.md#stages-2-and-3-distillation``). :class:`DistillStage`
runs the pruning runs with the loop every stage shares (:meth:`Utils.training.Training.Stage.fit`);
:meth:`DistillStage.from_files` reads its inputs, :class:`FrozenModels` holds what the
frozen models give it (computed once), :class:`DistillLoss` is the per-batch objective.
Each run's settings (epochs, learning rate, loss, pruning step) arrive ready in a
:class:`Utils.config.Config.RunConfig`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

import DataHandler as dh
from Model import LightGCN, LightGCN_sp, model_from_tensors
from Utils.files import Checkpoint, History, Resume
from Utils.objective import Pruning
from Utils.runtime import Runtime
from Utils.tools import Report
from Utils.config.Config import DistillConfig, RunConfig, recorded_flags
from Utils.objective.Estimators import TableProfile
from Utils.kernels.Kernels import subspace_pair_index
from Utils.objective.Losses import KDConfig, Supervisor, Trainee, draw_batch, kd_objective
from Utils.runtime.Parallel import SOLO, Group
from Utils.training.Training import (EarlyStopper, Record, RunContext, RunLog, Stage, TrainRun, mean_bpr_gradient,
                                     run_identity, timer)


# ----------------------------------------------------------------------------- frozen models
@torch.no_grad()
def frozen_outputs(model: LightGCN, graph) -> Supervisor:
    layers = model.layers(graph)
    out = torch.stack(layers).sum(0)
    high = torch.stack(layers[2:]).sum(0) if len(layers) > 2 else torch.zeros_like(out)
    n = model.n_users
    return Supervisor(out[:n], out[n:], high[:n], high[n:])


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


def random_triples(generator: torch.Generator, top_range: int, n_users: int, n_items: int,
                   device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch's random users and two random item lists of the prediction-level KD."""
    return tuple(torch.randint(0, n, (top_range,), generator=generator).to(device)
                 for n in (n_users, n_items, n_items))


class DistillLoss:
    """The per-batch objective of stages 2–3 (:func:`Utils.objective.Losses.kd_objective`) on the trainee's
    current outputs, for one pruning run; called as ``loss(ancs, poss, negs)``.

    Each call draws the batch's random (users, items, items) of the prediction-level KD
    (:meth:`draw`; tests replace it with fixed ones), the rows of the all-node sums
    (``--contrast_candidates``) and the subspace term's rows, then splits the batch between
    the processes of a data-parallel run once (:class:`Utils.objective.Losses.Batch`, ``group``).
    The trainee's embedding mask is fixed for a pruning run, so the subspace term's positive
    pairs are listed once here (:attr:`pair_index`; None lists them in every batch: the same
    loss, slower, as ``bench/bench_distill.py`` measures).
    """

    def __init__(self, model: LightGCN_sp, graph, supervisor: Supervisor, kd: KDConfig, top_range: int,
                 generator: torch.Generator, group: Group = SOLO):
        self.model, self.graph, self.supervisor, self.kd = model, graph, supervisor, kd
        self.top_range, self.generator, self.group = top_range, generator, group
        self.pair_index = None
        self.table_profiles = None  # --contrast_estimator=adaptive: what it keeps of each table, once an epoch
        if kd.use_subspcreg and kd.subspcreg_version == "v3" and kd.resample_ratio is None:
            mask, n_users = model.emb_mask2_fixed.detach(), model.n_users
            self.pair_index = subspace_pair_index(mask[:n_users], mask[n_users:], kd.loosen, kd.blocks)

    def start_epoch(self) -> None:
        """A new epoch: the adaptive estimator's table profiles are rebuilt at its first batch, from
        the trainee as it is then (so a resumed epoch rebuilds the same ones)."""
        self.table_profiles = None

    def profiles(self) -> Optional[Tuple[TableProfile, TableProfile]]:
        """The (users, items) :class:`Utils.objective.Estimators.TableProfile` of this epoch (None unless adaptive)."""
        kd = self.kd
        if kd.contrast_estimator != "adaptive" or kd.contrast_candidates <= 0:
            return None
        if self.table_profiles is None:
            with torch.no_grad():
                users, items = self.model(self.graph)
            sup, kd_on = self.supervisor, kd.use_emb_level_kd
            self.table_profiles = (TableProfile.build(users, sup.high_users if kd_on else None),
                                   TableProfile.build(items, sup.high_items if kd_on else None))
        return self.table_profiles

    def draw(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return random_triples(self.generator, self.top_range, self.model.n_users, self.model.n_items,
                              self.supervisor.users.device)

    def __call__(self, ancs, poss, negs) -> Dict[str, torch.Tensor]:
        # first what reads back to the host or comes from it (the draws, the distinct anchors), in
        # the order the objective draws them: on a GPU this happens before the step's device work
        # is queued, so the only wait on that work is the loss parts' read-back (train_epoch)
        model = self.model
        profiles = self.profiles()
        batch = draw_batch(self.kd, (ancs, poss, negs), self.draw(), (model.n_users, model.n_items), self.generator,
                           self.group, profiles=profiles)
        users, items = model(self.graph)
        trainee = Trainee(users, items, model.uEmbeds, model.iEmbeds, model.adj_mask1_train, model.emb_mask2_fixed)
        return kd_objective(self.kd, trainee, self.supervisor, batch, self.group.lead, self.pair_index)


# ----------------------------------------------------------------------------- records
RECORD_SPECS = (  # key, published title (log prefix), checkpoint suffix
    ("global", "Best for Global Recall:", "best_global"),
    ("w", "Best with Edge Weights, Recall:", "best_w_edge_wei"),
    ("w2", "2nd Best with Edge Weights, Recall:", "2nd_best_w_edge_wei"),
    ("wo", "Best without Edge Weights,  Recall:", "best_wo_edge_wei"),
    ("wo2", "2nd Best without Edge Weights,", "2nd_best_wo_edge_wei"),
)


def make_records(gaps: Tuple[float, float]) -> Dict[str, Record]:
    """The five records of stages 2–3; the two "2nd best" ones follow their best with a gap
    (``gaps``: with learned edge weights, with fixed ones)."""
    records = {key: Record(title=title, suffix=suffix) for key, title, suffix in RECORD_SPECS}
    records["w2"].gap, records["w2"].reference = gaps[0], records["w"]
    records["wo2"].gap, records["wo2"].reference = gaps[1], records["wo"]
    return records


def record_line(record: Record, select_on: str) -> str:
    sel = record.metrics.get(select_on, {"Recall": record.value, "NDCG": 0.0})
    text = (f"{record.title}[{record.value:.5f}] Best NDCG:[{sel['NDCG']:.5f}] at Epoch:[{record.epoch}] "
            f"in PRN:[{record.prn_run}] with [{record.kind}] | Best Adj:[{record.edge_pct:.5f}%] "
            f"Best Emb:[{record.emb_pct:.5f}%]")
    if select_on != "test" and "test" in record.metrics:
        text += f" | Test Recall:[{record.metrics['test']['Recall']:.5f}] NDCG:[{record.metrics['test']['NDCG']:.5f}]"
    return text


@dataclass
class PruningRun:
    """The moving parts of one pruning run's training: which records it may improve, its own
    best point (``best``) and the state the run hands on (``best_state``, that point's)."""

    index: int
    learn_edges: bool
    n_epochs: int
    edge_pct: float
    emb_pct: float
    resumable: bool = True  # (a frozen-mask copy of --run_no_adj_weights is not)
    best: Record = field(default_factory=lambda: Record(title="run"))
    best_state: Optional[Dict[str, torch.Tensor]] = None

    @property
    def kind(self) -> str:
        return "Train Mask" if self.learn_edges else "Fixed Mask"

    @property
    def keys(self) -> Tuple[str, ...]:
        return ("global", "w", "w2") if self.learn_edges else ("global", "wo", "wo2")

    def update(self, records: Dict[str, Record], value: float, results, epoch: int) -> Optional[List[Record]]:
        """One evaluation's bookkeeping: None when it is not a new best of this run; otherwise the
        records it improved, updated in order (a "2nd best" after its best), to be saved."""
        point = dict(metrics=results, epoch=epoch, prn_run=self.index, kind=self.kind, edge_pct=self.edge_pct,
                     emb_pct=self.emb_pct)
        if not self.best.update(value, **point):
            return None
        return [records[key] for key in self.keys if records[key].update(value, **point)]


def state_of(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- the supervisors
@dataclass
class FrozenModels:
    """What the frozen models give a stage, computed once: ``supervisor`` (the outputs distilled
    from) and its layer-0 embeddings ``layer0`` (``--init_from_supervisor``); for the student's
    pruning, ``teacher``/``middle`` outputs that may score edges and ``mid_weight``
    (``--use_SM_edgeW2aug``: Ĉ's learned weights on Â's edges)."""

    supervisor: Supervisor
    layer0: torch.Tensor
    teacher: Optional[Supervisor] = None
    middle: Optional[Supervisor] = None
    mid_weight: Optional[torch.Tensor] = None

    @classmethod
    def load(cls, cfg: DistillConfig, dataset, adj, closure, device, log: RunLog) -> "FrozenModels":
        """Read the intermediate model and/or the teacher that ``cfg`` names."""
        warn = lambda line: log.line(line, stamp=False)  # noqa: E731
        middle = teacher = weights = None
        if cfg.middle_path is not None:
            model = load_model(cfg.middle_path, "middle_teacher", dataset, device, graph=closure,
                               latdim=cfg.data.latdim, warn=warn).eval()
            middle = (frozen_outputs(model, closure), model.layer0().detach().clone())
            if cfg.middle_edge_weights:
                weights = Pruning.closure_weights_on_adj(adj.row, adj.col, closure.row, closure.col,
                                                         model.adj_mask1_train.detach(), adj.n_nodes)
            log.line("Use the middle teacher (Intermediate KD model) to direct the training of student", stamp=False)
        if cfg.teacher_path is not None:
            model = load_model(cfg.teacher_path, "teacher", dataset, device, latdim=cfg.data.latdim, warn=warn)
            teacher = (frozen_outputs(model, adj), model.layer0().detach().clone())
            log.line("Use the teacher to direct the training", stamp=False)
        chosen = middle if cfg.supervisor == "middle" else teacher
        return cls(supervisor=chosen[0], layer0=chosen[1], teacher=teacher and teacher[0],
                   middle=middle and middle[0], mid_weight=weights)


# ----------------------------------------------------------------------------- the stage
@dataclass
class DistillStart:
    """Where the first pruning run starts: ``break_point`` (a student state, ``--break_point``),
    or ``resume`` (the resume file of an interrupted run); neither: from Xavier or, with
    ``init_from_supervisor``, from the supervisor's layer-0 embeddings."""

    break_point: Optional[Dict[str, torch.Tensor]] = None
    resume: Optional[Dict] = None
    identity: Optional[Dict] = None  # how the run begins (Training.run_identity), computed once


class DistillStage(Stage):
    """One stage-2/3 invocation: the pruning runs of a trainee distilled from :class:`FrozenModels`."""

    model_class = "LightGCN_sp"
    interrupted_line = "Interrupted: the records so far are kept"

    def __init__(self, cfg: DistillConfig, dataset, graph, frozen: FrozenModels, ctx: RunContext,
                 start: Optional[DistillStart] = None):
        super().__init__(cfg, dataset, graph, ctx, role=cfg.role,
                         stage_name="student" if cfg.trainee_is_student else "intermediate",
                         identity=start.identity if start is not None else None)
        log = ctx.log
        self.frozen = frozen
        self.records = make_records(cfg.gaps)
        self.generator = torch.Generator().manual_seed(cfg.loop.seed)
        self.resume = start.resume if start is not None else None
        if self.resume is not None:
            for key, saved in self.resume["records"].items():
                self.records[key].restore(saved)
            log.line(f"Resuming pruning run {self.resume['run']} after epoch {self.resume['epoch']} "
                     f"from {cfg.outputs.last_path}")
        self.first_state = None if self.resume is not None else self.initial_state(start)

    @classmethod
    def from_files(cls, cfg: DistillConfig, ctx: RunContext) -> "DistillStage":
        """Read and check every input (data, supervisors, a break point, a resume file) and the
        outputs it would replace, then build the stage. (The save paths were
        checked, and their folders made, by the entry point's ``Lock.own``.)"""
        log, device = ctx.log, ctx.device
        log.line("Load Data")
        dataset = dh.load_dataset(cfg.data.data_dir, cfg.data.dataset)
        select_on = cfg.evaluation.split(dataset.val is not None, cfg.data.folder)
        log.line(dataset.summary(), stamp=False)
        Runtime.require_model_memory(dataset.n_users, dataset.n_items, cfg.data.latdim, device)
        Runtime.require_triples_memory(cfg.top_range, device)
        adj = dh.Graph.from_scipy(dh.propagation_matrix(dataset.train)).to(device)
        closure = dh.closure_graph(dataset.train, cfg.closure).to(device) if cfg.closure is not None else None
        graph = adj if cfg.trainee_is_student else closure
        frozen = FrozenModels.load(cfg, dataset, adj, closure, device, log)
        Resume.check_outputs(cfg.outputs, cfg.role, cfg.inputs())
        start = DistillStart(identity=run_identity(cfg, ctx))
        if cfg.outputs.resume:
            start.resume = Resume.load_last(cfg.outputs.last_path, cfg.role, dataset.fingerprint, start.identity,
                                            recorded_flags(cfg.flags, select_on),
                                            lambda line: log.line(line, stamp=False))
        elif cfg.break_point is not None:
            model = load_model(cfg.break_point, "student", dataset, device, graph=graph, latdim=cfg.data.latdim,
                               n_layers=cfg.data.gnn_layer, warn=lambda line: log.line(line, stamp=False))
            log.line(f"Model Loaded: {cfg.break_point}")
            start.break_point = state_of(model)
        return cls(cfg, dataset, graph, frozen, ctx, start)

    # -- models
    def build_trainee(self, state: Optional[Dict[str, torch.Tensor]]) -> LightGCN_sp:
        data = self.cfg.data
        model = LightGCN_sp(self.dataset.n_users, self.dataset.n_items, data.latdim, data.gnn_layer,
                            self.graph.nnz).to(self.device)
        if state is not None:
            model.load_state_dict({k: v.to(self.device) for k, v in state.items()})
        return model

    def initial_state(self, start: Optional[DistillStart]) -> Optional[Dict[str, torch.Tensor]]:
        """The first run's starting state: a break point, the supervisor's E₀, or None (fresh)."""
        if start is not None and start.break_point is not None:
            return start.break_point
        if not self.cfg.init_from_supervisor:
            return None
        state = state_of(self.build_trainee(None))
        n_users, layer0 = self.dataset.n_users, self.frozen.layer0
        state["uEmbeds"], state["iEmbeds"] = layer0[:n_users].clone(), layer0[n_users:].clone()
        self.log.line("Trainee embeddings initialised from the supervisor's layer-0 embeddings "
                      "(--init_from_supervisor)")
        return state

    def prune(self, state: Dict[str, torch.Tensor], prune_cfg: Pruning.PruneConfig) -> Dict[str, torch.Tensor]:
        """The state the next run starts from: one pruning step of the student's ``state``."""
        def student_outputs():
            with torch.no_grad():
                return torch.cat(self.build_trainee(state)(self.graph), dim=0)

        def entry_gradient():  # --emb_prune_score=taylor: one draw of the epoch's negatives
            elapsed = timer()
            triples = (self.sampler.users, self.sampler.items, self.sampler.sample(self.rng))
            grad = mean_bpr_gradient(self.build_trainee(state), self.graph, triples, self.device)
            self.log.line(f"Embedding entries ranked by |e * mean BPR gradient| over {len(triples[0])} train "
                          f"triples (--emb_prune_score=taylor), {elapsed():.1f} s")
            return grad

        sup = self.frozen
        scorers = {"student": student_outputs}
        if sup.teacher is not None:
            scorers["teacher"] = lambda: sup.teacher.all
        if sup.middle is not None:
            scorers["middle"] = lambda: sup.middle.all
        return Pruning.prune_state(state, prune_cfg, edges=(self.graph.row, self.graph.col), scorers=scorers,
                                   mid_weight=sup.mid_weight, entry_gradient=entry_gradient,
                                   generator=self.generator)

    # -- records and checkpoints
    def save_record(self, record: Record, model: LightGCN_sp) -> None:
        outputs = self.cfg.outputs
        name = f"_{record.suffix}_{int(record.edge_pct)}_{int(record.emb_pct)}"
        record.path = outputs.model_path + name + ".mod"
        if not self.group.lead:  # (every process keeps the record's path for its summary)
            return
        meta = self.checkpoint_meta(graph="adjacency" if self.cfg.trainee_is_student else "closure",
                                    edge_kept_pct=record.edge_pct, emb_kept_pct=record.emb_pct,
                                    record=record.as_dict())
        Checkpoint.save_checkpoint(record.path, model.state_dict(), meta)
        History.save_record(outputs.history_path + name + ".his", {"stage": self.role, "record": record.as_dict(),
                                                                    "history": self.log.history_rows()})
        self.log.line(f"Model Saved: {outputs.model_path}")

    def summary(self) -> List[str]:
        lines = ["#" * 34 + "Best results for now" + "#" * 46]
        for key, _, _ in RECORD_SPECS:
            record = self.records[key]
            lines.append(record_line(record, self.select_on))
            if record.path:
                lines.append(f"    checkpoint: {record.path}")
        return lines

    # -- one pruning run
    def train_run(self, model: LightGCN_sp, run_cfg: RunConfig, learn_edges: bool, n_epochs: int,
                  resume: Optional[dict] = None, copy: bool = False) -> Dict[str, torch.Tensor]:
        """Train one pruning run; return the model's state at its best evaluation (the final
        state when none was evaluated). ``resume``: the resume file of a run stopped within it.
        After every epoch of a run (not of a frozen-mask ``copy``), the resume file is written."""
        model.adj_mask1_train.requires_grad_(learn_edges)
        run = PruningRun(run_cfg.run, learn_edges, n_epochs, model.edge_kept_pct(), model.emb_kept_pct(),
                         resumable=not copy)
        trainee = TrainRun(model, Runtime.make_optimizer([p for p in model.parameters() if p.requires_grad], run_cfg.lr),
                          DistillLoss(model, self.graph, self.frozen.supervisor, run_cfg.kd, self.cfg.top_range,
                                      self.generator, self.group),
                          EarlyStopper(self.cfg.loop.patience),
                          labels={"stage": self.role, "prn_run": run.index, "kind": run.kind,
                                  "edge_kept_pct": run.edge_pct, "emb_kept_pct": run.emb_pct}, run=run)
        start_epoch = 0
        if resume is not None:
            trainee.optimizer.load_state_dict(resume["optimizer"])
            run.best.restore(resume["run_best"])
            run.best_state = resume["best_state"]
            trainee.stopper.load(resume["stopper"])
            Resume.restore_rngs(resume["rngs"], self.rng, self.generator)
            start_epoch = resume["epoch"] + 1
            if resume["stopped"]:  # stopped early: the run is over (one that ran out of epochs may go on)
                return run.best_state or state_of(model)
        self.fit(trainee, n_epochs, start_epoch)
        return run.best_state or state_of(model)

    def keep(self, epoch: int, results, trainee: TrainRun) -> List[str]:
        run = trainee.run
        improved = run.update(self.records, results[self.select_on]["Recall"], results, epoch)
        if improved is not None:  # a new best of this run: its state is what the run hands on
            for record in improved:
                self.save_record(record, trainee.model)
            run.best_state = state_of(trainee.model)
        sel, best = results[self.select_on], run.best
        what = ("Train Edge Weights & Emb. before Pruning Run" if run.learn_edges
                else "Train Emb. with Fixed Edge Weights in Pruning Run")
        lines = [f"{what} PRN:[{run.index}] (Dataset {self.cfg.data.dataset} Get Mask) Epoch:[{epoch}/{run.n_epochs}], "
                 f"Recall:[{sel['Recall']:.5f}] NDCG:[{sel['NDCG']:.5f}] | Best Recall:[{best.value:.5f}] "
                 f"Best NDCG:[{best.metrics[self.select_on]['NDCG']:.5f}] at Epoch:[{best.epoch}] | "
                 f"Adj:[{run.edge_pct:.5f}%] Emb:[{run.emb_pct:.5f}%]"]
        lines += [record_line(self.records[key], self.select_on) for key, _, _ in RECORD_SPECS]
        return lines + [""]

    def end_epoch(self, epoch: int, stopped: bool, trainee: TrainRun) -> None:
        run = trainee.run
        if not (self.group.lead and run.resumable):  # (the fixed-mask copies are not resumed)
            return
        Resume.save_last(self.cfg.outputs.last_path, self.resume_payload(
            trainee, epoch, stopped, run=run.index, run_best=run.best.as_dict(), best_state=run.best_state,
            records={key: record.as_dict() for key, record in self.records.items()},
            rngs=Resume.capture_rngs(self.rng, self.generator)))

    def log_sparsity(self, model: LightGCN_sp) -> None:
        self.log.line("Model Prepared")
        n_edges = int((model.adj_mask2_fixed != 0).sum())
        self.log.line(f"{n_edges}\n{n_edges}", stamp=False)
        self.log.line("-" * 100, stamp=False)
        self.log.line(f"Sparsity: Adj:[{model.edge_kept_pct():.2f}%] | Emb:[{model.emb_kept_pct():.2f}%]", stamp=False)
        self.log.line("-" * 100, stamp=False)

    def train_fixed_copy(self, state, run_cfg: RunConfig) -> None:
        """--run_no_adj_weights: train a copy with every mask frozen for --fix_epoch epochs."""
        model = self.build_trainee(state)
        self.log_sparsity(model)
        self.train_run(model, run_cfg, learn_edges=False, n_epochs=self.cfg.fixed_copy_epochs, copy=True)

    def run_one(self, state, run_cfg: RunConfig, resuming: Optional[dict]) -> Dict[str, torch.Tensor]:
        """Pruning run ``run_cfg.run`` from ``state``: train it (or skip it), report it, prune the student."""
        model = self.build_trainee(resuming["model"] if resuming is not None else state)
        self.log_sparsity(model)
        if not run_cfg.train:
            self.log.line(f"Skipping the training of pruning run {run_cfg.run} (--esc_train_prn_run)")
            state = state_of(model)
        else:
            if not self.cfg.learn_edge_weights:  # --learn_edge_weights=False: 1 on every kept edge
                with torch.no_grad():
                    model.adj_mask1_train.copy_(model.adj_mask2_fixed)
            state = self.train_run(model, run_cfg, learn_edges=self.cfg.learn_edge_weights, n_epochs=run_cfg.epochs,
                                   resume=resuming)
        # the masks do not change within a run: this is the report of the run's best checkpoint
        if self.group.lead:
            Report.log_run_report(model.state_dict(), {"stage": self.role, "model_class": self.model_class,
                                                       "dataset": self.cfg.data.dataset,
                                                       "gnn_layer": self.cfg.data.gnn_layer},
                                  f"{self.cfg.outputs.history_path}_compression_prn{run_cfg.run}.json",
                                  lambda line: self.log.line(line, stamp=False),
                                  title=f"Compression report, pruning run {run_cfg.run}")
        if run_cfg.prune is not None:
            state = self.prune(state, run_cfg.prune)
        return state

    def run(self) -> None:
        """The pruning runs; each starts from the state the last one left: the best point of its
        training, pruned once more for the student."""
        cfg, resume = self.cfg, self.resume
        # the inputs were all checked when the stage was built
        if resume is None and self.group.lead:
            Resume.clear_earlier_run(cfg.outputs, self.role, lambda line: self.log.line(line, stamp=False))
        self.log.reset_history(resume["history"] if resume is not None else ())
        state = self.first_state
        first = resume["run"] if resume is not None else cfg.runs[0].run
        for run_cfg in cfg.runs:
            if run_cfg.run < first:
                continue
            resuming = resume if resume is not None and run_cfg.run == first else None
            if cfg.fixed_copy_epochs is not None and run_cfg is cfg.runs[0]:
                self.train_fixed_copy(state, run_cfg)
            state = self.run_one(state, run_cfg, resuming)
            if cfg.fixed_copy_epochs is not None:
                self.train_fixed_copy(state, run_cfg)
