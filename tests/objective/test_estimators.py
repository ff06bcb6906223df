"""--contrast_estimator=adaptive (Utils/objective/Estimators.py): each estimate is exact when it reads every
row, unbiased for the sum when it samples, differentiable as written, and reaches the objective."""
import dataclasses
import io

import pytest
import torch
import torch.nn.functional as F

import Params
from Utils.config import Build
from Utils.objective import Estimators as E
from Utils.kernels import Kernels
from Utils.objective import Losses
from Utils.runtime.Errors import ConfigError
from Utils.training.Distill import DistillStage, FrozenModels, frozen_outputs
from Utils.files.History import read_history
from Utils.training.Training import RunContext, RunLog
from Model import LightGCN


def _table(n, d=6, scale=0.3, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def test_control_variate_reading_every_row_is_the_exact_log_sum_exp():
    anchors, table = _table(20, seed=1), _table(60, seed=2)
    exact = torch.logsumexp(anchors @ table.T / 0.7, dim=1)
    every = torch.arange(60)
    torch.testing.assert_close(E.control_variate_logsumexp(anchors, table, 0.7, every), exact)
    # anchors that are rows of the table: their own row exact, every other row read
    own = torch.logsumexp(table[:20] @ table.T / 0.7, dim=1)
    torch.testing.assert_close(E.control_variate_logsumexp(table[:20], table, 0.7, every, torch.arange(20)), own)


def test_control_variate_gradients_are_those_of_its_formula():
    anchors = _table(12, seed=3).requires_grad_()
    table = _table(40, seed=4).requires_grad_()
    rows = torch.cat([torch.arange(0, 12, 3), torch.randint(0, 40, (15,), generator=torch.Generator().manual_seed(5))])
    weights = torch.rand(rows.numel(), generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 3
    assert torch.autograd.gradcheck(lambda a, b: E.control_variate_logsumexp(a, b, 0.7, rows, None, weights),
                                    (anchors, table))
    assert torch.autograd.gradcheck(lambda b: E.control_variate_logsumexp(b[:12], b, 0.7, rows, torch.arange(12),
                                                                          weights), (table,))


def _mean_and_se(draw, n):
    values = torch.stack([draw() for _ in range(n)])
    return values.mean(0), values.std(0) / n ** 0.5


def test_control_variate_estimates_each_sum_without_bias():
    anchors, table = _table(8, seed=7).float(), _table(300, seed=8).float()
    exact = torch.exp(anchors @ table.T).sum(dim=1)
    profile = E.TableProfile.build(table)
    gen = torch.Generator().manual_seed(9)

    def draw():
        rows = torch.multinomial(profile.proposal, 20, replacement=True, generator=gen)
        weights = 1.0 / (20 * profile.proposal[rows])
        return torch.exp(E.control_variate_logsumexp(anchors, table, 1.0, rows, None, weights))

    mean, se = _mean_and_se(draw, 2000)
    assert bool((torch.abs(mean - exact) < 4 * se + 1e-4 * exact).all())


def _strata(n_rows=200, n_anchors=30, clusters=8):
    table = _table(n_rows, scale=1.0, seed=10)
    return E.Strata.build(table.float(), _table(n_rows, scale=1.0, seed=11).float(), seed=0, n_clusters=clusters), \
        table, torch.arange(n_anchors)


def test_strata_cover_the_table_once():
    strata, table, _ = _strata()
    rows = torch.cat(strata.members)
    assert torch.equal(rows.sort().values, torch.arange(table.shape[0]))
    nearest = (F.normalize(table.float() + 1e-8, dim=1) @ strata.centroids.T).argmax(dim=1)
    for c, members in enumerate(strata.members):
        assert bool((nearest[members] == c).all())  # each row in the cluster of its nearest centroid
        assert torch.equal(strata.sorted_rows[int(strata.starts[c]):int(strata.starts[c]) + members.numel()], members)


def test_stratified_sum_over_every_cluster_is_exact_and_its_gradient_is_that_of_its_formula():
    strata, table, ids = _strata()
    anchors = _table(30, scale=1.0, seed=12)
    whole = strata.plan(ids, 0.5, rate=1.0, cover=1.0)  # every cluster exact: nothing sampled
    torch.testing.assert_close(E.stratified_logsumexp(anchors, ids, table, 0.5, whole),
                               torch.logsumexp(anchors @ table.T / 0.5, dim=1))
    plan = strata.plan(ids, 0.5, rate=0.3, generator=torch.Generator().manual_seed(1))
    plan = dataclasses.replace(plan, log_weights=[w.double() for w in plan.log_weights])
    assert torch.autograd.gradcheck(lambda a, b: E.stratified_logsumexp(a, ids, b, 0.5, plan),
                                    (anchors.clone().requires_grad_(), table.clone().requires_grad_()))


def test_stratified_sum_is_estimated_without_bias():
    strata, table, ids = _strata()
    anchors, table = _table(30, scale=0.3, seed=13).float(), table.float() * 0.3
    exact = torch.exp(anchors @ table.T / 0.5).sum(dim=1)
    gen = torch.Generator().manual_seed(3)
    mean, se = _mean_and_se(lambda: torch.exp(E.stratified_logsumexp(
        anchors, ids, table, 0.5, strata.plan(ids, 0.5, rate=0.1, generator=gen, cover=0.5))), 2000)
    assert bool((torch.abs(mean - exact) < 4 * se + 1e-4 * exact).all())


def _kd_inputs(n_users=40, n_items=30, d=8):
    g = torch.Generator().manual_seed(0)
    users = (torch.randn(n_users, d, generator=g) * 0.3).requires_grad_()
    items = (torch.randn(n_items, d, generator=g) * 0.3).requires_grad_()
    sup = Losses.Supervisor(torch.randn(n_users, d, generator=g), torch.randn(n_items, d, generator=g),
                            torch.randn(n_users, d, generator=g), torch.randn(n_items, d, generator=g))
    trainee = Losses.Trainee(users, items, users, items, torch.ones(5), None)
    triples = tuple(torch.randint(0, n, (64,), generator=g) for n in (n_users, n_items, n_items))
    return trainee, sup, triples


def test_adaptive_with_k_covering_both_tables_is_the_exact_objective():
    trainee, sup, triples = _kd_inputs()
    cfg = Losses.KDConfig(use_pre_level_kd=False)
    exact = Losses.kd_objective(cfg, trainee, sup, Losses.draw_batch(cfg, triples, triples, (40, 30)))
    adaptive_cfg = dataclasses.replace(cfg, contrast_candidates=40, contrast_estimator="adaptive")
    profiles = (E.TableProfile.build(trainee.users, sup.high_users), E.TableProfile.build(trainee.items, sup.high_items))
    batch = Losses.draw_batch(adaptive_cfg, triples, triples, (40, 30), torch.Generator().manual_seed(0),
                              profiles=profiles)
    assert batch.sample.users is None and batch.sample.items is None
    adaptive = Losses.kd_objective(adaptive_cfg, trainee, sup, batch)
    for part in ("emb_kd", "contr_deno", "total"):
        torch.testing.assert_close(adaptive[part], exact[part])


def test_adaptive_rows_reach_every_all_node_term():
    trainee, sup, triples = _kd_inputs()
    cfg = Losses.KDConfig(use_pre_level_kd=False, contrast_candidates=10, contrast_estimator="adaptive")
    profiles = (E.TableProfile.build(trainee.users, sup.high_users), E.TableProfile.build(trainee.items, sup.high_items))
    batch = Losses.draw_batch(cfg, triples, triples, (40, 30), torch.Generator().manual_seed(0), profiles=profiles)
    sample = batch.sample
    assert sample.control and sample.users.numel() == sample.items.numel() == 10
    assert sample.strata_users is not None and sample.strata_items is not None
    parts = Losses.kd_objective(cfg, trainee, sup, batch)
    exact = Losses.kd_objective(dataclasses.replace(cfg, contrast_candidates=0, contrast_estimator="uniform"),
                                trainee, sup, Losses.draw_batch(Losses.KDConfig(), triples, triples, (40, 30)))
    for part in ("emb_kd", "contr_deno"):
        assert parts[part].item() != exact[part].item()
        torch.testing.assert_close(parts[part], exact[part], rtol=0.05, atol=0.0)


def test_adaptive_needs_k():
    with pytest.raises(ConfigError, match="K is 0"):
        Params.parse_args(["--contrast_estimator=adaptive"])
    args = Params.parse_args(["--contrast_estimator=adaptive", "--contrast_candidates=64"])
    assert Build.run_config(args, 1, True, Kernels.CPU_BLOCKS).kd.contrast_estimator == "adaptive"


def test_a_stage_with_the_adaptive_estimator_rebuilds_its_profiles_each_epoch_and_repeats_itself(
        tiny_dir, tmp_path, monkeypatch):
    import DataHandler as dh

    dataset = dh.load_dataset_dir(str(tiny_dir), "tiny")
    adj = dh.Graph.from_scipy(dh.propagation_matrix(dataset.train))
    builds = []
    original = E.TableProfile.build
    monkeypatch.setattr(E.TableProfile, "build", classmethod(
        lambda cls, *args, **kw: builds.append(1) or original.__func__(cls, *args, **kw)))

    def run(folder):
        args = Params.parse_args([
            f"--data_dir={tiny_dir.parent}", "--dataset=tiny", "--batch=64", "--latdim=8", "--gnn_layer=2",
            "--topRange=500", "--lr=1e-2", "--mask_epoch=2", "--PRUNING_START=1", "--PRUNING_END=1",
            "--distill_from_middle_model=False", "--distill_from_teacher_model=True", "--use_SM_edgeW2aug=False",
            "--use_mTea2drop_edges=False", "--contrast_candidates=16", "--contrast_estimator=adaptive",
            f"--model_save_path={tmp_path}/{folder}/stu", f"--his_save_path={tmp_path}/{folder}/stu"])
        torch.manual_seed(0)
        teacher = LightGCN(dataset.n_users, dataset.n_items, 8, 3)
        out = frozen_outputs(teacher, adj)
        frozen = FrozenModels(supervisor=out, layer0=teacher.layer0().detach(), teacher=out)
        cfg = Build.distill_config(args)
        stage = DistillStage(cfg, dataset, adj, frozen,
                             RunContext(torch.device("cpu"), RunLog(cfg.outputs.history_file, stream=io.StringIO())))
        stage.run()
        return [row["loss"]["total"] for row in read_history(cfg.outputs.history_file)]

    first = run("a")
    assert len(builds) == 2 * 2  # users and items, once in each of the 2 epochs
    assert run("b") == first  # the same numbers again


def test_own_row_pairs_are_every_match_of_an_anchor_s_row_in_the_sample():
    gen = torch.Generator().manual_seed(4)
    rows = torch.randint(0, 30, (50,), generator=gen)  # with repeats
    self_rows = torch.randperm(30, generator=gen)[:12]
    anchor, k = E.own_row_pairs(rows, self_rows)
    brute = torch.nonzero(rows[None, :] == self_rows[:, None])
    assert sorted(zip(anchor.tolist(), k.tolist())) == sorted(map(tuple, brute.tolist()))
    assert torch.equal(anchor, anchor.sort().values)  # sorted by anchor, as the blocks read them


def test_an_anchor_whose_expansion_overshoots_takes_the_plain_weighted_estimate():
    """Far-spread logits (τ small against the rows' spread): where the control-variate sum falls
    below a quarter of the plain weighted sample, the plain one is used, so the log stays finite."""
    anchors, table = _table(6, scale=3.0, seed=20), _table(200, scale=3.0, seed=21)
    rows = torch.arange(0, 200, 10)
    weights = torch.full((rows.numel(),), 10.0, dtype=torch.float64)
    lse = E.control_variate_logsumexp(anchors, table, 0.2, rows, None, weights)
    plain = torch.logsumexp(anchors @ table[rows].T / 0.2, dim=1) + torch.log(torch.tensor(10.0, dtype=torch.float64))
    assert bool(torch.isfinite(lse).all())
    assert bool(torch.isclose(lse, plain).any())  # (here the expansion overshoots for these anchors)
    assert bool((torch.isclose(lse, plain) | (lse > plain + torch.log(torch.tensor(0.25, dtype=torch.float64)))).all())
