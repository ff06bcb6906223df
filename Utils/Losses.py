"""The LightGNN training objective (docs/method.md#loss-terms) as pure functions of tensors.

Every function takes tensors and plain numbers and returns a scalar tensor; none reads
a configuration object or global state. ``kd_objective`` composes them into the
published per-batch loss, driven by a plain :class:`KDConfig`.

Conventions checked against the published tool's golden vectors
(``tests/data/reference/kd_terms.npz``, ``tests/data/reference/kd_loss_*.npz``; all match to float32 rounding):

* BPR ("main") is on the trainee's *output* embeddings Ē^S (sum over layers).
* The weight decay is on the trainee's raw ``uEmbeds``/``iEmbeds`` parameters (the
  published ``calcRegLoss([uEmbeds, iEmbeds])``), not on the masked E₀ nor on Ē^S, plus
  ``ereg``·‖``adj_mask1_train``‖² with ``use_ereg``. (In the fixture the stored
  embeddings are already masked, so raw and masked coincide there.)
* The auxiliary denominator and the embedding-level KD use the *distinct* users
  (``torch.unique(ancs)``) and distinct positive items (``torch.unique(poss)``, item ids
  0..I-1) as anchors; the denominators run over *all* rows of the other table.
* The embedding-level KD contrasts H = Σ_{l≥2} E^T_l (supervisor layers from 2 on, row
  split users 0..U-1 / items U..N-1) with the trainee's outputs Ē^S.
* The subspace term uses Ē^S (or the masked E₀ with ``use_ly0emb4subspcreg``) and the
  student's ``emb_mask2_fixed`` rows as the binary masks; its soft-target cross-entropy is
  ``torch.nn.CrossEntropyLoss`` with probability targets, i.e. the sum over candidates
  divided by the number of anchors (targets are *not* normalised per row).
* v1 = CE(user anchors vs user anchors) + CE(item anchors vs item anchors);
  v2 = one CE over the concatenated [user anchors; item anchors] against itself;
  v3 = four CEs, anchors against *all* users / items.

Memory: the all-node denominators (e.g. 3.6 k anchors × 42.7 k users on Yelp) never form
an anchors×N matrix. :func:`row_logsumexp_matmul` and :func:`positive_pair_logit_sums` are
custom autograd functions that compute their forward pass block by block into one
reused buffer and recompute the blocks in the backward pass (see ``bench/bench_contrastive.py``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Mapping, MutableMapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from Utils import MaskPairs
from Utils.Parallel import SOLO, Group

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


#: The constants the published tool adds inside its logarithms.
INFONCE_EPS = 1e-8
CONTR_DENO_EPS = 1e-5
PRED_KD_EPS = 1e-8

SUBSPACE_VERSIONS = ("v1", "v2", "v3")


def _mean(values: torch.Tensor, total: Optional[int] = None) -> torch.Tensor:
    """``values.mean()``; with ``total``, this process's share Σ values / total of a mean over
    ``total`` rows split between processes (``Utils.Parallel.Group.split``)."""
    return values.mean() if total is None else values.sum() / total


# ---------------------------------------------------------------------------
# Blocked kernels
# ---------------------------------------------------------------------------

def _block_view(storage: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """A contiguous rows×cols view on the front of a flat reusable buffer."""
    return storage[: rows * cols].view(rows, cols)


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
                blk_max = blk.amax(dim=1)
                if run_max is None:
                    run_max = blk_max
                    blk.sub_(run_max[:, None]).exp_()
                    run_sum = blk.sum(dim=1)
                else:
                    new_max = torch.maximum(run_max, blk_max)
                    run_sum.mul_(torch.exp(run_max - new_max))
                    blk.sub_(new_max[:, None]).exp_()
                    run_sum.add_(blk.sum(dim=1))
                    run_max = new_max
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
                             cand_mask: torch.Tensor, loosen: float, *, block_rows: int = BLOCK_ROWS,
                             block_cols: int = BLOCK_COLS, sparse_pairs: bool = True,
                             pairs: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
                             ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Subspace positives (docs/method.md#positive-pairs-and-the-loosen-factor) and the summed raw logits over them, without an n×m matrix.

    t_nm = [M_n·M_m ≥ ‖M_n‖₀ − δ] · [M_n·M_m ≥ ‖M_m‖₀ − δ] with binary (0/1) mask rows M and
    δ = ``loosen``. Returns ``(counts, sums)``: counts_n = Σ_m t_nm (no gradient) and
    sums_n = Σ_m t_nm · a_n·b_m (differentiable w.r.t. both embedding tables).
    Pairs whose popcounts differ by more than δ are skipped without being evaluated.
    On CPU, when the positives are few (:data:`Utils.MaskPairs.MAX_PAIRS`), they are listed
    from bit-packed masks and summed directly (``sparse_pairs=False`` forces the dense,
    blocked route); the pairs are the same, the sums differ only by float rounding.
    The masks must be 0/1; this is checked on the CPU only (on a GPU the check would make the
    host wait for the step's work; the stages' masks are 0/1 by construction).
    ``pairs``: that list when the caller already has it (:meth:`Utils.MaskPairs.PairIndex.pairs_of`).
    """
    if pairs is None:
        for name, mask in (("anc_mask", anc_mask), ("cand_mask", cand_mask)):
            if mask.device.type == "cpu" and not ((mask == 0) | (mask == 1)).all():
                raise ValueError(f"{name} must be a 0/1 mask")
        pairs = MaskPairs.positive_pairs(anc_mask, cand_mask, loosen) if sparse_pairs else None
    if pairs is not None:  # few positives: sum over their list, plain autograd
        n_idx, m_idx = (p.to(anc_emb.device) for p in pairs)
        counts = torch.bincount(n_idx, minlength=anc_emb.shape[0]).to(anc_emb.dtype)
        logits = (anc_emb[n_idx] * cand_emb[m_idx]).sum(dim=1)
        return counts, anc_emb.new_zeros(anc_emb.shape[0]).index_add(0, n_idx, logits)
    return _PositivePairLogitSums.apply(anc_emb, cand_emb, anc_mask, cand_mask, float(loosen),
                                        int(block_rows), int(block_cols))


@dataclass(frozen=True)
class ContrastSample:
    """The rows of each table that one batch's all-node sums run over (``--contrast_candidates``).

    ``users``/``items`` are row indices (drawn uniformly without replacement) or ``None``
    for "every row" (the exact sum). One sample is shared by every all-node term of a batch.
    """

    users: Optional[torch.Tensor] = None
    items: Optional[torch.Tensor] = None


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


def _cached_lse(cache: Optional[MutableMapping], key: str, anchors: torch.Tensor,
                candidates: torch.Tensor, temp: float, sample: Optional[torch.Tensor] = None,
                blocks: Blocks = CPU_BLOCKS) -> torch.Tensor:
    """:func:`table_logsumexp`, memoised in ``cache`` under (key, τ) when a cache is given."""
    if cache is None:
        return table_logsumexp(anchors, candidates, temp, sample, blocks)
    full_key = (key, float(temp))
    if full_key not in cache:
        cache[full_key] = table_logsumexp(anchors, candidates, temp, sample, blocks)
    return cache[full_key]


# ---------------------------------------------------------------------------
# Loss terms
# ---------------------------------------------------------------------------

def bpr_loss(anc_emb: torch.Tensor, pos_emb: torch.Tensor, neg_emb: torch.Tensor,
             total: Optional[int] = None) -> torch.Tensor:
    """BPR (docs/method.md#bpr): mean_b −log σ(a_b·p_b − a_b·n_b).

    Written as softplus(−x), which equals the published ``-(x).sigmoid().log().mean()``
    wherever that is finite and stays finite (and exact) for very negative x.
    ``total``: the rows are this process's share of a batch of ``total`` triples (:func:`_mean`).
    """
    scores = (anc_emb * pos_emb).sum(dim=-1) - (anc_emb * neg_emb).sum(dim=-1)
    return _mean(F.softplus(-scores), total)


def embedding_reg(u_embeds: torch.Tensor, i_embeds: torch.Tensor, reg: float) -> torch.Tensor:
    """Weight decay (docs/method.md#weight-decay): reg · (‖U‖²_F + ‖I‖²_F) over the whole tables."""
    return (u_embeds.square().sum() + i_embeds.square().sum()) * reg


def edge_weight_reg(edge_weight: torch.Tensor, ereg: float) -> torch.Tensor:
    """Edge-weight decay (docs/method.md#weight-decay, ``--use_ereg``): ereg · ‖w‖² of ``adj_mask1_train``."""
    return edge_weight.square().sum() * ereg


def pair_score_differences(users: torch.Tensor, items: torch.Tensor, u: torch.Tensor,
                           i1: torch.Tensor, i2: torch.Tensor) -> torch.Tensor:
    """ε_k = ŷ(u_k, i1_k) − ŷ(u_k, i2_k) with ŷ(u, i) = Ē_u·Ē_i (item ids 0..I-1)."""
    ue = users[u]
    return (ue * items[i1]).sum(dim=-1) - (ue * items[i2]).sum(dim=-1)


def prediction_kd_loss(stu_users: torch.Tensor, stu_items: torch.Tensor, tea_users: torch.Tensor,
                       tea_items: torch.Tensor, rand_users: torch.Tensor, rand_items1: torch.Tensor,
                       rand_items2: torch.Tensor, temp: float, total: Optional[int] = None) -> torch.Tensor:
    """Prediction-level KD (docs/method.md#prediction-level-kd; the published ``KLDiverge``) over random triples (u', i₁, i₂).

    With ε = ŷ(u',i₁) − ŷ(u',i₂), p^T = σ(ε^T/τ), p^S = σ(ε^S/τ):
    mean of −[p^T·log(p^S + 1e-8) + (1 − p^T)·log(1 − p^S + 1e-8)].
    The 1e-8 sit inside the logs exactly as published (they bound the loss where σ
    saturates at τ = 0.03). The teacher side carries no gradient. ``total``: the triples are
    this process's share of ``total`` (:func:`_mean`).
    """
    with torch.no_grad():
        p_tea = torch.sigmoid(pair_score_differences(tea_users, tea_items, rand_users,
                                                     rand_items1, rand_items2) / temp)
    p_stu = torch.sigmoid(pair_score_differences(stu_users, stu_items, rand_users,
                                                 rand_items1, rand_items2) / temp)
    return _mean(-(p_tea * torch.log(p_stu + PRED_KD_EPS)
                   + (1 - p_tea) * torch.log(1 - p_stu + PRED_KD_EPS)), total)


def infonce(x_all: torch.Tensor, y_all: torch.Tensor, index: torch.Tensor, temp: float,
            sample: Optional[torch.Tensor] = None, group: Group = SOLO,
            blocks: Blocks = CPU_BLOCKS) -> torch.Tensor:
    """InfoNCE (docs/method.md#embedding-level-kd; the published ``infoNCE``).

    x = (X + 1e-8)/‖X + 1e-8‖, y likewise (row-wise, ``F.normalize``);
    mean over n ∈ index of −log( exp(x_n·y_n/τ) / (Σ_{m over all rows of Y} exp(x_n·y_m/τ) + 1e-8) )
    = mean_n [ log(exp(lse_n) + 1e-8) − x_n·y_n/τ ],  lse_n from :func:`row_logsumexp_matmul`,
    the outer 1e-8 added stably with ``logaddexp``.
    ``sample``: rows of Y the denominator is estimated from (:func:`table_logsumexp`); the
    positive pair x_n·y_n stays exact. ``group``: this process takes its share of ``index``
    (``Utils.Parallel``).
    """
    index, total = group.split(index)
    x = F.normalize(x_all[index] + 1e-8, p=2, dim=1)  # row-wise, so normalising only the picked rows is the same
    y = F.normalize(y_all + 1e-8, p=2, dim=1)
    positive = (x * y[index]).sum(dim=-1) / temp
    lse = table_logsumexp(x, y, temp, sample, blocks)
    log_deno = torch.logaddexp(lse, lse.new_tensor(math.log(INFONCE_EPS)))
    return _mean(log_deno - positive, total)


def embedding_kd_loss(tea_high_users: torch.Tensor, tea_high_items: torch.Tensor, stu_users: torch.Tensor,
                      stu_items: torch.Tensor, uniq_users: torch.Tensor, uniq_items: torch.Tensor,
                      temp: float, sample: ContrastSample = EXACT, group: Group = SOLO,
                      blocks: Blocks = CPU_BLOCKS) -> torch.Tensor:
    """Embedding-level KD (docs/method.md#embedding-level-kd), unweighted: InfoNCE(H_users, Ē^S_users, uniq(u)) + InfoNCE(H_items, Ē^S_items, uniq(i)).

    H = Σ_{l≥2} E^T_l of the supervisor, detached here. ``sample``: see :class:`ContrastSample`.
    """
    return (infonce(tea_high_users.detach(), stu_users, uniq_users, temp, sample.users, group, blocks)
            + infonce(tea_high_items.detach(), stu_items, uniq_items, temp, sample.items, group, blocks))


def contrastive_denominator_loss(stu_users: torch.Tensor, stu_items: torch.Tensor, uniq_users: torch.Tensor,
                                 uniq_items: torch.Tensor, temp: float, *,
                                 lse_cache: Optional[MutableMapping] = None,
                                 sample: ContrastSample = EXACT, group: Group = SOLO,
                                 blocks: Blocks = CPU_BLOCKS) -> torch.Tensor:
    """Auxiliary denominator / uniformity term (docs/method.md#auxiliary-denominator, published ``selfContrast``), unweighted.

    Σ over (a, b, n) ∈ {(users, items, uniq(u)), (items, users, uniq(i)), (users, users, uniq(u)),
    (items, items, uniq(i))} of mean_n log(Σ_m exp(a_n·b_m/τ) + 1e-5), on the raw (not
    normalised) embeddings; log(S + 1e-5) = logaddexp(lse, log 1e-5).

    ``lse_cache``: an optional dict shared with :func:`subspace_loss` (v3) *for the same
    embeddings and anchors*; the four row log-sum-exps are then computed once per τ.
    ``sample``: each Σ_m over a table is estimated from its sampled rows (:func:`table_logsumexp`).
    ``group``: this process takes its share of each anchor list (``Utils.Parallel``).
    """
    log_eps = math.log(CONTR_DENO_EPS)
    total = stu_users.new_zeros(())
    for key, a, b, idx, rows in (("ui", stu_users, stu_items, uniq_users, sample.items),
                                 ("iu", stu_items, stu_users, uniq_items, sample.users),
                                 ("uu", stu_users, stu_users, uniq_users, sample.users),
                                 ("ii", stu_items, stu_items, uniq_items, sample.items)):
        mine, count = group.split(idx)
        lse = _cached_lse(lse_cache, key, a[mine], b, temp, rows, blocks)
        total = total + _mean(torch.logaddexp(lse, lse.new_tensor(log_eps)), count)
    return total


def soft_target_cross_entropy(anc_emb: torch.Tensor, cand_emb: torch.Tensor, anc_mask: torch.Tensor,
                              cand_mask: torch.Tensor, loosen: float, temp: float, *,
                              lse: Optional[torch.Tensor] = None, blocks: Blocks = CPU_BLOCKS,
                              total: Optional[int] = None,
                              pairs: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """One subspace kernel (docs/method.md#subspace-term): mean_n −Σ_m t_nm · log softmax_m(a_n·b_m/τ).

    = mean_n [ (Σ_m t_nm)·lse_n − (Σ_m t_nm a_n·b_m)/τ ], t the mask positives of
    :func:`positive_pair_logit_sums`; the same value as ``nn.CrossEntropyLoss()(logits, t)``
    with probability targets (sum over candidates, mean over anchors, t not normalised).
    ``lse`` may be passed when the row log-sum-exps of (a, b, τ) are already known.
    ``total``: the anchors are this process's share of ``total`` (:func:`_mean`).
    ``pairs``: the positives already listed (see :func:`positive_pair_logit_sums`).
    """
    rows, cols = blocks.shape(anc_emb.shape[0], cand_emb.shape[0])
    counts, sums = positive_pair_logit_sums(anc_emb, cand_emb, anc_mask, cand_mask, loosen, block_rows=rows,
                                            block_cols=cols, sparse_pairs=blocks.list_pairs, pairs=pairs)
    if lse is None:
        lse = row_logsumexp_matmul(anc_emb, cand_emb, temp, block_rows=rows, block_cols=cols)
    return _mean(counts * lse - sums / temp, total)


def _random_subset(index: torch.Tensor, ratio: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    """A uniformly random ⌊ratio·len⌋ (at least 1) share of ``index``, without replacement."""
    keep = max(1, int(ratio * index.numel()))
    perm = torch.randperm(index.numel(), generator=generator)[:keep].to(index.device)
    return index[perm]


SUBSPACE_TABLES = ("ui", "iu", "uu", "ii")  # anchors → candidates of the v3 subspace term


def subspace_pair_index(user_mask: torch.Tensor, item_mask: torch.Tensor, loosen: float,
                        blocks: Blocks = CPU_BLOCKS) -> Dict[str, Optional[MaskPairs.PairIndex]]:
    """The v3 term's positives of every user and item row, listed once for masks that stay fixed.

    A pruning run's ``emb_mask2_fixed`` does not change within the run, so neither do the
    positives t_nm; :func:`subspace_loss` then takes each batch's anchor rows from this
    index instead of listing them again (the same pairs in the same order: the same loss).
    A table whose pairs cannot be listed (on a device, or more than
    :data:`Utils.MaskPairs.MAX_PAIRS`) maps to None and is listed per batch as before.
    """
    if not blocks.list_pairs:
        return {key: None for key in SUBSPACE_TABLES}
    masks = {"u": user_mask.detach(), "i": item_mask.detach()}
    for name, mask in masks.items():
        if mask.device.type == "cpu" and not ((mask == 0) | (mask == 1)).all():
            raise ValueError(f"the {'user' if name == 'u' else 'item'} mask must be a 0/1 mask")
    return {key: MaskPairs.PairIndex.build(masks[key[0]], masks[key[1]], loosen) for key in SUBSPACE_TABLES}


def subspace_loss(users_emb: torch.Tensor, items_emb: torch.Tensor, user_mask: torch.Tensor,
                  item_mask: torch.Tensor, uniq_users: torch.Tensor, uniq_items: torch.Tensor,
                  temp: float, loosen: float, version: str = "v3", *, resample_ratio: Optional[float] = None,
                  generator: Optional[torch.Generator] = None,
                  lse_cache: Optional[MutableMapping] = None, sample: ContrastSample = EXACT,
                  group: Group = SOLO, blocks: Blocks = CPU_BLOCKS,
                  pair_index: Optional[Mapping[str, Optional[MaskPairs.PairIndex]]] = None) -> torch.Tensor:
    """Subspace uniformity constraint (docs/method.md#subspace-term), unweighted (multiply by ``subspcreg``).

    Positives: (a, b) with M_a·M_b ≥ ‖M_a‖₀ − δ and M_a·M_b ≥ ‖M_b‖₀ − δ, M the rows of
    ``emb_mask2_fixed`` (``user_mask`` U×d, ``item_mask`` I×d), δ = ``loosen``. Each term is
    :func:`soft_target_cross_entropy` (mean over anchors of −Σ_m t_nm log softmax_m(a_n·b_m/τ)).

    * v3 (default): (users→all items, anchors uniq(u)) + (items→all users, uniq(i))
      + (users→all users, uniq(u)) + (items→all items, uniq(i)).
    * v1: (user anchors → user anchors) + (item anchors → item anchors).
    * v2: one term over the concatenation [user anchors; item anchors] against itself
      (users and items compete in one softmax, positives across kinds allowed).

    ``resample_ratio`` (``--hyper_contr_resample`` **[fix]**): keep a uniformly random
    ⌊ratio·n⌋ of the anchors and, for v3, of all users / all items as candidates
    (anchors are then still taken from the full tables, so indices stay consistent).
    ``lse_cache``: see :func:`contrastive_denominator_loss`; ignored when resampling.
    ``sample`` (v3 without resampling): each softmax denominator over a whole table is
    estimated from the sampled rows (:func:`table_logsumexp`); the positives t_nm and
    Σ_m t_nm a_n·b_m still run over the whole table, exactly.
    ``group``: this process takes its share of the anchors (after any resampling); the
    candidates stay whole (``Utils.Parallel``).
    ``pair_index`` (v3 without resampling): :func:`subspace_pair_index` of these masks and δ;
    the positives of each anchor are then read from it, not listed again.
    """
    if version not in SUBSPACE_VERSIONS:
        raise ValueError(f"subspcreg_version must be one of {SUBSPACE_VERSIONS}, got {version!r}")
    if resample_ratio is not None:
        lse_cache = None
        uniq_users = _random_subset(uniq_users, resample_ratio, generator)
        uniq_items = _random_subset(uniq_items, resample_ratio, generator)

    if version == "v1":  # each anchor list against itself
        total = users_emb.new_zeros(())
        for emb, mask, idx in ((users_emb, user_mask, uniq_users), (items_emb, item_mask, uniq_items)):
            mine, count = group.split(idx)
            total = total + soft_target_cross_entropy(emb[mine], emb[idx], mask[mine], mask[idx], loosen, temp,
                                                      blocks=blocks, total=count)
        return total
    if version == "v2":
        emb = torch.cat([users_emb[uniq_users], items_emb[uniq_items]], dim=0)
        mask = torch.cat([user_mask[uniq_users], item_mask[uniq_items]], dim=0)
        mine, count = group.split(torch.arange(emb.shape[0], device=emb.device))
        anchors, anc_mask = (emb, mask) if count is None else (emb[mine], mask[mine])
        return soft_target_cross_entropy(anchors, emb, anc_mask, mask, loosen, temp, blocks=blocks, total=count)

    cand_users, cand_items = users_emb, items_emb
    cand_umask, cand_imask = user_mask, item_mask
    if resample_ratio is not None:
        sample = EXACT  # the candidates are already the resampled subsets
        pair_index = None  # listed against whole tables, not these subsets
        keep_u = _random_subset(torch.arange(users_emb.shape[0], device=users_emb.device), resample_ratio, generator)
        keep_i = _random_subset(torch.arange(items_emb.shape[0], device=items_emb.device), resample_ratio, generator)
        cand_users, cand_umask = users_emb[keep_u], user_mask[keep_u]
        cand_items, cand_imask = items_emb[keep_i], item_mask[keep_i]

    total = users_emb.new_zeros(())
    for key, a, ma, idx, b, mb, rows in (
            ("ui", users_emb, user_mask, uniq_users, cand_items, cand_imask, sample.items),
            ("iu", items_emb, item_mask, uniq_items, cand_users, cand_umask, sample.users),
            ("uu", users_emb, user_mask, uniq_users, cand_users, cand_umask, sample.users),
            ("ii", items_emb, item_mask, uniq_items, cand_items, cand_imask, sample.items)):
        mine, count = group.split(idx)
        anchors = a[mine]
        lse = _cached_lse(lse_cache, key, anchors, b, temp, rows, blocks)
        index = pair_index.get(key) if pair_index is not None else None
        pairs = None if index is None else tuple(p.to(anchors.device) for p in index.pairs_of(mine))
        total = total + soft_target_cross_entropy(anchors, b, ma[mine], mb, loosen, temp, lse=lse, blocks=blocks,
                                                  total=count, pairs=pairs)
    return total


# ---------------------------------------------------------------------------
# The composed objective
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class KDConfig:
    """Weights and switches of the distillation objective (published flag names and defaults).

    ``use_subspcreg`` is the decision for *this* run: the caller folds in the
    ``hyper_contr_start_prn_run`` ≤ run ≤ ``hyper_contr_end_prn_run`` window and the
    "student only" rule. ``loosen`` is δ for this run (``hyper_contr_loosen_factor[run]``).
    ``resample_ratio`` is ``hyper_contr_resample_ratio`` when ``--hyper_contr_resample``, else None.
    ``contrast_candidates`` is K of ``--contrast_candidates`` (0 = the exact all-node sums).
    ``blocks``: the block shape of the all-node kernels (:func:`device_blocks`).
    """

    use_pre_level_kd: bool = True
    softreg: float = 1.0
    tempsoft: float = 0.03
    use_emb_level_kd: bool = True
    cdreg: float = 0.01
    tempcd: float = 0.1
    use_contr_deno: bool = True
    screg: float = 1.0
    tempsc: float = 1.0
    reg: float = 1e-7
    use_ereg: bool = True
    ereg: float = 1e-8
    use_subspcreg: bool = False
    subspcreg: float = 1e-4
    tempsubsp: float = 1.0
    subspcreg_version: str = "v3"
    loosen: float = 0.0
    use_ly0emb4subspcreg: bool = False
    resample_ratio: Optional[float] = None
    contrast_candidates: int = 0
    blocks: Blocks = CPU_BLOCKS

    def __post_init__(self):
        if self.contrast_candidates < 0:
            raise ValueError(f"contrast_candidates must be >= 0 (0 = exact), got {self.contrast_candidates}")
        if self.subspcreg_version not in SUBSPACE_VERSIONS:
            raise ValueError(f"subspcreg_version must be one of {SUBSPACE_VERSIONS}, got {self.subspcreg_version!r}")
        if self.resample_ratio is not None and not 0.0 < self.resample_ratio <= 1.0:
            raise ValueError(f"resample_ratio must be in (0, 1], got {self.resample_ratio}")
        for name in ("tempsoft", "tempcd", "tempsc", "tempsubsp"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def kd_objective(cfg: KDConfig, *, stu_users: torch.Tensor, stu_items: torch.Tensor,
                 stu_u_embeds: torch.Tensor, stu_i_embeds: torch.Tensor, stu_edge_weight: torch.Tensor,
                 sup_users: torch.Tensor, sup_items: torch.Tensor, sup_high_users: torch.Tensor,
                 sup_high_items: torch.Tensor, ancs: torch.Tensor, poss: torch.Tensor, negs: torch.Tensor,
                 rand_users: torch.Tensor, rand_items1: torch.Tensor, rand_items2: torch.Tensor,
                 emb_mask: Optional[torch.Tensor] = None,
                 generator: Optional[torch.Generator] = None,
                 sample: Optional[ContrastSample] = None, group: Group = SOLO,
                 anchors: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                 subspace_pairs: Optional[Mapping[str, Optional[MaskPairs.PairIndex]]] = None
                 ) -> Dict[str, torch.Tensor]:
    """The per-batch loss of stages 2–3 (docs/method.md#total-objective; published ``Model.calcLoss``).

    total = main + pred_kd + emb_kd + reg + contr_deno + subspace, with

    * main       = BPR on the trainee outputs Ē^S (``stu_users``/``stu_items``);
    * pred_kd    = softreg · :func:`prediction_kd_loss` (supervisor outputs ``sup_*``, τ = tempsoft);
    * emb_kd     = cdreg · :func:`embedding_kd_loss` (H = ``sup_high_*`` = Σ_{l≥2} E^T_l, τ = tempcd);
    * reg        = :func:`embedding_reg` on the raw ``stu_u_embeds``/``stu_i_embeds`` parameters
                   (+ :func:`edge_weight_reg` of ``stu_edge_weight`` when use_ereg);
    * contr_deno = screg · :func:`contrastive_denominator_loss` (τ = tempsc);
    * subspace   = subspcreg · :func:`subspace_loss` when ``cfg.use_subspcreg`` (τ = tempsubsp),
                   on Ē^S, or on the masked E₀ = [uEmbeds; iEmbeds] ⊙ ``emb_mask`` with
                   use_ly0emb4subspcreg; masks are the rows of ``emb_mask`` (N×d, required then).

    Anchors are uniq(ancs) and uniq(poss) (``torch.unique``); ``poss``/``negs``/``rand_items*``
    are item ids 0..I-1. Supervisor tensors are detached here. When the subspace term and
    the auxiliary denominator see the same embeddings (outputs, no resampling), their
    row log-sum-exps with equal temperatures (default τ = 1 for both) are computed once.
    ``sample``: the rows every all-node sum of this batch runs over; when None it is drawn
    here from ``generator`` by :func:`draw_contrast_sample` with K = ``cfg.contrast_candidates``
    (K = 0: no draw, exact sums).
    ``group`` (a data-parallel run, ``Utils.Parallel``): every process passes the whole batch
    and the same draws; each computes its share of every batch mean and rank 0 alone the
    weight decay, so the parts summed over the processes are the one-process loss.
    ``anchors``: (uniq(ancs), uniq(poss)) when the caller already has them (computed here otherwise).
    ``subspace_pairs``: :func:`subspace_pair_index` of ``emb_mask`` and ``cfg.loosen`` when the
    caller keeps the mask fixed over many batches (a pruning run); the same loss, faster.
    Returns a dict of scalar tensors: total, main, pred_kd, emb_kd, reg, contr_deno, subspace.
    """
    zero = stu_users.new_zeros(())
    uniq_users, uniq_items = anchors if anchors is not None else (torch.unique(ancs), torch.unique(poss))
    sup_users, sup_items = sup_users.detach(), sup_items.detach()
    if sample is None:
        sample = draw_contrast_sample(stu_users.shape[0], stu_items.shape[0], cfg.contrast_candidates,
                                      generator, stu_users.device)

    (ancs, poss, negs), n_triples = group.split_rows(ancs, poss, negs)
    main = bpr_loss(stu_users[ancs], stu_items[poss], stu_items[negs], n_triples)

    pred_kd = zero
    if cfg.use_pre_level_kd:
        (rand_users, rand_items1, rand_items2), n_rand = group.split_rows(rand_users, rand_items1, rand_items2)
        pred_kd = prediction_kd_loss(stu_users, stu_items, sup_users, sup_items, rand_users, rand_items1,
                                     rand_items2, cfg.tempsoft, n_rand) * cfg.softreg

    emb_kd = zero
    if cfg.use_emb_level_kd:
        emb_kd = embedding_kd_loss(sup_high_users, sup_high_items, stu_users, stu_items, uniq_users,
                                   uniq_items, cfg.tempcd, sample, group, cfg.blocks) * cfg.cdreg

    reg = zero
    if group.lead:  # whole-table terms: counted once
        reg = embedding_reg(stu_u_embeds, stu_i_embeds, cfg.reg)
        if cfg.use_ereg:
            reg = reg + edge_weight_reg(stu_edge_weight, cfg.ereg)

    share_lse = cfg.use_subspcreg and not cfg.use_ly0emb4subspcreg and cfg.resample_ratio is None
    lse_cache: Optional[dict] = {} if share_lse else None

    contr_deno = zero
    if cfg.use_contr_deno:
        contr_deno = contrastive_denominator_loss(stu_users, stu_items, uniq_users, uniq_items, cfg.tempsc,
                                                  lse_cache=lse_cache, sample=sample, group=group,
                                                  blocks=cfg.blocks) * cfg.screg

    subspace = zero
    if cfg.use_subspcreg:
        if emb_mask is None:
            raise ValueError("the subspace term needs the student's embedding mask (emb_mask2_fixed)")
        n_users = stu_users.shape[0]
        mask = emb_mask.detach()
        if cfg.use_ly0emb4subspcreg:
            e0 = torch.cat([stu_u_embeds, stu_i_embeds], dim=0) * mask
            sub_users, sub_items = e0[:n_users], e0[n_users:]
        else:
            sub_users, sub_items = stu_users, stu_items
        subspace = subspace_loss(sub_users, sub_items, mask[:n_users], mask[n_users:], uniq_users, uniq_items,
                                 cfg.tempsubsp, cfg.loosen, cfg.subspcreg_version,
                                 resample_ratio=cfg.resample_ratio, generator=generator,
                                 lse_cache=lse_cache, sample=sample, group=group,
                                 blocks=cfg.blocks, pair_index=subspace_pairs) * cfg.subspcreg

    total = main + pred_kd + reg + contr_deno + emb_kd + subspace
    return {"total": total, "main": main, "pred_kd": pred_kd, "emb_kd": emb_kd, "reg": reg,
            "contr_deno": contr_deno, "subspace": subspace}
