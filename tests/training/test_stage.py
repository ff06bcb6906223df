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
from Utils.config import Build
from Model import LightGCN, model_from_tensors
from Utils.files import Checkpoint
from Utils.config.Config import Data, DistillConfig, Evaluation, Loop, Outputs, RunConfig, TeacherConfig
from Utils.training.Distill import DistillStage, FrozenModels, frozen_outputs
from Utils.objective import Losses as L
from Utils.objective.Losses import KDConfig
from Utils.objective.Pruning import PruneConfig
from Utils.training.Teacher import TeacherStage
from Utils.files.History import read_history
from Utils.training.Training import RunContext, RunLog


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
    stage = DistillStage(cfg, dataset, adj, frozen, RunContext(torch.device("cpu"), log))
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
    stage = TeacherStage(cfg, dataset, adj,
                         RunContext(torch.device("cpu"), RunLog(cfg.outputs.history_file, stream=io.StringIO())))
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
    cfg = Build.distill_config(args)
    assert [(r.run, r.epochs, r.train, r.prune.scoring) for r in cfg.runs] == [(2, 7, True, "teacher"),
                                                                            (3, 8, False, "teacher"),
                                                                            (4, 9, True, "teacher")]
    assert cfg.teacher_path == args.teacher_model  # read to score the edges, though the middle model supervises
    assert (cfg.supervisor, cfg.middle_path) == ("middle", args.middle_teacher_model)
    mid = Build.distill_config(Params.parse_args(["--train_middle_model=True", "--distill_from_middle_model=False",
                                                   "--distill_from_teacher_model=True", "--PRUNING_END=1"]))
    assert (mid.role, mid.supervisor, mid.middle_path, mid.runs[0].prune) == ("middle_teacher", "teacher", None, None)
    assert mid.closure is not None and not mid.runs[0].kd.use_subspcreg


# ----------------------------------------------------------------------------- flags -> configs -> stage
def _stage_from_flags(tiny_dir, tiny_split, tmp_path, *flags):
    """A student stage built in memory from command-line flags, under a random 3-layer teacher."""
    dataset, adj = tiny_split
    args = Params.parse_args([
        f"--data_dir={tiny_dir.parent}", "--dataset=tiny", "--batch=64", "--latdim=8", "--gnn_layer=2",
        "--topRange=500", "--lr=1e-2", "--mask_epoch=1", "--PRUNING_START=1", "--PRUNING_END=1",
        "--distill_from_middle_model=False", "--distill_from_teacher_model=True", "--use_SM_edgeW2aug=False",
        "--use_mTea2drop_edges=False", f"--model_save_path={tmp_path}/stu", f"--his_save_path={tmp_path}/stu",
        *flags])
    cfg = Build.distill_config(args)
    torch.manual_seed(0)
    teacher = LightGCN(dataset.n_users, dataset.n_items, 8, 3)
    out = frozen_outputs(teacher, adj)
    frozen = FrozenModels(supervisor=out, layer0=teacher.layer0().detach(), teacher=out)
    log = RunLog(cfg.outputs.history_file, stream=io.StringIO())
    return DistillStage(cfg, dataset, adj, frozen, RunContext(torch.device("cpu"), log))


def _losses(stage):
    stage.run()
    return [row["loss"]["total"] for row in read_history(stage.cfg.outputs.history_file)]


def test_contrast_candidates_reach_the_stage_s_loss(tiny_dir, tiny_split, tmp_path):
    exact = _losses(_stage_from_flags(tiny_dir, tiny_split, tmp_path / "a"))
    covering = _losses(_stage_from_flags(tiny_dir, tiny_split, tmp_path / "b", "--contrast_candidates=1000"))
    sampled = _losses(_stage_from_flags(tiny_dir, tiny_split, tmp_path / "c", "--contrast_candidates=10"))
    assert covering == exact  # K >= both tables (60 users, 40 items): the exact sums, nothing drawn
    assert sampled != exact


def test_hyper_contr_resample_reaches_the_subspace_rows(tiny_dir, tiny_split, tmp_path, monkeypatch):
    drawn = []
    original = L.SubspaceRows.draw

    def spy(users, items, cfg, *rest):
        rows = original(users, items, cfg, *rest)
        drawn.append((users.numel(), rows.users.whole.numel(), cfg.resample_ratio))
        return rows

    monkeypatch.setattr(L.SubspaceRows, "draw", staticmethod(spy))
    on_from_run_1 = ("--use_subspcreg=True", "--hyper_contr_start_prn_run=1")
    _losses(_stage_from_flags(tiny_dir, tiny_split, tmp_path / "a", *on_from_run_1))
    _losses(_stage_from_flags(tiny_dir, tiny_split, tmp_path / "b", *on_from_run_1, "--hyper_contr_resample=True",
                              "--hyper_contr_resample_ratio=0.5"))
    whole, resampled = drawn[:len(drawn) // 2], drawn[len(drawn) // 2:]
    assert all(kept == n and ratio is None for n, kept, ratio in whole)
    assert all(kept == max(1, int(0.5 * n)) and ratio == 0.5 for n, kept, ratio in resampled)


def test_random_pruning_flags_reach_the_pruning_step(tiny_dir, tiny_split, tmp_path):
    def pruned(folder, *flags):
        stage = _stage_from_flags(tiny_dir, tiny_split, tmp_path / folder, "--PRUNING_END=2",
                                  "--pruning_percent_adj=0.2", "--pruning_percent_emb=0.25", *flags)
        stage.run()
        return stage.records["w2"], stage.log.history_rows()[-1], stage.graph.nnz  # (the last run's labels)

    magnitude, _, _ = pruned("a")
    random, run2, n = pruned("b", "--use_adj_random_pruning=True", "--use_emb_random_pruning=True")
    assert (run2["prn_run"], run2["emb_kept_pct"]) == (2, 75.0)  # floor(pct * survivors) removed
    assert run2["edge_kept_pct"] == pytest.approx(100 * (n - int(0.2 * n)) / n)
    mag = Checkpoint.load_checkpoint(magnitude.path).tensors
    rnd = Checkpoint.load_checkpoint(random.path).tensors
    assert not torch.equal(mag["adj_mask2_fixed"], rnd["adj_mask2_fixed"])
    assert not torch.equal(mag["emb_mask2_fixed"], rnd["emb_mask2_fixed"])


def test_binary_edge_weights_stay_one_on_kept_edges_and_fill_the_fixed_weight_records(tiny_dir, tiny_split,
                                                                                      tmp_path):
    """--learn_edge_weights=False (BnEdge): every run propagates with weight 1 on each kept edge and 0 on
    the pruned ones, never trained; its points are the "without edge weights" records and it still writes
    a resume file after each epoch (a run of its own, not a frozen copy)."""
    stage = _stage_from_flags(tiny_dir, tiny_split, tmp_path, "--PRUNING_END=2", "--pruning_percent_adj=0.2",
                              "--learn_edge_weights=False")
    assert not stage.cfg.learn_edge_weights
    stage.run()
    last_run = stage.log.history_rows()[-1]
    assert last_run["prn_run"] == 2 and last_run["kind"] == "Fixed Mask"
    assert stage.records["w"].path is None and stage.records["wo"].path is not None
    assert last_run["edge_kept_pct"] < 100.0  # run 2 was pruned
    for record in ("wo", "wo2"):
        tensors = Checkpoint.load_checkpoint(stage.records[record].path).tensors
        assert torch.equal(tensors["adj_mask1_train"], tensors["adj_mask2_fixed"])
    last = torch.load(stage.cfg.outputs.last_path, weights_only=True)
    assert last["run"] == 2
    learned = _stage_from_flags(tiny_dir, tiny_split, tmp_path / "w")
    learned.run()
    tensors = Checkpoint.load_checkpoint(learned.records["w"].path).tensors
    assert not torch.equal(tensors["adj_mask1_train"], tensors["adj_mask2_fixed"])  # the default learns them


def test_the_taylor_entry_score_reaches_the_pruning_step(tiny_dir, tiny_split, tmp_path, monkeypatch):
    """--emb_prune_score=taylor: the step ranks the entries of the state it prunes by |e * ḡ|, ḡ the mean
    BPR gradient the stage computed for it; the same number of entries goes as with magnitude."""
    from Utils.objective import Pruning
    from Utils.training import Distill

    seen, grads = [], []
    prune_state, gradient = Pruning.prune_state, Distill.mean_bpr_gradient

    def spy_prune(state, cfg, **kwargs):
        seen.append((cfg.emb_score, state, prune_state(state, cfg, **kwargs)))
        return seen[-1][2]

    def spy_gradient(*args, **kwargs):
        grads.append(gradient(*args, **kwargs))
        return grads[-1]

    monkeypatch.setattr(Pruning, "prune_state", spy_prune)
    monkeypatch.setattr(Distill, "mean_bpr_gradient", spy_gradient)
    for folder, score in (("a", "magnitude"), ("b", "taylor")):
        _stage_from_flags(tiny_dir, tiny_split, tmp_path / folder, "--pruning_percent_emb=0.25",
                          f"--emb_prune_score={score}").run()
    (mag_score, mag_before, magnitude), (tay_score, before, taylor) = seen
    assert (mag_score, tay_score, len(grads)) == ("magnitude", "taylor", 1)
    assert torch.equal(mag_before["uEmbeds"], before["uEmbeds"])  # the same run 1, pruned two ways
    embeds = torch.cat([before["uEmbeds"], before["iEmbeds"]]) * before["emb_mask2_fixed"]
    n_users = before["uEmbeds"].shape[0]
    expected = Pruning.prune_embeddings(embeds[:n_users], embeds[n_users:], before["emb_mask2_fixed"], 0.25,
                                        score=(embeds * grads[0]).abs())[2]
    assert torch.equal(taylor["emb_mask2_fixed"], expected)
    assert int(taylor["emb_mask2_fixed"].sum()) == int(magnitude["emb_mask2_fixed"].sum())
    assert not torch.equal(taylor["emb_mask2_fixed"], magnitude["emb_mask2_fixed"])
    assert torch.equal(taylor["adj_mask2_fixed"], magnitude["adj_mask2_fixed"])


def test_closure_sampling_flags_reach_the_closure_graph(tiny_split):
    dataset, _ = tiny_split

    def closure_edges(*flags):
        cfg = Build.distill_config(Params.parse_args(["--train_middle_model=True", "--distill_from_middle_model=False",
                                                       "--distill_from_teacher_model=True", "--PRUNING_END=1",
                                                       *flags]))
        return dh.closure_graph(dataset.train, cfg.closure).nnz

    full, half = closure_edges(), closure_edges("--adj_aug_sample=True", "--adj_aug_sample_ratio=0.5")
    assert closure_edges("--adj_aug_sample=True", "--adj_aug_sample_ratio=1.0") == full
    assert half < full


def test_gaps_and_evaluation_schedule_reach_the_stage(tiny_dir, tiny_split, tmp_path):
    stage = _stage_from_flags(tiny_dir, tiny_split, tmp_path, "--train_2nd_best_gap=0.4", "--fixed_2nd_best_gap=0.3",
                              "--mask_epoch=3", "--tstEpoch=2")
    assert (stage.records["w2"].gap, stage.records["wo2"].gap) == (0.4, 0.3)
    assert stage.records["wo2"].reference is stage.records["wo"]
    stage.run()
    rows = read_history(stage.cfg.outputs.history_file)
    assert [(row["epoch"], "metrics" in row) for row in rows] == [(0, True), (1, False), (2, True)]
