"""The frozen settings a stage runs with, built once from the flags (:mod:`Utils.config.Build`).

Nothing below the entry points and the flag layer reads the parsed flags: each stage, and
each helper it calls, receives one of these objects. ``flags`` (a copy of every parsed flag)
is carried only to be written into checkpoints and resume files, never read for behaviour.

A checkpoint stores its stage's config as plain data (:func:`record`, ``meta["config"]``)
beside the published flag names; what reads a checkpoint after training (the model tools,
plots, the Python API) rebuilds the settings it needs from that record (``recorded_*``),
never from the parser. Files without one (checkpoints written before it was stored: their
recorded flags; published ``.mod`` files: nothing) fall back in one place, :data:`_LEGACY`.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple

from Utils.runtime.Errors import ConfigError
from Utils.objective.Losses import KDConfig
from Utils.objective.Pruning import PruneConfig


DEFAULT_DATA_DIR = "./Datasets"  # --data_dir's default, and where a file that records none looks


def history_file(path: str) -> str:
    """The history file of a ``--his_save_path`` / ``--load_his_tea`` value (".his" appended when missing)."""
    path = str(path)
    return os.path.abspath(path if path.endswith(".his") else path + ".his")


def recorded_flags(flags: Optional[Mapping[str, Any]], select_on: str) -> dict:
    """The flags as a stage's outputs record them (and a resume compares them): the parsed
    flags with ``select_on`` resolved against the data."""
    return {**(flags or {}), "select_on": select_on}


@dataclass(frozen=True)
class Execution:
    """Where a run executes (``--device``, ``--gpu``, ``--threads``, ``--deterministic``, ``--seed``)."""

    device: str = "auto"
    gpu: Optional[str] = None
    threads: int = 0
    deterministic: bool = True
    seed: int = 1234


@dataclass(frozen=True)
class Outputs:
    """Where a stage writes (``--model_save_path``, ``--his_save_path``) and what it may do to
    an earlier run's files there (``--resume`` continues it, ``--overwrite`` replaces it)."""

    model_path: str
    history_path: str
    resume: bool = False
    overwrite: bool = False

    @property
    def last_path(self) -> str:
        """The resume file, written after every epoch: ``<model_save_path>_last.ckpt``."""
        return self.model_path + "_last.ckpt"

    @property
    def history_file(self) -> str:
        return history_file(self.history_path)


@dataclass(frozen=True)
class Evaluation:
    """Recall/NDCG@``topk`` (``--topk``), ``batch_users`` users at a time (``--tstBat``), and the
    split whose Recall selects checkpoints (``--select_on``; None: validation when the data has it)."""

    topk: int = 20
    batch_users: int = 64
    select_on: Optional[str] = None

    def split(self, has_val: bool, data_dir: str = "") -> str:
        """The selection split for a dataset with or without a validation split."""
        if self.select_on is None:
            return "val" if has_val else "test"
        if self.select_on == "val" and not has_val:
            raise ConfigError(f"--select_on=val but there is no valMat.pkl in {data_dir}")
        return self.select_on


@dataclass(frozen=True)
class Loop:
    """The epoch loop: ``batch`` triples per step (``--batch``), an evaluation every ``tst_every``
    epochs (``--tstEpoch``), early stopping after ``patience`` evaluations without a new best
    (``--patience``, 0: never), and the seed of the negative sampling and of the random draws."""

    batch: int = 4096
    tst_every: int = 1
    patience: int = 0
    seed: int = 1234


@dataclass(frozen=True)
class Data:
    """The split a stage reads: ``<data_dir>/sparse_<dataset>/`` and the model size trained on it."""

    data_dir: str
    dataset: str
    latdim: int = 64
    gnn_layer: int = 2

    @property
    def folder(self) -> str:
        return os.path.join(self.data_dir, f"sparse_{self.dataset}")


@dataclass(frozen=True)
class TeacherConfig:
    """Stage 1 (``pretrainTeacher.py``)."""

    data: Data
    loop: Loop
    evaluation: Evaluation
    outputs: Outputs
    epochs: int = 300
    lr: float = 1e-3
    reg: float = 1e-7
    reg_batch: bool = False  # --reg_batch: the weight decay on the batch's layer-0 rows (LightGCN's)
    load_model: str = ""  # --load_model_tea: start from these weights
    load_history: str = ""  # --load_his_tea: continue this history
    flags: Mapping[str, Any] = None

    def supervisors(self) -> Mapping[str, Optional[str]]:
        """The models a resumed run reads again, by flag: none (the teacher learns from the data alone)."""
        return {}


@dataclass(frozen=True)
class Closure:
    """How Ĉ = I + A + A² (+ …) is built (``--adj_aug_layer``, ``--adj_aug_sample*``; ``seed``
    draws the random sample)."""

    layers: int = 1
    sample: bool = False
    sample_ratio: float = 0.9
    sample_random: bool = False
    seed: int = 1234


@dataclass(frozen=True)
class RunConfig:
    """One pruning run: how long it trains, at what rate, its loss and the pruning step after it
    (None: the trainee is the intermediate model, never pruned). ``train=False`` skips its training
    (``--esc_train_prn_run``)."""

    run: int
    epochs: int
    lr: float
    kd: KDConfig
    prune: Optional[PruneConfig]
    train: bool = True


@dataclass(frozen=True)
class DistillConfig:
    """Stages 2 and 3 (``Main.py``).

    ``role``: ``middle_teacher`` (stage 2, trained on Ĉ) or ``student`` (stage 3, on Â, pruned).
    ``supervisor``: ``teacher`` or ``middle``, the model distilled from. ``teacher_path`` is set
    whenever the teacher is read (to supervise, or to score the student's edges), ``middle_path``
    whenever the intermediate model is; ``closure`` whenever Ĉ is needed.
    ``fixed_copy_epochs``: ``--run_no_adj_weights`` trains a copy with frozen masks that long.
    ``learn_edge_weights``: whether the runs train the edge weights (False: 1 on every kept edge).
    ``gaps``: the "2nd best" gaps with learned and with fixed edge weights.
    """

    role: str
    data: Data
    loop: Loop
    evaluation: Evaluation
    outputs: Outputs
    runs: Tuple[RunConfig, ...]
    supervisor: str = "teacher"
    teacher_path: Optional[str] = None
    top_range: int = 100000
    middle_path: Optional[str] = None
    init_from_supervisor: bool = False
    break_point: Optional[str] = None
    gaps: Tuple[float, float] = (0.99, 0.99)
    closure: Optional[Closure] = None
    middle_edge_weights: bool = False  # --use_SM_edgeW2aug: the student's edge scores read Ĉ's learned weights
    fixed_copy_epochs: Optional[int] = None
    learn_edge_weights: bool = True  # False: binary edge weights (--learn_edge_weights, the BnEdge ablation)
    flags: Mapping[str, Any] = None

    @property
    def trainee_is_student(self) -> bool:
        return self.role == "student"

    def inputs(self) -> Mapping[str, Optional[str]]:
        """The checkpoints this stage reads, by flag (never among its outputs)."""
        return {**self.supervisors(), "break_point": self.break_point}

    def supervisors(self) -> Mapping[str, Optional[str]]:
        """The models a resumed run reads again, by flag (None: not read)."""
        return {"middle_teacher_model": self.middle_path, "teacher_model": self.teacher_path}


# ----------------------------------------------------------------------------- read back from a checkpoint
def record(cfg) -> dict:
    """``cfg`` (a stage's config) as plain data for ``meta["config"]``, the flags copy left out."""
    out = dataclasses.asdict(cfg)
    out.pop("flags", None)
    return out


# The published flag names older checkpoints recorded, for each setting read back (section, field).
_LEGACY = {("closure", "layers"): "adj_aug_layer", ("closure", "sample"): "adj_aug_sample",
           ("closure", "sample_ratio"): "adj_aug_sample_ratio", ("closure", "sample_random"): "adj_aug_sample_random",
           ("closure", "seed"): "seed", ("evaluation", "topk"): "topk", ("evaluation", "batch_users"): "tstBat",
           ("data", "data_dir"): "data_dir", ("data", "dataset"): "dataset",
           ("outputs", "history_path"): "his_save_path"}
_SECTIONS = {"closure": Closure, "evaluation": Evaluation}


def _recorded(meta: Mapping[str, Any], section: str, name: str, default: Any) -> Any:
    config = meta.get("config") or {}
    if isinstance(config.get(section), Mapping) and name in config[section]:
        return config[section][name]
    flags = meta.get("flags") or {}
    flag = _LEGACY.get((section, name))
    return flags[flag] if flag in flags and flags[flag] is not None else default


def recorded_section(meta: Mapping[str, Any], section: str):
    """The :class:`Closure` or :class:`Evaluation` a checkpoint was trained with."""
    cls = _SECTIONS[section]
    return cls(**{f.name: _recorded(meta, section, f.name, f.default) for f in dataclasses.fields(cls)})


def recorded_dataset(meta: Mapping[str, Any]) -> Tuple[Optional[str], str]:
    """(dataset name or None, data folder) a checkpoint was trained on."""
    name = _recorded(meta, "data", "dataset", None) or meta.get("dataset")
    return name, _recorded(meta, "data", "data_dir", None) or meta.get("data_dir") or DEFAULT_DATA_DIR


def recorded_upstream(meta: Mapping[str, Any]) -> Tuple[Optional[str], Optional[str]]:
    """(its history file or None, the teacher it was distilled from when it is an intermediate
    model, else None): how ``modelTools plot`` finds the stages before a student."""
    history = _recorded(meta, "outputs", "history_path", None)
    config = meta.get("config") or {}
    if config:
        teacher = config.get("teacher_path") if config.get("role") == "middle_teacher" else None
    else:
        flags = meta.get("flags") or {}
        teacher = flags.get("teacher_model") if flags.get("train_middle_model") else None
    return (history_file(history) if history else None), teacher
