"""The LightGNN training objective (docs/method.md#loss-terms) as pure functions of tensors.

Every term takes tensors (paired as (users, items) where a term reads both tables), the
anchor rows it averages over (:class:`Share`) and plain numbers, and returns a scalar tensor;
none reads global state. :func:`kd_objective` composes them into the published per-batch
loss of a :class:`Trainee` under a :class:`Supervisor`, driven by a frozen :class:`KDConfig`.

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

Memory: the all-node sums run in the blocked kernels of :mod:`Utils.kernels.Kernels`, which never
form an anchors×N matrix.

Data-parallel runs (:mod:`Utils.runtime.Parallel`): the stage splits each batch between the
processes once (:meth:`Batch.split`); a term averages over its :class:`Share` of the rows
and divides by the whole count, so the parts summed over the processes are the loss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Mapping, MutableMapping, Optional, Tuple

import torch
import torch.nn.functional as F

from Utils.kernels import MaskPairs
from Utils.objective.Estimators import control_variate_logsumexp, draw_adaptive, stratified_logsumexp, table_moments
from Utils.kernels.Kernels import (CPU_BLOCKS, EXACT, Blocks, ContrastSample, draw_contrast_sample, positive_pair_logit_sums,
                           row_logsumexp_matmul, table_logsumexp)
from Utils.runtime.Parallel import SOLO, Group

#: The constants the published tool adds inside its logarithms.
INFONCE_EPS = 1e-8
CONTR_DENO_EPS = 1e-5
PRED_KD_EPS = 1e-8

SUBSPACE_VERSIONS = ("v1", "v2", "v3")

Pair = Tuple[torch.Tensor, torch.Tensor]  # (users, items): the two tables a term reads


def _mean(values: torch.Tensor, total: Optional[int] = None) -> torch.Tensor:
    """``values.mean()``; with ``total``, this process's share Σ values / total of a mean over
    ``total`` rows split between processes (``Utils.runtime.Parallel.Group.split``)."""
    return values.mean() if total is None else values.sum() / total


# ---------------------------------------------------------------------------
# What a batch hands the terms
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Share:
    """The rows of an index this process averages over (``rows``), the whole index (``whole``)
    and its length (``total``; None in a one-process run, where a term takes a plain mean)."""

    rows: torch.Tensor
    whole: torch.Tensor
    total: Optional[int] = None

    @classmethod
    def of(cls, index: torch.Tensor, group: Group = SOLO) -> "Share":
        rows, total = group.split(index)
        return cls(rows, index, total)


@dataclass(frozen=True)
class SubspaceRows:
    """The subspace term's anchors for one batch: ``users``/``items`` (uniq(u), uniq(i), or a
    random share of them with ``--hyper_contr_resample``), ``both`` (v2: the rows of their
    concatenation) and, v3 with resampling, the random candidate rows of each table."""

    users: Share
    items: Share
    both: Optional[Share] = None
    cand_users: Optional[torch.Tensor] = None
    cand_items: Optional[torch.Tensor] = None

    @classmethod
    def draw(cls, users: torch.Tensor, items: torch.Tensor, cfg: "KDConfig", n_nodes: Tuple[int, int],
             generator: Optional[torch.Generator] = None, group: Group = SOLO) -> "SubspaceRows":
        """The rows for anchors ``users``/``items`` (one table each, ``n_nodes`` = (U, I) rows);
        ``cfg.resample_ratio`` draws the random shares from ``generator`` (anchors first)."""
        if cfg.subspcreg_version not in SUBSPACE_VERSIONS:
            raise ValueError(f"subspcreg_version must be one of {SUBSPACE_VERSIONS}, got {cfg.subspcreg_version!r}")
        ratio = cfg.resample_ratio
        if ratio is not None:
            users, items = _random_subset(users, ratio, generator), _random_subset(items, ratio, generator)
        both = cand_users = cand_items = None
        if cfg.subspcreg_version == "v2":
            both = Share.of(torch.arange(users.numel() + items.numel(), device=users.device), group)
        elif cfg.subspcreg_version == "v3" and ratio is not None:
            cand_users = _random_subset(torch.arange(n_nodes[0], device=users.device), ratio, generator)
            cand_items = _random_subset(torch.arange(n_nodes[1], device=users.device), ratio, generator)
        return cls(Share.of(users, group), Share.of(items, group), both, cand_users, cand_items)


@dataclass(frozen=True)
class Batch:
    """One step's rows as this process sees them, split between the processes once
    (:meth:`split`): its BPR triples, the prediction-level KD's random triples, the distinct
    users and positive items (the all-node terms' anchors), the rows the all-node sums run
    over (``sample``) and the subspace term's rows (``subspace``, None when it is off)."""

    triples: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    n_triples: Optional[int]
    random: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    n_random: Optional[int]
    users: Share
    items: Share
    sample: ContrastSample = EXACT
    subspace: Optional[SubspaceRows] = None

    @classmethod
    def split(cls, triples, random, anchors: Tuple[torch.Tensor, torch.Tensor], sample: ContrastSample = EXACT,
              subspace: Optional[SubspaceRows] = None, group: Group = SOLO) -> "Batch":
        """``triples`` (ancs, poss, negs) and ``random`` (users, items, items), whole; ``anchors``
        = (uniq(ancs), uniq(poss))."""
        mine, n_triples = group.split_rows(*triples)
        rand, n_random = group.split_rows(*random)
        users, items = anchors
        return cls(tuple(mine), n_triples, tuple(rand), n_random, Share.of(users, group), Share.of(items, group),
                   sample, subspace)


def draw_batch(cfg: "KDConfig", triples, random, n_nodes: Tuple[int, int], generator: Optional[torch.Generator] = None,
               group: Group = SOLO, sample: Optional[ContrastSample] = None, profiles=None) -> Batch:
    """A :class:`Batch` of ``triples`` (ancs, poss, negs) and ``random`` (users, items, items) for
    ``n_nodes`` = (U, I): the rows of the all-node sums (``sample``, else K = ``cfg.contrast_candidates``
    drawn from ``generator``; K = 0: exact), then the subspace term's rows (when it is on), drawn
    in this order as the published objective draws them, then split between the processes.
    ``profiles`` (``--contrast_estimator=adaptive``: the (users, items)
    :class:`Utils.objective.Estimators.TableProfile` of this epoch): the rows are those of
    :func:`Utils.objective.Estimators.draw_adaptive` instead of uniform ones."""
    device = triples[0].device
    anchors = (torch.unique(triples[0]), torch.unique(triples[1]))
    if sample is None and profiles is not None:
        sample = draw_adaptive(profiles, cfg.contrast_candidates, anchors, cfg.tempcd, generator)
    if sample is None:
        sample = draw_contrast_sample(n_nodes[0], n_nodes[1], cfg.contrast_candidates, generator, device)
    subspace = None
    if cfg.use_subspcreg:
        subspace = SubspaceRows.draw(*anchors, cfg, n_nodes, generator, group)
    return Batch.split(triples, random, anchors, sample, subspace, group)


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


def batch_embedding_reg(rows: Tuple[torch.Tensor, torch.Tensor, torch.Tensor], reg: float,
                        total: Optional[int] = None) -> torch.Tensor:
    """LightGCN's weight decay (docs/method.md#weight-decay, ``--reg_batch``): on the batch's
    layer-0 rows only, reg · ½ · mean_b (‖e⁰_u‖² + ‖e⁰_i‖² + ‖e⁰_j‖²) for ``rows`` = (E⁰ of the
    users, positives, negatives), one row per triple (a row drawn twice counts twice).
    ``total``: the rows are this process's share of a batch of ``total`` triples (:func:`_mean`)."""
    users, positives, negatives = rows
    norms = users.square().sum(dim=1) + positives.square().sum(dim=1) + negatives.square().sum(dim=1)
    return _mean(norms, total) * (0.5 * reg)


def edge_weight_reg(edge_weight: torch.Tensor, ereg: float) -> torch.Tensor:
    """Edge-weight decay (docs/method.md#weight-decay, ``--use_ereg``): ereg · ‖w‖² of ``adj_mask1_train``."""
    return edge_weight.square().sum() * ereg


def pair_score_differences(out: Pair, u: torch.Tensor, i1: torch.Tensor, i2: torch.Tensor) -> torch.Tensor:
    """ε_k = ŷ(u_k, i1_k) − ŷ(u_k, i2_k) with ŷ(u, i) = Ē_u·Ē_i, ``out`` = (Ē users, Ē items) (item ids 0..I-1)."""
    users, items = out
    ue = users[u]
    return (ue * items[i1]).sum(dim=-1) - (ue * items[i2]).sum(dim=-1)


def prediction_kd_loss(student: Pair, teacher: Pair, triples, temp: float,
                       total: Optional[int] = None) -> torch.Tensor:
    """Prediction-level KD (docs/method.md#prediction-level-kd; the published ``KLDiverge``) over random triples (u', i₁, i₂).

    With ε = ŷ(u',i₁) − ŷ(u',i₂), p^T = σ(ε^T/τ), p^S = σ(ε^S/τ):
    mean of −[p^T·log(p^S + 1e-8) + (1 − p^T)·log(1 − p^S + 1e-8)].
    The 1e-8 sit inside the logs exactly as published (they bound the loss where σ
    saturates at τ = 0.03). The teacher side carries no gradient. ``total``: the triples are
    this process's share of ``total`` (:func:`_mean`).
    """
    with torch.no_grad():
        p_tea = torch.sigmoid(pair_score_differences(teacher, *triples) / temp)
    p_stu = torch.sigmoid(pair_score_differences(student, *triples) / temp)
    return _mean(-(p_tea * torch.log(p_stu + PRED_KD_EPS)
                   + (1 - p_tea) * torch.log(1 - p_stu + PRED_KD_EPS)), total)


def infonce(x_all: torch.Tensor, y_all: torch.Tensor, anchors: Share, temp: float,
            sample: Optional[torch.Tensor] = None, blocks: Blocks = CPU_BLOCKS, plan=None) -> torch.Tensor:
    """InfoNCE (docs/method.md#embedding-level-kd; the published ``infoNCE``).

    x = (X + 1e-8)/‖X + 1e-8‖, y likewise (row-wise, ``F.normalize``);
    mean over n ∈ anchors of −log( exp(x_n·y_n/τ) / (Σ_{m over all rows of Y} exp(x_n·y_m/τ) + 1e-8) )
    = mean_n [ log(exp(lse_n) + 1e-8) − x_n·y_n/τ ],  lse_n from :func:`Utils.kernels.Kernels.row_logsumexp_matmul`,
    the outer 1e-8 added stably with ``logaddexp``.
    ``sample``: rows of Y the denominator is estimated from (:func:`Utils.kernels.Kernels.table_logsumexp`);
    the positive pair x_n·y_n stays exact. ``plan`` (``--contrast_estimator=adaptive``): the
    denominator is :func:`Utils.objective.Estimators.stratified_logsumexp` instead.
    """
    index = anchors.rows
    x = F.normalize(x_all[index] + 1e-8, p=2, dim=1)  # row-wise, so normalising only the picked rows is the same
    y = F.normalize(y_all + 1e-8, p=2, dim=1)
    positive = (x * y[index]).sum(dim=-1) / temp
    if plan is not None:
        lse = stratified_logsumexp(x, index, y, temp, plan)
    else:
        lse = table_logsumexp(x, y, temp, sample, blocks)
    log_deno = torch.logaddexp(lse, lse.new_tensor(math.log(INFONCE_EPS)))
    return _mean(log_deno - positive, anchors.total)


def embedding_kd_loss(high: Pair, out: Pair, anchors: Tuple[Share, Share], temp: float,
                      sample: ContrastSample = EXACT, blocks: Blocks = CPU_BLOCKS) -> torch.Tensor:
    """Embedding-level KD (docs/method.md#embedding-level-kd), unweighted: InfoNCE(H_users, Ē^S_users, uniq(u)) + InfoNCE(H_items, Ē^S_items, uniq(i)).

    ``high`` = H = Σ_{l≥2} E^T_l of the supervisor (users, items), detached here; ``out`` = Ē^S.
    ``sample``: see :class:`Utils.kernels.Kernels.ContrastSample`.
    """
    return (infonce(high[0].detach(), out[0], anchors[0], temp, sample.users, blocks, sample.strata_users)
            + infonce(high[1].detach(), out[1], anchors[1], temp, sample.items, blocks, sample.strata_items))


def contrastive_denominator_loss(out: Pair, anchors: Tuple[Share, Share], temp: float, *,
                                 lse_cache: Optional[MutableMapping] = None, sample: ContrastSample = EXACT,
                                 blocks: Blocks = CPU_BLOCKS) -> torch.Tensor:
    """Auxiliary denominator / uniformity term (docs/method.md#auxiliary-denominator, published ``selfContrast``), unweighted.

    Σ over (a, b, n) ∈ {(users, items, uniq(u)), (items, users, uniq(i)), (users, users, uniq(u)),
    (items, items, uniq(i))} of mean_n log(Σ_m exp(a_n·b_m/τ) + 1e-5), on the raw (not
    normalised) embeddings ``out``; log(S + 1e-5) = logaddexp(lse, log 1e-5).

    ``lse_cache``: an optional dict shared with :func:`subspace_loss` (v3) *for the same
    embeddings and anchors*; the four row log-sum-exps are then computed once per τ.
    ``sample``: each Σ_m over a table is estimated from its sampled rows (:func:`Utils.kernels.Kernels.table_logsumexp`).
    """
    users, items = out
    log_eps = math.log(CONTR_DENO_EPS)
    total = users.new_zeros(())
    lse_cache = {} if lse_cache is None else lse_cache  # (each sum once; the control variate's moments shared)
    for key, a, b, share in (("ui", users, items, anchors[0]), ("iu", items, users, anchors[1]),
                             ("uu", users, users, anchors[0]), ("ii", items, items, anchors[1])):
        lse = _cached_lse(lse_cache, key, (a[share.rows], b), temp, sample, blocks, share.rows)
        total = total + _mean(torch.logaddexp(lse, lse.new_tensor(log_eps)), share.total)
    return total


def _cached_lse(cache: Optional[MutableMapping], key: str, pair: Pair, temp: float, sample: ContrastSample,
                blocks: Blocks, anchor_rows: torch.Tensor) -> torch.Tensor:
    """The row log-sum-exps of ``pair`` = (anchors, table) for the sums ``key`` (anchor kind, then
    table kind: 'ui', 'iu', 'uu', 'ii'), over the rows ``sample`` gives the table
    (:func:`Utils.kernels.Kernels.table_logsumexp`), with the control variate when ``sample.control``
    (:func:`Utils.objective.Estimators.control_variate_logsumexp`; ``anchor_rows`` are the anchors' own rows
    when they come from the table itself); memoised in ``cache`` under (key, τ) when one is given."""
    full_key = (key, float(temp))
    if cache is not None and full_key in cache:
        return cache[full_key]
    rows = sample.rows(key[1])
    if sample.control and rows is not None:
        moments = None
        if cache is not None:  # one table's moments serve every sum over it
            if ("moments", key[1]) not in cache:
                cache[("moments", key[1])] = table_moments(pair[1])
            moments = cache[("moments", key[1])]
        lse = control_variate_logsumexp(*pair, temp, rows, anchor_rows if key[0] == key[1] else None,
                                        sample.weights(key[1]), blocks, moments)
    else:
        lse = table_logsumexp(*pair, temp, rows, blocks)
    if cache is not None:
        cache[full_key] = lse
    return lse


def soft_target_cross_entropy(anchors: Pair, candidates: Pair, loosen: float, temp: float, *,
                              lse: Optional[torch.Tensor] = None, blocks: Blocks = CPU_BLOCKS,
                              total: Optional[int] = None, pairs: Optional[Pair] = None) -> torch.Tensor:
    """One subspace kernel (docs/method.md#subspace-term): mean_n −Σ_m t_nm · log softmax_m(a_n·b_m/τ).

    ``anchors`` = (a, their mask rows), ``candidates`` = (b, their mask rows).
    = mean_n [ (Σ_m t_nm)·lse_n − (Σ_m t_nm a_n·b_m)/τ ], t the mask positives of
    :func:`Utils.kernels.Kernels.positive_pair_logit_sums`; the same value as ``nn.CrossEntropyLoss()(logits, t)``
    with probability targets (sum over candidates, mean over anchors, t not normalised).
    ``lse`` may be passed when the row log-sum-exps of (a, b, τ) are already known.
    ``total``: the anchors are this process's share of ``total`` (:func:`_mean`).
    ``pairs``: the positives already listed (see :func:`Utils.kernels.Kernels.positive_pair_logit_sums`).
    """
    (anc_emb, anc_mask), (cand_emb, cand_mask) = anchors, candidates
    counts, sums = positive_pair_logit_sums(anc_emb, cand_emb, anc_mask, cand_mask, loosen, blocks=blocks,
                                            pairs=pairs)
    if lse is None:
        rows, cols = blocks.shape(anc_emb.shape[0], cand_emb.shape[0])
        lse = row_logsumexp_matmul(anc_emb, cand_emb, temp, block_rows=rows, block_cols=cols)
    return _mean(counts * lse - sums / temp, total)


def _random_subset(index: torch.Tensor, ratio: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    """A uniformly random ⌊ratio·len⌋ (at least 1) share of ``index``, without replacement."""
    keep = max(1, int(ratio * index.numel()))
    perm = torch.randperm(index.numel(), generator=generator)[:keep].to(index.device)
    return index[perm]


def subspace_loss(out: Pair, emb_mask: torch.Tensor, rows: SubspaceRows, cfg: "KDConfig", *,
                  lse_cache: Optional[MutableMapping] = None, sample: ContrastSample = EXACT,
                  pair_index: Optional[Mapping[str, Optional[MaskPairs.PairIndex]]] = None) -> torch.Tensor:
    """Subspace uniformity constraint (docs/method.md#subspace-term), unweighted (multiply by ``subspcreg``).

    Positives: (a, b) with M_a·M_b ≥ ‖M_a‖₀ − δ and M_a·M_b ≥ ‖M_b‖₀ − δ, M the rows of
    ``emb_mask`` (``emb_mask2_fixed``, users then items), δ = ``cfg.loosen``, τ = ``cfg.tempsubsp``.
    Each term is :func:`soft_target_cross_entropy` (mean over anchors of −Σ_m t_nm log softmax_m(a_n·b_m/τ)).

    * v3 (default): (users→all items, anchors uniq(u)) + (items→all users, uniq(i))
      + (users→all users, uniq(u)) + (items→all items, uniq(i)).
    * v1: (user anchors → user anchors) + (item anchors → item anchors).
    * v2: one term over the concatenation [user anchors; item anchors] against itself
      (users and items compete in one softmax, positives across kinds allowed).

    ``rows`` (:meth:`SubspaceRows.draw`): the anchors, and with ``--hyper_contr_resample``
    **[fix]** (``cfg.resample_ratio``) a uniformly random ⌊ratio·n⌋ of them and, for v3, of all
    users / all items as candidates (anchors are then still taken from the full tables, so
    indices stay consistent); ``lse_cache`` and ``sample`` are then ignored.
    ``lse_cache``: see :func:`contrastive_denominator_loss`.
    ``sample`` (v3 without resampling): each softmax denominator over a whole table is
    estimated from the sampled rows (:func:`Utils.kernels.Kernels.table_logsumexp`); the positives t_nm and
    Σ_m t_nm a_n·b_m still run over the whole table, exactly.
    ``pair_index`` (v3 without resampling): :func:`Utils.kernels.Kernels.subspace_pair_index` of these
    masks and δ; the positives of each anchor are then read from it, not listed again.
    """
    users, items = out
    n_users = users.shape[0]
    masks = (emb_mask[:n_users], emb_mask[n_users:])
    temp, loosen, blocks = cfg.tempsubsp, cfg.loosen, cfg.blocks
    if cfg.subspcreg_version == "v1":  # each anchor list against itself
        total = users.new_zeros(())
        for emb, mask, share in ((users, masks[0], rows.users), (items, masks[1], rows.items)):
            total = total + soft_target_cross_entropy((emb[share.rows], mask[share.rows]),
                                                      (emb[share.whole], mask[share.whole]), loosen, temp,
                                                      blocks=blocks, total=share.total)
        return total
    if cfg.subspcreg_version == "v2":
        emb = torch.cat([users[rows.users.whole], items[rows.items.whole]], dim=0)
        mask = torch.cat([masks[0][rows.users.whole], masks[1][rows.items.whole]], dim=0)
        both = rows.both
        anchors = (emb, mask) if both.total is None else (emb[both.rows], mask[both.rows])
        return soft_target_cross_entropy(anchors, (emb, mask), loosen, temp, blocks=blocks, total=both.total)
    return _subspace_v3(out, masks, rows, cfg, lse_cache=lse_cache, sample=sample, pair_index=pair_index)


def _subspace_v3(out: Pair, masks: Pair, rows: SubspaceRows, cfg: "KDConfig", *,
                 lse_cache: Optional[MutableMapping], sample: ContrastSample,
                 pair_index: Optional[Mapping[str, Optional[MaskPairs.PairIndex]]]) -> torch.Tensor:
    """The v3 subspace term: every anchor against the whole user and item tables (see :func:`subspace_loss`)."""
    (users, items), (user_mask, item_mask) = out, masks
    cand = {"u": (users, user_mask), "i": (items, item_mask)}
    if rows.cand_users is not None:  # resampled: the candidates are random subsets, listed against nothing
        lse_cache, sample, pair_index = None, EXACT, None
        cand = {"u": (users[rows.cand_users], user_mask[rows.cand_users]),
                "i": (items[rows.cand_items], item_mask[rows.cand_items])}
    anchor_of = {"u": (users, user_mask, rows.users), "i": (items, item_mask, rows.items)}
    total = users.new_zeros(())
    for key in ("ui", "iu", "uu", "ii"):
        emb, mask, share = anchor_of[key[0]]
        anchors = emb[share.rows]
        lse = _cached_lse(lse_cache, key, (anchors, cand[key[1]][0]), cfg.tempsubsp, sample, cfg.blocks, share.rows)
        index = pair_index.get(key) if pair_index is not None else None
        pairs = None if index is None else tuple(p.to(anchors.device) for p in index.pairs_of(share.rows))
        total = total + soft_target_cross_entropy((anchors, mask[share.rows]), cand[key[1]], cfg.loosen,
                                                  cfg.tempsubsp, lse=lse, blocks=cfg.blocks, total=share.total,
                                                  pairs=pairs)
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
    ``contrast_candidates`` is K of ``--contrast_candidates`` (0 = the exact all-node sums), and
    ``contrast_estimator`` how the sums use the K rows (``--contrast_estimator``: ``uniform``,
    or ``adaptive``, :mod:`Utils.objective.Estimators`).
    ``blocks``: the block shape of the all-node kernels (:func:`Utils.kernels.Kernels.device_blocks`).
    The values are checked once, where the flags are parsed (``Params.validate``).
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
    contrast_estimator: str = "uniform"
    blocks: Blocks = CPU_BLOCKS


@dataclass(frozen=True)
class Trainee:
    """The trainee's side of one step: its outputs Ē^S (``users``, ``items``), its raw layer-0
    tables ``u_embeds``/``i_embeds`` (``uEmbeds``/``iEmbeds``: weight decay, layer-0 subspace),
    its edge weights (``adj_mask1_train``) and its 0/1 embedding mask (``emb_mask2_fixed``, N×d)."""

    users: torch.Tensor
    items: torch.Tensor
    u_embeds: torch.Tensor
    i_embeds: torch.Tensor
    edge_weight: torch.Tensor
    emb_mask: Optional[torch.Tensor] = None

    @property
    def out(self) -> Pair:
        return self.users, self.items


@dataclass(frozen=True)
class Supervisor:
    """A frozen model's outputs, computed once: Ē (``users``, ``items``) and H = Σ_{l≥2} E_l."""

    users: torch.Tensor
    items: torch.Tensor
    high_users: torch.Tensor
    high_items: torch.Tensor

    @property
    def all(self) -> torch.Tensor:
        return torch.cat([self.users, self.items], dim=0)


def kd_objective(cfg: KDConfig, trainee: Trainee, sup: Supervisor, batch: Batch, lead: bool = True,
                 subspace_pairs: Optional[Mapping[str, Optional[MaskPairs.PairIndex]]] = None
                 ) -> Dict[str, torch.Tensor]:
    """The per-batch loss of stages 2–3 (docs/method.md#total-objective; published ``Model.calcLoss``).

    total = main + pred_kd + emb_kd + reg + contr_deno + subspace, with

    * main       = BPR on the trainee outputs Ē^S over ``batch.triples``;
    * pred_kd    = softreg · :func:`prediction_kd_loss` (supervisor outputs, τ = tempsoft);
    * emb_kd     = cdreg · :func:`embedding_kd_loss` (H = Σ_{l≥2} E^T_l of the supervisor, τ = tempcd);
    * reg        = :func:`embedding_reg` on the trainee's raw ``uEmbeds``/``iEmbeds`` parameters
                   (+ :func:`edge_weight_reg` of its edge weights when use_ereg);
    * contr_deno = screg · :func:`contrastive_denominator_loss` (τ = tempsc);
    * subspace   = subspcreg · :func:`subspace_loss` when ``cfg.use_subspcreg`` (τ = tempsubsp),
                   on Ē^S, or on the masked E₀ = [uEmbeds; iEmbeds] ⊙ mask with
                   use_ly0emb4subspcreg; masks are the rows of the trainee's ``emb_mask``.

    Anchors are uniq(ancs) and uniq(poss); item ids are 0..I-1. Supervisor tensors are
    detached here. When the subspace term and the auxiliary denominator see the same
    embeddings (outputs, no resampling), their row log-sum-exps with equal temperatures
    (default τ = 1 for both) are computed once. ``batch.sample``: the rows every all-node sum
    of this batch runs over (:data:`Utils.kernels.Kernels.EXACT`: exact sums).
    ``lead``: this process counts the whole-table weight decay (rank 0 of a data-parallel run;
    every term's batch mean is this process's share of it, :class:`Batch`).
    ``subspace_pairs``: :func:`Utils.kernels.Kernels.subspace_pair_index` of the mask and ``cfg.loosen``
    when the caller keeps the mask fixed over many batches (a pruning run); the same loss, faster.
    Returns a dict of scalar tensors: total, main, pred_kd, emb_kd, reg, contr_deno, subspace.
    """
    zero = trainee.users.new_zeros(())
    users, items = trainee.out
    teacher = (sup.users.detach(), sup.items.detach())
    anchors = (batch.users, batch.items)
    ancs, poss, negs = batch.triples
    parts = {"main": bpr_loss(users[ancs], items[poss], items[negs], batch.n_triples)}
    parts["pred_kd"] = zero
    if cfg.use_pre_level_kd:
        parts["pred_kd"] = prediction_kd_loss(trainee.out, teacher, batch.random, cfg.tempsoft,
                                              batch.n_random) * cfg.softreg
    parts["emb_kd"] = zero
    if cfg.use_emb_level_kd:
        parts["emb_kd"] = embedding_kd_loss((sup.high_users, sup.high_items), trainee.out, anchors, cfg.tempcd,
                                            batch.sample, cfg.blocks) * cfg.cdreg
    parts["reg"] = zero
    if lead:  # whole-table terms: counted once
        parts["reg"] = embedding_reg(trainee.u_embeds, trainee.i_embeds, cfg.reg)
        if cfg.use_ereg:
            parts["reg"] = parts["reg"] + edge_weight_reg(trainee.edge_weight, cfg.ereg)
    share_lse = cfg.use_subspcreg and not cfg.use_ly0emb4subspcreg and cfg.resample_ratio is None
    lse_cache: Optional[dict] = {} if share_lse else None
    parts["contr_deno"] = zero
    if cfg.use_contr_deno:
        parts["contr_deno"] = contrastive_denominator_loss(trainee.out, anchors, cfg.tempsc, lse_cache=lse_cache,
                                                           sample=batch.sample, blocks=cfg.blocks) * cfg.screg
    parts["subspace"] = zero
    if cfg.use_subspcreg:
        parts["subspace"] = _subspace_part(cfg, trainee, batch, lse_cache, subspace_pairs)
    total = (parts["main"] + parts["pred_kd"] + parts["reg"] + parts["contr_deno"] + parts["emb_kd"]
             + parts["subspace"])
    return {"total": total, **parts}


def _subspace_part(cfg: KDConfig, trainee: Trainee, batch: Batch, lse_cache: Optional[dict],
                   pairs: Optional[Mapping[str, Optional[MaskPairs.PairIndex]]]) -> torch.Tensor:
    """subspcreg · :func:`subspace_loss` on Ē^S, or on the masked E₀ with use_ly0emb4subspcreg."""
    if trainee.emb_mask is None:
        raise ValueError("the subspace term needs the student's embedding mask (emb_mask2_fixed)")
    if batch.subspace is None:
        raise ValueError("the subspace term needs the batch's subspace rows (SubspaceRows.draw)")
    mask = trainee.emb_mask.detach()
    out = trainee.out
    if cfg.use_ly0emb4subspcreg:
        e0 = torch.cat([trainee.u_embeds, trainee.i_embeds], dim=0) * mask
        out = (e0[:trainee.users.shape[0]], e0[trainee.users.shape[0]:])
    return subspace_loss(out, mask, batch.subspace, cfg, lse_cache=lse_cache, sample=batch.sample,
                         pair_index=pairs) * cfg.subspcreg
