"""``--contrast_estimator=adaptive``: the all-node sums estimated so that their gradients stay close
to the exact ones, at 1.5–2× the cost of ``--contrast_candidates K`` (docs/method.md#adaptive-all-node-sums).

Every all-node term of stages 2–3 needs, per anchor n, log Σ_{m ∈ T} exp(a_n·b_m/τ) over a whole
table T. The uniform estimate (:func:`Utils.kernels.Kernels.table_logsumexp` with K rows) is unbiased for
the sum, but its gradient reaches only the K sampled rows, each |T|/K times too strongly, so it
points elsewhere than the exact gradient (``bench/bench_estimator.py``). Two kinds of denominator
occur, and each gets the estimator its shape calls for:

* **Spread** (the auxiliary denominator and the subspace term: raw outputs, τ = 1). Around each
  anchor's mean logit c_n = a_n·b̄/τ the logits vary little (per-anchor sd 0.1–0.5 on Yelp), so
  the second-order expansion g_n(s) = e^{c_n}(1 + (s − c_n) + (s − c_n)²/2) carries almost all of
  every row's weight, and its sum over the *whole* table has a closed form in the table's mean
  and centred second moment (:func:`control_variate_logsumexp`): a dense gradient for every row.
  Only the remainder e^s − g_n(s), about 0.1 % of the sum, is estimated from K rows, drawn from
  a proposal that favours rows far from the table's mean (:class:`TableProfile`).
* **Concentrated** (the embedding-level KD: cosines at τ = 0.1). 90 % of an anchor's weight sits
  on 12–15 % of the table, a different part for each anchor. The table is clustered (spherical
  k-means on the trainee's outputs, once per epoch, :class:`Strata`); anchors are grouped by
  their nearest centroid; for each group the clusters that carry :data:`COVER` of its estimated
  weight are summed exactly and the other rows are sampled at the uniform rate K/|T|
  (:meth:`Strata.plan`, :func:`stratified_logsumexp`): stratified sampling whose strata hold the
  rows that matter.

Both are unbiased estimates of each sum (not of its log); K ≥ |T| keeps a term exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from Utils.kernels.Kernels import CPU_BLOCKS, Blocks, ContrastSample, online_logsumexp_step

#: Clusters of a table (:class:`Strata`) and the k-means iterations that find them.
N_CLUSTERS = 64
KMEANS_ITERS = 8
#: Share of a group's estimated weight carried by the clusters it sums exactly.
COVER = 0.9
#: Below this share of the plain weighted estimate, an anchor's control-variate sum is not trusted
#: (the expansion can overshoot on a far-spread anchor) and the plain estimate is used instead.
CONTROL_FLOOR = 0.25
#: Columns of one block of a group's logits in :func:`stratified_logsumexp` (a few MiB, cache-resident).
STRATIFIED_BLOCK = 4096


# ----------------------------------------------------------------------------- spread sums
class _ControlRemainder(torch.autograd.Function):
    """R_n = Σ_k w_k φ(d_nk) and the plain Σ_k w_k e^{d_nk} (no gradient), d_nk = s·a_n·b_k − c_n,
    φ(d) = e^d − 1 − d − d²/2, computed row block by row block; the entries listed in ``own``
    ((anchor, k) pairs where a sampled row is the anchor's own row) count 0. Backward recomputes each block:
    ∂R_n/∂d_nk = w_k (e^d − 1 − d), with the weights w and the upstream g_n folded into the
    small factors of its products."""

    @staticmethod
    def forward(ctx, anchors, candidates, centre, weights, own, scale, block_rows):
        a, b, c = anchors.detach(), candidates.detach(), centre.detach()
        remainder, plain = a.new_empty(a.shape[0]), a.new_empty(a.shape[0])
        w_sum = weights.sum()
        for r0 in range(0, a.shape[0], block_rows):
            d, e = _remainder_block(a, b, c, own, scale, r0, block_rows)
            plain[r0:r0 + d.shape[0]] = e @ weights + w_sum  # Σ_k w_k e^d (an own-row entry counts w_k: removed below)
            phi = e.sub_(d).sub_(d.mul_(d).mul_(0.5))
            remainder[r0:r0 + phi.shape[0]] = phi @ weights
        if own is not None:  # the own-row entries were zeroed in e and d: take their weight back out
            plain = plain - torch.zeros_like(plain).index_add_(0, own[0], weights[own[1]])
        ctx.save_for_backward(anchors, candidates, centre, weights)
        ctx.own, ctx.scale, ctx.block_rows = own, scale, block_rows
        ctx.mark_non_differentiable(plain)
        return remainder, plain

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_remainder, _grad_plain):
        anchors, candidates, centre, weights = ctx.saved_tensors
        a, b, c, scale = anchors.detach(), candidates.detach(), centre.detach(), ctx.scale
        grad_a, grad_b, grad_c = torch.empty_like(a), torch.zeros_like(b), torch.empty_like(c)
        bw = b * (weights[:, None] * scale)  # w_k s b_k
        for r0 in range(0, a.shape[0], ctx.block_rows):
            d, e = _remainder_block(a, b, c, ctx.own, scale, r0, ctx.block_rows)
            slope = e.sub_(d)  # e^d − 1 − d (0 on the own-row entries)
            g = grad_remainder[r0:r0 + slope.shape[0], None]
            grad_a[r0:r0 + slope.shape[0]] = (slope @ bw).mul_(g)
            grad_b.addmm_(slope.T, a[r0:r0 + slope.shape[0]] * (g * scale))
            grad_c[r0:r0 + slope.shape[0]] = -(slope @ weights) * g.squeeze(1)
        grad_b.mul_(weights[:, None])
        return grad_a, grad_b, grad_c, None, None, None, None


def _remainder_block(a, b, c, own, scale, r0, block_rows):
    """(d, e^d − 1) of anchors r0.. against the sampled rows, both 0 where a row is the anchor's own."""
    d = torch.addmm(c[r0:r0 + block_rows, None], a[r0:r0 + block_rows], b.T, beta=-1.0, alpha=scale)
    if own is not None:
        lo, hi = torch.searchsorted(own[0], torch.tensor([r0, r0 + d.shape[0]], device=own[0].device)).tolist()
        d[own[0][lo:hi] - r0, own[1][lo:hi]] = 0.0  # φ(0) = 0 and e^0 − 1 − 0 = 0: the entry drops out of R
    return d, torch.expm1(d)


def own_row_pairs(rows: torch.Tensor, self_rows: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(anchor, k) of every sampled row ``rows[k]`` that is anchor n's own row ``self_rows[n]``,
    sorted by anchor: rows sorted once and each anchor's row looked up, never an anchors × K compare."""
    sorted_rows, order = torch.sort(rows)
    lo = torch.searchsorted(sorted_rows, self_rows)
    counts = torch.searchsorted(sorted_rows, self_rows, right=True) - lo
    anchor = torch.repeat_interleave(torch.arange(self_rows.numel(), device=rows.device), counts)
    first = torch.repeat_interleave(lo, counts)
    within = torch.arange(anchor.numel(), device=rows.device) - torch.repeat_interleave(counts.cumsum(0) - counts,
                                                                                        counts)
    return anchor, order[first + within]


def table_moments(table: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(b̄, M = Σ_m (b_m − b̄)(b_m − b̄)ᵀ) of a table: what the control variate sums in closed form."""
    mean = table.mean(dim=0)
    centred = table - mean
    return mean, centred.T @ centred


def control_variate_logsumexp(anchors: torch.Tensor, table: torch.Tensor, temp: float, rows: torch.Tensor,
                              self_rows: Optional[torch.Tensor] = None,
                              row_weights: Optional[torch.Tensor] = None,
                              blocks: Blocks = CPU_BLOCKS,
                              moments: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """log Σ_{m ∈ T} exp(a_n·b_m/τ) for the ``anchors`` (n×d) over the whole ``table`` (T×d), with the
    second-order control variate and the remainder estimated from ``rows`` of T.

    With s_nm = a_n·b_m/τ, c_n = a_n·b̄/τ, d_nm = s_nm − c_n and φ(d) = e^d − 1 − d − d²/2::

        Σ_m e^{s_nm} = e^{c_n} (|T| + ½ a_nᵀ M a_n / τ² + Σ_m φ(d_nm)),   M = Σ_m (b_m − b̄)(b_m − b̄)ᵀ,

    (the linear terms sum to 0), and Σ_m φ(d_nm) ≈ Σ_k w_k φ(d_{n,rows_k}): ``row_weights`` w_k =
    1/(K q(rows_k)) for rows drawn with replacement from a proposal q (:func:`draw_adaptive`), or
    |T|/K for K uniform rows (``row_weights=None``). ``self_rows``: when the anchors are rows of the
    table itself (the user–user and item–item sums), their table indices; each anchor's own row,
    e^{|a_n|²/τ}, can carry much of its sum and is added exactly (left out of the sampled
    remainder, which stays unbiased for the other rows). An anchor whose estimate falls below
    :data:`CONTROL_FLOOR` times the plain weighted estimate Σ_k w_k e^{s_nk} (the expansion
    overshooting on a far-spread anchor; not seen on Yelp) takes that plain estimate, without a gradient.
    Differentiable w.r.t. both; every table row gets a gradient through b̄ and M. ``moments``:
    :func:`table_moments` of ``table`` when the caller already has them (several sums over one table)."""
    n_rows = table.shape[0]
    if row_weights is None:
        row_weights = table.new_full((rows.numel(),), n_rows / rows.numel())
    mean, second = moments if moments is not None else table_moments(table)
    centre = anchors @ mean / temp  # c_n
    quad = ((anchors @ second) * anchors).sum(dim=1) / (temp * temp)
    block_rows, _ = blocks.shape(anchors.shape[0], rows.numel())
    own = own_row_pairs(rows, self_rows) if self_rows is not None else None
    remainder, plain = _ControlRemainder.apply(anchors, table[rows], centre, row_weights.to(table.dtype), own,
                                               1.0 / float(temp), int(block_rows))
    bracket = n_rows + 0.5 * quad + remainder
    if self_rows is not None:
        d_self = (anchors * table[self_rows]).sum(dim=1) / temp - centre
        bracket = bracket + (torch.expm1(d_self) - d_self - 0.5 * d_self * d_self)
        plain = plain + torch.exp(d_self.detach())
    bracket = torch.where(bracket > CONTROL_FLOOR * plain, bracket, plain)  # (plain: no gradient)
    return centre + torch.log(bracket)


# ----------------------------------------------------------------------------- concentrated sums
@dataclass(frozen=True)
class StratifiedRows:
    """One batch's plan for the concentrated sums over one table: for each group g of anchors,
    the table rows its sum runs over (``candidates[g]``) and each
    row's log weight (``log_weights[g]``: 0 for the rows of its exact clusters, log(|rest|/m) for the
    m rows sampled from the rest). ``group_of[a]``: the group of anchor id a (−1: not an anchor)."""

    group_of: torch.Tensor
    candidates: List[torch.Tensor]
    log_weights: List[torch.Tensor]


@dataclass(frozen=True)
class Strata:
    """One table clustered for the concentrated sums: ``centroids`` (C×d, unit rows) of the
    trainee's normalised outputs, the rows of each cluster (``members``, slices of ``sorted_rows``
    starting at ``starts``), and the anchors' vectors (``anchor_vectors``: the supervisor's
    normalised rows, frozen), all built by :meth:`build`."""

    centroids: torch.Tensor
    members: List[torch.Tensor]
    anchor_vectors: torch.Tensor
    sorted_rows: torch.Tensor  # the rows in cluster order (``members`` are its slices)
    starts: torch.Tensor  # where each cluster's slice starts

    @classmethod
    @torch.no_grad()
    def build(cls, table: torch.Tensor, anchor_vectors: torch.Tensor, seed: int,
              n_clusters: int = N_CLUSTERS, iters: int = KMEANS_ITERS) -> "Strata":
        """Spherical k-means of the rows of ``table`` (normalised as the InfoNCE term normalises
        them), started from rows chosen by ``seed`` alone (so a resumed epoch rebuilds the same)."""
        y = F.normalize(table.detach() + 1e-8, p=2, dim=1)
        n_clusters = max(1, min(n_clusters, y.shape[0]))
        start = torch.randperm(y.shape[0], generator=torch.Generator().manual_seed(seed))[:n_clusters]
        centroids = y[start.to(y.device)].clone()
        for _ in range(iters):
            assign = (y @ centroids.T).argmax(dim=1)
            sums = torch.zeros_like(centroids).index_add_(0, assign, y)
            counts = torch.bincount(assign, minlength=n_clusters)
            centroids = torch.where((counts > 0)[:, None], F.normalize(sums + 1e-8, p=2, dim=1), centroids)
        assign = (y @ centroids.T).argmax(dim=1)
        order = torch.argsort(assign, stable=True)
        counts = torch.bincount(assign, minlength=n_clusters).tolist()
        members = list(torch.split(order, counts))
        starts = torch.tensor([0] + counts[:-1], device=y.device).cumsum(dim=0)
        anchors = F.normalize(anchor_vectors.detach() + 1e-8, p=2, dim=1)
        return cls(centroids, members, anchors, order, starts)

    @torch.no_grad()
    def plan(self, anchor_ids: torch.Tensor, temp: float, rate: float,
             generator: Optional[torch.Generator] = None, cover: Optional[float] = None) -> StratifiedRows:
        """The rows each group of ``anchor_ids`` sums over this batch: the clusters carrying
        ``cover`` of the group's weight Σ_{n ∈ group} |c|·exp(x_n·μ_c/τ), whole, and the other rows
        sampled uniformly with replacement at ``rate`` (at least one), weighted |rest|/m
        (``cover`` None: :data:`COVER`)."""
        cover = COVER if cover is None else cover
        x = self.anchor_vectors[anchor_ids]
        logits = x @ self.centroids.T / temp  # n × C
        group = logits.argmax(dim=1)
        n_clusters = self.centroids.shape[0]
        sizes = torch.tensor([m.numel() for m in self.members], device=x.device)
        # each group's estimated weight per cluster, Σ_{n ∈ group} |c|·exp(x_n·μ_c/τ), shifted by one max
        shifted = torch.exp(logits - logits.max())
        mass = torch.zeros(n_clusters, n_clusters, dtype=shifted.dtype, device=x.device).index_add_(0, group, shifted)
        mass = mass * sizes[None, :]
        ranked, order = mass.sort(dim=1, descending=True)
        share = ranked.cumsum(dim=1) / ranked.sum(dim=1, keepdim=True).clamp(min=torch.finfo(ranked.dtype).tiny)
        n_exact = ((share < cover).sum(dim=1) + 1).tolist()
        group_of = torch.full((self.anchor_vectors.shape[0],), -1, dtype=torch.long, device=x.device)
        group_of[anchor_ids] = group
        present = set(group.unique().tolist())
        candidates, log_weights = [], []
        empty_rows, empty_weights = anchor_ids.new_zeros(0), x.new_zeros(0)
        for g, clusters in enumerate(order.tolist()):
            if g not in present:
                candidates.append(empty_rows)
                log_weights.append(empty_weights)
                continue
            exact = torch.cat([self.members[c] for c in clusters[:n_exact[g]]])
            parts, weights = [exact], [x.new_zeros(exact.numel())]
            rest = torch.tensor(clusters[n_exact[g]:], dtype=torch.long, device=x.device)
            rest_sizes = sizes[rest]
            ends = rest_sizes.cumsum(dim=0)
            n_rest = int(ends[-1]) if rest.numel() else 0
            if n_rest > 0:  # m rows uniform over the rest's clusters, without listing them
                m = max(1, int(round(rate * n_rest)))
                draw = torch.randint(0, n_rest, (m,), generator=generator).to(x.device)
                which = torch.searchsorted(ends, draw, right=True)
                offset = draw - (ends[which] - rest_sizes[which])
                parts.append(self.sorted_rows[self.starts[rest[which]] + offset])
                weights.append(x.new_full((m,), math.log(n_rest / m)))
            candidates.append(torch.cat(parts))
            log_weights.append(torch.cat(weights))
        return StratifiedRows(group_of, candidates, log_weights)


class _StratifiedLogSumExp(torch.autograd.Function):
    """lse_n = log Σ_k exp(s·a_n·b_{r_k} + λ_k) over each group's candidate rows r (log weights λ),
    for the anchors of that group. The table rows are gathered inside (no autograd copy of the
    candidates) and each group's logits are made :data:`STRATIFIED_BLOCK` columns at a time in one
    reused buffer (max-shifted online, as :func:`Utils.kernels.Kernels.row_logsumexp_matmul`); the backward
    pass makes each block again and adds Σ_n g_n P_nk s·a_n into the rows it read."""

    @staticmethod
    def forward(ctx, anchors, table, scale, members, candidates, log_weights):
        a, b = anchors.detach() * scale, table.detach()
        lse = a.new_empty(a.shape[0])
        buffer = a.new_empty(max(w.numel() for w in members) * STRATIFIED_BLOCK)
        for where, rows, log_w in zip(members, candidates, log_weights):
            cand, a_g = b.index_select(0, rows), a[where]
            run_max = run_sum = None
            for c0 in range(0, rows.numel(), STRATIFIED_BLOCK):
                block = cand[c0:c0 + STRATIFIED_BLOCK]
                logits = buffer[:a_g.shape[0] * block.shape[0]].view(a_g.shape[0], block.shape[0])
                torch.addmm(log_w[None, c0:c0 + block.shape[0]], a_g, block.T, out=logits)
                run_max, run_sum = online_logsumexp_step(logits, run_max, run_sum)
            lse[where] = run_max + torch.log(run_sum)
        ctx.save_for_backward(anchors, table, lse)
        ctx.scale, ctx.members, ctx.candidates, ctx.log_weights = scale, members, candidates, log_weights
        return lse

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_lse):
        anchors, table, lse = ctx.saved_tensors
        need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        scale = ctx.scale
        a, b = anchors.detach() * scale, table.detach()
        grad_a = torch.zeros_like(a) if need_a else None
        grad_b = torch.zeros_like(b) if need_b else None
        buffer = a.new_empty(max(w.numel() for w in ctx.members) * STRATIFIED_BLOCK)
        for where, rows, log_w in zip(ctx.members, ctx.candidates, ctx.log_weights):
            cand, a_g, lse_g = b.index_select(0, rows), a[where], lse[where][:, None]
            g = grad_lse[where][:, None]
            weighted = a_g * g  # g_n s a_n: the row weights go into the small factor
            grad_cand = torch.empty_like(cand) if need_b else None
            grad_a_g = torch.zeros_like(a_g) if need_a else None
            for c0 in range(0, rows.numel(), STRATIFIED_BLOCK):
                block = cand[c0:c0 + STRATIFIED_BLOCK]
                soft = buffer[:a_g.shape[0] * block.shape[0]].view(a_g.shape[0], block.shape[0])
                torch.addmm(log_w[None, c0:c0 + block.shape[0]], a_g, block.T, out=soft)
                soft.sub_(lse_g).exp_()  # P_nk
                if need_b:
                    torch.mm(soft.T, weighted, out=grad_cand[c0:c0 + block.shape[0]])
                if need_a:
                    grad_a_g.addmm_(soft, block)
            if need_b:
                _add_rows(grad_b, rows, grad_cand)
            if need_a:
                grad_a[where] = grad_a_g.mul_(g * scale)
        return grad_a, grad_b, None, None, None, None


def _add_rows(target: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> None:
    """target[rows] += values, repeated rows summed, in an order that does not vary between runs
    (on the CPU ``index_add_`` adds serially; elsewhere the sorted accumulating ``index_put_``)."""
    if target.device.type == "cpu":
        target.index_add_(0, rows, values)
    else:
        target.index_put_((rows,), values, accumulate=True)


def stratified_logsumexp(anchors: torch.Tensor, anchor_ids: torch.Tensor, table: torch.Tensor, temp: float,
                         plan: StratifiedRows) -> torch.Tensor:
    """log Σ_{m ∈ T} exp(a_n·b_m/τ) for ``anchors`` (n×d, the rows ``anchor_ids`` of their table)
    estimated by ``plan``: per group, Σ over its candidate rows of w_m·exp(a_n·b_m/τ), w_m = 1 on
    its exact clusters and |rest|/m on its sampled rows (:class:`_StratifiedLogSumExp`)."""
    groups = plan.group_of[anchor_ids]
    if bool((groups < 0).any()):
        raise ValueError("stratified_logsumexp: some anchors are not in the plan (Strata.plan of the whole anchor set)")
    if anchors.shape[0] == 0:
        return anchors.new_zeros(0)
    members, candidates, log_weights = [], [], []
    for g, (rows, log_w) in enumerate(zip(plan.candidates, plan.log_weights)):
        where = torch.nonzero(groups == g).squeeze(1)
        if where.numel() == 0 or rows.numel() == 0:
            continue
        members.append(where)
        candidates.append(rows)
        log_weights.append(log_w.to(table.dtype))
    return _StratifiedLogSumExp.apply(anchors, table, 1.0 / float(temp), members, candidates, log_weights)


# ----------------------------------------------------------------------------- one epoch, one batch
@dataclass(frozen=True)
class TableProfile:
    """What the adaptive estimator keeps of one table for an epoch (:meth:`build`, from the trainee's
    outputs at the epoch's start): the ``proposal`` its control-variate rows are drawn from, half
    uniform and half ∝ ‖b_m − b̄‖³ (the remainder φ(d) ≈ d³/6 grows with that cube, so the rows
    that carry it are drawn more often and weighted less), and, when the embedding-level KD is
    on, its :class:`Strata`."""

    proposal: torch.Tensor
    strata: Optional[Strata] = None

    @classmethod
    @torch.no_grad()
    def build(cls, outputs: torch.Tensor, anchor_vectors: Optional[torch.Tensor] = None,
              seed: int = 0) -> "TableProfile":
        deviation = outputs.detach() - outputs.detach().mean(dim=0)
        cube = deviation.norm(dim=1).double() ** 3
        uniform = torch.full_like(cube, 1.0 / cube.numel())
        proposal = 0.5 * uniform + (0.5 * cube / cube.sum() if float(cube.sum()) > 0 else 0.5 * uniform)
        strata = Strata.build(outputs, anchor_vectors, seed) if anchor_vectors is not None else None
        return cls(proposal.float(), strata)


def draw_adaptive(profiles: Tuple[TableProfile, TableProfile], k: int, anchors: Tuple[torch.Tensor, torch.Tensor],
                  temp_concentrated: float, generator: Optional[torch.Generator] = None) -> ContrastSample:
    """One batch's rows for ``--contrast_estimator=adaptive`` with K = ``k``: per table (users, then
    items), K control-variate rows drawn with replacement from its proposal (with their weights
    1/(K q)), then, where the table has :class:`Strata`, the plan of the concentrated sums for the
    batch's ``anchors`` (τ = ``temp_concentrated``). A table of ≤ K rows is summed exactly."""
    rows, weights, plans = [None, None], [None, None], [None, None]
    for side, profile in enumerate(profiles):
        n_rows = profile.proposal.numel()
        if k >= n_rows:
            continue
        device = anchors[side].device
        drawn = torch.multinomial(profile.proposal.cpu(), k, replacement=True, generator=generator)
        rows[side] = drawn.to(device)
        weights[side] = (1.0 / (k * profile.proposal.cpu()[drawn])).to(device)
        if profile.strata is not None:
            plans[side] = profile.strata.plan(anchors[side], temp_concentrated, k / n_rows, generator)
    return ContrastSample(rows[0], rows[1], control=True, strata_users=plans[0], strata_items=plans[1],
                          weights_users=weights[0], weights_items=weights[1])
