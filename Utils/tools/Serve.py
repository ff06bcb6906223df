"""Any model file the tools read, loaded and served: its dataset, propagated embeddings, top-K.

A model file is a full checkpoint of any stage, a published ``.mod`` file or a compact export
(:mod:`Utils.tools.Report`). :func:`load_model_file` reads it, :func:`load_data` finds and checks the
dataset it was trained on, :func:`propagated` gives (Ē_users, Ē_items) with the training tool's
classes and propagation, and :func:`top_k` / :func:`write_top_k` rank items as the Evaluator
ranks them. ``modelTools.py`` and the Python API (``lightgnn.py``) are built on these.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

import DataHandler as dh
from Utils.config import Config
from Model import LightGCN, model_from_tensors
from Utils.files import Checkpoint
from Utils.files.Atomic import atomic_write
from Utils.tools import Report
from Utils.runtime.Errors import CheckpointError, ConfigError, DataError
from Utils.training.Metrics import csr_tensors, top_k_unseen


@dataclass
class Loaded:
    """A model file: its checkpoint, or its compact form when it is a compact export."""

    ckpt: Checkpoint.Checkpoint
    compact: Optional[Report.CompactModel]

    @property
    def meta(self) -> dict:
        return self.ckpt.meta

    @property
    def flags(self) -> dict:
        return self.ckpt.meta.get("flags") or {}


def load_model_file(path: str, role: Optional[str] = None) -> Loaded:
    ckpt = Checkpoint.load_checkpoint(path, role=role)
    if Report.is_compact(ckpt.meta):
        return Loaded(ckpt, Report.compact_from_checkpoint_data(ckpt.tensors, ckpt.meta, ckpt.path))
    if "uEmbeds" not in ckpt.tensors or "iEmbeds" not in ckpt.tensors:
        raise CheckpointError(f"checkpoint {path} holds no uEmbeds/iEmbeds: not a LightGCN model")
    return Loaded(ckpt, None)


def load_data(loaded: Loaded, dataset: Optional[str] = None, data_dir: Optional[str] = None) -> dh.Dataset:
    """The dataset named ``dataset`` under ``data_dir``, each by default the one recorded in the
    checkpoint, checked against the checkpoint (its shapes, then :func:`check_train_split`)."""
    recorded_name, recorded_dir = Config.recorded_dataset(loaded.meta)
    name = dataset or recorded_name
    if not name:
        raise ConfigError(f"{loaded.ckpt.path} does not say which dataset it was trained on: pass --dataset")
    if not data_dir:
        data_dir = recorded_dir
        recorded = loaded.meta.get("dataset_path")  # the folder's absolute path at training
        if (not dataset and recorded and not os.path.isdir(dh.dataset_dir(data_dir, name))
                and os.path.isdir(recorded)):  # a relative --data_dir read from another folder
            data_dir = os.path.dirname(recorded)
    dataset = dh.load_dataset(data_dir, name)
    n_users, n_items = int(loaded.meta.get("n_users", -1)), int(loaded.meta.get("n_items", -1))
    if loaded.compact is None:
        Checkpoint.check_compatible(loaded.ckpt, dataset.n_users, dataset.n_items, what="model")
    elif (n_users, n_items) != (dataset.n_users, dataset.n_items):
        raise CheckpointError(f"compact export {loaded.ckpt.path} is for {n_users} users x {n_items} items but "
                              f"dataset {dataset.directory} has {dataset.n_users} x {dataset.n_items}")
    check_train_split(loaded, dataset)
    return dataset


def check_train_split(loaded: Loaded, dataset: dh.Dataset) -> None:
    """Refuse a model trained on another train split, as the stages refuse such a supervisor
    (:func:`Utils.files.Checkpoint.check_identity` on the train-split fingerprint; there is no flag to
    override it there either): its scores would be those of another dataset of the same shape,
    with other train items excluded. Files that record no fingerprint (published ``.mod`` files,
    older checkpoints and exports) cannot be checked and are used as they are."""
    try:
        Checkpoint.check_identity(loaded.ckpt, Checkpoint.checkpoint_role(loaded.meta), dataset.fingerprint,
                                  warn=lambda line: None)
    except CheckpointError as err:
        raise CheckpointError(f"{err}; the dataset read here is {dataset.directory}: pass the --dataset/--data_dir "
                              "the model was trained on") from None


def _closure_graph(train, loaded: Loaded) -> dh.Graph:
    """Ĉ as the checkpoint's stage built it (its recorded closure settings)."""
    return dh.closure_graph(train, Config.recorded_section(loaded.meta, "closure"))


def model_graph(loaded: Loaded, dataset: dh.Dataset, choice: str = "auto") -> Tuple[dh.Graph, str]:
    """The graph a full checkpoint propagates on: Â, or Ĉ for an intermediate model.

    ``choice`` 'adjacency'/'closure' forces it; 'auto' takes the checkpoint's meta
    (``graph``), and for a published file, which does not say, the graph whose edge
    count equals the length of its edge vectors.
    """
    tensors, meta = loaded.ckpt.tensors, loaded.meta
    adj = dh.Graph.from_scipy(dh.propagation_matrix(dataset.train))
    n_edges = int(tensors["adj_mask1_train"].numel()) if "adj_mask1_train" in tensors else None
    kind = choice if choice != "auto" else meta.get("graph")
    if kind is None:
        if n_edges is None or n_edges == adj.nnz:
            kind = "adjacency"
        else:
            closure = _closure_graph(dataset.train, loaded)
            if n_edges != closure.nnz:
                raise CheckpointError(
                    f"checkpoint {loaded.ckpt.path} has {n_edges} edge weights, but on dataset {dataset.directory} "
                    f"the graph Â has {adj.nnz} edges and the closure Ĉ {closure.nnz}: another dataset?")
            return closure, "closure"
    graph = adj if kind == "adjacency" else _closure_graph(dataset.train, loaded)
    if n_edges is not None and n_edges != graph.nnz:
        raise CheckpointError(f"checkpoint {loaded.ckpt.path} has {n_edges} edge weights but the {kind} graph of "
                              f"{dataset.directory} has {graph.nnz} edges (another dataset, or the other graph?)")
    return graph, kind


def _layers(loaded: Loaded) -> int:
    layers = loaded.meta.get("gnn_layer")
    if layers is None:
        raise CheckpointError(f"checkpoint {loaded.ckpt.path} does not say how many layers it propagates")
    return int(layers)


def build_model(loaded: Loaded, dataset: dh.Dataset, graph: dh.Graph) -> LightGCN:
    """The training tool's model class holding the checkpoint's tensors."""
    has_edges = "adj_mask1_train" in loaded.ckpt.tensors
    Checkpoint.check_compatible(loaded.ckpt, dataset.n_users, dataset.n_items,
                                n_edges=graph.nnz if has_edges else None, what="model")
    return model_from_tensors(loaded.ckpt.tensors, dataset.n_users, dataset.n_items, _layers(loaded)).eval()


@torch.no_grad()
def propagated(loaded: Loaded, dataset: dh.Dataset, device, graph_choice: str = "auto"):
    """(Ē_users, Ē_items) of a full checkpoint or a compact export, on ``device``."""
    if loaded.compact is not None:
        return loaded.compact.embeddings(device)
    graph, _ = model_graph(loaded, dataset, graph_choice)
    model = build_model(loaded, dataset, graph).to(device)
    return model(graph.to(device))


def read_idmap(dataset: dh.Dataset) -> Optional[Dict[str, list]]:
    """``<dataset dir>/idmap.json`` ({"users": [...], "items": [...]}, index k -> original id), if present."""
    path = os.path.join(dataset.directory, "idmap.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            idmap = json.load(fh)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read id map {path}: {exc}") from None
    if not (isinstance(idmap, dict) and len(idmap.get("users", ())) == dataset.n_users
            and len(idmap.get("items", ())) == dataset.n_items):
        raise DataError(f"id map {path} does not list {dataset.n_users} users and {dataset.n_items} items")
    return idmap


def parse_users(text: str, dataset: dh.Dataset, idmap: Optional[dict], by_index: bool) -> List[int]:
    """User indices of ``--users``: original ids when an id map exists (unless --by_index), else indices."""
    tokens = [t for t in text.replace(",", " ").split() if t]
    if not tokens:
        raise ConfigError("--users is empty: give comma-separated user ids, e.g. --users 0,5,9")
    if idmap is not None and not by_index:
        index = {str(orig): k for k, orig in enumerate(idmap["users"])}
        unknown = [t for t in tokens if t not in index]
        if unknown:
            raise ConfigError(f"unknown user id {unknown[0]!r} (not in the dataset's idmap.json; "
                              "--by_index takes row indices instead)")
        return [index[t] for t in tokens]
    try:
        users = [int(t) for t in tokens]
    except ValueError:
        raise ConfigError(f"--users must be integer user indices, got {text!r}") from None
    bad = [u for u in users if not 0 <= u < dataset.n_users]
    if bad:
        raise ConfigError(f"user index {bad[0]} is out of range: the dataset has {dataset.n_users} users (0..{dataset.n_users - 1})")
    return users


def top_k(user_emb: torch.Tensor, item_emb: torch.Tensor, users: List[int], train, k: int):
    """Top-``k`` (items, scores) per user by Ē_u·Ē_i, the user's train items excluded (the Evaluator's rule).

    ``k`` is clipped to the item count, and a user's train items are dropped from the list,
    so a user with fewer than ``k`` unseen items gets them all (fewer than ``k``), never an error."""
    k = min(k, item_emb.shape[0])
    values, indices = top_k_unseen(user_emb, item_emb.t(), torch.tensor(users, device=user_emb.device), train, k)
    out = []
    for row in range(len(users)):
        keep = torch.isfinite(values[row])
        out.append((indices[row][keep].tolist(), values[row][keep].tolist()))
    return out




def user_batches(users: torch.Tensor, batch: int) -> Iterator[torch.Tensor]:
    for start in range(0, users.numel(), batch):
        yield users[start:start + batch]


def top_k_batches(user_emb: torch.Tensor, item_emb: torch.Tensor, users: torch.Tensor, train, k: int,
                  batch: int = 1024) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(users, item indices, scores) of ``batch`` users at a time, each row the user's top-``k``
    unseen items (:func:`top_k`'s rule); only one batch's scores are ever held. Rows of users with
    fewer than ``k`` unseen items end in −inf scores (their padding)."""
    k = min(k, item_emb.shape[0])
    train_csr = csr_tensors(train.tocsr(), user_emb.device)
    item_t = item_emb.t().contiguous()
    for chunk in user_batches(users.to(user_emb.device), batch):
        values, indices = top_k_unseen(user_emb, item_t, chunk, train_csr, k)
        yield chunk, indices, values


def write_top_k(path: str, rows: Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                idmap: Optional[dict], scores: bool) -> int:
    """Write :func:`top_k_batches`' rows as a tab-separated file ``user, items[, scores]`` (items
    comma-separated, original ids through ``idmap`` when given), atomically; returns the users written."""
    written = 0

    def name(kind: str, index: int) -> str:
        return str(idmap[kind][index]) if idmap else str(index)

    def write(handle) -> None:
        nonlocal written
        handle.write("user\titems" + ("\tscores" if scores else "") + "\n")
        for users, indices, values in rows:
            keep = torch.isfinite(values)
            for user, items, vals, ok in zip(users.tolist(), indices.tolist(), values.tolist(), keep.tolist()):
                listed = [i for i, flag in zip(items, ok) if flag]
                line = name("users", user) + "\t" + ",".join(name("items", i) for i in listed)
                if scores:
                    line += "\t" + ",".join(f"{v:.6g}" for v, flag in zip(vals, ok) if flag)
                handle.write(line + "\n")
                written += 1

    atomic_write(path, "w", write, "recommendations")
    return written


EMBEDDING_FILES = ("user_embeddings.npy", "item_embeddings.npy", "ids.json", "meta.json")


def export_embeddings(folder: str, user_emb: torch.Tensor, item_emb: torch.Tensor, idmap: Optional[dict],
                      meta: Dict) -> List[str]:
    """Write the propagated embeddings for serving: ``user_embeddings.npy`` (users × d float32),
    ``item_embeddings.npy`` (items × d), ``ids.json`` ({"users": [...], "items": [...]}: the original
    id of each row, the row index when the dataset has no id map) and ``meta.json`` (where they
    come from; score = dot product). Each file is written atomically; returns their paths."""
    os.makedirs(folder, exist_ok=True)
    n_users, n_items = user_emb.shape[0], item_emb.shape[0]
    ids = idmap or {"users": list(range(n_users)), "items": list(range(n_items))}
    paths = [os.path.join(folder, name) for name in EMBEDDING_FILES]
    for path, table in zip(paths, (user_emb, item_emb)):
        array = np.ascontiguousarray(table.detach().cpu().numpy(), dtype=np.float32)
        atomic_write(path, "wb", lambda handle, a=array: np.save(handle, a), "embeddings")
    texts = (json.dumps({"users": list(ids["users"]), "items": list(ids["items"])}),
             json.dumps(dict(meta, n_users=n_users, n_items=n_items, dim=int(user_emb.shape[1]),
                             score="dot product of a user row and an item row"), indent=1))
    for path, text in zip(paths[2:], texts):
        atomic_write(path, "w", lambda handle, t=text: handle.write(t + "\n"), "embeddings")
    return paths
