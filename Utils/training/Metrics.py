"""Ranking metrics over one split, from embeddings propagated once (docs/method.md#evaluation).

For each evaluated user (one with at least one interaction in the split): score all
items, exclude the user's train items, take the top K, then, with h_r = 1 when the item at
rank r (0-based) is in the user's split items T_u:

* Recall@K(u)    = Σ_r h_r / |T_u|                      (the training log's metric)
* NDCG@K(u)      = Σ_r h_r/log₂(r+2) / Σ_{r < min(|T_u|, K)} 1/log₂(r+2)   (the training log's)
* Precision@K(u) = Σ_r h_r / K
* Hit@K(u)       = 1 when any h_r = 1
* MRR@K(u)       = 1/(r+1) for the first hit r, 0 without one
* MAP@K(u)       = Σ_r h_r · Precision@(r+1)(u) / min(|T_u|, K)

Reported values are means over the evaluated users. Three more describe the recommended
lists of all evaluated users together, c_i being how many lists hold item i:

* Coverage@K = |{i : c_i > 0}| / |I|
* Gini@K     = Σ_j (2j − |I| − 1) · c_(j) / (|I| · Σ_i c_i), c_(1) ≤ … ≤ c_(|I|) the sorted counts
  (0 when every item is recommended equally often, towards 1 when a few items fill every list)
* AvgPop@K   = mean over users of the mean train popularity (interactions in train) of their K items
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import scipy.sparse as sp
import torch

from Utils.runtime.Errors import ConfigError
from Utils.runtime.Parallel import SOLO, Group


def csr_tensors(mat: sp.csr_matrix, device):
    return (torch.from_numpy(mat.indptr.astype(np.int64)).to(device),
            torch.from_numpy(mat.indices.astype(np.int64)).to(device))


def rows_to_coords(indptr: torch.Tensor, indices: torch.Tensor, users: torch.Tensor):
    """(batch row, column) pairs of the CSR rows ``users``, vectorised."""
    starts, ends = indptr[users], indptr[users + 1]
    counts = ends - starts
    batch_rows = torch.repeat_interleave(torch.arange(users.numel(), device=users.device), counts)
    offsets = torch.arange(int(counts.sum()), device=users.device) - torch.repeat_interleave(
        torch.cumsum(counts, 0) - counts, counts)
    cols = indices[torch.repeat_interleave(starts, counts) + offsets]
    return batch_rows, cols


def unseen_scores(user_emb: torch.Tensor, item_t: torch.Tensor, users: torch.Tensor, train_csr) -> torch.Tensor:
    """Ē_u·Ē_i for each of ``users`` and every item, the user's train items scored −inf."""
    if sp.issparse(train_csr):
        train_csr = csr_tensors(sp.csr_matrix(train_csr), users.device)
    scores = user_emb[users] @ item_t
    rows, cols = rows_to_coords(*train_csr, users)
    scores[rows, cols] = float("-inf")
    return scores


@torch.no_grad()
def top_k_unseen(user_emb: torch.Tensor, item_t: torch.Tensor, users: torch.Tensor, train_csr, k: int):
    """(values, item ids) of the ``k`` best items of each of ``users`` by Ē_u·Ē_i, the user's
    train items excluded (scored −inf). ``item_t`` is Ē_itemsᵀ (d×I); ``train_csr`` is the
    train matrix as (indptr, indices) tensors or a SciPy matrix."""
    return torch.topk(unseen_scores(user_emb, item_t, users, train_csr), k, dim=1)


def recall_ndcg_from_ranking(toplocs: torch.Tensor, truth: torch.Tensor, n_truth: torch.Tensor, k: int):
    """Per-user Recall@K and NDCG@K for ranked item ids ``toplocs`` (B×K).

    ``truth`` is a B×I boolean matrix of the split's items, ``n_truth`` its row sums.
    """
    return recall_ndcg_from_ranking_hits(truth.gather(1, toplocs), n_truth, k)


PER_USER_METRICS = ("Recall", "NDCG", "Precision", "Hit", "MRR", "MAP")
LIST_METRICS = ("Coverage", "Gini", "AvgPop")
ALL_METRICS = PER_USER_METRICS + LIST_METRICS


def parse_metrics(text: str) -> Tuple[str, ...]:
    """Metric names from a comma-separated list (any case; ``all`` for every one), in the
    order of :data:`ALL_METRICS`."""
    by_lower = {name.lower(): name for name in ALL_METRICS}
    tokens = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    if "all" in tokens:
        return ALL_METRICS
    unknown = [t for t in tokens if t not in by_lower]
    if unknown or not tokens:
        what = f"unknown metric {unknown[0]!r}" if unknown else "no metric named"
        raise ConfigError(f"{what}: choose from {', '.join(ALL_METRICS)} or all")
    chosen = {by_lower[t] for t in tokens}
    return tuple(name for name in ALL_METRICS if name in chosen)


def parse_ks(text: str, n_items: Optional[int] = None) -> Tuple[int, ...]:
    """Cut-offs from a comma-separated list of positive integers (at most the item count)."""
    try:
        ks = sorted({int(t) for t in str(text).split(",") if t.strip()})
    except ValueError:
        raise ConfigError(f"cut-offs must be comma-separated positive integers, got {text!r}") from None
    if not ks or ks[0] <= 0:
        raise ConfigError(f"cut-offs must be comma-separated positive integers, got {text!r}")
    if n_items is not None and ks[-1] > n_items:
        raise ConfigError(f"cut-off {ks[-1]} is above the number of items, {n_items}")
    return tuple(ks)


def per_user_metrics(hits: torch.Tensor, n_truth: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Every per-user metric of the module docstring at K = ``hits.shape[1]``.

    ``hits`` is B×K (1.0 where the item ranked r is one of the user's split items),
    ``n_truth`` the B counts |T_u| (each ≥ 1)."""
    hits = hits.to(torch.float64)
    k = hits.shape[1]
    ranks = torch.arange(1, k + 1, device=hits.device, dtype=torch.float64)
    n_hits = hits.sum(1)
    recall, ndcg = recall_ndcg_from_ranking_hits(hits, n_truth, k)
    precision_at_r = torch.cumsum(hits, 1) / ranks
    return {
        "Recall": recall,
        "NDCG": ndcg,
        "Precision": n_hits / k,
        "Hit": (n_hits > 0).to(torch.float64),
        "MRR": (hits / ranks).max(1).values if k else n_hits,  # 1/rank is decreasing: the max is the first hit's
        "MAP": (hits * precision_at_r).sum(1) / torch.clamp(n_truth, max=k).to(torch.float64),
    }


def list_metrics(counts: torch.Tensor, popularity_sum: float, n_lists: int) -> Dict[str, float]:
    """Coverage, Gini and AvgPop of the module docstring from ``counts`` (how many lists hold each
    item), the sum over lists of each list's mean item popularity and the number of lists."""
    n_items = counts.numel()
    counts = counts.to(torch.float64)
    total = float(counts.sum())
    ordered = torch.sort(counts).values
    j = torch.arange(1, n_items + 1, dtype=torch.float64, device=counts.device)
    gini = float(((2 * j - n_items - 1) * ordered).sum()) / (n_items * total) if total > 0 else 0.0
    return {"Coverage": float((counts > 0).sum()) / n_items, "Gini": gini,
            "AvgPop": popularity_sum / max(1, n_lists)}


def recall_ndcg_from_ranking_hits(hits: torch.Tensor, n_truth: torch.Tensor, k: int):
    """Per-user Recall@K and NDCG@K from the B×K hit matrix (as :func:`recall_ndcg_from_ranking`)."""
    hits = hits.to(torch.float64)
    discounts = 1.0 / torch.log2(torch.arange(k, device=hits.device, dtype=torch.float64) + 2)
    ideal = torch.cumsum(discounts, 0)[torch.clamp(n_truth, max=k) - 1]
    return hits.sum(1) / n_truth.to(torch.float64), (hits * discounts).sum(1) / ideal


class Evaluator:
    """Ranks all items for the users of one split and reports Recall@K / NDCG@K."""

    def __init__(self, train: sp.csr_matrix, split: sp.csr_matrix, topk: int, batch_users: int, device):
        n_items = int(train.shape[1])
        if not 0 < int(topk) <= n_items:
            raise ConfigError(f"--topk={topk} must be between 1 and the number of items, {n_items}: "
                              f"Recall@K and NDCG@K rank K of the dataset's {n_items} items")
        self.topk = int(topk)
        self.batch_users = max(1, batch_users)
        self.device = device
        self.n_items = train.shape[1]
        split = sp.csr_matrix(split)
        self.users = torch.from_numpy(np.flatnonzero(np.diff(split.indptr) > 0).astype(np.int64)).to(device)
        self._train = train
        self.train_csr = csr_tensors(sp.csr_matrix(train), device)
        self.split_csr = csr_tensors(split, device)
        self.n_truth = torch.from_numpy(np.diff(split.indptr).astype(np.int64)).to(device)

    def _truth(self, users: torch.Tensor) -> torch.Tensor:
        """users × items boolean matrix of the split's items of ``users``."""
        truth = torch.zeros(users.numel(), self.n_items, dtype=torch.bool, device=self.device)
        truth[rows_to_coords(*self.split_csr, users)] = True
        return truth

    @torch.no_grad()
    def per_user(self, user_emb: torch.Tensor, item_emb: torch.Tensor, users: Optional[torch.Tensor] = None):
        """Yield (users, their Recall@K, their NDCG@K) batch by batch over ``users`` (default:
        every user of the split), in order."""
        users = self.users if users is None else users
        item_t = item_emb.t().contiguous()
        for start in range(0, users.numel(), self.batch_users):
            chunk = users[start:start + self.batch_users]
            toplocs = top_k_unseen(user_emb, item_t, chunk, self.train_csr, self.topk).indices
            yield (chunk, *recall_ndcg_from_ranking(toplocs, self._truth(chunk), self.n_truth[chunk], self.topk))

    @torch.no_grad()
    def evaluate(self, user_emb: torch.Tensor, item_emb: torch.Tensor, progress=None,
                 group: Group = SOLO) -> Dict[str, float]:
        """Mean Recall@K and NDCG@K given the propagated user and item embeddings.

        ``progress(done, total)``, when given, is called after each batch of users.
        ``group`` (a data-parallel run): this process ranks its share of the users, and the
        sums are added over the processes.
        """
        recall_sum = ndcg_sum = 0.0
        mine, _ = group.split(self.users)
        done = 0
        for users, recall, ndcg in self.per_user(user_emb, item_emb, mine):
            recall_sum += float(recall.sum())
            ndcg_sum += float(ndcg.sum())
            done += users.numel()
            if progress is not None:
                progress(done, mine.numel())
        if group.world > 1:
            sums = group.sum_(torch.tensor([recall_sum, ndcg_sum], dtype=torch.float64, device=self.device))
            recall_sum, ndcg_sum = sums.tolist()
        n = max(1, self.users.numel())
        return {"Recall": recall_sum / n, "NDCG": ndcg_sum / n}


    @torch.no_grad()
    def evaluate_many(self, user_emb: torch.Tensor, item_emb: torch.Tensor, ks: Sequence[int],
                      metrics: Sequence[str] = ("Recall", "NDCG"), per_user: bool = False):
        """Every metric in ``metrics`` at every cut-off in ``ks``, one ranking pass over the users.

        Returns ``(summary, rows)``: ``summary[f"{metric}@{k}"]`` the value (means over the
        evaluated users; list metrics over all their lists), and, with ``per_user``, ``rows`` a dict
        of 1-d tensors: ``"user"`` (indices), ``"n_truth"`` and every per-user metric at every K
        (else None). Each K is ranked by its own top-K, as :meth:`evaluate` ranks, so Recall@K and
        NDCG@K equal :meth:`evaluate`'s at that K exactly."""
        ks = tuple(int(k) for k in ks)
        bad = [k for k in ks if not 0 < k <= self.n_items]
        if bad:
            raise ConfigError(f"cut-off {bad[0]} must be between 1 and the number of items, {self.n_items}")
        metrics = tuple(metrics)
        wanted_user = [m for m in PER_USER_METRICS if m in metrics]
        wanted_list = [m for m in LIST_METRICS if m in metrics]
        popularity = torch.from_numpy(np.diff(sp.csc_matrix(self._train).indptr).astype(np.float64)).to(self.device)
        sums = {f"{m}@{k}": 0.0 for k in ks for m in wanted_user}
        counts = {k: torch.zeros(self.n_items, dtype=torch.float64, device=self.device) for k in ks}
        pop_sums = dict.fromkeys(ks, 0.0)
        rows: Dict[str, List[torch.Tensor]] = {}
        item_t = item_emb.t().contiguous()
        for start in range(0, self.users.numel(), self.batch_users):
            chunk = self.users[start:start + self.batch_users]
            scores = unseen_scores(user_emb, item_t, chunk, self.train_csr)
            truth = self._truth(chunk)
            n_truth = self.n_truth[chunk]
            if per_user:
                rows.setdefault("user", []).append(chunk.cpu())
                rows.setdefault("n_truth", []).append(n_truth.cpu())
            for k in ks:
                values, toplocs = torch.topk(scores, k, dim=1)
                for name, value in per_user_metrics(truth.gather(1, toplocs), n_truth).items():
                    if name in wanted_user:
                        sums[f"{name}@{k}"] += float(value.sum())
                        if per_user:
                            rows.setdefault(f"{name}@{k}", []).append(value.cpu())
                if wanted_list:
                    valid = torch.isfinite(values)  # a user with fewer than K unseen items lists fewer
                    counts[k] += torch.bincount(toplocs[valid], minlength=self.n_items).to(torch.float64)
                    listed = valid.sum(1).clamp(min=1).to(torch.float64)
                    pop_sums[k] += float(((popularity[toplocs] * valid).sum(1) / listed).sum())
        n = max(1, self.users.numel())
        summary = {}
        for k in ks:
            for m in wanted_user:
                summary[f"{m}@{k}"] = sums[f"{m}@{k}"] / n
            if wanted_list:
                for m, value in list_metrics(counts[k], pop_sums[k], n).items():
                    if m in wanted_list:
                        summary[f"{m}@{k}"] = value
        ordered = {f"{m}@{k}": summary[f"{m}@{k}"] for m in ALL_METRICS if m in metrics for k in ks}
        return ordered, ({name: torch.cat(parts) for name, parts in rows.items()} if per_user else None)


def popularity_embeddings(train: sp.csr_matrix, device="cpu"):
    """One-dimensional "embeddings" whose scores rank items by train popularity (a baseline)."""
    counts = np.asarray(sp.csr_matrix(train).sum(axis=0), dtype=np.float32).reshape(-1, 1)
    return torch.ones(train.shape[0], 1, device=device), torch.from_numpy(counts).to(device)
