"""Models: the LightGCN teacher and the prunable LightGCN_sp (intermediate model and student).

Both keep their tensors under the published names, so a state dict maps one-to-one
onto the published checkpoints:

* ``uEmbeds`` (U×d), ``iEmbeds`` (I×d): the layer-0 embeddings, Xavier-uniform init;
* LightGCN_sp only: ``adj_mask1_train`` (learnable edge weights w, init 1),
  ``adj_mask2_fixed`` (0/1 edge mask m, not learnable), ``emb_mask2_fixed``
  (N×d 0/1 embedding mask, not learnable).
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn

from Utils.kernels.Spmm import propagate_layers, propagate_sum


class LightGCN(nn.Module):
    """LightGCN teacher (docs/method.md#teacher-model).

    E₀ = [uEmbeds; iEmbeds],  E_l = Â·E_{l-1} (l = 1..L),  Ē = Σ_{l=0..L} E_l  (a sum, not a mean),
    ŷ(u, i) = Ē_u · Ē_i.
    """

    def __init__(self, n_users: int, n_items: int, latdim: int, n_layers: int):
        super().__init__()
        self.n_users, self.n_items, self.n_layers = n_users, n_items, n_layers
        self.uEmbeds = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_users, latdim)))
        self.iEmbeds = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_items, latdim)))

    def layer0(self) -> torch.Tensor:
        return torch.cat([self.uEmbeds, self.iEmbeds], dim=0)

    def edge_values(self, graph) -> torch.Tensor:
        return graph.values

    def layers(self, graph) -> List[torch.Tensor]:
        """Per-layer embeddings [E_0, …, E_L], each N×d."""
        return propagate_layers(graph, self.edge_values(graph), self.layer0(), self.n_layers)

    def forward(self, graph) -> Tuple[torch.Tensor, torch.Tensor]:
        """(Ē_users, Ē_items): the sum over layers, split into users and items."""
        out = propagate_sum(graph, self.edge_values(graph), self.layer0(), self.n_layers)
        return out[: self.n_users], out[self.n_users:]

    def forward_rows(self, graph, nodes: torch.Tensor) -> torch.Tensor:
        """Ē[nodes] for ascending node ids, computing only what those rows need (same numbers)."""
        return propagate_sum(graph, self.edge_values(graph), self.layer0(), self.n_layers, rows=nodes)


class LightGCN_sp(LightGCN):
    """Prunable LightGCN (docs/method.md#prunable-model): the intermediate model (on Ĉ) and the student (on Â).

    Propagation uses the edge values Â_e · w_e · m_e (no re-normalisation) and
    E₀ = [uEmbeds; iEmbeds] ⊙ emb_mask2_fixed; the output is Σ_l E_l as for LightGCN.
    """

    def __init__(self, n_users: int, n_items: int, latdim: int, n_layers: int, n_edges: int):
        super().__init__(n_users, n_items, latdim, n_layers)
        self.adj_mask1_train = nn.Parameter(torch.ones(n_edges))  # edge_weight w
        self.register_buffer("adj_mask2_fixed", torch.ones(n_edges))  # edge_mask m
        self.register_buffer("emb_mask2_fixed", torch.ones(n_users + n_items, latdim))  # embedding_mask

    def layer0(self) -> torch.Tensor:
        return super().layer0() * self.emb_mask2_fixed

    def edge_values(self, graph) -> torch.Tensor:
        if graph.nnz != self.adj_mask1_train.numel():
            raise ValueError(f"graph has {graph.nnz} edges but the model has {self.adj_mask1_train.numel()}")
        return graph.values * self.adj_mask1_train * self.adj_mask2_fixed

    def edge_kept_pct(self) -> float:
        return 100.0 * float((self.adj_mask2_fixed != 0).sum()) / self.adj_mask2_fixed.numel()

    def emb_kept_pct(self) -> float:
        return 100.0 * float((self.emb_mask2_fixed != 0).sum()) / self.emb_mask2_fixed.numel()


PRUNABLE_KEYS = ("uEmbeds", "iEmbeds", "adj_mask1_train", "adj_mask2_fixed", "emb_mask2_fixed")


def model_from_tensors(tensors, n_users: int, n_items: int, n_layers: int) -> LightGCN:
    """The model class a checkpoint's tensors belong to, holding them.

    Tensors with edge weights (``adj_mask1_train``) make a :class:`LightGCN_sp`; a file
    without ``adj_mask2_fixed``/``emb_mask2_fixed`` gets all-ones masks (nothing pruned),
    as the published tool's early checkpoints imply. Otherwise a :class:`LightGCN`.
    Shapes are the caller's to check (``Utils.files.Checkpoint.check_compatible``).
    """
    latdim = int(tensors["uEmbeds"].shape[1])
    if "adj_mask1_train" not in tensors:
        model = LightGCN(n_users, n_items, latdim, n_layers)
        model.load_state_dict({k: tensors[k] for k in ("uEmbeds", "iEmbeds")})
        return model
    n_edges = int(tensors["adj_mask1_train"].numel())
    model = LightGCN_sp(n_users, n_items, latdim, n_layers, n_edges)
    state = {k: tensors[k] for k in PRUNABLE_KEYS if k in tensors}
    state.setdefault("adj_mask2_fixed", torch.ones(n_edges))
    state.setdefault("emb_mask2_fixed", torch.ones(n_users + n_items, latdim))
    model.load_state_dict(state)
    return model
