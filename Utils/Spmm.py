"""Sparse propagation over a :class:`DataHandler.Graph`, with gradients for the edge values.

* ``spmm(graph, edge_values, x)``: M·x, M having ``graph``'s pattern and ``edge_values``
  (one per edge, CSR order) as entries. Gradients: Mᵀ·G for x; G[row_e]·x[col_e] per edge.
* ``propagate_sum(graph, edge_values, e0, n_layers)``: Ē = Σ_{l=0..L} M^l·E₀ in one
  autograd node. Backward uses g_L = G, g_l = G + Mᵀ g_{l+1} (so ∂/∂E₀ = g_0) and
  ∂/∂w_e = Σ_{l≥1} g_l[row_e]·E_{l-1}[col_e]: 2L products per step and no per-layer
  autograd bookkeeping, the same numbers as chaining L ``spmm`` calls.

On CPU the products are small Numba loops parallel over rows that sum each row's
terms in CSR order (as SciPy does) into a private buffer; on CUDA, or without Numba,
they are ``torch.sparse.mm`` on CSR tensors. ``bench/bench_spmm.py`` compares them.
"""
from __future__ import annotations

from typing import List, Optional

import torch

try:  # Numba is a requirement; the torch path keeps the code importable without it
    import numba
    import numpy as np

    @numba.njit(parallel=True, cache=True)
    def _csr_spmm(indptr, col, values, x, out, base, total):
        """out = base + M·x (base optional: size-0 array); total += out (optional likewise)."""
        n_rows = indptr.shape[0] - 1
        dim = x.shape[1]
        has_base = base.shape[0] > 0
        has_total = total.shape[0] > 0
        for r in numba.prange(n_rows):
            acc = np.zeros(dim, dtype=out.dtype)  # a private row buffer lets the inner loop vectorise
            for k in range(indptr[r], indptr[r + 1]):
                c = col[k]
                v = values[k]
                for j in range(dim):
                    acc[j] += v * x[c, j]
            if has_base:
                for j in range(dim):
                    acc[j] += base[r, j]
            for j in range(dim):
                out[r, j] = acc[j]
            if has_total:
                for j in range(dim):
                    total[r, j] += acc[j]

    @numba.njit(parallel=True, cache=True)
    def _csr_sampled_dot(indptr, col, g, x, out, accumulate):
        """out[e] (+)= g[row_e] · x[col_e] for every edge e."""
        n_rows = indptr.shape[0] - 1
        dim = x.shape[1]
        for r in numba.prange(n_rows):
            for k in range(indptr[r], indptr[r + 1]):
                c = col[k]
                acc = 0.0  # float64 accumulator
                for j in range(dim):
                    acc += g[r, j] * x[c, j]
                if accumulate:
                    out[k] += acc
                else:
                    out[k] = acc

    @numba.njit(parallel=True, cache=True)
    def _csr_spmm_rows(rows, indptr, col, values, x, out):
        """out[k] = (M·x)[rows[k]]: the product restricted to some rows."""
        dim = x.shape[1]
        for k in numba.prange(rows.shape[0]):
            r = rows[k]
            acc = np.zeros(dim, dtype=out.dtype)
            for e in range(indptr[r], indptr[r + 1]):
                c = col[e]
                v = values[e]
                for j in range(dim):
                    acc[j] += v * x[c, j]
            for j in range(dim):
                out[k, j] = acc[j]

    @numba.njit(parallel=True, cache=True)
    def _csr_scatter_rows(rows, indptr, col, values, g, out):
        """out += Mᵀ·G for G non-zero only on ``rows`` (ascending; g[k] is row rows[k]).

        out[c] receives M[r, c]·g[r] for r in ascending order, the order in which a CSR
        product over Mᵀ sums row c, so the result is bit-identical to it. Threads split
        the feature columns, so no two write the same entry.
        """
        dim = g.shape[1]
        n_parts = 2 if dim >= 16 else 1
        step = (dim + n_parts - 1) // n_parts
        for part in numba.prange(n_parts):
            lo = part * step
            hi = min(dim, lo + step)
            for k in range(rows.shape[0]):
                r = rows[k]
                for e in range(indptr[r], indptr[r + 1]):
                    c = col[e]
                    v = values[e]
                    for j in range(lo, hi):
                        out[c, j] += v * g[k, j]

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    HAVE_NUMBA = False


def set_threads(n: int) -> None:
    """Use ``n`` threads in the Numba kernels (at most the number Numba started with)."""
    if HAVE_NUMBA and n > 0:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def _use_numba(x: torch.Tensor) -> bool:
    return HAVE_NUMBA and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)


def _product(indptr, col, values, x, n_rows, base: Optional[torch.Tensor] = None,
             total: Optional[torch.Tensor] = None) -> torch.Tensor:
    """base + M·x for M in CSR (indptr, col, values); also adds the result into ``total``."""
    x = x.contiguous()
    values = values.to(x.dtype).contiguous()
    if _use_numba(x):
        out = torch.empty((n_rows, x.shape[1]), dtype=x.dtype)
        empty = np.empty((0, 0), dtype=out.numpy().dtype)
        _csr_spmm(indptr.numpy(), col.numpy(), values.numpy(), x.numpy(), out.numpy(),
                  empty if base is None else base.contiguous().numpy(),
                  empty if total is None else total.numpy())
        return out
    mat = torch.sparse_csr_tensor(indptr, col, values, size=(n_rows, x.shape[0]))
    out = torch.sparse.mm(mat, x)
    if base is not None:
        out.add_(base)
    if total is not None:
        total.add_(out)
    return out


def _sampled_dot(graph, g, x, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(g[row_e] · x[col_e]) for every edge e, added into ``out`` when given."""
    g = g.contiguous()
    x = x.contiguous()
    accumulate = out is not None
    if out is None:
        out = torch.empty(graph.nnz, dtype=x.dtype, device=x.device)
    if _use_numba(x):
        _csr_sampled_dot(graph.indptr.numpy(), graph.col.numpy(), g.numpy(), x.numpy(), out.numpy(), accumulate)
        return out
    step = 1 << 20  # bound the gathered (edges × d) temporaries
    for s in range(0, graph.nnz, step):
        part = (g[graph.row[s:s + step]] * x[graph.col[s:s + step]]).sum(1)
        if accumulate:
            out[s:s + step] += part
        else:
            out[s:s + step] = part
    return out


def _transposed_product(graph, t_values, x, base=None):
    """base + Mᵀ·x, given Mᵀ's values in its CSR order (``edge_values[graph.transpose_perm]``)."""
    return _product(graph.t_indptr, graph.t_col, t_values, x, graph.n_nodes, base=base)


class _EdgeSpMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, edge_values, x, graph):
        ctx.graph = graph
        ctx.save_for_backward(edge_values, x)
        return _product(graph.indptr, graph.col, edge_values, x, graph.n_nodes)

    @staticmethod
    def backward(ctx, grad_out):
        edge_values, x = ctx.saved_tensors
        graph = ctx.graph
        grad_values = grad_x = None
        if ctx.needs_input_grad[1]:
            grad_x = _transposed_product(graph, edge_values[graph.transpose_perm], grad_out)
        if ctx.needs_input_grad[0]:
            grad_values = _sampled_dot(graph, grad_out, x).to(edge_values.dtype)
        return grad_values, grad_x, None


def spmm(graph, edge_values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """M·x with M = sparse(graph pattern, edge_values); differentiable in both inputs."""
    if edge_values.requires_grad or x.requires_grad:
        return _EdgeSpMM.apply(edge_values, x, graph)
    return _product(graph.indptr, graph.col, edge_values, x, graph.n_nodes)


def propagate_layers(graph, edge_values: torch.Tensor, e0: torch.Tensor, n_layers: int) -> List[torch.Tensor]:
    """[E_0, E_1, …, E_L] with E_l = M·E_{l-1} (differentiable, one autograd node per layer)."""
    layers = [e0]
    for _ in range(n_layers):
        layers.append(spmm(graph, edge_values, layers[-1]))
    return layers


class _PropagateSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, edge_values, e0, graph, n_layers):
        e0 = e0.contiguous()
        total = e0.clone()
        layers = [e0]
        for _ in range(n_layers):
            layers.append(_product(graph.indptr, graph.col, edge_values, layers[-1], graph.n_nodes, total=total))
        ctx.graph, ctx.n_layers = graph, n_layers
        # E_L is never needed by the backward pass; keep E_0..E_{L-1} only when w needs a gradient
        keep = layers[:-1] if ctx.needs_input_grad[0] else []
        ctx.save_for_backward(edge_values, *keep)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        edge_values, *layers = ctx.saved_tensors
        graph, n_layers = ctx.graph, ctx.n_layers
        grad_total = grad_total.contiguous()
        grad_values = torch.zeros_like(edge_values, dtype=grad_total.dtype) if ctx.needs_input_grad[0] else None
        t_values = edge_values[graph.transpose_perm].to(grad_total.dtype).contiguous()
        g = grad_total  # g_L
        for layer in range(n_layers, 0, -1):
            if grad_values is not None:
                _sampled_dot(graph, g, layers[layer - 1], out=grad_values)
            g = _transposed_product(graph, t_values, g, base=grad_total)  # g_{l-1} = G + Mᵀ g_l
        if grad_values is not None:
            grad_values = grad_values.to(edge_values.dtype)
        return grad_values, (g if ctx.needs_input_grad[1] else None), None, None


def propagate_sum(graph, edge_values: torch.Tensor, e0: torch.Tensor, n_layers: int,
                  rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Ē = Σ_{l=0..L} M^l·E₀, differentiable in ``edge_values`` and ``e0``.

    With ``rows`` (ascending node ids) only Ē[rows] is returned and computed where it
    can be: the last layer for those rows alone, the layer sum gathered from them, and
    in backward the first step as a scatter from those rows. Same numbers, bit for bit,
    as indexing the full result; about 40 % less work for a BPR batch (stage 1). The
    edge values are then constants (no gradient).
    """
    if rows is not None:
        if edge_values.requires_grad:
            raise ValueError("propagate_sum(rows=...) treats the edge values as constants")
        return _PropagateSumRows.apply(e0, graph, edge_values, n_layers, rows)
    if edge_values.requires_grad or e0.requires_grad:
        return _PropagateSum.apply(edge_values, e0, graph, n_layers)
    with torch.no_grad():
        return _PropagateSum.forward(_NoCtx(), edge_values, e0, graph, n_layers)


def _rows_product(graph, edge_values, x, rows):
    """(M·x)[rows]."""
    if _use_numba(x):
        out = torch.empty((rows.numel(), x.shape[1]), dtype=x.dtype)
        _csr_spmm_rows(rows.numpy(), graph.indptr.numpy(), graph.col.numpy(),
                       edge_values.to(x.dtype).contiguous().numpy(), x.contiguous().numpy(), out.numpy())
        return out
    return _product(graph.indptr, graph.col, edge_values, x, graph.n_nodes)[rows]


def _rows_transposed_product(graph, edge_values, g_rows, rows):
    """Mᵀ·G for G non-zero only on ``rows`` (its rows given as ``g_rows``)."""
    if _use_numba(g_rows):
        out = torch.zeros((graph.n_nodes, g_rows.shape[1]), dtype=g_rows.dtype)
        _csr_scatter_rows(rows.numpy(), graph.indptr.numpy(), graph.col.numpy(),
                          edge_values.to(g_rows.dtype).contiguous().numpy(), g_rows.contiguous().numpy(),
                          out.numpy())
        return out
    full = torch.zeros((graph.n_nodes, g_rows.shape[1]), dtype=g_rows.dtype, device=g_rows.device)
    full[rows] = g_rows
    t_values = edge_values[graph.transpose_perm].to(g_rows.dtype).contiguous()
    return _transposed_product(graph, t_values, full)


class _PropagateSumRows(torch.autograd.Function):
    """Ē[rows] with constant edge values: see :func:`propagate_sum`."""

    @staticmethod
    def forward(ctx, e0, graph, edge_values, n_layers, rows):
        x = e0.contiguous()
        total = x[rows]  # Σ_l E_l[rows], summed in the order l = 0..L like the full version
        for layer in range(1, n_layers + 1):
            if layer < n_layers:
                x = _product(graph.indptr, graph.col, edge_values, x, graph.n_nodes)
                total += x[rows]
            else:
                total += _rows_product(graph, edge_values, x, rows)
        ctx.graph, ctx.n_layers = graph, n_layers
        ctx.save_for_backward(edge_values, rows)
        return total

    @staticmethod
    def backward(ctx, grad_rows):
        edge_values, rows = ctx.saved_tensors
        graph, n_layers = ctx.graph, ctx.n_layers
        grad_rows = grad_rows.contiguous()
        if n_layers == 0:
            g = torch.zeros((graph.n_nodes, grad_rows.shape[1]), dtype=grad_rows.dtype, device=grad_rows.device)
            g[rows] = grad_rows
            return g, None, None, None, None
        g = _rows_transposed_product(graph, edge_values, grad_rows, rows)  # Mᵀ g_L, g_L = G on rows
        g[rows] += grad_rows  # g_{L-1} = G + Mᵀ g_L
        t_values = edge_values[graph.transpose_perm].to(grad_rows.dtype).contiguous()
        for _ in range(n_layers - 1):
            g = _transposed_product(graph, t_values, g)
            g[rows] += grad_rows
        return g, None, None, None, None


class _NoCtx:
    """A stand-in autograd context for running the forward pass without autograd."""

    needs_input_grad = (False, False, False, False)

    def save_for_backward(self, *tensors):
        pass
