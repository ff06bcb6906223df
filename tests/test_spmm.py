"""Utils/Spmm.py: the CPU kernels and the torch.sparse path (the one CUDA takes) agree.

These need no ../shared data: the graph is a random bipartite one built here.
"""
import pytest
import scipy.sparse as sp
import torch

import DataHandler as dh
from Utils import Spmm


@pytest.fixture(scope="module")
def graph():
    interactions = sp.random(50, 30, density=0.15, random_state=3, format="csr")
    interactions.data[:] = 1.0
    return dh.Graph.from_scipy(dh.propagation_matrix(interactions))


def _run(graph, layers, rows=None, edge_grad=False, dtype=torch.float64):
    """Outputs (with and without autograd) and gradients of propagate_sum."""
    gen = torch.Generator().manual_seed(7)
    e0 = torch.randn(graph.n_nodes, 11, dtype=dtype, generator=gen, requires_grad=True)
    w = torch.rand(graph.nnz, dtype=dtype, generator=gen, requires_grad=edge_grad)
    weight = torch.randn(graph.n_nodes if rows is None else rows.numel(), 11, dtype=dtype, generator=gen)
    values = graph.values.to(dtype) * w if edge_grad else graph.values.to(dtype)
    with torch.no_grad():
        no_grad = Spmm.propagate_sum(graph, values, e0, layers, rows=rows)
    out = Spmm.propagate_sum(graph, values, e0, layers, rows=rows)
    (out * weight).sum().backward()
    return [no_grad, out.detach(), e0.grad] + ([w.grad] if edge_grad else [])


@pytest.mark.parametrize("layers", [0, 1, 2, 5])
def test_torch_sparse_path_matches_numba(graph, layers, monkeypatch):
    """Without Numba (and on CUDA) the products are torch.sparse CSR ones: same numbers."""
    rows = torch.tensor([1, 2, 30, 55, 70])
    for kwargs in ({}, {"rows": rows}, {"edge_grad": True}):
        cpu = _run(graph, layers, **kwargs)
        with monkeypatch.context() as patch:
            patch.setattr(Spmm, "HAVE_NUMBA", False)
            fallback = _run(graph, layers, **kwargs)
        for a, b in zip(cpu, fallback):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_rows_path_uses_the_graphs_own_transposed_values(graph):
    """The teacher's constant edge values reuse graph.t_values; other values are permuted per call."""
    assert torch.equal(graph.t_values, graph.values[graph.transpose_perm])
    rows = torch.tensor([0, 7, 64])
    e0 = torch.randn(graph.n_nodes, 4, requires_grad=True)
    Spmm.propagate_sum(graph, graph.values, e0, 3, rows=rows).sum().backward()
    own = e0.grad.clone()
    e0.grad = None
    Spmm.propagate_sum(graph, graph.values.clone(), e0, 3, rows=rows).sum().backward()
    assert torch.equal(own, e0.grad)
