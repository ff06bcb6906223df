"""Tests of Utils/objective/Losses.py: golden values of the published tool, the blocked kernels, simple values."""
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

import DataHandler as dh
from conftest import assert_same_objective, kd_parts
from Utils.config import Build
from Utils.kernels import Kernels as K
from Utils.objective import Losses as L

S = L.Share.of  # the anchors of a one-process run


def subspace(problem, temp, loosen, version, resample_ratio=None, generator=None, lse_cache=None):
    """``L.subspace_loss`` of ``problem`` = (users, items, user masks, item masks, user anchors, item anchors)."""
    users, items, um, im, ua, ui = problem
    cfg = L.KDConfig(tempsubsp=temp, loosen=loosen, subspcreg_version=version, resample_ratio=resample_ratio)
    rows = L.SubspaceRows.draw(ua, ui, cfg, (users.shape[0], items.shape[0]), generator)
    return L.subspace_loss((users, items), torch.cat([um, im]), rows, cfg, lse_cache=lse_cache)

RTOL, ATOL = 1e-4, 1e-6


def close(actual, expected, rtol=RTOL, atol=ATOL):
    actual = actual.detach().cpu().numpy() if torch.is_tensor(actual) else np.asarray(actual)
    expected = expected.detach().cpu().numpy() if torch.is_tensor(expected) else np.asarray(expected)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------
# Literal transcriptions of the published formulas (dense, for comparison only)
# ---------------------------------------------------------------------------

def published_point_neg(e1, e2, nodes, temp):
    return torch.exp(e1[nodes] @ e2.T / temp).sum(-1)


def published_infonce(e1, e2, nodes, temp):
    e1 = F.normalize(e1 + 1e-8, p=2)
    e2 = F.normalize(e2 + 1e-8, p=2)
    nume = torch.exp((e1[nodes] * e2[nodes]).sum(-1) / temp)
    deno = torch.exp(e1[nodes] @ e2.T / temp).sum(-1) + 1e-8
    return (-torch.log(nume / deno)).mean()


def published_targets(m1, m2, loosen):
    cross = m1 @ m2.T
    return ((cross >= m1.sum(-1, keepdim=True) - loosen) & (cross >= m2.sum(-1)[None, :] - loosen)).float()


def published_kernel(e1, e2, m1, m2, nodes, loosen, temp):
    logits = e1[nodes] @ e2.T / temp
    return torch.nn.CrossEntropyLoss()(logits, published_targets(m1[nodes], m2, loosen))


def published_subspace(problem, loosen, temp, version):
    """The published subspace term of ``problem`` = (users, items, user masks, item masks, anchors)."""
    ue, ie, um, im, ua, ip = problem
    if version == "v3":
        return (published_kernel(ue, ie, um, im, ua, loosen, temp) + published_kernel(ie, ue, im, um, ip, loosen, temp)
                + published_kernel(ue, ue, um, um, ua, loosen, temp) + published_kernel(ie, ie, im, im, ip, loosen, temp))
    ce = torch.nn.CrossEntropyLoss()
    if version == "v1":
        u_t = published_targets(um[ua], um[ua], loosen)
        i_t = published_targets(im[ip], im[ip], loosen)
        return ce(ue[ua] @ ue[ua].T / temp, u_t) + ce(ie[ip] @ ie[ip].T / temp, i_t)
    m = torch.cat([um[ua], im[ip]])
    e = torch.cat([ue[ua], ie[ip]])
    return ce(e @ e.T / temp, published_targets(m, m, loosen))


def random_problem(seed=0, n_users=30, n_items=20, dim=8, pruned=0.3):
    gen = torch.Generator().manual_seed(seed)
    users = torch.randn(n_users, dim, generator=gen) * 0.5
    items = torch.randn(n_items, dim, generator=gen) * 0.5
    mask = (torch.rand(n_users + n_items, dim, generator=gen) > pruned).float()
    uniq_u = torch.unique(torch.randint(n_users, (12,), generator=gen))
    uniq_i = torch.unique(torch.randint(n_items, (10,), generator=gen))
    return users, items, mask[:n_users], mask[n_users:], uniq_u, uniq_i


# ---------------------------------------------------------------------------
# Golden vectors (reference/kd_terms.npz)
# ---------------------------------------------------------------------------

@pytest.fixture
def kd_terms(ref):
    terms = ref("kd_terms.npz")
    fwd = ref("prunable_forward.npz")
    models = ref("prunable_models.npz")
    t = torch.from_numpy
    return {
        "terms": terms,
        "users": t(fwd["stu_out_users"]), "items": t(fwd["stu_out_items"]),
        "high": t(fwd["mid_layers_list"])[2:].sum(0),
        "mask": t(models["stu_emb_mask"]),
        "uniq_u": t(terms["uniq_ancs"]), "uniq_i": t(terms["uniq_poss"]),
    }


def test_golden_self_contrast(kd_terms):
    d = kd_terms
    value = L.contrastive_denominator_loss((d["users"], d["items"]), (S(d["uniq_u"]), S(d["uniq_i"])), float(d["terms"]["tempsc"]))
    close(value, d["terms"]["self_contrast"])


def test_golden_subspace_v3(kd_terms):
    d = kd_terms
    n_users = d["users"].shape[0]
    value = subspace((d["users"], d["items"], d["mask"][:n_users], d["mask"][n_users:], d["uniq_u"], d["uniq_i"]),
                     float(d["terms"]["tempsubsp"]), 3, "v3")
    close(value, d["terms"]["subspace_v3_weight1_prn4"])


def test_golden_infonce_users(kd_terms):
    d = kd_terms
    n_users = d["users"].shape[0]
    value = L.infonce(d["high"][:n_users], d["users"], S(d["uniq_u"]), float(d["terms"]["tempcd"]))
    close(value, d["terms"]["infonce_users"])


def test_golden_index_conventions(kd_terms):
    """uniq_poss are item ids (0..I-1), the unique positives of teacher.npz's batch."""
    d = kd_terms
    assert int(d["uniq_i"].max()) < d["items"].shape[0]
    assert torch.equal(d["uniq_i"], torch.unique(d["uniq_i"]))


# ---------------------------------------------------------------------------
# Blocked row log-sum-exp
# ---------------------------------------------------------------------------

def test_row_lse_gradcheck_float64_multiblock():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(7, 4, dtype=torch.float64, generator=gen).requires_grad_()
    b = torch.randn(11, 4, dtype=torch.float64, generator=gen).requires_grad_()
    fn = lambda x, y: K.row_logsumexp_matmul(x, y, 0.7, block_rows=3, block_cols=4)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (a, b), eps=1e-6, atol=1e-8)
    fn_one_block = lambda x, y: K.row_logsumexp_matmul(x, y, 0.7)  # noqa: E731
    assert torch.autograd.gradcheck(fn_one_block, (a, b), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("blocks", [(4, 8), (5, 13), (64, 64), (1, 1)])
@pytest.mark.parametrize("scale", [0.3, 30.0])
def test_row_lse_matches_naive(blocks, scale):
    gen = torch.Generator().manual_seed(2)
    a0 = torch.randn(23, 6, generator=gen) * scale
    b0 = torch.randn(41, 6, generator=gen)
    g = torch.rand(23, generator=gen) - 0.3  # arbitrary upstream gradient, some negative
    temp = 0.1

    a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
    lse = K.row_logsumexp_matmul(a, b, temp, block_rows=blocks[0], block_cols=blocks[1])
    (lse * g).sum().backward()

    a_ref, b_ref = a0.clone().requires_grad_(), b0.clone().requires_grad_()
    lse_ref = torch.logsumexp(a_ref @ b_ref.T / temp, dim=1)
    (lse_ref * g).sum().backward()

    assert torch.isfinite(lse).all()
    close(lse, lse_ref)
    close(a.grad, a_ref.grad, atol=1e-4 * float(a_ref.grad.abs().max()))
    close(b.grad, b_ref.grad, atol=1e-4 * float(b_ref.grad.abs().max()))


def test_row_lse_only_needed_gradients():
    a = torch.randn(5, 3)
    b = torch.randn(9, 3, requires_grad=True)
    K.row_logsumexp_matmul(a, b, 1.0, block_rows=2, block_cols=4).sum().backward()
    assert a.grad is None and b.grad is not None
    # every softmax row sums to one, so Σ_m ∂/∂b_m = Σ_n a_n / τ
    close(b.grad.sum(0), a.sum(0))


# ---------------------------------------------------------------------------
# Subspace positives and soft-target cross-entropy
# ---------------------------------------------------------------------------

def test_positive_pair_sums_gradcheck_and_values():
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(6, 5, dtype=torch.float64, generator=gen).requires_grad_()
    b = torch.randn(9, 5, dtype=torch.float64, generator=gen).requires_grad_()
    ma = (torch.rand(6, 5, generator=gen) > 0.3).double()
    mb = (torch.rand(9, 5, generator=gen) > 0.3).double()
    fn = lambda x, y: K.positive_pair_logit_sums(x, y, ma, mb, 1, blocks=K.Blocks(4, 2))[1]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (a, b), eps=1e-6, atol=1e-8)

    counts, sums = K.positive_pair_logit_sums(a, b, ma, mb, 1, blocks=K.Blocks(4, 2))
    t = published_targets(ma, mb, 1).double()
    close(counts, t.sum(1))
    close(sums, (t * (a @ b.T)).sum(1))
    assert not counts.requires_grad


def test_positive_pairs_known_masks():
    """Identical masks are positives at δ = 0; one differing dimension needs δ ≥ 1."""
    ma = torch.tensor([[1., 1., 0.], [1., 1., 1.]])
    mb = torch.tensor([[1., 1., 0.], [1., 0., 0.], [1., 1., 1.]])
    emb_a, emb_b = torch.ones(2, 3), torch.ones(3, 3)
    counts0, _ = K.positive_pair_logit_sums(emb_a, emb_b, ma, mb, 0)
    counts1, _ = K.positive_pair_logit_sums(emb_a, emb_b, ma, mb, 1)
    close(counts0, [1., 1.])
    close(counts1, [3., 2.])  # [1,1,0] ~ all three at δ=1; [1,1,1] ~ [1,1,0] and itself


@pytest.mark.parametrize("loosen", [0, 1, 3, 8])
def test_positive_pairs_popcount_windows(loosen):
    """Masks with very different popcounts and blocks smaller than the inputs: windows are exact."""
    gen = torch.Generator().manual_seed(14)
    keep = torch.rand(40, 1, generator=gen)  # per-row keep rate: popcounts from ~0 to 12
    ma = (torch.rand(40, 12, generator=gen) < keep).float()
    mb = torch.cat([ma[::3], (torch.rand(50, 12, generator=gen) < torch.rand(50, 1, generator=gen)).float()])
    a = torch.randn(40, 5, generator=gen, requires_grad=True)
    b = torch.randn(mb.shape[0], 5, generator=gen, requires_grad=True)
    g = torch.rand(40, generator=gen)
    counts, sums = K.positive_pair_logit_sums(a, b, ma, mb, loosen, blocks=K.Blocks(6, 7))
    (sums * g).sum().backward()
    t = published_targets(ma, mb, loosen)
    a_ref, b_ref = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    sums_ref = (t * (a_ref @ b_ref.T)).sum(1)
    (sums_ref * g).sum().backward()
    assert counts.sum() > 0
    close(counts, t.sum(1))
    close(sums, sums_ref)
    close(a.grad, a_ref.grad)
    close(b.grad, b_ref.grad)


def test_positive_pairs_reject_non_binary_masks():
    with pytest.raises(ValueError):
        K.positive_pair_logit_sums(torch.ones(2, 2), torch.ones(3, 2), torch.full((2, 2), 0.5), torch.ones(3, 2), 0)


@pytest.mark.parametrize("blocks", [(3, 5), (256, 4096)])
def test_soft_target_ce_matches_cross_entropy(blocks):
    users, items, um, im, ua, _ = random_problem(4)
    a = users.clone().requires_grad_()
    b = items.clone().requires_grad_()
    value = L.soft_target_cross_entropy((a[ua], um[ua]), (b, im), 2, 0.5, blocks=K.Blocks(*blocks))
    value.backward()
    a_ref = users.clone().requires_grad_()
    b_ref = items.clone().requires_grad_()
    ref = published_kernel(a_ref, b_ref, um, im, ua, 2, 0.5)
    ref.backward()
    close(value, ref)
    close(a.grad, a_ref.grad)
    close(b.grad, b_ref.grad)


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
@pytest.mark.parametrize("loosen", [0, 2])
def test_subspace_versions_match_published(version, loosen):
    users, items, um, im, ua, ui = random_problem(5)
    u = users.clone().requires_grad_()
    i = items.clone().requires_grad_()
    value = subspace((u, i, um, im, ua, ui), 0.8, loosen, version)
    value.backward()
    u_ref = users.clone().requires_grad_()
    i_ref = items.clone().requires_grad_()
    ref = published_subspace((u_ref, i_ref, um, im, ua, ui), loosen, 0.8, version)
    ref.backward()
    close(value, ref)
    close(u.grad, u_ref.grad)
    close(i.grad, i_ref.grad)


def test_subspace_rejects_unknown_version():
    users, items, um, im, ua, ui = random_problem(6)
    with pytest.raises(ValueError):
        subspace((users, items, um, im, ua, ui), 1.0, 0, "v4")


def test_subspace_resample():
    users, items, um, im, ua, ui = random_problem(7)
    full = subspace((users, items, um, im, ua, ui), 1.0, 1, "v3")
    # ratio 1 keeps everything (in another order): same value
    close(subspace((users, items, um, im, ua, ui), 1.0, 1, "v3", resample_ratio=1.0,
                   generator=torch.Generator().manual_seed(0)), full)
    for version in ("v1", "v2", "v3"):
        half = [subspace((users, items, um, im, ua, ui), 1.0, 1, version, resample_ratio=0.5,
                         generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
        assert torch.isfinite(half[0])
        close(half[0], half[1])  # reproducible from the generator


def test_lse_cache_shared_between_denominator_and_subspace():
    users, items, um, im, ua, ui = random_problem(8)

    def run(share):
        u = users.clone().requires_grad_()
        i = items.clone().requires_grad_()
        cache = {} if share else None
        total = (L.contrastive_denominator_loss((u, i), (S(ua), S(ui)), 1.0, lse_cache=cache)
                 + subspace((u, i, um, im, ua, ui), 1.0, 1, "v3", lse_cache=cache))
        total.backward()
        return total, u.grad, i.grad, cache

    shared, plain = run(True), run(False)
    assert len(shared[3]) == 4  # four log-sum-exps, computed once for both terms
    for x, y in zip(shared[:3], plain[:3]):
        close(x, y)


# ---------------------------------------------------------------------------
# Simple values of the other terms
# ---------------------------------------------------------------------------

def test_bpr_known_and_published():
    a = torch.tensor([[1.0, 0.0]])
    close(L.bpr_loss(a, torch.tensor([[2.0, 0.0]]), torch.tensor([[2.0, 5.0]])), math.log(2.0))
    gen = torch.Generator().manual_seed(9)
    anc, pos, neg = (torch.randn(50, 8, generator=gen) for _ in range(3))
    scores = (anc * pos).sum(-1) - (anc * neg).sum(-1)
    close(L.bpr_loss(anc, pos, neg), -(scores).sigmoid().log().mean())
    # stays finite where the published form overflows
    assert torch.isfinite(L.bpr_loss(a * 100, -torch.tensor([[2.0, 0.0]]), torch.tensor([[2.0, 0.0]])))


def test_regularisers():
    close(L.embedding_reg(torch.full((2, 3), 2.0), torch.ones(4, 3), 0.5), 0.5 * (24 + 12))
    close(L.edge_weight_reg(torch.tensor([1.0, -2.0, 0.0]), 0.1), 0.5)


def test_prediction_kd_known_and_published():
    users = torch.zeros(3, 2)
    items = torch.zeros(4, 2)
    r = torch.tensor([0, 1, 2])
    # ε = 0 on both sides: −[½ log(½ + 1e-8) + ½ log(½ + 1e-8)]
    close(L.prediction_kd_loss((users, items), (users, items), (r, r, r), 0.03), -math.log(0.5 + 1e-8))

    gen = torch.Generator().manual_seed(10)
    su, si = torch.randn(6, 4, generator=gen), torch.randn(5, 4, generator=gen)
    tu = torch.randn(6, 4, generator=gen).requires_grad_()
    ti = torch.randn(5, 4, generator=gen).requires_grad_()
    ru = torch.randint(6, (40,), generator=gen)
    r1, r2 = torch.randint(5, (40,), generator=gen), torch.randint(5, (40,), generator=gen)
    su.requires_grad_()
    value = L.prediction_kd_loss((su, si), (tu, ti), (ru, r1, r2), 0.03)
    tp = (((tu[ru] * ti[r1]).sum(-1) - (tu[ru] * ti[r2]).sum(-1)) / 0.03).sigmoid()
    sp = (((su[ru] * si[r1]).sum(-1) - (su[ru] * si[r2]).sum(-1)) / 0.03).sigmoid()
    ref = -(tp * (sp + 1e-8).log() + (1 - tp) * (1 - sp + 1e-8).log()).mean()
    close(value, ref)
    value.backward()
    assert tu.grad is None and ti.grad is None and su.grad is not None


def test_infonce_known_and_published():
    eye = torch.eye(4)
    temp = 0.5
    expected = math.log(math.exp(1 / temp) + 3 + 1e-8) - 1 / temp
    close(L.infonce(eye, eye, S(torch.arange(4)), temp), expected)

    gen = torch.Generator().manual_seed(11)
    x, y = torch.randn(15, 6, generator=gen), torch.randn(15, 6, generator=gen)
    idx = torch.tensor([0, 3, 7, 14])
    for temp in (0.03, 0.1, 1.0):
        close(L.infonce(x, y, S(idx), temp), published_infonce(x, y, idx, temp))


def test_embedding_kd_is_sum_of_two_infonce():
    users, items, _, _, ua, ui = random_problem(12)
    hu, hi = users.flip(0), items.flip(0)
    expected = published_infonce(hu, users, ua, 0.1) + published_infonce(hi, items, ui, 0.1)
    close(L.embedding_kd_loss((hu, hi), (users, items), (S(ua), S(ui)), 0.1), expected)


def test_contrastive_denominator_known_and_published():
    users, items = torch.zeros(5, 3), torch.zeros(4, 3)
    ua, ui = torch.tensor([0, 2]), torch.tensor([1])
    expected = 2 * math.log(4 + 1e-5) + 2 * math.log(5 + 1e-5)
    close(L.contrastive_denominator_loss((users, items), (S(ua), S(ui)), 1.0), expected)

    users, items, _, _, ua, ui = random_problem(13)
    ref = sum(torch.log(published_point_neg(a, b, n, 0.7) + 1e-5).mean()
              for a, b, n in ((users, items, ua), (items, users, ui), (users, users, ua), (items, items, ui)))
    close(L.contrastive_denominator_loss((users, items), (S(ua), S(ui)), 0.7), ref)


@pytest.mark.parametrize("flag", ["--subspcreg_version=v9", "--hyper_contr_resample_ratio=0", "--tempcd=0",
                                  "--contrast_candidates=-1"])
def test_the_loss_settings_are_checked_where_the_flags_are_parsed(flag):
    import Params
    from Utils.runtime.Errors import ConfigError

    with pytest.raises(ConfigError, match=flag.split("=")[0]):
        Params.parse_args([flag])


def test_device_shaped_blocks_compute_the_cpu_blocks_objective():
    """--block_mb shapes (whole anchor sets, or rows split when the budget is small) give the
    loss and gradients of the CPU's 256 x 4096 blocks, up to float rounding."""
    from test_fast_levers import _batch_inputs

    assert K.device_blocks("cpu", 1024) is K.CPU_BLOCKS
    whole = K.device_blocks("cuda", 1024)
    assert whole.shape(3900, 42700) == (3900, 42700) and not whole.list_pairs
    assert K.Blocks(budget=4096).shape(100, 5000) == (4, 1024)  # rows split: 1024 columns would not fit 100 rows
    leaves = ("stu_users", "stu_items", "stu_u_embeds", "stu_i_embeds", "stu_edge_weight")
    results = []
    for blocks in (K.CPU_BLOCKS, whole, K.Blocks(budget=64, list_pairs=False), K.Blocks(budget=3000)):
        inputs = _batch_inputs(seed=7)
        cfg = L.KDConfig(use_subspcreg=True, loosen=1.0, subspcreg=0.5, blocks=blocks)
        parts = kd_parts(cfg, inputs)
        grads = torch.autograd.grad(parts["total"], [inputs[k] for k in leaves], allow_unused=True)
        results.append((parts, grads))
    (ref_parts, ref_grads), *others = results
    for parts, grads in others:
        assert_same_objective(parts, grads, ref_parts, ref_grads)


def test_batch_weight_decay_is_lightgcn_s_and_reaches_only_the_batch_rows():
    """--reg_batch: LightGCN's reg_loss = ½(‖e⁰_u‖² + ‖e⁰_i‖² + ‖e⁰_j‖²)/B · decay (its PyTorch code)."""
    import Params
    from Model import LightGCN
    from Utils.runtime.Errors import ConfigError
    from Utils.runtime.Parallel import Group
    from Utils.training.Teacher import teacher_loss

    gen = torch.Generator().manual_seed(21)
    users, pos, neg = (torch.randn(7, 4, generator=gen) for _ in range(3))
    lightgcn = 0.5 * (users.norm(2).pow(2) + pos.norm(2).pow(2) + neg.norm(2).pow(2)) / 7 * 1e-4
    close(L.batch_embedding_reg((users, pos, neg), 1e-4), lightgcn)

    torch.manual_seed(0)
    model = LightGCN(6, 5, 4, 2)
    graph = dh.Graph.from_scipy(dh.propagation_matrix(sp.random(6, 5, density=0.5, random_state=3, format="csr")))
    ancs, poss, negs = torch.tensor([0, 2, 2, 5]), torch.tensor([1, 0, 4, 4]), torch.tensor([3, 3, 1, 2])
    parts = teacher_loss(model, graph, 1e-2, reg_batch=True)(ancs, poss, negs)
    close(parts["reg"], L.batch_embedding_reg((model.uEmbeds[ancs], model.iEmbeds[poss], model.iEmbeds[negs]), 1e-2))
    parts["reg"].backward()
    assert model.uEmbeds.grad[[1, 3, 4]].abs().sum() == 0 and model.uEmbeds.grad[[0, 2, 5]].abs().sum() > 0
    shares = [teacher_loss(model, graph, 1e-2, Group(rank, 2), reg_batch=True)(ancs, poss, negs)["reg"]
              for rank in range(2)]
    close(sum(shares), parts["reg"])  # each process its share of the batch mean
    with pytest.raises(ConfigError, match="--reg_batch"):
        Params.parse_args(["--reg_batch=True"], stage="main")
    assert Build.teacher_config(Params.parse_args(["--reg_batch=True"], stage="teacher")).reg_batch
