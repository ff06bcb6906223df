"""Utils/objective/Pruning.py against the published tool's golden pruning steps (prune_*.npz) and unit checks."""
import math

import numpy as np
import pytest
import torch

from Utils.objective.Pruning import (
    PruneConfig,
    PrunedState,
    closure_weights_on_adj,
    compute_pruned_state,
    edge_importance,
    kept_percent,
    magnitude_threshold,
    prune_edges,
    prune_embeddings,
    prune_state,
    random_prune_edges,
    random_prune_embeddings,
    taylor_entry_scores,
)

CASES = ["prune_plain", "prune_plain_keep", "prune_aug_only", "prune_aug_sm", "prune_aug_abs"]


def _t(array):
    return torch.from_numpy(np.ascontiguousarray(array))


def _flag(case, name, default=False):
    return bool(case[name]) if name in case.files else default


def _pruned_from_golden_inputs(ref, case):
    models, graphs, forward = ref("prunable_models.npz"), ref("graphs.npz"), ref("prunable_forward.npz")
    n_nodes = models["stu_uEmbeds"].shape[0] + models["stu_iEmbeds"].shape[0]
    adj_row, adj_col = _t(graphs["adj_row"]), _t(graphs["adj_col"])
    kwargs, cfg_kwargs = {}, {}
    if _flag(case, "use_adj_mask_aug"):
        # --use_mTea2drop_edges=True: edges are scored with the intermediate model's outputs.
        kwargs.update(
            aug_embeds=torch.cat([_t(forward["mid_out_users"]), _t(forward["mid_out_items"])]),
            edges=(adj_row, adj_col),
        )
        cfg_kwargs.update(beta1=float(case["adj_mask_aug1"]))
    if _flag(case, "use_SM_edgeW2aug"):
        kwargs.update(
            mid_weight=closure_weights_on_adj(
                adj_row, adj_col, _t(graphs["closure_row"]), _t(graphs["closure_col"]),
                _t(models["mid_edge_w"]), n_nodes,
            ),
        )
        cfg_kwargs.update(beta2=float(case["adj_mask_aug2"]))
    state = PrunedState(edge_weight=_t(models["stu_edge_w"]), edge_mask=_t(models["stu_edge_fixed"]),
                        u_embeds=_t(models["stu_uEmbeds"]), i_embeds=_t(models["stu_iEmbeds"]),
                        emb_mask=_t(models["stu_emb_mask"]))
    cfg = PruneConfig(edge_cut=float(case["pruning_percent_adj"]), emb_cut=float(case["pruning_percent_emb"]),
                      keep_weights=_flag(case, "keep_adj_weights2next_prn"), use_abs=_flag(case, "adj_weights_abs"),
                      **cfg_kwargs)
    return compute_pruned_state(state, cfg, **kwargs)


@pytest.mark.parametrize("name", CASES)
def test_matches_published_pruning_step(ref, name):
    case = ref(f"{name}.npz")
    state = _pruned_from_golden_inputs(ref, case)
    assert isinstance(state, PrunedState)
    np.testing.assert_array_equal(state.edge_mask.numpy(), case["adj_mask"])
    np.testing.assert_array_equal(state.emb_mask.numpy(), case["emb_mask"])
    np.testing.assert_allclose(state.edge_weight.numpy(), case["edge_w_after"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(state.u_embeds.numpy(), case["uEmbeds_after"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(state.i_embeds.numpy(), case["iEmbeds_after"], rtol=1e-4, atol=1e-6)
    assert kept_percent(state.edge_mask) == pytest.approx(float(case["edge_kept_pct"]), rel=1e-6)
    assert kept_percent(state.emb_mask) == pytest.approx(float(case["emb_kept_pct"]), rel=1e-6)


def test_golden_cases_differ_so_each_flag_is_exercised(ref):
    masks = {name: ref(f"{name}.npz")["adj_mask"] for name in CASES}
    assert not np.array_equal(masks["prune_plain"], masks["prune_aug_only"])
    assert not np.array_equal(masks["prune_aug_only"], masks["prune_aug_sm"])
    assert not np.array_equal(masks["prune_aug_sm"], masks["prune_aug_abs"])
    keep = ref("prune_plain_keep.npz")["edge_w_after"]
    assert set(np.unique(keep)) - {0.0, 1.0}, "keep case must carry real weight values"


def test_threshold_position_is_floor_n_pct_of_nonzeros(ref):
    # tiny student: 670 live edges; sorted |w| index floor(670*0.15)=100 -> 101 pruned, 569 kept.
    models = ref("prunable_models.npz")
    score = _t(models["stu_edge_w"] * models["stu_edge_fixed"])
    nonzero = np.sort(np.abs(score.numpy()[score.numpy() != 0]))
    assert nonzero.size == 670
    assert float(magnitude_threshold(score, 0.15)) == nonzero[100]
    _, mask = prune_edges(_t(models["stu_edge_w"]), score, 0.15)
    assert int(mask.sum()) == 569 and kept_percent(mask) == pytest.approx(100 * 569 / 758)


def test_magnitude_threshold_edge_cases():
    values = torch.tensor([0.0, -3.0, 1.0, 0.0, 2.0, -4.0])
    assert float(magnitude_threshold(values, 0.0)) == 1.0
    assert float(magnitude_threshold(values, 0.5)) == 3.0  # floor(4*0.5)=2 -> [1,2,3,4][2]
    assert float(magnitude_threshold(values, 1.0)) == 4.0  # clamped to the largest
    assert float(magnitude_threshold(torch.zeros(5), 0.3)) == 0.0
    with pytest.raises(ValueError):
        magnitude_threshold(values, 1.5)


def test_pruned_embeddings_and_edges_never_revive():
    torch.manual_seed(0)
    users, items = torch.randn(5, 4), torch.randn(3, 4)
    mask = (torch.rand(8, 4) > 0.3).float()
    users_masked = users * mask[:5]
    u, i, new_mask = prune_embeddings(users, items, mask, 0.2)
    assert bool((new_mask <= mask).all())
    assert torch.equal(u, users_masked * new_mask[:5])

    weight = torch.randn(20)
    edge_mask = (torch.rand(20) > 0.4).float()
    score = edge_importance(weight, edge_mask, PruneConfig(0.1, 0.1, beta2=5.0), mid_weight=torch.rand(20))
    new_weight, new_mask = prune_edges(weight, score, 0.1, keep_weights=True)
    assert bool((new_mask <= edge_mask).all())
    assert torch.equal(new_weight, weight * new_mask)


def test_edge_importance_terms():
    weight = torch.tensor([0.5, -2.0, 1.0])
    edge_mask = torch.tensor([1.0, 1.0, 0.0])
    embeds = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    row, col = torch.tensor([0, 1, 2]), torch.tensor([2, 2, 0])
    dots = torch.tensor([1.0, 2.0, 1.0])
    mid = torch.tensor([0.1, 0.2, 0.3])
    expected = (weight.abs() + 0.5 * torch.tanh(dots) + 2.0 * mid) * edge_mask
    cfg = PruneConfig(0.1, 0.1, beta1=0.5, use_tanh=True, beta2=2.0, use_abs=True)
    got = edge_importance(weight, edge_mask, cfg, aug_embeds=embeds, edges=(row, col), mid_weight=mid)
    torch.testing.assert_close(got, expected)
    got = edge_importance(weight, edge_mask, PruneConfig(0.1, 0.1, beta1=0.5), aug_embeds=embeds, edges=(row, col))
    torch.testing.assert_close(got, (weight + 0.5 * torch.sigmoid(dots)) * edge_mask)
    with pytest.raises(ValueError):
        edge_importance(weight, edge_mask, PruneConfig(0.1, 0.1, beta1=0.5), aug_embeds=embeds)


def test_closure_weights_on_adj_lookup_and_missing_edge():
    n = 4
    closure_row = torch.tensor([0, 0, 1, 1, 2, 3, 3])
    closure_col = torch.tensor([0, 2, 1, 3, 2, 1, 3])
    closure_w = torch.arange(7, dtype=torch.float32)
    got = closure_weights_on_adj(torch.tensor([0, 1, 3]), torch.tensor([2, 3, 3]),
                                 closure_row, closure_col, closure_w, n)
    torch.testing.assert_close(got, torch.tensor([1.0, 3.0, 6.0]))
    perm = torch.tensor([6, 2, 0, 5, 1, 4, 3])  # unsorted closure is handled too
    got = closure_weights_on_adj(torch.tensor([0, 1, 3]), torch.tensor([2, 3, 3]),
                                 closure_row[perm], closure_col[perm], closure_w[perm], n)
    torch.testing.assert_close(got, torch.tensor([1.0, 3.0, 6.0]))
    with pytest.raises(ValueError, match="not in the closure"):
        closure_weights_on_adj(torch.tensor([0, 2]), torch.tensor([2, 3]), closure_row, closure_col, closure_w, n)
    with pytest.raises(ValueError, match="not in the closure"):  # beyond the last key
        closure_weights_on_adj(torch.tensor([3]), torch.tensor([4]), closure_row, closure_col, closure_w, 5)


def test_every_adj_edge_is_in_the_golden_closure(ref):
    graphs, models = ref("graphs.npz"), ref("prunable_models.npz")
    got = closure_weights_on_adj(_t(graphs["adj_row"]), _t(graphs["adj_col"]), _t(graphs["closure_row"]),
                                 _t(graphs["closure_col"]), _t(models["mid_edge_w"]), 100)
    assert got.shape == (758,)


def test_random_prune_edges_removes_floor_pct_of_survivors_deterministically():
    edge_mask = torch.ones(1000)
    edge_mask[::7] = 0  # 857 survivors
    n_alive = int(edge_mask.sum())
    first = random_prune_edges(edge_mask, 0.15, torch.Generator().manual_seed(3))
    again = random_prune_edges(edge_mask, 0.15, torch.Generator().manual_seed(3))
    other = random_prune_edges(edge_mask, 0.15, torch.Generator().manual_seed(4))
    assert int(first.sum()) == n_alive - math.floor(0.15 * n_alive)  # floor: 128 removed
    assert bool((first <= edge_mask).all())
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(random_prune_edges(edge_mask, 0.0, torch.Generator().manual_seed(3)), edge_mask)


def test_random_prune_embeddings_removes_floor_pct_of_survivors_deterministically():
    torch.manual_seed(1)
    users, items = torch.randn(30, 8), torch.randn(20, 8)
    mask = (torch.rand(50, 8) > 0.25).float()
    n_alive = int(mask.sum())
    u, i, new_mask = random_prune_embeddings(users, items, mask, 0.2, torch.Generator().manual_seed(9))
    u2, i2, new_mask2 = random_prune_embeddings(users, items, mask, 0.2, torch.Generator().manual_seed(9))
    assert int(new_mask.sum()) == n_alive - math.floor(0.2 * n_alive)
    assert bool((new_mask <= mask).all())
    assert torch.equal(new_mask, new_mask2) and torch.equal(u, u2) and torch.equal(i, i2)
    torch.testing.assert_close(torch.cat([u, i]), torch.cat([users, items]) * new_mask)


def test_compute_pruned_state_random_variants_follow_keep_rule():
    torch.manual_seed(2)
    weight = torch.randn(100)
    edge_mask = torch.ones(100)
    users, items, emb_mask = torch.randn(6, 4), torch.randn(4, 4), torch.ones(10, 4)
    before = PrunedState(weight, edge_mask, users, items, emb_mask)
    state = compute_pruned_state(before, PruneConfig(0.1, 0.25, random_edges=True, random_embeddings=True),
                                 generator=torch.Generator().manual_seed(0))
    assert kept_percent(state.edge_mask) == pytest.approx(90.0) and kept_percent(state.emb_mask) == pytest.approx(75.0)
    assert torch.equal(state.edge_weight, state.edge_mask)
    state = compute_pruned_state(before, PruneConfig(0.1, 0.25, keep_weights=True, random_edges=True),
                                 generator=torch.Generator().manual_seed(0))
    assert torch.equal(state.edge_weight, weight * state.edge_mask)


# --------------------------------------------------------------------------- from the flags
# The flags that produced each golden case; the rest are the published student example's.
CASE_FLAGS = {
    "prune_plain": ["--use_adj_mask_aug=False", "--use_SM_edgeW2aug=False"],
    "prune_plain_keep": ["--use_adj_mask_aug=False", "--use_SM_edgeW2aug=False",
                         "--keep_adj_weights2next_prn=True"],
    "prune_aug_only": ["--use_adj_mask_aug=True", "--use_SM_edgeW2aug=False"],
    "prune_aug_sm": ["--use_adj_mask_aug=True", "--use_SM_edgeW2aug=True"],
    "prune_aug_abs": ["--use_adj_mask_aug=True", "--use_SM_edgeW2aug=True", "--adj_weights_abs=True"],
}


@pytest.mark.parametrize("name", CASES)
def test_pruning_through_the_config_built_from_flags_matches_golden(ref, name):
    """The stage's wiring: flags -> Build.prune_config -> prune_state, with every scoring model on offer.

    Edges are scored by the intermediate model (--use_mTea2drop_edges, the default); the
    student's and teacher's outputs are offered too, so picking the wrong one, or swapping
    β₁ (--adj_mask_aug1) and β₂ (--adj_mask_aug2), changes the masks."""
    from Params import parse_args
    from Utils.config.Build import prune_config

    case = ref(f"{name}.npz")
    models, graphs, forward = ref("prunable_models.npz"), ref("graphs.npz"), ref("prunable_forward.npz")
    args = parse_args(CASE_FLAGS[name] + [
        f"--pruning_percent_adj={float(case['pruning_percent_adj'])}",
        f"--pruning_percent_emb={float(case['pruning_percent_emb'])}",
        f"--adj_mask_aug1={float(case['adj_mask_aug1'])}", f"--adj_mask_aug2={float(case['adj_mask_aug2'])}"])
    n_nodes = models["stu_uEmbeds"].shape[0] + models["stu_iEmbeds"].shape[0]
    adj_row, adj_col = _t(graphs["adj_row"]), _t(graphs["adj_col"])
    state = {"uEmbeds": _t(models["stu_uEmbeds"]), "iEmbeds": _t(models["stu_iEmbeds"]),
             "adj_mask1_train": _t(models["stu_edge_w"]), "adj_mask2_fixed": _t(models["stu_edge_fixed"]),
             "emb_mask2_fixed": _t(models["stu_emb_mask"])}
    scorers = {"middle": lambda: torch.cat([_t(forward["mid_out_users"]), _t(forward["mid_out_items"])]),
               "student": lambda: torch.cat([_t(forward["stu_out_users"]), _t(forward["stu_out_items"])]),
               "teacher": lambda: torch.cat([_t(forward["stu_out_users"]), _t(forward["stu_out_items"])]) * 2}
    mid_w = closure_weights_on_adj(adj_row, adj_col, _t(graphs["closure_row"]), _t(graphs["closure_col"]),
                                   _t(models["mid_edge_w"]), n_nodes)
    out = prune_state(state, prune_config(args, 2), edges=(adj_row, adj_col), scorers=scorers, mid_weight=mid_w)
    np.testing.assert_array_equal(out["adj_mask2_fixed"].numpy(), case["adj_mask"])
    np.testing.assert_array_equal(out["emb_mask2_fixed"].numpy(), case["emb_mask"])
    np.testing.assert_allclose(out["adj_mask1_train"].numpy(), case["edge_w_after"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out["uEmbeds"].numpy(), case["uEmbeds_after"], rtol=1e-4, atol=1e-6)


def test_prune_config_names_the_scoring_model_of_the_flags():
    from Params import parse_args
    from Utils.config.Build import prune_config

    def scoring(*flags):
        return prune_config(parse_args(list(flags)), 1).scoring

    assert scoring("--use_adj_mask_aug=False") is None
    assert scoring("--use_adj_mask_aug=True") == "middle"  # --use_mTea2drop_edges defaults to True
    assert scoring("--use_adj_mask_aug=True", "--use_mTea2drop_edges=False") == "student"
    assert scoring("--use_adj_mask_aug=True", "--use_mTea2drop_edges=False", "--use_tea2drop_edges=True") == "teacher"
    args = parse_args(["--use_dynamic_adj_mask_aug1=True", "--adj_mask_aug_list1=0,0.3,0.7", "--PRUNING_END=2",
                       "--adj_mask_aug2=0.05"])
    cfg = prune_config(args, 2)
    assert (cfg.beta1, cfg.beta2) == (0.7, 0.05)


def test_prune_state_refuses_a_scoring_model_the_stage_has_not_loaded():
    cfg = PruneConfig(edge_cut=0.1, emb_cut=0.1, scoring="teacher")
    state = {"uEmbeds": torch.ones(2, 2), "iEmbeds": torch.ones(2, 2), "adj_mask1_train": torch.ones(4),
             "adj_mask2_fixed": torch.ones(4), "emb_mask2_fixed": torch.ones(4, 2)}
    with pytest.raises(ValueError, match="teacher"):
        prune_state(state, cfg, edges=(torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long)),
                    scorers={"middle": lambda: torch.ones(4, 2)})


@pytest.mark.parametrize("name", CASES)
def test_scoring_entries_by_their_magnitude_is_the_published_step(ref, name):
    """prune_embeddings with score = |E| (the path --emb_prune_score takes) gives the golden mask."""
    models, case = ref("prunable_models.npz"), ref(f"{name}.npz")
    users, items, mask = (_t(models[k]) for k in ("stu_uEmbeds", "stu_iEmbeds", "stu_emb_mask"))
    embeds = torch.cat([users, items]) * mask
    u, i, new_mask = prune_embeddings(users, items, mask, float(case["pruning_percent_emb"]), score=embeds.abs())
    np.testing.assert_array_equal(new_mask.numpy(), case["emb_mask"])
    np.testing.assert_allclose(u.numpy(), case["uEmbeds_after"], rtol=1e-4, atol=1e-6)


def test_taylor_scores_remove_the_entries_whose_loss_change_is_smallest():
    torch.manual_seed(1)
    users, items = torch.randn(6, 4), torch.randn(4, 4)
    mask = (torch.rand(10, 4) > 0.25).float()
    grad = torch.randn(10, 4)
    embeds = torch.cat([users, items]) * mask
    score = taylor_entry_scores(embeds, grad)
    assert torch.equal(score, (embeds * grad).abs())
    state = PrunedState(edge_weight=torch.ones(5), edge_mask=torch.ones(5), u_embeds=users, i_embeds=items,
                        emb_mask=mask)
    pruned = compute_pruned_state(state, PruneConfig(0.0, 0.3, emb_score="taylor"), entry_grad=grad)
    live, kept = mask.bool(), pruned.emb_mask.bool()
    n_live = int(live.sum())
    assert int((live & ~kept).sum()) == math.floor(n_live * 0.3) + 1 and bool((kept <= live).all())
    assert score[live & ~kept].max() < score[kept].min()  # the lowest |e * g| go, never a dead entry back
    assert torch.equal(pruned.u_embeds, (users * mask[:6]) * pruned.emb_mask[:6])
    with pytest.raises(ValueError, match="gradient"):
        compute_pruned_state(state, PruneConfig(0.0, 0.3, emb_score="taylor"))
    with pytest.raises(ValueError, match="emb_score"):
        PruneConfig(0.0, 0.3, emb_score="fisher")


def test_mean_bpr_gradient_is_the_gradient_of_the_epoch_s_mean_loss():
    """Taken in chunks on the detached outputs, then once through propagation: the same numbers as
    one autograd pass of the mean BPR loss over every triple."""
    from Model import LightGCN_sp
    from Utils.objective.Losses import bpr_loss
    from Utils.training.Training import mean_bpr_gradient
    import DataHandler as dh
    import scipy.sparse as sp

    torch.manual_seed(2)
    rng = np.random.default_rng(2)
    train = sp.random(7, 5, density=0.5, format="csr", random_state=3, dtype=np.float32)
    train.data[:] = 1
    graph = dh.Graph.from_scipy(dh.propagation_matrix(train))
    model = LightGCN_sp(7, 5, 4, 2, graph.nnz)
    model.emb_mask2_fixed.copy_((torch.rand(12, 4) > 0.3).float())
    rows, cols = train.nonzero()
    triples = (rows.astype(np.int64), cols.astype(np.int64), rng.integers(0, 5, rows.size).astype(np.int64))
    grad = mean_bpr_gradient(model, graph, triples, "cpu", chunk=3)
    users, items = model(graph)
    a, p, n = (torch.from_numpy(x) for x in triples)
    expected = torch.autograd.grad(bpr_loss(users[a], items[p], items[n]), [model.uEmbeds, model.iEmbeds])
    torch.testing.assert_close(grad, torch.cat(expected), rtol=1e-5, atol=1e-7)
    assert bool((grad[model.emb_mask2_fixed == 0] == 0).all())  # pruned entries get no gradient
