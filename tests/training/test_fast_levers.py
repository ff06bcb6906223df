"""The time-to-quality levers: sampled all-node terms, listed subspace positives, early stopping.

Each is off by default; these tests pin what each computes when it is on, and that its
exact limit is the published objective.
"""
import math
from types import SimpleNamespace

import pytest
import torch

from conftest import _batch_inputs, assert_same_objective, kd_parts
from Utils.kernels import Kernels as K
from Utils.objective import Losses as L
from Utils.kernels import MaskPairs
from Utils.config.Config import Loop
from Utils.training.Training import EarlyStopper, RunLog, Stage, TrainRun


def _loss_and_grads(cfg, inputs, **kwargs):
    parts = kd_parts(cfg, inputs, **kwargs)
    leaves = [inputs[k] for k in ("stu_users", "stu_items", "stu_u_embeds", "stu_i_embeds", "stu_edge_weight")]
    grads = torch.autograd.grad(parts["total"], leaves)
    return parts, grads


@pytest.mark.parametrize("subspace", [False, True])
def test_candidates_covering_the_tables_is_the_exact_objective(subspace):
    inputs = _batch_inputs()
    base = dict(use_subspcreg=subspace, loosen=1.0, subspcreg=0.5)
    exact, exact_grads = _loss_and_grads(L.KDConfig(**base), inputs)
    for k in (37, 1000):  # K >= both tables (37 users, 29 items): every table is kept whole
        gen = torch.Generator().manual_seed(1)
        parts, grads = _loss_and_grads(L.KDConfig(contrast_candidates=k, **base), inputs, generator=gen)
        assert torch.equal(gen.get_state(), torch.Generator().manual_seed(1).get_state())  # nothing drawn
        assert_same_objective(parts, grads, exact, exact_grads)


def test_sampled_denominator_is_unbiased():
    """Mean over draws of (|T|/K)·Σ_{m∈S} exp(s_nm) equals Σ_{m∈T} exp(s_nm) within 1 %."""
    g = torch.Generator().manual_seed(0)
    anchors, table = 0.5 * torch.randn(16, 8, generator=g), 0.5 * torch.randn(500, 8, generator=g)
    exact = K.table_logsumexp(anchors, table, 1.0).exp()
    draws = 4000
    total = torch.zeros(16, dtype=torch.float64)
    for _ in range(draws):
        sample = K.draw_contrast_sample(1, 500, 50, g).items
        total += K.table_logsumexp(anchors, table, 1.0, sample).exp().double()
    torch.testing.assert_close(total / draws, exact.double(), rtol=0.01, atol=0)


def test_one_sample_is_shared_by_every_all_node_term():
    """With a given sample, each term is its exact formula with table sums replaced by the estimate."""
    inputs = _batch_inputs(seed=3)
    sample = K.ContrastSample(users=torch.tensor([0, 5, 9, 12, 30]), items=torch.tensor([1, 2, 3, 20]))
    cfg = L.KDConfig(use_subspcreg=True, loosen=0.0, subspcreg=1.0, use_pre_level_kd=False)
    parts = kd_parts(cfg, inputs, sample=sample)
    su, si = inputs["stu_users"], inputs["stu_items"]
    uu, ui = torch.unique(inputs["ancs"]), torch.unique(inputs["poss"])

    def est_lse(a, table, rows, temp):
        logits = a @ table[rows].T / temp
        return torch.logsumexp(logits, dim=1) + math.log(table.shape[0] / rows.numel())

    deno = sum(torch.logaddexp(est_lse(a[idx], b, rows, 1.0), torch.tensor(math.log(1e-5))).mean()
               for a, b, idx, rows in ((su, si, uu, sample.items), (si, su, ui, sample.users),
                                       (su, su, uu, sample.users), (si, si, ui, sample.items)))
    torch.testing.assert_close(parts["contr_deno"], deno, rtol=1e-5, atol=1e-6)

    def infonce(x_all, y_all, idx, rows):
        x = torch.nn.functional.normalize(x_all[idx] + 1e-8, dim=1)
        y = torch.nn.functional.normalize(y_all + 1e-8, dim=1)
        lse = est_lse(x, y, rows, 0.1)
        return (torch.logaddexp(lse, torch.tensor(math.log(1e-8))) - (x * y[idx]).sum(1) / 0.1).mean()

    emb = 0.01 * (infonce(inputs["sup_high_users"], su, uu, sample.users)
                  + infonce(inputs["sup_high_items"], si, ui, sample.items))
    torch.testing.assert_close(parts["emb_kd"], emb, rtol=1e-5, atol=1e-7)

    mask = inputs["emb_mask"]
    mu, mi = mask[:su.shape[0]], mask[su.shape[0]:]
    sub = 0.0
    for a, ma, idx, b, mb, rows in ((su, mu, uu, si, mi, sample.items), (si, mi, ui, su, mu, sample.users),
                                    (su, mu, uu, su, mu, sample.users), (si, mi, ui, si, mi, sample.items)):
        dot = ma[idx] @ mb.T
        t = ((dot >= ma[idx].sum(1, keepdim=True)) & (dot >= mb.sum(1)[None, :])).float()  # δ = 0, whole table
        sub = sub + (t.sum(1) * est_lse(a[idx], b, rows, 1.0) - (t * (a[idx] @ b.T)).sum(1)).mean()
    torch.testing.assert_close(parts["subspace"], sub, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loosen", [0.0, 1.0, 3.0])
def test_listed_positive_pairs_equal_the_dense_route(loosen):
    g = torch.Generator().manual_seed(int(loosen))
    ma, mb = (torch.rand(120, 70, generator=g) < 0.8).float(), (torch.rand(90, 70, generator=g) < 0.8).float()
    ma[:15], mb[40:50] = mb[:15], ma[60:70]  # identical rows
    mb[50:55] = ma[:5]
    mb[50:55, :2] = 0  # near-identical rows: positives only with δ ≥ 2
    a = torch.randn(120, 70, generator=g, requires_grad=True)
    b = torch.randn(90, 70, generator=g, requires_grad=True)
    w = torch.randn(120, generator=g)
    results = []
    for sparse in (True, False):
        counts, sums = K.positive_pair_logit_sums(a, b, ma, mb, loosen, blocks=K.Blocks(list_pairs=sparse))
        results.append((counts, sums, *torch.autograd.grad((sums * w).sum(), (a, b))))
    assert MaskPairs.positive_pairs(ma, mb, loosen) is not None  # the listed route ran
    assert results[0][0].sum() >= 25
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    for got, want in zip(results[0][1:], results[1][1:]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_too_many_positive_pairs_fall_back_to_the_dense_route():
    ones = torch.ones(30, 8)
    assert MaskPairs.positive_pairs(ones, ones, 0.0, max_pairs=100) is None
    pairs = MaskPairs.positive_pairs(ones, ones, 0.0)
    assert pairs is not None and pairs[0].numel() == 900


@pytest.mark.parametrize("loosen", [0.0, 2.0])
def test_pair_index_lists_what_positive_pairs_lists_for_any_anchor_rows(loosen):
    g = torch.Generator().manual_seed(5)
    ma, mb = (torch.rand(80, 70, generator=g) < 0.6).float(), (torch.rand(60, 70, generator=g) < 0.6).float()
    ma[:20], mb[30:40] = mb[:20], ma[50:60]  # identical rows: positives at δ = 0
    index = MaskPairs.PairIndex.build(ma, mb, loosen)
    assert index is not None and index.n_pairs >= 30
    for rows in (torch.arange(80), torch.tensor([55, 3, 3, 79, 0]), torch.tensor([], dtype=torch.int64)):
        want = MaskPairs.positive_pairs(ma[rows], mb, loosen)
        got = index.pairs_of(rows)
        for x, y in zip(got, want):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert MaskPairs.PairIndex.build(torch.ones(30, 8), torch.ones(30, 8), 0.0, max_pairs=100) is None


def test_subspace_pairs_listed_once_give_the_same_loss_and_gradients_to_the_bit(monkeypatch):
    """A run's fixed mask: positives from the index instead of per batch, nothing else changes."""
    inputs = _batch_inputs(3)
    n_users = inputs["stu_users"].shape[0]
    mask = inputs["emb_mask"]
    cfg = L.KDConfig(use_subspcreg=True, loosen=2.0, contrast_candidates=16)
    index = K.subspace_pair_index(mask[:n_users], mask[n_users:], cfg.loosen)
    assert all(index[key] is not None for key in K.SUBSPACE_TABLES)
    results = []
    for pairs in (None, index):
        if pairs is not None:  # the batch must not list its pairs again
            monkeypatch.setattr(MaskPairs, "positive_pairs", None)
        parts = kd_parts(cfg, inputs, generator=torch.Generator().manual_seed(1), subspace_pairs=pairs)
        leaves = (inputs["stu_users"], inputs["stu_items"])
        results.append((parts["subspace"], parts["total"], *torch.autograd.grad(parts["total"], leaves)))
    assert results[0][0] > 0
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(ValueError):
        K.subspace_pair_index(mask[:n_users] * 0.5, mask[n_users:], 0.0)


def test_early_stopper_counts_evaluations_since_the_best():
    stopper = EarlyStopper(2)
    seen = [stopper.should_stop(v, e) for e, v in enumerate([0.1, 0.3, 0.2, 0.3, 0.25, 0.2, 0.5])]
    assert seen == [False, False, False, False, False, True, False]  # 0.3 at epoch 3 ties the best (>=)
    assert (stopper.best, stopper.best_epoch) == (0.5, 6)
    assert not any(EarlyStopper(0).should_stop(v, e) for e, v in enumerate([0.3, 0.2, 0.1, 0.0]))


class ScriptedStage(Stage):
    """A stage whose evaluations return scripted Recall values (no data, no model)."""

    def __init__(self, log, values):
        self.log, self.select_on = log, "val"
        self.cfg = SimpleNamespace(loop=Loop(tst_every=1))
        self.values, self.trained, self.evaluated = iter(values), [], []

    def train_one_epoch(self, trainee):
        self.trained.append(1)
        return {"total": 0.0, "main": 0.0}

    def evaluate(self, trainee):
        v = next(self.values)
        return {"test": {"Recall": v, "NDCG": v}, "val": {"Recall": v, "NDCG": v}}

    def keep(self, epoch, results, trainee):
        self.evaluated.append(epoch)
        return []


def test_fit_stops_at_the_expected_epoch(tmp_path):
    lines = []
    log = RunLog(str(tmp_path / "h.his"))
    log.line = lambda message, stamp=True: lines.append(message)
    stage = ScriptedStage(log, [0.1, 0.4, 0.3, 0.35, 0.2, 0.9])
    stage.fit(TrainRun(None, None, None, EarlyStopper(3), labels={"stage": "teacher"}), 6)
    trained, evaluated = stage.trained, stage.evaluated
    assert evaluated == [0, 1, 2, 3, 4] and len(trained) == 5  # 3 evaluations after the best at epoch 1
    assert any(line.startswith("Early stop after epoch 4/6") and "best 0.40000 at epoch 1" in line for line in lines)
