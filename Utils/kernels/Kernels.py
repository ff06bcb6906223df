"""The blocked kernels behind the all-node terms of the objective (:mod:`Utils.objective.Losses`).

The all-node denominators (e.g. 3.6 k anchors × 42.7 k users on Yelp) never form an
anchors×N matrix: :func:`row_logsumexp_matmul` and :func:`positive_pair_logit_sums` are
custom autograd functions that compute their forward pass block by block into one reused
buffer and recompute the blocks in the backward pass (``bench/bench_contrastive.py``).
:func:`table_logsumexp` runs one over a whole table or over the rows of a
:class:`ContrastSample` (``--contrast_candidates``); :func:`subspace_pair_index` lists the
subspace term's positive pairs once for masks that stay fixed over a pruning run.
The block shape is a :class:`Blocks` (:func:`device_blocks`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

from Utils.kernels import MaskPairs

#: Default block shape (anchors × candidates) of the blocked reductions: a 256×4096
#: float32 buffer is 4 MiB, small enough to stay in cache between the product and the exp.
BLOCK_ROWS = 256
BLOCK_COLS = 4096

#: With a memory budget (:class:`Blocks`), the fewest columns a block is given before its
#: rows are split: under this the products are too thin to use a GPU well.
MIN_BUDGET_COLS = 1024


@dataclass(frozen=True)
class Blocks:
    """The block shape of the blocked kernels (anchors × candidates per product).

    Two shapes, the same sums (they differ only by float rounding):

    * CPU (``budget=None``): ``rows`` × ``cols`` = 256 × 4,096, a 4 MiB block that stays in
      cache between the product and the exp; the subspace positives are listed from
      bit-packed masks when they are few (``list_pairs``).
    * device (``budget`` = floats per block): the whole anchor set against as many
      candidates as the budget holds, i.e. a few large products per term instead of
      hundreds of small ones; the rows are split only when fewer than
      :data:`MIN_BUDGET_COLS` columns would fit. No listing (it runs on the host).
    """

    rows: int = BLOCK_ROWS
    cols: int = BLOCK_COLS
    budget: Optional[int] = None
    list_pairs: bool = True

    def shape(self, n: int, m: int) -> Tuple[int, int]:
        """(block rows, block columns) for ``n`` anchors against ``m`` candidates."""
        if self.budget is None:
            return self.rows, self.cols
        rows = max(1, min(n, self.budget // max(1, min(m, MIN_BUDGET_COLS))))
        return rows, max(1, min(m, self.budget // rows))


CPU_BLOCKS = Blocks()


def device_blocks(device, budget_mb: float) -> Blocks:
    """The block shape for ``device``: :data:`CPU_BLOCKS` on the CPU, on an accelerator whole
    anchor sets against column blocks of at most ``budget_mb`` MiB (float32) each (``--block_mb``)."""
    if torch.device(device).type == "cpu":
        return CPU_BLOCKS
    return Blocks(budget=max(1, int(budget_mb * 2 ** 20) // 4), list_pairs=False)


def _block_view(storage: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """A contiguous rows×cols view on the front of a flat reusable buffer."""
    return storage[: rows * cols].view(rows, cols)


def online_logsumexp_step(block: torch.Tensor, run_max: Optional[torch.Tensor], run_sum: Optional[torch.Tensor]):
    """One column block of a row-wise log-sum-exp taken online: ``block`` (rows × columns, left
    holding exp(block − max)) folded into its rows' running max and Σ exp(· − max) (both None at
    the first block); returns the new (max, sum). log-sum-exp = max + log(sum) after the last."""
    blk_max = block.amax(dim=1)
    if run_max is None:
        block.sub_(blk_max[:, None]).exp_()
        return blk_max, block.sum(dim=1)
    new_max = torch.maximum(run_max, blk_max)
    run_sum.mul_(torch.exp(run_max - new_max))
    block.sub_(new_max[:, None]).exp_()
    run_sum.add_(block.sum(dim=1))
    return new_max, run_sum


class _RowLogSumExpMatmul(torch.autograd.Function):
    """lse_n = log Σ_m exp(s · a_n·b_m), computed block by block; blocks recomputed in backward.

    Backward, with P_nm = exp(s·a_n·b_m − lse_n) (the row softmax) and upstream g_n:
    ∂/∂a_n = s·g_n·Σ_m P_nm b_m,   ∂/∂b_m = s·Σ_n g_n P_nm a_n.
    """

    @staticmethod
    def forward(ctx, anchors, candidates, scale, block_rows, block_cols):
        a = anchors.detach() * scale  # scaled once: n×d, small
        b = candidates.detach()
        n, m = a.shape[0], b.shape[0]
        lse = a.new_empty(n)
        storage = a.new_empty(min(block_rows, n) * min(block_cols, m))
        for r0 in range(0, n, block_rows):
            ar = a[r0:r0 + block_rows]
            nr = ar.shape[0]
            run_max = None
            run_sum = None
            for c0 in range(0, m, block_cols):
                bc = b[c0:c0 + block_cols]
                blk = _block_view(storage, nr, bc.shape[0])
                torch.mm(ar, bc.T, out=blk)
                run_max, run_sum = online_logsumexp_step(blk, run_max, run_sum)
            lse[r0:r0 + nr] = run_max + torch.log(run_sum)
        ctx.save_for_backward(anchors, candidates, lse)
        ctx.scale, ctx.block_rows, ctx.block_cols = scale, block_rows, block_cols
        return lse

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_lse):
        anchors, candidates, lse = ctx.saved_tensors
        need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_a or need_b):
            return None, None, None, None, None
        scale, block_rows, block_cols = ctx.scale, ctx.block_rows, ctx.block_cols
        a = anchors.detach() * scale
        b = candidates.detach()
        n, m = a.shape[0], b.shape[0]
        grad_lse = grad_lse.contiguous()
        grad_a = torch.empty_like(a) if need_a else None
        grad_b = torch.zeros_like(b) if need_b else None
        storage = a.new_empty(min(block_rows, n) * min(block_cols, m))
        for r0 in range(0, n, block_rows):
            ar = a[r0:r0 + block_rows]
            nr = ar.shape[0]
            lse_r = lse[r0:r0 + nr, None]
            g_r = grad_lse[r0:r0 + nr, None]
            gar = ar * g_r  # g_n · s · a_n: the row weights folded into the small factor
            pb = a.new_zeros(nr, b.shape[1]) if need_a else None  # Σ_m P_nm b_m
            for c0 in range(0, m, block_cols):
                bc = b[c0:c0 + block_cols]
                blk = _block_view(storage, nr, bc.shape[0])
                torch.mm(ar, bc.T, out=blk)
                blk.sub_(lse_r).exp_()  # P_nm
                if need_a:
                    pb.addmm_(blk, bc)
                if need_b:
                    grad_b[c0:c0 + bc.shape[0]].addmm_(blk.T, gar)
            if need_a:
                grad_a[r0:r0 + nr] = pb * (g_r * scale)
        return grad_a, grad_b, None, None, None


def row_logsumexp_matmul(anchors: torch.Tensor, candidates: torch.Tensor, temp: float, *,
                         block_rows: int = BLOCK_ROWS, block_cols: int = BLOCK_COLS) -> torch.Tensor:
    """Row-wise log-sum-exp of the logits (A·Bᵀ)/τ: lse_n = log Σ_m exp(a_n·b_m / τ).

    Exact (max-shifted per row, online over column blocks) and memory-bounded: only one
    ``block_rows``×``block_cols`` buffer is alive; the backward pass recomputes the blocks.
    Differentiable w.r.t. both ``anchors`` (n×d) and ``candidates`` (m×d); returns (n,).
    """
    if anchors.dim() != 2 or candidates.dim() != 2 or anchors.shape[1] != candidates.shape[1]:
        raise ValueError(f"expected n×d and m×d, got {tuple(anchors.shape)} and {tuple(candidates.shape)}")
    if candidates.shape[0] == 0:
        raise ValueError("row_logsumexp_matmul needs at least one candidate")
    if anchors.shape[0] == 0:
        return anchors.new_zeros(0)
    return _RowLogSumExpMatmul.apply(anchors, candidates, 1.0 / float(temp), int(block_rows), int(block_cols))


def _positives_block(anc_mask: torch.Tensor, cand_mask: torch.Tensor, anc_thr: torch.Tensor,
                     cand_thr: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """0/1 block t_nm = [M_n·M_m ≥ ‖M_n‖₀ − δ] · [M_n·M_m ≥ ‖M_m‖₀ − δ] (thresholds pre-subtracted)."""
    torch.mm(anc_mask, cand_mask.T, out=buf)
    pos = torch.ge(buf, anc_thr[:, None])
    pos &= torch.ge(buf, cand_thr[None, :])
    return pos.to(buf.dtype)


def _candidate_windows(anc_count: torch.Tensor, cand_count: torch.Tensor, loosen: float, block_rows: int):
    """For each block of popcount-sorted anchors, the slice of popcount-sorted candidates that can be positive.

    With binary masks M_a·M_b ≤ min(‖M_a‖₀, ‖M_b‖₀), so a positive pair needs
    |‖M_a‖₀ − ‖M_b‖₀| ≤ δ: anchors with counts in [lo, hi] only meet candidates with counts
    in [lo − δ, hi + δ]. Returns [(row_start, n_rows, col_start, col_end)].
    """
    n = anc_count.shape[0]
    starts = torch.arange(0, n, block_rows, device=anc_count.device)
    ends = torch.clamp(starts + block_rows, max=n) - 1
    col_start = torch.searchsorted(cand_count, anc_count[starts] - loosen, right=False)
    col_end = torch.searchsorted(cand_count, anc_count[ends] + loosen, right=True)
    return [(r0, min(block_rows, n - r0), c0, c1)
            for r0, c0, c1 in zip(starts.tolist(), col_start.tolist(), col_end.tolist())]


class _PositivePairLogitSums(torch.autograd.Function):
    """counts_n = Σ_m t_nm and sums_n = Σ_m t_nm a_n·b_m, t built from masks block by block.

    sums = rowsum(A ⊙ (T·B)); ∂/∂A = g ⊙ (T·B) (T·B kept from forward, n×d),
    ∂/∂B = Tᵀ·(g ⊙ A) (T recomputed block by block). Anchors and candidates are visited
    in order of mask popcount, and on the CPU only the candidate windows of
    :func:`_candidate_windows` are evaluated (exact: every pair outside them has t = 0).
    """

    @staticmethod
    def forward(ctx, anchors, candidates, anc_mask, cand_mask, loosen, block_rows, block_cols):
        a = anchors.detach()
        b = candidates.detach()
        n, m = a.shape[0], b.shape[0]
        ma = anc_mask.detach().to(a.dtype)
        mb = cand_mask.detach().to(a.dtype)
        anc_count, perm_a = torch.sort(ma.sum(dim=1))
        cand_count, perm_b = torch.sort(mb.sum(dim=1))
        ma, mb, a_s, b_s = ma[perm_a], mb[perm_b], a[perm_a], b[perm_b]
        anc_thr, cand_thr = anc_count - loosen, cand_count - loosen
        if a.device.type == "cpu":
            windows = _candidate_windows(anc_count, cand_count, loosen, block_rows)
        else:  # every candidate: the windows would make the host wait for the step's work (same sums)
            windows = [(r0, min(block_rows, n - r0), 0, m) for r0 in range(0, n, block_rows)]

        counts_s = a.new_zeros(n)
        tb_s = torch.zeros_like(a)
        storage = a.new_empty(min(block_rows, n) * min(block_cols, m))
        for r0, nr, c_start, c_end in windows:
            for c0 in range(c_start, c_end, block_cols):
                nc = min(block_cols, c_end - c0)
                t = _positives_block(ma[r0:r0 + nr], mb[c0:c0 + nc], anc_thr[r0:r0 + nr],
                                     cand_thr[c0:c0 + nc], _block_view(storage, nr, nc))
                counts_s[r0:r0 + nr] += t.sum(dim=1)
                tb_s[r0:r0 + nr].addmm_(t, b_s[c0:c0 + nc])
        counts = torch.empty_like(counts_s).index_copy_(0, perm_a, counts_s)
        tb = torch.empty_like(tb_s).index_copy_(0, perm_a, tb_s)
        sums = (a * tb).sum(dim=1)
        ctx.save_for_backward(a_s, ma, mb, anc_thr, cand_thr, tb, perm_a, perm_b)
        ctx.windows, ctx.m = windows, m
        ctx.block_rows, ctx.block_cols = block_rows, block_cols
        ctx.mark_non_differentiable(counts)
        return counts, sums

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_counts, grad_sums):
        a_s, ma, mb, anc_thr, cand_thr, tb, perm_a, perm_b = ctx.saved_tensors
        need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_a = grad_b = None
        if need_a:
            grad_a = grad_sums[:, None] * tb
        if need_b:
            block_rows, block_cols, m = ctx.block_rows, ctx.block_cols, ctx.m
            ga_s = grad_sums[perm_a, None] * a_s
            n = ga_s.shape[0]
            grad_b_s = ga_s.new_zeros(m, ga_s.shape[1])
            storage = ga_s.new_empty(min(block_rows, n) * min(block_cols, m))
            for r0, nr, c_start, c_end in ctx.windows:
                for c0 in range(c_start, c_end, block_cols):
                    nc = min(block_cols, c_end - c0)
                    t = _positives_block(ma[r0:r0 + nr], mb[c0:c0 + nc], anc_thr[r0:r0 + nr],
                                         cand_thr[c0:c0 + nc], _block_view(storage, nr, nc))
                    grad_b_s[c0:c0 + nc].addmm_(t.T, ga_s[r0:r0 + nr])
            grad_b = torch.empty_like(grad_b_s).index_copy_(0, perm_b, grad_b_s)
        return grad_a, grad_b, None, None, None, None, None


def positive_pair_logit_sums(anc_emb: torch.Tensor, cand_emb: torch.Tensor, anc_mask: torch.Tensor,
                             cand_mask: torch.Tensor, loosen: float, *, blocks: Blocks = CPU_BLOCKS,
                             pairs: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
                             ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Subspace positives (docs/method.md#positive-pairs-and-the-loosen-factor) and the summed raw logits over them, without an n×m matrix.

    t_nm = [M_n·M_m ≥ ‖M_n‖₀ − δ] · [M_n·M_m ≥ ‖M_m‖₀ − δ] with binary (0/1) mask rows M and
    δ = ``loosen``. Returns ``(counts, sums)``: counts_n = Σ_m t_nm (no gradient) and
    sums_n = Σ_m t_nm · a_n·b_m (differentiable w.r.t. both embedding tables).
    Pairs whose popcounts differ by more than δ are skipped without being evaluated.
    On CPU, when the positives are few (:data:`Utils.kernels.MaskPairs.MAX_PAIRS`), they are listed
    from bit-packed masks and summed directly (``blocks.list_pairs=False`` forces the dense,
    blocked route, in ``blocks.shape`` blocks); the pairs are the same, the sums differ only
    by float rounding.
    The masks must be 0/1; this is checked on the CPU only (on a GPU the check would make the
    host wait for the step's work; the stages' masks are 0/1 by construction).
    ``pairs``: that list when the caller already has it (:meth:`Utils.kernels.MaskPairs.PairIndex.pairs_of`).
    """
    if pairs is None:
        for name, mask in (("anc_mask", anc_mask), ("cand_mask", cand_mask)):
            if mask.device.type == "cpu" and not ((mask == 0) | (mask == 1)).all():
                raise ValueError(f"{name} must be a 0/1 mask")
        pairs = MaskPairs.positive_pairs(anc_mask, cand_mask, loosen) if blocks.list_pairs else None
    if pairs is not None:  # few positives: sum over their list, plain autograd
        n_idx, m_idx = (p.to(anc_emb.device) for p in pairs)
        counts = torch.bincount(n_idx, minlength=anc_emb.shape[0]).to(anc_emb.dtype)
        logits = (anc_emb[n_idx] * cand_emb[m_idx]).sum(dim=1)
        return counts, anc_emb.new_zeros(anc_emb.shape[0]).index_add(0, n_idx, logits)
    block_rows, block_cols = blocks.shape(anc_emb.shape[0], cand_emb.shape[0])
    return _PositivePairLogitSums.apply(anc_emb, cand_emb, anc_mask, cand_mask, float(loosen),
                                        int(block_rows), int(block_cols))


@dataclass(frozen=True)
class ContrastSample:
    """The rows of each table that one batch's all-node sums run over (``--contrast_candidates``).

    ``users``/``items`` are row indices (drawn uniformly without replacement) or ``None``
    for "every row" (the exact sum). One sample is shared by every all-node term of a batch.
    With ``--contrast_estimator=adaptive`` (:func:`Utils.objective.Estimators.draw_adaptive`): the rows are
    drawn with replacement from a proposal and weighted (``weights_users``/``weights_items``),
    ``control`` makes the spread sums (auxiliary denominator, subspace term) use them for the
    remainder of the second-order control variate, and ``strata_users``/``strata_items``
    (:class:`Utils.objective.Estimators.StratifiedRows`) are the plans of the concentrated sums
    (embedding-level KD).
    """

    users: Optional[torch.Tensor] = None
    items: Optional[torch.Tensor] = None
    control: bool = False
    strata_users: Optional[Any] = None
    strata_items: Optional[Any] = None
    weights_users: Optional[torch.Tensor] = None
    weights_items: Optional[torch.Tensor] = None

    def rows(self, table: str) -> Optional[torch.Tensor]:
        """The rows of ``table`` ('u' or 'i')."""
        return self.users if table == "u" else self.items

    def weights(self, table: str) -> Optional[torch.Tensor]:
        """The weights of those rows (None: K uniform rows, each |T|/K)."""
        return self.weights_users if table == "u" else self.weights_items


EXACT = ContrastSample()


def draw_contrast_sample(n_users: int, n_items: int, k: int, generator: Optional[torch.Generator] = None,
                         device=None) -> ContrastSample:
    """K users and K items uniformly without replacement; a table of ≤ K rows is kept whole (exact)."""
    if k <= 0:
        return EXACT

    def draw(n: int) -> Optional[torch.Tensor]:
        if k >= n:
            return None
        return torch.randperm(n, generator=generator)[:k].to(device)

    return ContrastSample(draw(n_users), draw(n_items))


def table_logsumexp(anchors: torch.Tensor, table: torch.Tensor, temp: float,
                    sample: Optional[torch.Tensor] = None, blocks: Blocks = CPU_BLOCKS) -> torch.Tensor:
    """log Σ_{m ∈ T} exp(a_n·b_m / τ) over a whole table T, exactly or estimated from a sample.

    With ``sample`` S ⊂ T (K rows drawn uniformly without replacement, K < |T|), the sum is
    replaced by its unbiased estimate (docs/method.md#sampled-all-node-terms)::

        Σ_{m ∈ T} exp(a_n·b_m/τ)  ≈  (|T| / K) · Σ_{m ∈ S} exp(a_n·b_m/τ),
        so  lse_n ≈ log(|T| / K) + log Σ_{m ∈ S} exp(a_n·b_m/τ).

    E_S[(|T|/K) Σ_{m∈S} x_m] = Σ_{m∈T} x_m because every row is in S with probability K/|T|;
    the log of the estimate is biased low (Jensen), and since log(|T|/K) is a constant its
    gradient is the softmax over S alone, not an unbiased estimate of the exact gradient.
    Gradients reach only the sampled rows of ``table``. ``sample=None`` is the exact sum.
    ``blocks``: the kernel's block shape (:class:`Blocks`).
    """
    candidates = table if sample is None else table[sample]
    rows, cols = blocks.shape(anchors.shape[0], candidates.shape[0])
    lse = row_logsumexp_matmul(anchors, candidates, temp, block_rows=rows, block_cols=cols)
    return lse if sample is None else lse + math.log(table.shape[0] / sample.numel())


SUBSPACE_TABLES = ("ui", "iu", "uu", "ii")  # anchors → candidates of the v3 subspace term


def subspace_pair_index(user_mask: torch.Tensor, item_mask: torch.Tensor, loosen: float,
                        blocks: Blocks = CPU_BLOCKS) -> Dict[str, Optional[MaskPairs.PairIndex]]:
    """The v3 term's positives of every user and item row, listed once for masks that stay fixed.

    A pruning run's ``emb_mask2_fixed`` does not change within the run, so neither do the
    positives t_nm; :func:`subspace_loss` then takes each batch's anchor rows from this
    index instead of listing them again (the same pairs in the same order: the same loss).
    A table whose pairs cannot be listed (on a device, or more than
    :data:`Utils.kernels.MaskPairs.MAX_PAIRS`) maps to None and is listed per batch as before.
    """
    if not blocks.list_pairs:
        return {key: None for key in SUBSPACE_TABLES}
    masks = {"u": user_mask.detach(), "i": item_mask.detach()}
    for name, mask in masks.items():
        if mask.device.type == "cpu" and not ((mask == 0) | (mask == 1)).all():
            raise ValueError(f"the {'user' if name == 'u' else 'item'} mask must be a 0/1 mask")
    return {key: MaskPairs.PairIndex.build(masks[key[0]], masks[key[1]], loosen) for key in SUBSPACE_TABLES}
