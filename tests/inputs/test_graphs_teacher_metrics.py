"""Golden-vector tests for Stage 1's foundation: graphs, teacher, metrics (docs/method.md#graphs to docs/method.md#evaluation)."""
import numpy as np
import pytest
import torch

import DataHandler as dh
from Model import LightGCN
from Utils.objective.Losses import bpr_loss, embedding_reg
from Utils.training.Metrics import Evaluator, recall_ndcg_from_ranking

RTOL, ATOL = 1e-4, 1e-6


def _tiny(tiny_dir):
    return dh.load_dataset_dir(str(tiny_dir), "tiny")


def _coo(mat):
    coo = mat.tocoo()
    return coo.row, coo.col, coo.data


def test_propagation_graph_matches_golden(ref, tiny_dir):
    g = ref("graphs.npz")
    data = _tiny(tiny_dir)
    row, col, val = _coo(dh.propagation_matrix(data.train))
    np.testing.assert_array_equal(row, g["adj_row"])
    np.testing.assert_array_equal(col, g["adj_col"])
    np.testing.assert_allclose(val, g["adj_val"], rtol=RTOL, atol=ATOL)
    graph = dh.Graph.from_scipy(dh.propagation_matrix(data.train))
    np.testing.assert_array_equal(graph.row.numpy(), g["adj_row"])
    assert graph.nnz == 2 * data.train.nnz + data.n_nodes


@pytest.mark.parametrize("name,kwargs,keys", [
    ("graphs.npz", dict(layers=1), ("closure_row", "closure_col", "closure_val")),
    ("graphs_closure_layer2.npz", dict(layers=2), ("row", "col", "val")),
    ("graphs_closure_sampled_top09.npz", dict(layers=1, sample=True, sample_ratio=0.9), ("row", "col", "val")),
])
def test_closure_graph_matches_golden(ref, tiny_dir, name, kwargs, keys):
    g = ref(name)
    row, col, val = _coo(dh.closure_matrix(_tiny(tiny_dir).train, **kwargs))
    np.testing.assert_array_equal(row, g[keys[0]])
    np.testing.assert_array_equal(col, g[keys[1]])
    np.testing.assert_allclose(val, g[keys[2]], rtol=RTOL, atol=ATOL)


def test_closure_random_sampling_keeps_floor_ratio(tiny_dir):
    train = _tiny(tiny_dir).train
    full = dh.closure_matrix(train, layers=1)
    a = dh.bipartite_adjacency(train)
    p_nnz = (a @ a).nnz
    sampled = dh.closure_matrix(train, layers=1, sample=True, sample_ratio=0.5, sample_random=True, seed=3)
    # the diagonal of A² overlaps I, so count the kept 2-path entries off the I + A pattern
    assert sampled.nnz < full.nnz
    assert sampled.nnz >= int(np.floor(0.5 * p_nnz))


def test_transpose_permutation(tiny_dir):
    mat = dh.closure_matrix(_tiny(tiny_dir).train, layers=1)
    graph = dh.Graph.from_scipy(mat)
    t = mat.T.tocsr()
    t.sort_indices()
    np.testing.assert_array_equal(graph.t_indptr.numpy(), t.indptr)
    np.testing.assert_array_equal(graph.t_col.numpy(), t.indices)
    np.testing.assert_allclose(graph.values[graph.transpose_perm].numpy(), t.data, rtol=1e-6)


def test_teacher_matches_golden(ref, tiny_dir):
    t = ref("teacher.npz")
    data = _tiny(tiny_dir)
    graph = dh.Graph.from_scipy(dh.propagation_matrix(data.train))
    model = LightGCN(data.n_users, data.n_items, t["uEmbeds"].shape[1], int(t["n_layers"]))
    with torch.no_grad():
        model.uEmbeds.copy_(torch.from_numpy(t["uEmbeds"]))
        model.iEmbeds.copy_(torch.from_numpy(t["iEmbeds"]))
    layers = model.layers(graph)
    np.testing.assert_allclose(torch.stack(layers).detach().numpy(), t["layers"], rtol=RTOL, atol=ATOL)
    users, items = model(graph)
    np.testing.assert_allclose(users.detach().numpy(), t["out_users"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(items.detach().numpy(), t["out_items"], rtol=RTOL, atol=ATOL)
    ancs, poss, negs = (torch.from_numpy(t[k]) for k in ("ancs", "poss", "negs"))
    bpr = bpr_loss(users[ancs], items[poss], items[negs])
    reg = embedding_reg(model.uEmbeds, model.iEmbeds, float(t["reg_weight"]))
    np.testing.assert_allclose(bpr.item(), t["bpr"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(reg.item(), t["reg"], rtol=RTOL, atol=ATOL)
    (bpr + reg).backward()
    np.testing.assert_allclose(model.uEmbeds.grad.numpy(), t["grad_uEmbeds"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(model.iEmbeds.grad.numpy(), t["grad_iEmbeds"], rtol=RTOL, atol=ATOL)


def test_metrics_match_golden(ref, tiny_dir):
    m = ref("metrics.npz")
    data = _tiny(tiny_dir)
    k = int(m["topk"])
    users = torch.from_numpy(m["users"].astype(np.int64))
    truth = torch.from_numpy(data.test.toarray()[m["users"]] > 0)
    recall, ndcg = recall_ndcg_from_ranking(torch.from_numpy(m["toplocs"]), truth, truth.sum(1), k)
    np.testing.assert_allclose(recall.sum().item(), m["recall_sum"], rtol=1e-9)
    np.testing.assert_allclose(ndcg.sum().item(), m["ndcg_sum"], rtol=1e-9)
    assert users.numel() == (np.diff(data.test.indptr) > 0).sum()


def test_evaluator_ranks_like_brute_force(tiny_dir):
    data = _tiny(tiny_dir)
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(data.n_users, 8, generator=gen)
    i = torch.randn(data.n_items, 8, generator=gen)
    got = Evaluator(data.train, data.test, 20, 7, "cpu").evaluate(u, i)
    # brute force: per user, exclude train items, rank, compute the formulas of docs/method.md#evaluation directly
    scores = (u @ i.T).numpy()
    train, test = data.train.toarray() > 0, data.test.toarray() > 0
    recalls, ndcgs = [], []
    for user in np.flatnonzero(test.any(1)):
        s = np.where(train[user], -np.inf, scores[user])
        top = np.argsort(-s, kind="stable")[:20]
        hits = test[user][top]
        n = test[user].sum()
        recalls.append(hits.sum() / n)
        ndcgs.append((hits / np.log2(np.arange(20) + 2)).sum() / (1 / np.log2(np.arange(min(n, 20)) + 2)).sum())
    assert got["Recall"] == pytest.approx(np.mean(recalls), rel=1e-9)
    assert got["NDCG"] == pytest.approx(np.mean(ndcgs), rel=1e-9)
