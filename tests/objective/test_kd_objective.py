"""kd_objective against the published tool's full per-batch loss (reference/kd_loss_*.npz).

The student and intermediate forwards are recomputed here with dense 100×100 matrices
(independent of Model.py): E₀ = [uEmbeds; iEmbeds] ⊙ emb_mask, E_l = Â_w·E_{l-1},
Â_w = Â with edge values adj_val · edge_w · edge_fixed, output Σ_{l=0..2} E_l.
"""
import numpy as np
import pytest
import torch

from conftest import kd_parts
from Utils.objective import Losses as L

RTOL, ATOL = 1e-4, 1e-6
CASES = ["prn1", "prn4_v1", "prn4_v2", "prn4_v3"]


def close(actual, expected, rtol=RTOL, atol=ATOL):
    as_array = lambda x: x.detach().numpy() if torch.is_tensor(x) else np.asarray(x)  # noqa: E731
    np.testing.assert_allclose(as_array(actual), as_array(expected), rtol=rtol, atol=atol)


def dense_layers(u_embeds, i_embeds, row, col, values, n_layers, emb_mask=None):
    n = u_embeds.shape[0] + i_embeds.shape[0]
    adj = torch.zeros(n, n, dtype=values.dtype).index_put((row, col), values)
    e = torch.cat([u_embeds, i_embeds], dim=0)
    if emb_mask is not None:
        e = e * emb_mask
    layers = [e]
    for _ in range(n_layers):
        layers.append(adj @ layers[-1])
    return layers


@pytest.fixture
def setup(ref):
    t = torch.from_numpy
    graphs, models, tea = ref("graphs.npz"), ref("prunable_models.npz"), ref("teacher.npz")
    mid = dense_layers(t(models["mid_uEmbeds"]), t(models["mid_iEmbeds"]), t(graphs["closure_row"]),
                       t(graphs["closure_col"]), t(graphs["closure_val"]).float() * t(models["mid_edge_w"]),
                       int(models["mid_layers"]))
    return {"t": t, "graphs": graphs, "models": models, "tea": tea, "ref": ref,
            "mid_out": sum(mid), "mid_high": sum(mid[2:])}


def run_case(setup, case, **overrides):
    t, graphs, models, tea = setup["t"], setup["graphs"], setup["models"], setup["tea"]
    kd = setup["ref"](f"kd_loss_{case}.npz")
    u_embeds = t(models["stu_uEmbeds"]).clone().requires_grad_()
    i_embeds = t(models["stu_iEmbeds"]).clone().requires_grad_()
    edge_w = t(models["stu_edge_w"]).clone().requires_grad_()
    values = t(graphs["adj_val"]) * edge_w * t(models["stu_edge_fixed"])
    emb_mask = t(models["stu_emb_mask"])
    out = sum(dense_layers(u_embeds, i_embeds, t(graphs["adj_row"]), t(graphs["adj_col"]), values,
                           int(models["stu_layers"]), emb_mask))
    n_users = u_embeds.shape[0]
    prn_run = int(kd["prn_run"])
    settings = dict(reg=1e-3, use_ereg=True, ereg=1e-2, cdreg=1e-2, softreg=1.0, screg=1.0, subspcreg=0.5,
                    tempsoft=0.03, tempcd=0.1, tempsc=1.0, tempsubsp=1.0,
                    use_subspcreg=2 <= prn_run <= 13,  # hyper_contr_start/end_prn_run defaults
                    subspcreg_version=str(kd["subspcreg_version"]), loosen=float(kd["loosen"]))
    settings.update(overrides)
    cfg = L.KDConfig(**settings)
    mid_out, mid_high = setup["mid_out"], setup["mid_high"]
    parts = kd_parts(cfg, dict(
        stu_users=out[:n_users], stu_items=out[n_users:], stu_u_embeds=u_embeds, stu_i_embeds=i_embeds,
        stu_edge_weight=edge_w, sup_users=mid_out[:n_users], sup_items=mid_out[n_users:],
        sup_high_users=mid_high[:n_users], sup_high_items=mid_high[n_users:],
        ancs=t(tea["ancs"]), poss=t(tea["poss"]), negs=t(tea["negs"]),
        rand_users=t(kd["rand_users"]), rand_items1=t(kd["rand_items1"]), rand_items2=t(kd["rand_items2"]),
        emb_mask=emb_mask), generator=torch.Generator().manual_seed(0))
    parts["total"].backward()
    grads = {"grad_uEmbeds": u_embeds.grad, "grad_iEmbeds": i_embeds.grad, "grad_edge_w": edge_w.grad}
    return kd, parts, grads


@pytest.mark.parametrize("case", CASES)
def test_kd_objective_matches_published(setup, case):
    kd, parts, grads = run_case(setup, case)
    for name in ("total", "main", "emb_kd", "pred_kd", "reg"):
        close(parts[name], kd[name])
    rest = kd["total"] - kd["main"] - kd["emb_kd"] - kd["pred_kd"] - kd["reg"]
    close(parts["contr_deno"] + parts["subspace"], rest, atol=1e-4)
    for name, grad in grads.items():
        close(grad, kd[name])
    if int(kd["prn_run"]) == 1:
        assert float(parts["subspace"]) == 0.0  # run 1 is before hyper_contr_start_prn_run = 2


def test_parts_agree_with_kd_terms(setup):
    """Same student outputs and batch as kd_terms.npz: the parts are its golden terms."""
    terms = setup["ref"]("kd_terms.npz")
    _, parts, _ = run_case(setup, "prn4_v3")
    close(parts["contr_deno"], terms["self_contrast"])
    close(parts["subspace"], 0.5 * terms["subspace_v3_weight1_prn4"])


def test_switches_remove_terms(setup):
    _, parts, _ = run_case(setup, "prn4_v3", use_pre_level_kd=False, use_emb_level_kd=False, use_contr_deno=False,
                           use_subspcreg=False, use_ereg=False)
    for name in ("pred_kd", "emb_kd", "contr_deno", "subspace"):
        assert float(parts[name]) == 0.0
    close(parts["total"], parts["main"] + parts["reg"])


def test_unshared_denominators_give_the_same_result(setup):
    """tempsc ≠ tempsubsp disables the log-sum-exp sharing; with τ values equal in value it must not matter."""
    _, shared, g_shared = run_case(setup, "prn4_v3")
    _, plain, g_plain = run_case(setup, "prn4_v3", tempsc=1.0 + 1e-12)  # equal in float, different cache key
    close(plain["total"], shared["total"])
    for name in g_shared:
        close(g_plain[name], g_shared[name])


def test_layer0_variant_is_the_subspace_term_on_the_masked_layer0_embeddings(setup):
    kd, ly0, _ = run_case(setup, "prn4_v3", use_ly0emb4subspcreg=True)
    t, models = setup["t"], setup["models"]
    u_embeds, i_embeds, mask = t(models["stu_uEmbeds"]), t(models["stu_iEmbeds"]), t(models["stu_emb_mask"])
    e0 = torch.cat([u_embeds, i_embeds]) * mask
    n_users = u_embeds.shape[0]
    cfg = L.KDConfig(use_subspcreg=True, loosen=float(kd["loosen"]), subspcreg_version="v3")
    rows = L.SubspaceRows.draw(torch.unique(t(setup["tea"]["ancs"])), torch.unique(t(setup["tea"]["poss"])), cfg,
                               (n_users, i_embeds.shape[0]))
    close(ly0["subspace"], 0.5 * L.subspace_loss((e0[:n_users], e0[n_users:]), mask, rows, cfg))


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_resampling_everything_is_the_exact_subspace_term(setup, version):
    """--hyper_contr_resample with ratio 1 keeps every anchor and candidate (in another order)."""
    _, exact, g_exact = run_case(setup, "prn4_v3", subspcreg_version=version)
    _, every, g_every = run_case(setup, "prn4_v3", subspcreg_version=version, resample_ratio=1.0)
    _, half, _ = run_case(setup, "prn4_v3", subspcreg_version=version, resample_ratio=0.5)
    close(every["subspace"], exact["subspace"])
    for name in g_exact:
        close(g_every[name], g_exact[name])
    assert float(half["subspace"].detach()) != float(exact["subspace"].detach())


def test_subspace_needs_mask():
    zeros = torch.zeros(3, 2)
    idx = torch.tensor([0, 1])
    with pytest.raises(ValueError):
        kd_parts(L.KDConfig(use_subspcreg=True), dict(
            stu_users=zeros, stu_items=zeros, stu_u_embeds=zeros, stu_i_embeds=zeros, stu_edge_weight=torch.ones(4),
            sup_users=zeros, sup_items=zeros, sup_high_users=zeros, sup_high_items=zeros, ancs=idx, poss=idx,
            negs=idx, rand_users=idx, rand_items1=idx, rand_items2=idx))
