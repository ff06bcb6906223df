"""Sparse propagation over a :class:`DataHandler.Graph`, with gradients for the edge values.

* ``spmm(graph, edge_values, x)``: M·x, M having ``graph``'s pattern and ``edge_values``
  (one per edge, CSR order) as entries. Gradients: Mᵀ·G for x; G[row_e]·x[col_e] per edge.
* ``propagate_sum(graph, edge_values, e0, n_layers)``: Ē = Σ_{l=0..L} M^l·E₀ in one
  autograd node. Backward uses g_L = G, g_l = G + Mᵀ g_{l+1} (so ∂/∂E₀ = g_0) and
  ∂/∂w_e = Σ_{l≥1} g_l[row_e]·E_{l-1}[col_e]: 2L products per step and no per-layer
  autograd bookkeeping, the same numbers as chaining L ``spmm`` calls.

On CPU the products are small Numba loops parallel over rows that sum each row's
terms in CSR order (as SciPy does) into a private accumulator held in registers,
prefetching the rows of x they will gather a few edges ahead; the row-restricted
propagation of stage 1 keeps its intermediate layers in work arrays reused across
calls, on huge pages. On CUDA, or without Numba, they are ``torch.sparse.mm`` on CSR
tensors. ``bench/bench_spmm.py`` compares them.
"""
from __future__ import annotations

import mmap
import warnings
from typing import List, Optional, Tuple

import torch

try:  # Numba is a requirement; the torch path keeps the code importable without it
    import numba
    import numpy as np
    from llvmlite import ir as llvm_ir
    from numba.core import cgutils
    from numba.extending import intrinsic

    PREFETCH_EDGES = 32  # how far ahead, in edges, the products prefetch the rows they will gather

    @intrinsic
    def _prefetch(typingctx, address):
        """llvm.prefetch(address, read, keep in all cache levels, data): a hint, which never faults."""

        def codegen(context, builder, signature, args):
            i8p = llvm_ir.IntType(8).as_pointer()
            i32 = llvm_ir.IntType(32)
            fnty = llvm_ir.FunctionType(llvm_ir.VoidType(), [i8p, i32, i32, i32])
            fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p], fnty)
            builder.call(fn, [builder.inttoptr(args[0], i8p), i32(0), i32(3), i32(1)])
            return context.get_dummy_value()

        return numba.types.void(numba.types.intp), codegen

    @intrinsic
    def _row_buffer(typingctx, like, size):
        """A pointer to ``size`` elements of ``like``'s dtype on the stack (``size`` a compile-time
        literal): a kernel's per-row accumulator. Unlike a heap buffer, LLVM can prove it aliases
        none of the arrays read, so the accumulator of a whole row stays in vector registers
        (about 1.5x faster products on Yelp, the same numbers: every sum keeps its order)."""
        if not isinstance(size, numba.types.IntegerLiteral):
            return None
        n = size.literal_value

        def codegen(context, builder, signature, args):
            return cgutils.alloca_once(builder, context.get_value_type(like.dtype), size=n)

        return numba.types.CPointer(like.dtype)(like, size), codegen

    @numba.njit(inline="always")
    def _prefetch_row(x, row):
        """Start loading x[row] into the cache (64-byte lines) before it is read.

        The products gather rows of x in the order of the column indices, which the
        hardware prefetchers cannot predict: issuing these hints PREFETCH_EDGES edges
        ahead hides most of the memory latency (about 2x on Yelp's 8-layer chain).
        """
        start = x.ctypes.data + row * x.strides[0]
        for offset in range(0, x.strides[0], 64):
            _prefetch(start + offset)

    @numba.njit(inline="always")
    def _prefetch_ahead(x, col, k):
        """Prefetch the row of x that edge k + PREFETCH_EDGES (in CSR order) will gather."""
        if k + PREFETCH_EDGES < col.shape[0]:
            _prefetch_row(x, col[k + PREFETCH_EDGES])

    @numba.njit(parallel=True, cache=True)
    def _csr_spmm(csr, x, out, extra, picked_into_out, dim):
        """out = base + M·x; total += out, for M = ``csr`` (indptr, col, values) and ``extra`` =
        (base, total, slot, picked); an unused one is a size-0 array. ``dim`` = x.shape[1],
        compiled as a constant (one specialisation per embedding size).

        With ``slot`` (N,) and ``picked`` (K×d), rows r with slot[r] ≥ 0 also do
        out[r] += picked[slot[r]] (``picked_into_out``) or picked[slot[r]] += out[r]:
        the row-restricted propagation's gathers and adds, without a pass over memory.
        """
        numba.literally(dim)
        indptr, col, values = csr
        base, total, slot, picked = extra
        n_rows = indptr.shape[0] - 1
        has_base = base.shape[0] > 0
        has_total = total.shape[0] > 0
        has_slot = slot.shape[0] > 0
        for r in numba.prange(n_rows):
            acc = numba.carray(_row_buffer(out, dim), dim)  # the row's sum, in registers
            for j in range(dim):
                acc[j] = 0
            for k in range(indptr[r], indptr[r + 1]):
                _prefetch_ahead(x, col, k)
                c = col[k]
                v = values[k]
                for j in range(dim):
                    acc[j] += v * x[c, j]
            if has_base:
                for j in range(dim):
                    acc[j] += base[r, j]
            s = slot[r] if has_slot else -1
            if s >= 0 and picked_into_out:
                for j in range(dim):
                    acc[j] += picked[s, j]
            for j in range(dim):
                out[r, j] = acc[j]
            if has_total:
                for j in range(dim):
                    total[r, j] += acc[j]
            if s >= 0 and not picked_into_out:
                for j in range(dim):
                    picked[s, j] += acc[j]

    @numba.njit(inline="always")
    def _put(out, k, value, accumulate):
        if accumulate:
            out[k] += value
        else:
            out[k] = value

    @numba.njit(parallel=True, cache=True)
    def _csr_sampled_dot(indptr, col, g, x, out, accumulate):
        """out[e] (+)= g[row_e] · x[col_e] for every edge e, each a float64 sum over the columns in order.

        That order makes each edge's sum one chain of dependent additions, so a row's edges are
        taken four at a time, their four chains interleaved: the same sums, 1.4-1.8x faster on
        Yelp's Â and Ĉ (a throwaway script, 2026-12-05; 8 at a time was slower)."""
        n_rows = indptr.shape[0] - 1
        dim = x.shape[1]
        for r in numba.prange(n_rows):
            k = indptr[r]
            end = indptr[r + 1]
            while k + 4 <= end:
                for q in range(4):
                    _prefetch_ahead(x, col, k + q)
                c0, c1, c2, c3 = col[k], col[k + 1], col[k + 2], col[k + 3]
                a0 = a1 = a2 = a3 = 0.0  # float64 accumulators
                for j in range(dim):
                    gj = g[r, j]
                    a0 += gj * x[c0, j]
                    a1 += gj * x[c1, j]
                    a2 += gj * x[c2, j]
                    a3 += gj * x[c3, j]
                _put(out, k, a0, accumulate)
                _put(out, k + 1, a1, accumulate)
                _put(out, k + 2, a2, accumulate)
                _put(out, k + 3, a3, accumulate)
                k += 4
            for e in range(k, end):
                _prefetch_ahead(x, col, e)
                c = col[e]
                acc = 0.0
                for j in range(dim):
                    acc += g[r, j] * x[c, j]
                _put(out, e, acc, accumulate)

    @numba.njit(parallel=True, cache=True)
    def _csr_spmm_rows(rows, indptr, col, values, x, out, dim):
        """out[k] += (M·x)[rows[k]]: the product restricted to some rows, added into ``out``."""
        numba.literally(dim)
        for k in numba.prange(rows.shape[0]):  # 0.6 ms on a Yelp batch, prefetching or not
            r = rows[k]
            acc = numba.carray(_row_buffer(out, dim), dim)
            for j in range(dim):
                acc[j] = 0
            for e in range(indptr[r], indptr[r + 1]):
                c = col[e]
                v = values[e]
                for j in range(dim):
                    acc[j] += v * x[c, j]
            for j in range(dim):
                out[k, j] += acc[j]

    @numba.njit(parallel=True, cache=True)
    def _csr_spmm_from_rows(indptr, col, values, slot, x_rows, out, dim):
        """out = X + M·X for X non-zero only on the rows r with slot[r] ≥ 0, X[r] = x_rows[slot[r]].

        Each row's terms are summed in CSR order skipping the zero rows of X, so the
        result equals the full product's (adding an exact zero changes nothing).
        """
        numba.literally(dim)
        n_rows = indptr.shape[0] - 1
        nnz = col.shape[0]
        for r in numba.prange(n_rows):
            acc = numba.carray(_row_buffer(out, dim), dim)
            for j in range(dim):
                acc[j] = 0
            for k in range(indptr[r], indptr[r + 1]):
                if k + PREFETCH_EDGES < nnz:
                    ahead = slot[col[k + PREFETCH_EDGES]]
                    if ahead >= 0:
                        _prefetch_row(x_rows, ahead)
                s = slot[col[k]]
                if s >= 0:
                    v = values[k]
                    for j in range(dim):
                        acc[j] += v * x_rows[s, j]
            s = slot[r]
            if s >= 0:
                for j in range(dim):
                    acc[j] += x_rows[s, j]
            for j in range(dim):
                out[r, j] = acc[j]

    _COMPILED = {}

    def _run_kernel(kernel, *args):
        """kernel(*args) with its last argument, the embedding size, compiled as a constant.

        ``numba.literally`` asks for one compiled version per value; the dispatcher would find it
        only after a failed typing on every call (about 15 ms), so the compiled version is looked
        up here by the arguments' types (loaded from Numba's on-disk cache when it is there)."""
        types = tuple(numba.typeof(a) for a in args[:-1])
        key = (kernel, types, args[-1])
        compiled = _COMPILED.get(key)
        if compiled is None:
            compiled = _COMPILED[key] = kernel.compile(types + (numba.types.literal(args[-1]),))
        return compiled(*args)

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    HAVE_NUMBA = False


def set_threads(n: int) -> None:
    """Use ``n`` threads in the Numba kernels (at most the number Numba started with)."""
    if HAVE_NUMBA and n > 0:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def _use_numba(x: torch.Tensor) -> bool:
    return HAVE_NUMBA and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)


def _product(csr, x, n_rows, base: Optional[torch.Tensor] = None, total: Optional[torch.Tensor] = None,
             out: Optional[torch.Tensor] = None,
             picked: Optional[Tuple[torch.Tensor, torch.Tensor, bool]] = None) -> torch.Tensor:
    """base + M·x for M in CSR ``csr`` = (indptr, col, values); also adds the result into ``total``.

    ``out``: where to write the result on CPU (a new tensor when None, and always elsewhere).
    ``picked`` = (slot, P, into_out): for the rows r with slot[r] ≥ 0, add P[slot[r]] into
    the result (``into_out``) or the result's row into P[slot[r]].
    """
    indptr, col, values = csr
    x = x.contiguous()
    values = values.to(x.dtype).contiguous()
    if _use_numba(x):
        if out is None:
            out = torch.empty((n_rows, x.shape[1]), dtype=x.dtype)
        empty = np.empty((0, 0), dtype=out.numpy().dtype)
        slot, picked_rows, into_out = picked if picked is not None else (None, None, False)
        _run_kernel(_csr_spmm, (indptr.numpy(), col.numpy(), values.numpy()), x.numpy(), out.numpy(),
                  (empty if base is None else base.contiguous().numpy(), empty if total is None else total.numpy(),
                   np.empty(0, dtype=np.int64) if slot is None else slot.numpy(),
                   empty if picked_rows is None else picked_rows.numpy()), into_out, x.shape[1])
        return out
    with warnings.catch_warnings():  # "sparse CSR support is in beta", once per process
        warnings.simplefilter("ignore", UserWarning)
        mat = torch.sparse_csr_tensor(indptr, col, values, size=(n_rows, x.shape[0]), check_invariants=False)
    out = torch.sparse.mm(mat, x)
    if base is not None:
        out.add_(base)
    if total is not None:
        total.add_(out)
    if picked is not None:
        slot, picked_rows, into_out = picked
        rows = torch.nonzero(slot >= 0).squeeze(1)
        if into_out:
            out[rows] += picked_rows[slot[rows]]
        else:
            picked_rows[slot[rows]] += out[rows]
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


def _transposed_product(graph, t_values, x, base=None, out=None, picked=None):
    """base + Mᵀ·x, given Mᵀ's values in its CSR order (``edge_values[graph.transpose_perm]``)."""
    return _product((graph.t_indptr, graph.t_col, t_values), x, graph.n_nodes, base=base, out=out, picked=picked)


class _EdgeSpMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, edge_values, x, graph):
        ctx.graph = graph
        ctx.save_for_backward(edge_values, x)
        return _product((graph.indptr, graph.col, edge_values), x, graph.n_nodes)

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
    return _product((graph.indptr, graph.col, edge_values), x, graph.n_nodes)


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
            layers.append(_product((graph.indptr, graph.col, edge_values), layers[-1], graph.n_nodes, total=total))
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
    can be: the last layer for those rows alone, the layer sum gathered from them inside
    the products, and in backward a first step that reads only those rows. Same numbers,
    bit for bit, as indexing the full result; about 40 % less work for a BPR batch
    (stage 1). The edge values are then constants (no gradient).
    """
    if rows is not None:
        if edge_values.requires_grad:
            raise ValueError("propagate_sum(rows=...) treats the edge values as constants")
        return _PropagateSumRows.apply(e0, graph, edge_values, n_layers, rows)
    if edge_values.requires_grad or e0.requires_grad:
        return _PropagateSum.apply(edge_values, e0, graph, n_layers)
    with torch.no_grad():
        return _PropagateSum.forward(_NoCtx(), edge_values, e0, graph, n_layers)


HUGE_PAGE = 2 << 20


def huge_page_empty(n_rows: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised n_rows×dim CPU tensor whose memory the OS may back with 2 MiB pages.

    The products read the rows of x in column-index order, all over an N×d array (17.8 MB on
    Yelp at 64-d: 4,350 pages of 4 KiB, more than the TLB holds), so with 4 KiB pages most
    gathers also miss the TLB. An anonymous mapping advised ``MADV_HUGEPAGE`` (Linux with
    transparent huge pages set to ``madvise`` or ``always``) needs nine entries instead: a
    chain of 7 products over such arrays took 22-23 ms against 30.5 ms (a throwaway script on
    this VM; ``bench/README.md`` has the rerunnable figures). Where
    the advice is not available, a plain ``torch.empty``. Contents are never read before written."""
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    nbytes = n_rows * dim * np_dtype.itemsize
    if nbytes < HUGE_PAGE or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty((n_rows, dim), dtype=dtype)
    try:
        mapping = mmap.mmap(-1, nbytes + HUGE_PAGE)  # anonymous, zero pages until written
        mapping.madvise(mmap.MADV_HUGEPAGE)
    except (OSError, ValueError):
        return torch.empty((n_rows, dim), dtype=dtype)
    raw = np.frombuffer(mapping, dtype=np.uint8)  # holds the mapping open while the tensor lives
    start = (-raw.ctypes.data) % HUGE_PAGE  # huge pages cover 2 MiB-aligned ranges only
    return torch.from_numpy(raw[start:start + nbytes].view(np_dtype).reshape(n_rows, dim))


def _scratch(graph, like: torch.Tensor) -> List[Optional[torch.Tensor]]:
    """Two N×d work arrays shaped and typed like ``like``, kept in ``graph.scratch`` and reused
    by every propagation over ``graph`` for the layers that never leave it (on CPU; ``[None,
    None]`` elsewhere: fresh outputs). A fresh N×d array is page-faulted in on its first write
    (a product into one took 8.9 ms against 2.2 ms into a reused one on Yelp, ``bench_spmm.py``),
    and a propagation writes one per layer; these are also on huge pages (:func:`huge_page_empty`)."""
    if not _use_numba(like):
        return [None, None]
    key = (like.dtype, like.shape[1])
    if key not in graph.scratch:
        graph.scratch[key] = [huge_page_empty(graph.n_nodes, like.shape[1], like.dtype) for _ in range(2)]
    return graph.scratch[key]


def _row_slots(rows: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """slot[r] = k where rows[k] = r, −1 for the other nodes."""
    slot = torch.full((n_nodes,), -1, dtype=torch.int64, device=rows.device)
    slot[rows] = torch.arange(rows.numel(), device=rows.device)
    return slot


def _add_rows_product(graph, values, x, rows, total):
    """total += (M·x)[rows]."""
    if _use_numba(x):
        _run_kernel(_csr_spmm_rows, rows.numpy(), graph.indptr.numpy(), graph.col.numpy(), values.numpy(),
                    x.contiguous().numpy(), total.numpy(), x.shape[1])
    else:
        total += _product((graph.indptr, graph.col, values), x, graph.n_nodes)[rows]


def _rows_transposed_product(graph, t_values, slot, g_rows, rows, out=None):
    """G + Mᵀ·G for G non-zero only on ``rows`` (its rows given as ``g_rows``), into ``out`` on CPU."""
    if _use_numba(g_rows):
        if out is None:
            out = torch.empty((graph.n_nodes, g_rows.shape[1]), dtype=g_rows.dtype)
        _run_kernel(_csr_spmm_from_rows, graph.t_indptr.numpy(), graph.t_col.numpy(), t_values.numpy(),
                    slot.numpy(), g_rows.numpy(), out.numpy(), g_rows.shape[1])
        return out
    full = torch.zeros((graph.n_nodes, g_rows.shape[1]), dtype=g_rows.dtype, device=g_rows.device)
    full[rows] = g_rows
    out = _transposed_product(graph, t_values, full)
    out[rows] += g_rows
    return out


class _PropagateSumRows(torch.autograd.Function):
    """Ē[rows] with constant edge values: see :func:`propagate_sum`."""

    @staticmethod
    def forward(ctx, e0, graph, edge_values, n_layers, rows):
        x = e0.contiguous()
        values = edge_values.to(x.dtype).contiguous()
        total = x[rows]  # Σ_l E_l[rows], summed in the order l = 0..L like the full version
        slot = _row_slots(rows, graph.n_nodes)
        buffers = _scratch(graph, x)  # E_1..E_{L-1} never leave this function
        for layer in range(1, n_layers):
            x = _product((graph.indptr, graph.col, values), x, graph.n_nodes, out=buffers[layer % 2],
                         picked=(slot, total, False))  # E_l, and total += E_l[rows]
        if n_layers > 0:
            _add_rows_product(graph, values, x, rows, total)  # E_L for the rows alone
        ctx.graph, ctx.n_layers = graph, n_layers
        # Mᵀ's values in its CSR order: computed once per graph for its own constant values
        ctx.t_values = graph.t_values if values is graph.values else values[graph.transpose_perm]
        ctx.save_for_backward(rows, slot)
        return total

    @staticmethod
    def backward(ctx, grad_rows):
        rows, slot = ctx.saved_tensors
        graph, n_layers, t_values = ctx.graph, ctx.n_layers, ctx.t_values
        grad_rows = grad_rows.contiguous()
        if n_layers == 0:
            g = torch.zeros((graph.n_nodes, grad_rows.shape[1]), dtype=grad_rows.dtype, device=grad_rows.device)
            g[rows] = grad_rows
            return g, None, None, None, None
        t_values = t_values.to(grad_rows.dtype).contiguous()
        # g_{L-1}, …, g_1 alternate between the work arrays; g_0, the gradient returned, is a fresh array
        work = _scratch(graph, grad_rows)
        outs = [work[i % 2] for i in range(n_layers - 1)] + [None]
        g = _rows_transposed_product(graph, t_values, slot, grad_rows, rows,
                                     out=outs[0])  # g_{L-1} = G + Mᵀ g_L, g_L = G on rows
        for out in outs[1:]:
            g = _transposed_product(graph, t_values, g, out=out,
                                    picked=(slot, grad_rows, True))  # g_{l-1} = Mᵀ g_l + G on rows
        return g, None, None, None, None


class _NoCtx:
    """A stand-in autograd context for running the forward pass without autograd."""

    needs_input_grad = (False, False, False, False)

    def save_for_backward(self, *tensors):
        pass
