"""The stages built from objects, in memory: no subprocess, no files read but the tiny split.

``DistillStage``/``TeacherStage`` take their frozen config, the dataset, the graph and (for
stages 2-3) the supervisors; ``from_files`` is only what reads those from disk. These tests
build each stage by hand, run an epoch and check what its records and files hold.
"""
import io

import pytest
import torch

import DataHandler as dh
import Params
from Model import LightGCN, model_from_tensors
from Utils import Checkpoint
from Utils.Config import Data, DistillConfig, Evaluation, Loop, Outputs, RunConfig, TeacherConfig
from Utils.Distill import DistillStage, FrozenModels, frozen_outputs
from Utils.Losses import KDConfig
from Utils.Pruning import PruneConfig
from Utils.Teacher import TeacherStage
from Utils.Training import RunLog, read_history


@pytest.fixture
def tiny_split(tiny_dir):
    dataset = dh.load_dataset_dir(str(tiny_dir), "tiny")
    return dataset, dh.Graph.from_scipy(dh.propagation_matrix(dataset.train))


def _common(tiny_dir, out):
    return dict(data=Data(str(tiny_dir.parent), "tiny", latdim=8, gnn_layer=2), loop=Loop(batch=64, seed=3),
                evaluation=Evaluation(topk=20, batch_users=64), outputs=Outputs(str(out), str(out)), flags={})


def _reevaluate(stage, path):
    """The selection metrics of a saved checkpoint, computed afresh by the stage's evaluator."""
    ckpt = Checkpoint.load_checkpoint(path)
    model = model_from_tensors(ckpt.tensors, stage.dataset.n_users, stage.dataset.n_items, 2)
    return stage.suite.evaluate(lambda: model(stage.graph))


def test_a_student_stage_built_in_memory_trains_one_epoch_and_keeps_its_record(tiny_dir, tiny_split, tmp_path):
    dataset, adj = tiny_split
    torch.manual_seed(0)
    teacher = LightGCN(dataset.n_users, dataset.n_items, 8, 3)
    frozen = FrozenModels(supervisor=frozen_outputs(teacher, adj), layer0=teacher.layer0().detach())
    run = RunConfig(run=1, epochs=1, lr=1e-2, kd=KDConfig(), prune=PruneConfig(edge_cut=0.15, emb_cut=0.2))
    cfg = DistillConfig(role="student", runs=(run,), top_range=500, init_from_supervisor=True,
                        **_common(tiny_dir, tmp_path / "stu"))
    log = RunLog(cfg.outputs.history_file, stream=io.StringIO())
    stage = DistillStage(cfg, dataset, adj, frozen, log, torch.device("cpu"))
    assert torch.equal(stage.first_state["uEmbeds"], teacher.uEmbeds.detach())  # --init_from_supervisor

    stage.run()

    record = stage.records["global"]
    assert (record.epoch, record.prn_run, record.kind, record.edge_pct, record.emb_pct) == (0, 1, "Train Mask",
                                                                                          100.0, 100.0)
    assert record.value == record.metrics["val"]["Recall"] > 0
    assert record.path == str(tmp_path / "stu") + "_best_global_100_100.mod"
    assert _reevaluate(stage, record.path) == record.metrics  # the checkpoint holds the evaluated weights
    meta = Checkpoint.load_checkpoint(record.path).meta
    assert (meta["role"], meta["stage"], meta["select_on"], meta["record"]["value"]) == ("student", "student", "val",
                                                                                       record.value)
    rows = read_history(cfg.outputs.history_file)
    assert [(row["stage"], row["prn_run"], row["epoch"]) for row in rows] == [("student", 1, 0)]
    assert rows[0]["metrics"] == record.metrics and set(rows[0]["loss"]) >= {"total", "main", "pred_kd", "emb_kd"}


def test_a_teacher_stage_built_in_memory_keeps_the_best_of_its_epochs(tiny_dir, tiny_split, tmp_path):
    dataset, adj = tiny_split
    cfg = TeacherConfig(epochs=2, lr=1e-2, reg=1e-6, **_common(tiny_dir, tmp_path / "tea"))
    stage = TeacherStage(cfg, dataset, adj, RunLog(cfg.outputs.history_file, stream=io.StringIO()),
                         torch.device("cpu"))
    stage.run()
    rows = read_history(cfg.outputs.history_file)
    best = max(rows, key=lambda row: row["metrics"]["val"]["Recall"])
    assert [row["epoch"] for row in rows] == [0, 1]
    assert (stage.record.epoch, stage.record.metrics) == (best["epoch"], best["metrics"])
    assert _reevaluate(stage, stage.save_path) == best["metrics"]


def test_the_configs_built_from_flags_decide_the_scorer_and_the_runs_once():
    args = Params.parse_args(["--PRUNING_START=2", "--PRUNING_END=4", "--use_adj_mask_aug=True",
                              "--use_mTea2drop_edges=False", "--use_tea2drop_edges=True", "--use_SM_edgeW2aug=False",
                              "--use_dynamic_epoch=True", "--epoch_list=0,0,7,8,9", "--esc_train_prn_run=3"])
    cfg = Params.distill_config(args)
    assert [(r.run, r.epochs, r.train, r.prune.scoring) for r in cfg.runs] == [(2, 7, True, "teacher"),
                                                                            (3, 8, False, "teacher"),
                                                                            (4, 9, True, "teacher")]
    assert cfg.teacher_path == args.teacher_model  # read to score the edges, though the middle model supervises
    assert (cfg.supervisor, cfg.middle_path) == ("middle", args.middle_teacher_model)
    mid = Params.distill_config(Params.parse_args(["--train_middle_model=True", "--distill_from_middle_model=False",
                                                   "--distill_from_teacher_model=True", "--PRUNING_END=1"]))
    assert (mid.role, mid.supervisor, mid.middle_path, mid.runs[0].prune) == ("middle_teacher", "teacher", None, None)
    assert mid.closure is not None and not mid.runs[0].kd.use_subspcreg
