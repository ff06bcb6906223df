"""Recall@K and NDCG@K over one split, from embeddings propagated once (docs/method.md#evaluation).

For each evaluated user (one with at least one interaction in the split): score all
items, exclude the user's train items, take the top K, then

* Recall@K(u) = |hits| / |split items of u|;
* NDCG@K(u)   = Σ_{hit at rank r} 1/log₂(r+2) / Σ_{r < min(|split items of u|, K)} 1/log₂(r+2).

Reported values are means over the evaluated users.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import scipy.sparse as sp
import torch

from Utils.Errors import ConfigError
from Utils.Parallel import SOLO, Group


def _csr_tensors(mat: sp.csr_matrix, device):
    return (torch.from_numpy(mat.indptr.astype(np.int64)).to(device),
            torch.from_numpy(mat.indices.astype(np.int64)).to(device))


def _rows_to_coords(indptr: torch.Tensor, indices: torch.Tensor, users: torch.Tensor):
    """(batch row, column) pairs of the CSR rows ``users``, vectorised."""
    starts, ends = indptr[users], indptr[users + 1]
    counts = ends - starts
    batch_rows = torch.repeat_interleave(torch.arange(users.numel(), device=users.device), counts)
    offsets = torch.arange(int(counts.sum()), device=users.device) - torch.repeat_interleave(
        torch.cumsum(counts, 0) - counts, counts)
    cols = indices[torch.repeat_interleave(starts, counts) + offsets]
    return batch_rows, cols


@torch.no_grad()
def top_k_unseen(user_emb: torch.Tensor, item_t: torch.Tensor, users: torch.Tensor, train_csr, k: int):
    """(values, item ids) of the ``k`` best items of each of ``users`` by Ē_u·Ē_i, the user's
    train items excluded (scored −inf). ``item_t`` is Ē_itemsᵀ (d×I); ``train_csr`` is the
    train matrix as (indptr, indices) tensors or a SciPy matrix."""
    if sp.issparse(train_csr):
        train_csr = _csr_tensors(sp.csr_matrix(train_csr), users.device)
    scores = user_emb[users] @ item_t
    rows, cols = _rows_to_coords(*train_csr, users)
    scores[rows, cols] = float("-inf")
    return torch.topk(scores, k, dim=1)


def recall_ndcg_from_ranking(toplocs: torch.Tensor, truth: torch.Tensor, n_truth: torch.Tensor, k: int):
    """Per-user Recall@K and NDCG@K for ranked item ids ``toplocs`` (B×K).

    ``truth`` is a B×I boolean matrix of the split's items, ``n_truth`` its row sums.
    """
    hits = truth.gather(1, toplocs).to(torch.float64)
    discounts = 1.0 / torch.log2(torch.arange(k, device=toplocs.device, dtype=torch.float64) + 2)
    ideal = torch.cumsum(discounts, 0)[torch.clamp(n_truth, max=k) - 1]
    recall = hits.sum(1) / n_truth.to(torch.float64)
    ndcg = (hits * discounts).sum(1) / ideal
    return recall, ndcg


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
        self.train_csr = _csr_tensors(sp.csr_matrix(train), device)
        self.split_csr = _csr_tensors(split, device)
        self.n_truth = torch.from_numpy(np.diff(split.indptr).astype(np.int64)).to(device)

    @torch.no_grad()
    def per_user(self, user_emb: torch.Tensor, item_emb: torch.Tensor, users: Optional[torch.Tensor] = None):
        """Yield (users, their Recall@K, their NDCG@K) batch by batch over ``users`` (default:
        every user of the split), in order."""
        users = self.users if users is None else users
        item_t = item_emb.t().contiguous()
        for start in range(0, users.numel(), self.batch_users):
            chunk = users[start:start + self.batch_users]
            toplocs = top_k_unseen(user_emb, item_t, chunk, self.train_csr, self.topk).indices
            truth = torch.zeros(chunk.numel(), self.n_items, dtype=torch.bool, device=self.device)
            rows, cols = _rows_to_coords(*self.split_csr, chunk)
            truth[rows, cols] = True
            yield (chunk, *recall_ndcg_from_ranking(toplocs, truth, self.n_truth[chunk], self.topk))

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


def popularity_embeddings(train: sp.csr_matrix, device="cpu"):
    """One-dimensional "embeddings" whose scores rank items by train popularity (a baseline)."""
    counts = np.asarray(sp.csr_matrix(train).sum(axis=0), dtype=np.float32).reshape(-1, 1)
    return torch.ones(train.shape[0], 1, device=device), torch.from_numpy(counts).to(device)
