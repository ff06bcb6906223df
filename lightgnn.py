"""LightGNN models from Python: load any model file, get its embeddings, scores and top-K.

    import lightgnn

    model = lightgnn.load("outModels/demo/student_compact.mod")  # any stage's checkpoint, an export, a published .mod
    users, items = model.embeddings()                          # propagated embeddings (torch tensors)
    model.recommend(["0", "7"], k=10)                         # each user's 10 best unseen items
    model.score(["0"], ["3", "5"])                            # dot products of users and items
    model.evaluate("test", ks=(20, 40), metrics=("Recall", "NDCG", "Hit"))

Users and items are named by their original ids when the dataset has an ``idmap.json`` (as
``prepareData.py`` writes it), else by row index; ``by_index=True`` takes row indices always.
The numbers are those of ``modelTools.py`` (same loading, propagation, ranking and metrics,
:mod:`Utils.tools.Serve` and :mod:`Utils.training.Metrics`). Install with ``pip install -e .`` to import it
from anywhere.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from Utils.files import Checkpoint
from Utils.tools import Serve
from Utils.runtime.Errors import ConfigError
from Utils.training.Metrics import Evaluator, parse_ks, parse_metrics
from Utils.runtime.Runtime import device_named

__all__ = ["load", "Recommender", "ROOT"]

ROOT = Path(__file__).resolve().parent  # the project folder (a clone installed with pip install -e .)

Id = Union[str, int]


def load(path: Union[str, os.PathLike], data_dir: Optional[str] = None, dataset: Optional[str] = None,
         role: Optional[str] = None, device: str = "cpu", graph: str = "auto") -> "Recommender":
    """Load the model file ``path``.

    ``dataset``/``data_dir``: where its dataset lives (``<data_dir>/sparse_<dataset>/``), by
    default as recorded at training (read only when needed: a compact export's embeddings need
    none). ``role``: which model of a published stage-2/3 file (default: the one it trained).
    ``device``: where to propagate and score (``cpu``, ``cuda`` or ``auto``). ``graph``: for full
    checkpoints, ``auto`` (as recorded), ``adjacency`` or ``closure``."""
    return Recommender(Serve.load_model_file(os.fspath(path), role), dataset, data_dir, device, graph)


class Recommender:
    """A loaded model: :meth:`embeddings`, :meth:`score`, :meth:`recommend`, :meth:`evaluate`."""

    def __init__(self, loaded: Serve.Loaded, dataset: Optional[str], data_dir: Optional[str], device: str,
                 graph: str):
        self.loaded = loaded
        self.path = loaded.ckpt.path
        self.meta = loaded.meta
        self.role = Checkpoint.checkpoint_role(loaded.meta)
        self.device = device_named(device)
        self._where = (dataset, data_dir)
        self._graph = graph
        self._dataset = None
        self._idmap: Optional[dict] = None
        self._index: Dict[str, Dict[str, int]] = {}
        self._embeddings: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def __repr__(self) -> str:
        return f"<lightgnn.Recommender {self.role} {self.path}>"

    # ----------------------------------------------------------------------------- data
    @property
    def dataset(self):
        """The dataset it was trained on (splits, sizes), loaded and checked on first use."""
        if self._dataset is None:
            self._dataset = Serve.load_data(self.loaded, *self._where)
            self._idmap = Serve.read_idmap(self._dataset)
        return self._dataset

    @property
    def n_users(self) -> int:
        return int(self.meta.get("n_users", self.dataset.n_users))

    @property
    def n_items(self) -> int:
        return int(self.meta.get("n_items", self.dataset.n_items))

    def _rows(self, kind: str, ids: Sequence[Id], by_index: bool) -> torch.Tensor:
        """Row indices of users or items named by original ids (or indices)."""
        count = self.n_users if kind == "users" else self.n_items
        if isinstance(ids, (str, int)):
            raise ConfigError(f"{kind} must be a list of ids, got {ids!r}")
        self.dataset  # noqa: B018 (reads the id map)
        if self._idmap is not None and not by_index:
            if kind not in self._index:
                self._index[kind] = {str(orig): k for k, orig in enumerate(self._idmap[kind])}
            index = self._index[kind]
            missing = [i for i in ids if str(i) not in index]
            if missing:
                raise ConfigError(f"unknown {kind[:-1]} id {missing[0]!r} (not in the dataset's idmap.json; "
                                  "by_index=True takes row indices)")
            rows = [index[str(i)] for i in ids]
        else:
            try:
                rows = [int(i) for i in ids]
            except (TypeError, ValueError):
                raise ConfigError(f"{kind} must be row indices (the dataset has no idmap.json)") from None
            bad = [r for r in rows if not 0 <= r < count]
            if bad:
                raise ConfigError(f"{kind[:-1]} index {bad[0]} is out of range 0..{count - 1}")
        return torch.tensor(rows, dtype=torch.long)

    def _names(self, kind: str, rows: List[int]) -> list:
        return [self._idmap[kind][r] for r in rows] if self._idmap is not None else list(rows)

    # ----------------------------------------------------------------------------- model
    def embeddings(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(users × d, items × d): the propagated embeddings Ē the model scores with (computed once)."""
        if self._embeddings is None:
            dataset = self.dataset if self.loaded.compact is None else None
            self._embeddings = Serve.propagated(self.loaded, dataset, self.device, self._graph)
        return self._embeddings

    def score(self, users: Sequence[Id], items: Sequence[Id], by_index: bool = False) -> torch.Tensor:
        """len(users) × len(items) scores Ē_u · Ē_i (higher is better)."""
        user_emb, item_emb = self.embeddings()
        u = self._rows("users", users, by_index).to(user_emb.device)
        i = self._rows("items", items, by_index).to(item_emb.device)
        return (user_emb[u] @ item_emb[i].t()).cpu()

    def recommend(self, users: Sequence[Id], k: int = 20, exclude_seen: bool = True, by_index: bool = False,
                  with_scores: bool = False) -> list:
        """Each user's ``k`` best items (ids as the users were given: original, or indices with
        ``by_index``), best first; ``exclude_seen`` leaves out the user's train items, as
        ``modelTools.py recommend`` and the evaluation do (a user then gets fewer than ``k`` when
        fewer are left). With ``with_scores`` each entry is (items, scores)."""
        if int(k) <= 0:
            raise ConfigError(f"k must be a positive integer, got {k}")
        user_emb, item_emb = self.embeddings()
        rows = self._rows("users", users, by_index)
        if exclude_seen:
            ranked = Serve.top_k(user_emb, item_emb, rows.tolist(), self.dataset.train, int(k))
        else:
            values, indices = torch.topk(user_emb[rows.to(user_emb.device)] @ item_emb.t(),
                                         min(int(k), item_emb.shape[0]), dim=1)
            ranked = list(zip(indices.tolist(), values.tolist()))
        out = []
        for items, scores in ranked:
            names = list(items) if by_index else self._names("items", items)
            out.append((names, scores) if with_scores else names)
        return out

    def evaluate(self, split: str = "test", ks: Union[int, Sequence[int]] = (20,),
                 metrics: Sequence[str] = ("Recall", "NDCG"), batch_users: int = 256) -> Dict[str, float]:
        """``{"Recall@20": …, …}`` on ``split`` ('test' or 'val') for every metric at every K
        (``modelTools.py evaluate --ks … --metrics …``; formulas in docs/method.md#evaluation)."""
        dataset = self.dataset
        ks = parse_ks(str(ks) if isinstance(ks, int) else ",".join(str(k) for k in ks), dataset.n_items)
        names = parse_metrics(",".join(metrics) if not isinstance(metrics, str) else metrics)
        evaluator = Evaluator(dataset.train, dataset.split(split), ks[0], batch_users, self.device)
        summary, _ = evaluator.evaluate_many(*self.embeddings(), ks, names)
        return summary
