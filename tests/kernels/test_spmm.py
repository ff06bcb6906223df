"""Utils/kernels/Spmm.py: the CPU kernels and the torch.sparse path (the one CUDA takes) agree.

These need no ../shared data: the graph is a random bipartite one built here.
"""
import mmap

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import DataHandler as dh
from Utils.kernels import Spmm


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


@pytest.mark.parametrize("layers", [1, 2, 3, 6])
def test_outputs_and_gradients_outlive_the_next_propagation(graph, layers):
    """The row-restricted propagation keeps its intermediate layers in work arrays of the graph,
    reused by the next call: what it returns (Ē[rows] and the gradient of E₀) must never be one of
    them, so a step's results stay as they were after the next step's forward and backward."""
    rows = torch.tensor([1, 2, 30, 55, 70])
    gen = torch.Generator().manual_seed(11)
    e0, e1 = (torch.randn(graph.n_nodes, 8, generator=gen).requires_grad_(True) for _ in range(2))
    out = Spmm.propagate_sum(graph, graph.values, e0, layers, rows=rows)
    out.square().sum().backward()
    first_out, first_grad = out.detach().clone(), e0.grad.clone()
    assert graph.scratch, "the CPU path keeps its work arrays on the graph"
    again = Spmm.propagate_sum(graph, graph.values, e1, layers, rows=rows)
    again.square().sum().backward()
    assert not torch.equal(again, out)
    assert torch.equal(out.detach(), first_out) and torch.equal(e0.grad, first_grad)
    e0.grad = None
    Spmm.propagate_sum(graph, graph.values, e0, layers, rows=rows).square().sum().backward()
    assert torch.equal(e0.grad, first_grad)  # reused work arrays give the same numbers


def test_graph_copies_start_without_work_arrays(graph):
    """Graph.to() gives a graph of its own work arrays (none until its first propagation)."""
    e0 = torch.randn(graph.n_nodes, 5, requires_grad=True)
    Spmm.propagate_sum(graph, graph.values, e0, 3, rows=torch.tensor([0, 3])).sum().backward()
    assert graph.scratch
    assert graph.to("cpu").scratch == {}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_page_arrays_are_plain_writable_tensors(dtype):
    """huge_page_empty: the shape and dtype asked for, contiguous, writable; from 2 MiB up it starts
    on a 2 MiB boundary where the OS takes the advice (Linux), and small ones are plain tensors."""
    big = Spmm.huge_page_empty(6000, 100, dtype)  # 2.4 MB (float32) or 4.8 MB
    assert big.shape == (6000, 100) and big.dtype == dtype and big.is_contiguous()
    big.fill_(0.5)
    big[-1, -1] = 2.0
    assert float(big.sum()) == 0.5 * (6000 * 100 - 1) + 2.0
    if hasattr(mmap, "MADV_HUGEPAGE"):
        assert big.data_ptr() % Spmm.HUGE_PAGE == 0
    small = Spmm.huge_page_empty(4, 3, dtype)
    assert small.shape == (4, 3) and small.dtype == dtype


@pytest.mark.parametrize("accumulate", [False, True])
def test_edge_gradient_sums_each_edge_in_column_order(graph, accumulate):
    """_sampled_dot interleaves four edges of a row at a time; each edge's value must still be the
    float64 sum of its float32 products in column order, bit for bit (rows of 5-9 edges here:
    whole groups of four and the edges left over)."""
    gen = torch.Generator().manual_seed(5)
    g = torch.randn(graph.n_nodes, 13, generator=gen)
    x = torch.randn(graph.n_nodes, 13, generator=gen)
    g[:, 0] *= 1e15  # products of columns 0 and 1 cancel exactly when added first, as in column order;
    g[:, 1] = -g[:, 0]  # added last, they take the bits of the small ones' sum with them
    x[:, 1] = x[:, 0]
    start = torch.randn(graph.nnz, generator=gen)
    got = Spmm._sampled_dot(graph, g, x, out=start.clone() if accumulate else None)
    gn, xn = g.numpy(), x.numpy()

    def reference(columns):
        want = start.numpy().copy() if accumulate else np.zeros(graph.nnz, dtype=np.float32)
        for e, (r, c) in enumerate(zip(graph.row.tolist(), graph.col.tolist())):
            acc = 0.0
            for j in columns:
                acc += float(gn[r, j] * xn[c, j])  # a float32 product, added in float64
            want[e] = np.float32(float(want[e]) + acc) if accumulate else np.float32(acc)
        return want

    assert np.diff(graph.indptr.numpy()).max() >= 5  # some rows have a whole group of four and more
    assert np.array_equal(got.numpy(), reference(range(13)))
    assert not np.array_equal(got.numpy(), reference(range(12, -1, -1)))  # another order would show
