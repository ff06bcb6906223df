"""Pruning of the student between runs: edge importance, entry scores and thresholds, pruned state.

Pure functions over tensors (no ``args``, no globals). Names map onto the published ones:

=========================  ==========================================
here                       published (``LightGCN_sp`` / ``Params``)
=========================  ==========================================
``edge_weight``            ``adj_mask1_train`` (learnable edge weights)
``edge_mask``              ``adj_mask2_fixed`` (fixed 0/1 edge mask)
``emb_mask``               ``emb_mask2_fixed`` (fixed 0/1, N x d)
``user_embeds``            ``uEmbeds``
``item_embeds``            ``iEmbeds``
``edge_cut``               ``--pruning_percent_adj``
``emb_cut``                ``--pruning_percent_emb``
``beta1``                  ``--adj_mask_aug1``
``beta2``                  ``--adj_mask_aug2``
``use_abs``                ``--adj_weights_abs``
``use_tanh``               ``--use_tanh2aug``
``keep_weights``           ``--keep_adj_weights2next_prn``
=========================  ==========================================

Conventions (checked against ``tests/data/reference/prune_*.npz``, all reproduced exactly):

* Threshold: among the ``n`` non-zero values, sort ``|value|`` ascending and take the one at
  0-based position ``floor(n * pct)``. Everything ``<=`` it is pruned (``new mask = |x| > t``),
  so ``floor(n * pct) + 1`` entries go when there are no ties (tiny: 670 live edges, 15 %
  -> 101 removed, 569 kept).
* Edge scores use the *output* embeddings (sum over layers) of the intermediate model with
  the sigmoid, and the whole score is multiplied by the fixed mask, so edges that are
  already gone score 0 and never come back.
* Embeddings pruned are the effective ones, ``[uEmbeds; iEmbeds] * emb_mask`` (in the
  published checkpoints the stored embeddings are already zero wherever the mask is 0, so
  this equals "the non-zero entries of [uEmbeds; iEmbeds]"; masking first also guarantees a
  pruned entry can never be revived).
* Kept percentages are relative to *all* edges of Â / all N*d entries, not to the survivors
  of the previous run: ``100 * mask.sum() / mask.numel()`` (tiny: 569/758 -> 75.06596,
  493/800 -> 61.625).
* Without ``keep_weights`` both the learnable weights and the fixed mask become the new 0/1
  mask; with it the weights are ``edge_weight * new_mask`` (signed values kept, pruned ones 0).
* Random variants remove ``floor(pct * n_surviving)`` uniformly chosen survivors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "PrunedState",
    "edge_importance",
    "closure_weights_on_adj",
    "magnitude_threshold",
    "prune_edges",
    "prune_embeddings",
    "taylor_entry_scores",
    "random_prune_edges",
    "random_prune_embeddings",
    "kept_percent",
    "compute_pruned_state",
    "PruneConfig",
    "prune_state",
]

# Edges per chunk when gathering embedding rows for the row.col dot products
# (65,536 edges x 64 dims x 2 gathers x 4 bytes = 32 MiB at a time).
_DOT_CHUNK = 1 << 16


@dataclass
class PrunedState:
    """The student's state after one pruning step (what the next run starts from)."""

    edge_weight: Tensor  # adj_mask1_train
    edge_mask: Tensor  # adj_mask2_fixed, 0/1
    u_embeds: Tensor  # uEmbeds
    i_embeds: Tensor  # iEmbeds
    emb_mask: Tensor  # emb_mask2_fixed, 0/1, N x d


def _check_pct(pct: float, name: str) -> None:
    if not 0.0 <= pct <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {pct}")


def _rowwise_dot(embeds: Tensor, rows: Tensor, cols: Tensor, chunk: int = _DOT_CHUNK) -> Tensor:
    """``out[e] = embeds[rows[e]] . embeds[cols[e]]``, gathered ``chunk`` edges at a time."""
    out = torch.empty(rows.shape[0], dtype=embeds.dtype, device=embeds.device)
    for start in range(0, rows.shape[0], chunk):
        stop = start + chunk
        out[start:stop] = (embeds[rows[start:stop]] * embeds[cols[start:stop]]).sum(dim=1)
    return out


@torch.no_grad()
def edge_importance(
    edge_weight: Tensor,
    edge_mask: Tensor,
    cfg: "PruneConfig",
    *,
    aug_embeds: Optional[Tensor] = None,
    edges: Optional[Tuple[Tensor, Tensor]] = None,
    mid_weight: Optional[Tensor] = None,
) -> Tensor:
    r"""Importance score of every edge of Â (row-major order).

    .. math::
        s_e = \big(w_e \;[\text{or } |w_e|] + \beta_1\,\sigma(\bar E_{r(e)}\cdot\bar E_{c(e)})
              + \beta_2\, w^{mid}_e\big)\, m_e

    * ``edge_weight`` w (adj_mask1_train), ``edge_mask`` m (adj_mask2_fixed), both length nnz(Â).
    * The β₁ term (``--use_adj_mask_aug``, β₁ = ``cfg.beta1``) is added when ``aug_embeds`` is
      given: the N x d output embeddings (sum over layers; users 0..U-1, items U..N-1) of the
      model that scores edges — the intermediate model by default (``--use_mTea2drop_edges``).
      ``edges`` = (row, col) of Â's edges is then required. ``cfg.use_tanh`` (``--use_tanh2aug``)
      swaps σ for tanh.
    * The β₂ term (``--use_SM_edgeW2aug``, β₂ = ``cfg.beta2``) is added when ``mid_weight`` is
      given: the intermediate model's learned weight on the same (row, col) of Ĉ, see
      :func:`closure_weights_on_adj`.
    * ``cfg.use_abs`` (``--adj_weights_abs``) uses |w| instead of w.
    """
    edge_weight = edge_weight.detach()
    if edge_mask.shape != edge_weight.shape:
        raise ValueError(f"edge_mask {tuple(edge_mask.shape)} != edge_weight {tuple(edge_weight.shape)}")
    score = edge_weight.abs() if cfg.use_abs else edge_weight.clone()
    if aug_embeds is not None:
        if edges is None:
            raise ValueError("the edges (row, col) are required with aug_embeds")
        edge_row, edge_col = edges
        if edge_row.shape != edge_weight.shape or edge_col.shape != edge_weight.shape:
            raise ValueError("edge_row / edge_col must have one entry per edge")
        dots = _rowwise_dot(aug_embeds.detach().to(score.dtype), edge_row.long(), edge_col.long())
        score += cfg.beta1 * (torch.tanh(dots) if cfg.use_tanh else torch.sigmoid(dots))
    if mid_weight is not None:
        if mid_weight.shape != edge_weight.shape:
            raise ValueError("mid_weight must have one entry per edge of Â")
        score += cfg.beta2 * mid_weight.detach().to(score.dtype)
    return score * edge_mask.detach().to(score.dtype)


@torch.no_grad()
def closure_weights_on_adj(
    adj_row: Tensor,
    adj_col: Tensor,
    closure_row: Tensor,
    closure_col: Tensor,
    closure_edge_weight: Tensor,
    n_nodes: int,
) -> Tensor:
    """For every edge (r, c) of Â, the intermediate model's learned weight on (r, c) of Ĉ.

    Edges are matched by the key ``r * n_nodes + c`` with a binary search in the closure's
    keys (row-major order makes them ascending; an unsorted closure is sorted first).
    Raises ``ValueError`` if some edge of Â is not an edge of Ĉ.
    """
    adj_key = adj_row.long() * n_nodes + adj_col.long()
    closure_key = closure_row.long() * n_nodes + closure_col.long()
    closure_edge_weight = closure_edge_weight.detach()
    if closure_key.numel() != closure_edge_weight.numel():
        raise ValueError("closure_edge_weight must have one entry per edge of the closure")
    if closure_key.numel() > 1 and not bool((closure_key[1:] > closure_key[:-1]).all()):
        closure_key, order = torch.sort(closure_key)
        closure_edge_weight = closure_edge_weight[order]
    pos = torch.searchsorted(closure_key, adj_key).clamp_(max=max(closure_key.numel() - 1, 0))
    found = closure_key[pos] == adj_key if closure_key.numel() else torch.zeros_like(adj_key, dtype=torch.bool)
    if not bool(found.all()):
        missing = int((~found).sum())
        first = int(torch.nonzero(~found)[0, 0])
        raise ValueError(
            f"{missing} edge(s) of Â are not in the closure graph, e.g. "
            f"({int(adj_row[first])}, {int(adj_col[first])})"
        )
    return closure_edge_weight[pos]


@torch.no_grad()
def magnitude_threshold(values: Tensor, pct: float) -> Tensor:
    """Value at 0-based position ``floor(n * pct)`` of the ascending ``|x|`` of the n non-zero x.

    This is the published convention (``sorted(|x|)[int(n * pct)]`` over non-zeros; pruning
    then drops every entry ``<=`` it). ``pct = 1`` clamps to the largest value; with no
    non-zero entry the threshold is 0. Returned as a 0-dim tensor of ``values``' dtype.
    """
    _check_pct(pct, "pct")
    magnitudes = values.detach().reshape(-1).abs()
    magnitudes = magnitudes[magnitudes != 0]
    n = magnitudes.numel()
    if n == 0:
        return torch.zeros((), dtype=values.dtype, device=values.device)
    position = min(math.floor(n * pct), n - 1)
    return torch.kthvalue(magnitudes, position + 1).values  # kthvalue is 1-based


@torch.no_grad()
def prune_edges(
    edge_weight: Tensor, edge_score: Tensor, pct: float, *, keep_weights: bool = False
) -> tuple[Tensor, Tensor]:
    """Magnitude-prune edges by score; returns ``(new_edge_weight, new_edge_mask)``.

    new mask = ``|s| > magnitude_threshold(s, pct)`` as 0/1 of ``edge_weight``'s dtype.
    The learnable weights (adj_mask1_train) restart as that 0/1 mask, unless ``keep_weights``
    (``--keep_adj_weights2next_prn``) keeps the survivors' values (``w * new_mask``).
    """
    edge_weight = edge_weight.detach()
    threshold = magnitude_threshold(edge_score, pct)
    new_mask = (edge_score.detach().abs() > threshold).to(edge_weight.dtype)
    new_weight = edge_weight * new_mask if keep_weights else new_mask.clone()
    return new_weight, new_mask


@torch.no_grad()
def prune_embeddings(
    user_embeds: Tensor, item_embeds: Tensor, emb_mask: Tensor, pct: float, score: Optional[Tensor] = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Prune embedding entries by score; returns ``(user_embeds, item_embeds, emb_mask)``.

    E = [uEmbeds; iEmbeds] * emb_mask (the effective embeddings); its live entries are its
    non-zeros. ``score`` (N x d, default |E|, the published magnitude pruning) ranks them:
    t = the value at 0-based position ``floor(n * pct)`` of the n live entries' ascending
    scores, live entries scoring ``<= t`` become 0, the new emb_mask2_fixed is "live and
    score > t" and surviving values are kept unchanged. With ``score = |E|`` this is the
    magnitude threshold of :func:`magnitude_threshold` over E's non-zeros.
    """
    n_users = user_embeds.shape[0]
    embeds = torch.cat([user_embeds.detach(), item_embeds.detach()], dim=0)
    if emb_mask.shape != embeds.shape:
        raise ValueError(f"emb_mask {tuple(emb_mask.shape)} != [uEmbeds; iEmbeds] {tuple(embeds.shape)}")
    embeds = embeds * emb_mask.detach().to(embeds.dtype)
    if score is None:
        threshold = magnitude_threshold(embeds, pct)
        new_mask = (embeds.abs() > threshold).to(embeds.dtype)
    else:
        if score.shape != embeds.shape:
            raise ValueError(f"score {tuple(score.shape)} != [uEmbeds; iEmbeds] {tuple(embeds.shape)}")
        _check_pct(pct, "pct")
        score = score.detach().to(embeds.dtype)
        live = embeds != 0
        values = score[live]
        new_mask = live
        if values.numel():
            position = min(math.floor(values.numel() * pct), values.numel() - 1)
            new_mask = live & (score > torch.kthvalue(values, position + 1).values)
        new_mask = new_mask.to(embeds.dtype)
    embeds = embeds * new_mask
    return embeds[:n_users].clone(), embeds[n_users:].clone(), new_mask


@torch.no_grad()
def taylor_entry_scores(embeds: Tensor, mean_grad: Tensor) -> Tensor:
    r"""``--emb_prune_score=taylor``: N x d importance ``|e_rc · ḡ_rc|`` of each layer-0 entry.

    ``embeds``: the effective layer-0 embeddings [uEmbeds; iEmbeds] * emb_mask; ``mean_grad``:
    ḡ, the gradient of the BPR loss averaged over one epoch of train triples, at the same
    point. Zeroing entry e_rc changes that loss by about -ḡ_rc e_rc (first-order Taylor
    expansion), so the entries whose removal moves the loss least score lowest.
    """
    if mean_grad.shape != embeds.shape:
        raise ValueError(f"mean_grad {tuple(mean_grad.shape)} != embeds {tuple(embeds.shape)}")
    return (embeds.detach() * mean_grad.detach().to(embeds.dtype)).abs()


def _random_survivor_mask(mask: Tensor, pct: float, generator: Optional[torch.Generator]) -> Tensor:
    """0/1 copy of ``mask`` with ``floor(pct * #non-zero)`` uniformly chosen non-zeros zeroed."""
    _check_pct(pct, "pct")
    flat = (mask.detach().reshape(-1) != 0).to(mask.dtype if mask.is_floating_point() else torch.float32)
    survivors = torch.nonzero(flat, as_tuple=True)[0]
    n_remove = math.floor(pct * survivors.numel())
    if n_remove:
        chosen = torch.randperm(survivors.numel(), generator=generator, device=survivors.device)[:n_remove]
        flat[survivors[chosen]] = 0
    return flat.reshape(mask.shape)


@torch.no_grad()
def random_prune_edges(edge_mask: Tensor, pct: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """``--use_adj_random_pruning``: new 0/1 edge mask with ``floor(pct * n_alive)`` random live edges removed.

    Live edges are the non-zeros of ``edge_mask``; the choice is uniform without replacement
    (``torch.randperm``), deterministic for a seeded ``generator``.
    """
    return _random_survivor_mask(edge_mask, pct, generator)


@torch.no_grad()
def random_prune_embeddings(
    user_embeds: Tensor,
    item_embeds: Tensor,
    emb_mask: Tensor,
    pct: float,
    generator: Optional[torch.Generator] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``--use_emb_random_pruning``: zero ``floor(pct * n_alive)`` random live entries.

    Live entries are the non-zeros of ``emb_mask``. Returns ``(user_embeds, item_embeds,
    emb_mask)`` with the embeddings multiplied by the new mask.
    """
    n_users = user_embeds.shape[0]
    embeds = torch.cat([user_embeds.detach(), item_embeds.detach()], dim=0)
    if emb_mask.shape != embeds.shape:
        raise ValueError(f"emb_mask {tuple(emb_mask.shape)} != [uEmbeds; iEmbeds] {tuple(embeds.shape)}")
    new_mask = _random_survivor_mask(emb_mask, pct, generator).to(embeds.dtype)
    embeds = embeds * new_mask
    return embeds[:n_users].clone(), embeds[n_users:].clone(), new_mask


def kept_percent(mask: Tensor) -> float:
    """``100 * #non-zero / #entries``: relative to the full graph / table, not to the last run."""
    return 100.0 * int(torch.count_nonzero(mask)) / mask.numel() if mask.numel() else 0.0


@torch.no_grad()
def compute_pruned_state(
    state: PrunedState,
    cfg: "PruneConfig",
    *,
    aug_embeds: Optional[Tensor] = None,
    edges: Optional[Tuple[Tensor, Tensor]] = None,
    mid_weight: Optional[Tensor] = None,
    entry_grad: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> PrunedState:
    """One pruning step of the student's ``state`` (published ``get_final_mask_epoch``).

    Edges: scored by :func:`edge_importance` (``aug_embeds``, ``edges``, ``mid_weight``) and cut
    by :func:`prune_edges`, or, with ``cfg.random_edges`` (``--use_adj_random_pruning``),
    :func:`random_prune_edges` on the current mask (the weights then follow the same
    ``cfg.keep_weights`` rule). Embeddings: :func:`prune_embeddings` by magnitude, or by
    :func:`taylor_entry_scores` with ``cfg.emb_score == "taylor"`` (``entry_grad``, the mean BPR
    gradient of the layer-0 entries, is then required), or :func:`random_prune_embeddings` with
    ``cfg.random_embeddings`` (``--use_emb_random_pruning``).
    ``cfg.edge_cut``/``cfg.emb_cut`` are the shares removed. Percentages: :func:`kept_percent`.
    """
    _check_pct(cfg.edge_cut, "edge_cut")
    _check_pct(cfg.emb_cut, "emb_cut")
    edge_weight = state.edge_weight.detach()
    if cfg.random_edges:
        new_edge_mask = random_prune_edges(state.edge_mask, cfg.edge_cut, generator).to(edge_weight.dtype)
        new_edge_weight = edge_weight * new_edge_mask if cfg.keep_weights else new_edge_mask.clone()
    else:
        score = edge_importance(edge_weight, state.edge_mask, cfg, aug_embeds=aug_embeds, edges=edges,
                                mid_weight=mid_weight)
        new_edge_weight, new_edge_mask = prune_edges(edge_weight, score, cfg.edge_cut, keep_weights=cfg.keep_weights)
    embeds = (state.u_embeds, state.i_embeds, state.emb_mask, cfg.emb_cut)
    if cfg.random_embeddings:
        u_after, i_after, new_emb_mask = random_prune_embeddings(*embeds, generator)
    elif cfg.emb_score == "taylor":
        if entry_grad is None:
            raise ValueError("the taylor entry score needs the mean BPR gradient of the layer-0 entries")
        live = torch.cat([state.u_embeds.detach(), state.i_embeds.detach()]) * state.emb_mask.detach()
        u_after, i_after, new_emb_mask = prune_embeddings(*embeds, score=taylor_entry_scores(live, entry_grad))
    else:
        u_after, i_after, new_emb_mask = prune_embeddings(*embeds)
    return PrunedState(edge_weight=new_edge_weight, edge_mask=new_edge_mask, u_embeds=u_after, i_embeds=i_after,
                       emb_mask=new_emb_mask)


ENTRY_SCORES = ("magnitude", "taylor")  # --emb_prune_score


@dataclass(frozen=True)
class PruneConfig:
    """What one pruning step does, built from the flags in one place (``Build.prune_config``):
    remove the share ``edge_cut`` of the surviving edges and ``emb_cut`` of the surviving
    embedding entries (``--pruning_percent_adj``/``--pruning_percent_emb``; "pct" names are
    kept percentages elsewhere).

    ``scoring`` names the model whose output embeddings score edges (the β₁ term of
    :func:`edge_importance`): None (no β₁ term, ``--use_adj_mask_aug=False``), "teacher",
    "middle" (the intermediate model) or "student". ``use_middle_weights`` adds the β₂ term,
    the intermediate model's edge weights mapped onto Â (``--use_SM_edgeW2aug``). ``emb_score``
    ranks the embedding entries (``--emb_prune_score``): "magnitude" |e| (published) or "taylor".
    """

    edge_cut: float
    emb_cut: float
    keep_weights: bool = False
    scoring: Optional[str] = None
    beta1: float = 0.0
    use_middle_weights: bool = False
    beta2: float = 0.0
    use_tanh: bool = False
    use_abs: bool = False
    random_edges: bool = False
    random_embeddings: bool = False
    emb_score: str = "magnitude"

    def __post_init__(self):
        if self.emb_score not in ENTRY_SCORES:
            raise ValueError(f"emb_score must be one of {ENTRY_SCORES}, got {self.emb_score!r}")


SCORING_MODELS = ("teacher", "middle", "student")


def prune_state(
    state: Mapping[str, Tensor],
    cfg: PruneConfig,
    *,
    edges: Tuple[Tensor, Tensor],
    scorers: Mapping[str, Callable[[], Tensor]],
    mid_weight: Optional[Tensor] = None,
    entry_gradient: Optional[Callable[[], Tensor]] = None,
    generator: Optional[torch.Generator] = None,
) -> Dict[str, Tensor]:
    """One pruning step on a student state dict (published tensor names in and out).

    ``scorers[cfg.scoring]()`` gives the N×d output embeddings that score edges; it is only
    called when ``cfg.scoring`` is set. ``edges``: (row, col) of Â's edges. ``mid_weight``
    (:func:`closure_weights_on_adj`) is required with ``cfg.use_middle_weights``.
    ``entry_gradient()`` gives the N×d mean BPR gradient of the layer-0 entries; it is only
    called for the taylor entry score (``cfg.emb_score``).
    """
    aug_embeds = None
    if cfg.scoring is not None:
        if cfg.scoring not in scorers:
            raise ValueError(f"edges are scored with the {cfg.scoring} model, which this stage has not loaded")
        aug_embeds = scorers[cfg.scoring]()
    if cfg.use_middle_weights and mid_weight is None:
        raise ValueError("use_middle_weights needs the intermediate model's edge weights on Â")
    entry_grad = None
    if cfg.emb_score == "taylor" and not cfg.random_embeddings:
        if entry_gradient is None:
            raise ValueError("the taylor entry score needs the layer-0 entries' mean BPR gradient")
        entry_grad = entry_gradient()
    current = PrunedState(edge_weight=state["adj_mask1_train"], edge_mask=state["adj_mask2_fixed"],
                          u_embeds=state["uEmbeds"], i_embeds=state["iEmbeds"], emb_mask=state["emb_mask2_fixed"])
    pruned = compute_pruned_state(current, cfg, aug_embeds=aug_embeds, edges=edges,
                                  mid_weight=mid_weight if cfg.use_middle_weights else None, entry_grad=entry_grad,
                                  generator=generator)
    return {"uEmbeds": pruned.u_embeds, "iEmbeds": pruned.i_embeds, "adj_mask1_train": pruned.edge_weight,
            "adj_mask2_fixed": pruned.edge_mask, "emb_mask2_fixed": pruned.emb_mask}
