"""Compression report and compact export of a (pruned) LightGCN model.

**Compression report** (:func:`compression_report`): what pruning bought, from a
checkpoint's tensors alone. With U users, I items, N = U + I, d = latdim, L layers,
|E| the edges of the propagation graph and |E'| those kept (``adj_mask2_fixed ≠ 0``):

=============================  ==============================================================
edges kept                     |E'| of |E| (the log's ``Adj:[…%]``: 100·|E'|/|E|)
embedding entries kept         entries of ``emb_mask2_fixed`` ≠ 0, of N·d (the log's ``Emb:[…%]``)
non-zero parameters            nnz(E₀) (+ |E'| learned edge weights for a prunable model),
                               against N·d (+ |E|) dense; E₀ = [uEmbeds; iEmbeds] ⊙ mask
MACs, one propagation          L·|E'|·d multiply-adds (each kept edge, each layer: d of them),
                               against L·|E|·d; the N·d·L additions of the layer sum are not counted
MACs, scoring one user         I·d: one dot product Ē_u·Ē_i per item. Ē (after propagation)
                               is dense even when E₀ is sparse, so pruning entries does not
                               lower it; it is the cost of serving once Ē is precomputed
bytes, compact export          the arrays of :func:`export_compact` (below), against the same
                               layout for the unpruned model with a dense N×d table
=============================  ==============================================================

**Compact export** (:func:`export_compact`): a LightGNN checkpoint file
(``torch.load(path, weights_only=True)``) whose ``meta['model_class']`` is
``'CompactLightGCN'`` and whose tensors are two CSR matrices, each with the smallest
integer type that holds its indices, and a bitmap:

* ``edge_indptr`` (N+1), ``edge_col``, ``edge_values`` (float32): the N×N propagation
  matrix M restricted to the surviving edges (CSR), with values Â_e·w_e·m_e already
  folded in (no normalisation at load);
* ``emb_bitmap`` (uint8, ⌈N·d/8⌉ bytes: ``numpy.packbits`` of the N×d non-zero
  pattern, row-major) and ``emb_values`` (float32): only the non-zero entries of
  E₀ = [uEmbeds; iEmbeds] ⊙ emb_mask2_fixed, in row-major order. The bitmap costs
  1/32 of a dense table, less than any per-entry index (CSR with int16 columns would
  add 2 bytes per kept entry: 51% instead of 36% of the dense table at Yelp's 33%).

Ē = Σ_{l=0..L} M^l·E₀ is computed by :meth:`CompactModel.embeddings` with the same
propagation kernel as training (zero edges only add exact zeros), so its scores equal
the full checkpoint's.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np
import scipy.sparse as sp
import torch

from DataHandler import Graph
from Model import LightGCN, model_from_tensors
from Utils.config import Config
from Utils.files import Checkpoint as ckpt_io
from Utils.files.Atomic import atomic_write
from Utils.runtime.Errors import CheckpointError

COMPACT_CLASS = "CompactLightGCN"
COMPACT_KEYS = ("edge_indptr", "edge_col", "edge_values", "emb_bitmap", "emb_values")
# flags a compact export keeps so that it can be evaluated like its source checkpoint
COMPACT_FLAGS = ("dataset", "data_dir", "topk", "tstBat", "latdim", "gnn_layer", "select_on", "seed")
# the sections of the source's recorded config a compact export keeps (its data, its evaluation)
COMPACT_CONFIG = ("data", "evaluation")
FLOAT_BYTES = 4


# ----------------------------------------------------------------------------- helpers
def index_dtype(max_value: int) -> torch.dtype:
    """The smallest signed integer type holding 0..max_value (int16, int32 or int64)."""
    if max_value <= np.iinfo(np.int16).max:
        return torch.int16
    if max_value <= np.iinfo(np.int32).max:
        return torch.int32
    return torch.int64


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def is_compact(meta: Mapping[str, Any]) -> bool:
    return meta.get("model_class") == COMPACT_CLASS


def _model(tensors: Mapping[str, torch.Tensor], n_layers: int = 0):
    """The training tool's model holding a checkpoint's tensors (masks included)."""
    return model_from_tensors(tensors, int(tensors["uEmbeds"].shape[0]), int(tensors["iEmbeds"].shape[0]), n_layers)


def layer0(tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """E₀ = [uEmbeds; iEmbeds] ⊙ emb_mask2_fixed (no mask: the plain tables), as the models compute it."""
    return _model(tensors).layer0().detach()


def recorded_metrics(meta: Mapping[str, Any]) -> Dict[str, Dict[str, float]]:
    """The metrics the training tool logged for a checkpoint: {'test': {'Recall', 'NDCG'}, 'val': …}."""
    if isinstance(meta.get("metrics"), dict):  # teacher, compact export
        return meta["metrics"]
    record = meta.get("record")
    if isinstance(record, dict) and isinstance(record.get("metrics"), dict):  # stages 2-3 records
        return record["metrics"]
    return {}


def _pct(part: Optional[int], whole: Optional[int]) -> Optional[float]:
    if part is None or not whole:
        return None
    return 100.0 * float(part) / whole


# ----------------------------------------------------------------------------- the report
@dataclass
class Counts:
    """Sizes of a model that the report is computed from."""

    n_users: int
    n_items: int
    latdim: int
    n_layers: Optional[int]
    prunable: bool  # has learned edge weights (LightGCN_sp)
    edges_total: Optional[int]
    edges_kept: Optional[int]
    entries_kept: int  # embedding-mask entries ≠ 0 (all N·d without a mask)
    entries_nonzero: int  # nnz(E₀)

    @property
    def n_nodes(self) -> int:
        return self.n_users + self.n_items


def model_counts(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any],
                 graph_nnz_full: Optional[int] = None) -> Counts:
    """Counts of a full checkpoint (ours or published) or of a compact export."""
    n_layers = meta.get("gnn_layer")
    n_layers = int(n_layers) if n_layers is not None else None
    if is_compact(meta):
        n_nodes = int(meta["n_users"]) + int(meta["n_items"])
        return Counts(int(meta["n_users"]), int(meta["n_items"]), int(meta["latdim"]), n_layers,
                      bool(meta.get("prunable", True)), int(meta["n_edges"]), int(tensors["edge_col"].numel()),
                      int(meta.get("emb_entries_kept", n_nodes * int(meta["latdim"]))),
                      int(tensors["emb_values"].numel()))
    users, items = tensors["uEmbeds"], tensors["iEmbeds"]
    n_users, n_items, latdim = int(users.shape[0]), int(items.shape[0]), int(users.shape[1])
    prunable = "adj_mask1_train" in tensors
    if prunable:
        edges_total = int(tensors["adj_mask2_fixed"].numel())
        edges_kept = int((tensors["adj_mask2_fixed"] != 0).sum())
    else:
        edges_total = meta.get("n_edges", graph_nnz_full)
        edges_total = int(edges_total) if edges_total is not None else None
        edges_kept = edges_total
    mask = tensors.get("emb_mask2_fixed")
    entries_kept = int((mask != 0).sum()) if mask is not None else (n_users + n_items) * latdim
    entries_nonzero = int((layer0(tensors) != 0).sum())
    return Counts(n_users, n_items, latdim, n_layers, prunable, edges_total, edges_kept, entries_kept,
                  entries_nonzero)


def compact_bytes(n_nodes: int, latdim: int, n_edges: int, n_entries: int) -> Dict[str, int]:
    """Bytes of each array of a compact export with ``n_edges`` edges and ``n_entries`` embedding entries."""
    return {
        "edge_indptr": (n_nodes + 1) * _itemsize(index_dtype(n_edges)),
        "edge_col": n_edges * _itemsize(index_dtype(n_nodes - 1)),
        "edge_values": n_edges * FLOAT_BYTES,
        "emb_bitmap": -(-n_nodes * latdim // 8),
        "emb_values": n_entries * FLOAT_BYTES,
    }


def compression_report(state_tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any],
                       graph_nnz_full: Optional[int] = None) -> Dict[str, Any]:
    """What pruning bought, as plain data (definitions in the module docstring).

    ``state_tensors``: a checkpoint's tensors (published names) or a compact export's.
    ``graph_nnz_full``: the edge count of the full propagation graph, used when neither
    the tensors (no edge masks: a teacher) nor ``meta['n_edges']`` give it.
    A quantity that cannot be known (a published teacher without its dataset) is None.
    """
    c = model_counts(state_tensors, meta, graph_nnz_full)
    n, d, items, layers = c.n_nodes, c.latdim, c.n_items, c.n_layers
    edge_params_dense = (c.edges_total or 0) if c.prunable else 0  # a teacher has no edge parameters
    edge_params_kept = (c.edges_kept or 0) if c.prunable else 0
    dense_params = n * d + edge_params_dense
    nonzero_params = c.entries_nonzero + edge_params_kept

    def macs(edges):
        return None if edges is None or layers is None else layers * edges * d

    compact = dense = None
    if c.edges_kept is not None:
        compact = compact_bytes(n, d, c.edges_kept, c.entries_nonzero)
        full = compact_bytes(n, d, c.edges_total, 0)
        dense = full["edge_indptr"] + full["edge_col"] + full["edge_values"] + n * d * FLOAT_BYTES
    compact_total = sum(compact.values()) if compact else None
    source = meta.get("source_stage") if is_compact(meta) else meta.get("stage", meta.get("role"))
    return {
        "stage": source,
        "model_class": meta.get("source_model_class") if is_compact(meta) else meta.get("model_class"),
        "dataset": meta.get("dataset"),
        "n_users": c.n_users, "n_items": c.n_items, "latdim": d, "gnn_layer": layers,
        "edges": {"kept": c.edges_kept, "total": c.edges_total, "kept_pct": _pct(c.edges_kept, c.edges_total)},
        "embedding_entries": {"kept": c.entries_kept, "total": n * d, "kept_pct": _pct(c.entries_kept, n * d)},
        "parameters": {"nonzero": nonzero_params, "dense": dense_params,
                       "kept_pct": _pct(nonzero_params, dense_params)},
        "macs": {
            "propagation": macs(c.edges_kept), "propagation_dense": macs(c.edges_total),
            "score_one_user": items * d, "score_one_user_dense": items * d,
        },
        "bytes": {"compact_export": compact_total, "dense_export": dense,
                  "kept_pct": _pct(compact_total, dense), "compact_arrays": compact},
    }


def _fmt_int(value: Optional[int]) -> str:
    return "?" if value is None else f"{value:,}"


def _fmt_pct(value: Optional[float]) -> str:
    return "?" if value is None else f"{value:.2f}%"


def format_report(report: Mapping[str, Any], title: Optional[str] = None) -> str:
    """The report as a console table (kept | dense/total | kept %)."""
    head = title or "Compression report"
    what = ", ".join(str(x) for x in (report.get("stage"), report.get("model_class"), report.get("dataset"))
                     if x is not None)
    layers = report.get("gnn_layer")
    lines = [f"{head}{' (' + what + ')' if what else ''}: {report['n_users']:,} users, {report['n_items']:,} items, "
             f"d = {report['latdim']}, {layers if layers is not None else '?'} layers"]
    rows = [
        ("edges", report["edges"]["kept"], report["edges"]["total"], report["edges"]["kept_pct"]),
        ("embedding entries", report["embedding_entries"]["kept"], report["embedding_entries"]["total"],
         report["embedding_entries"]["kept_pct"]),
        ("non-zero parameters", report["parameters"]["nonzero"], report["parameters"]["dense"],
         report["parameters"]["kept_pct"]),
        ("MACs, one propagation", report["macs"]["propagation"], report["macs"]["propagation_dense"],
         _pct(report["macs"]["propagation"], report["macs"]["propagation_dense"])),
        ("MACs, score 1 user vs all items", report["macs"]["score_one_user"], report["macs"]["score_one_user_dense"],
         _pct(report["macs"]["score_one_user"], report["macs"]["score_one_user_dense"])),
        ("bytes, compact export", report["bytes"]["compact_export"], report["bytes"]["dense_export"],
         report["bytes"]["kept_pct"]),
    ]
    width = max(len(r[0]) for r in rows)
    lines.append(f"  {'':<{width}}  {'kept':>14}  {'dense/total':>14}  {'kept %':>8}")
    for name, kept, total, pct in rows:
        lines.append(f"  {name:<{width}}  {_fmt_int(kept):>14}  {_fmt_int(total):>14}  {_fmt_pct(pct):>8}")
    return "\n".join(lines)


def save_report(path: str, report: Mapping[str, Any]) -> None:
    """Write the report as JSON, atomically (the previous file or the complete new one)."""
    text = json.dumps(report, indent=1)
    atomic_write(os.fspath(path), "w", lambda handle: handle.write(text), "report")


def log_run_report(state_tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], json_path: Optional[str],
                   print_line: Callable[[str], None] = print, graph_nnz_full: Optional[int] = None,
                   title: Optional[str] = None) -> Dict[str, Any]:
    """Compute the report, print its table line by line through ``print_line`` and save it as JSON."""
    report = compression_report({k: v.detach().cpu() for k, v in state_tensors.items()}, meta, graph_nnz_full)
    for line in format_report(report, title).splitlines():
        print_line(line)
    if json_path:
        save_report(json_path, report)
        print_line(f"Compression report saved: {json_path}")
    return report


# ----------------------------------------------------------------------------- compact export
@dataclass
class CompactModel:
    """A pruned model as surviving edges + non-zero layer-0 entries (see the module docstring).

    Ē = Σ_{l=0..L} M^l·E₀, M the N×N CSR matrix (``edge_*``), E₀ the N×d matrix whose
    non-zero pattern is ``emb_bitmap`` and whose non-zeros are ``emb_values`` (row-major).
    """

    n_users: int
    n_items: int
    latdim: int
    n_layers: int
    edge_indptr: torch.Tensor
    edge_col: torch.Tensor
    edge_values: torch.Tensor
    emb_bitmap: torch.Tensor
    emb_values: torch.Tensor
    meta: Dict[str, Any] = field(default_factory=dict)
    path: Optional[str] = None

    @property
    def n_nodes(self) -> int:
        return self.n_users + self.n_items

    def tensors(self) -> Dict[str, torch.Tensor]:
        return {key: getattr(self, key) for key in COMPACT_KEYS}

    def nbytes(self) -> int:
        """Bytes of the arrays (the file adds a few KB of container and meta)."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def embedding_pattern(self) -> torch.Tensor:
        """The N×d boolean non-zero pattern of E₀."""
        bits = np.unpackbits(self.emb_bitmap.numpy(), count=self.n_nodes * self.latdim)
        return torch.from_numpy(bits.astype(bool)).reshape(self.n_nodes, self.latdim)

    def layer0(self, device=None) -> torch.Tensor:
        """E₀ as a dense N×d float32 tensor."""
        e0 = torch.zeros(self.n_nodes, self.latdim, dtype=torch.float32)
        e0[self.embedding_pattern()] = self.emb_values  # boolean indexing walks row-major
        return e0.to(device) if device is not None else e0

    def graph(self):
        """M, the surviving edges only, as the training tool's propagation graph."""
        n = self.n_nodes
        return Graph.from_scipy(sp.csr_matrix(
            (self.edge_values.numpy(), self.edge_col.numpy(), self.edge_indptr.numpy()), shape=(n, n)))

    def model(self):
        """The training tool's LightGCN holding E₀ (propagate it over :meth:`graph`)."""
        model = LightGCN(self.n_users, self.n_items, self.latdim, self.n_layers)
        e0 = self.layer0()
        model.load_state_dict({"uEmbeds": e0[: self.n_users], "iEmbeds": e0[self.n_users:]})
        return model.eval()

    @torch.no_grad()
    def embeddings(self, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(Ē_users, Ē_items): Σ_{l=0..L} M^l·E₀, propagated by the training tool's LightGCN."""
        device = torch.device(device or "cpu")
        return self.model().to(device)(self.graph().to(device))


def compact_from_checkpoint(ckpt: "ckpt_io.Checkpoint", graph) -> CompactModel:
    """Fold a full checkpoint (teacher or prunable) and its propagation ``graph`` into a CompactModel.

    ``graph`` is the :class:`DataHandler.Graph` the model propagates on (Â, or Ĉ for
    an intermediate model); its edge count must match the checkpoint's edge vectors.
    Surviving edges are those with ``adj_mask2_fixed`` ≠ 0 (all edges for a teacher).
    """
    tensors = {k: v.detach().cpu() for k, v in ckpt.tensors.items()}
    meta = dict(ckpt.meta)
    if meta.get("gnn_layer") is None:
        raise CheckpointError(f"checkpoint {ckpt.path} does not say how many layers it propagates (gnn_layer)")
    prunable = "adj_mask1_train" in tensors
    if prunable and tensors["adj_mask1_train"].numel() != graph.nnz:
        raise CheckpointError(f"checkpoint {ckpt.path} has {tensors['adj_mask1_train'].numel()} edge weights but "
                              f"the graph has {graph.nnz} edges (another dataset, or Â versus Ĉ?)")
    n_nodes = graph.n_nodes
    keep = tensors["adj_mask2_fixed"] != 0 if prunable else torch.ones(graph.nnz, dtype=torch.bool)
    model = _model(tensors, int(meta["gnn_layer"]))
    values = model.edge_values(graph.to("cpu")).detach()[keep].to(torch.float32).contiguous()
    indptr = torch.zeros(n_nodes + 1, dtype=torch.int64)
    torch.cumsum(torch.bincount(graph.row.cpu()[keep], minlength=n_nodes), 0, out=indptr[1:])
    edge_indptr = indptr.to(index_dtype(int(values.numel())))
    edge_col = graph.col.cpu()[keep].to(index_dtype(n_nodes - 1))

    e0 = model.layer0().detach().to(torch.float32)
    pattern = e0 != 0
    emb_bitmap = torch.from_numpy(np.packbits(pattern.numpy().ravel()))
    emb_values = e0[pattern].contiguous()

    counts = model_counts(tensors, meta, graph.nnz)
    latdim, n_kept = int(e0.shape[1]), int(keep.sum())
    flags = meta.get("flags") or {}
    compact_meta = {
        "stage": "compact", "model_class": COMPACT_CLASS,
        "source": ckpt.path, "source_stage": meta.get("stage", meta.get("role")),
        "source_model_class": meta.get("model_class"), "prunable": prunable,
        "dataset": Config.recorded_dataset(meta)[0], "data_dir": Config.recorded_dataset(meta)[1],
        "dataset_path": meta.get("dataset_path"), "train_fingerprint": meta.get("train_fingerprint"),
        "n_users": counts.n_users, "n_items": counts.n_items, "latdim": latdim, "gnn_layer": int(meta["gnn_layer"]),
        "graph": meta.get("graph", "adjacency"), "n_edges": graph.nnz, "edges_kept": n_kept,
        "emb_entries_kept": counts.entries_kept,
        "edge_kept_pct": _pct(n_kept, graph.nnz), "emb_kept_pct": _pct(counts.entries_kept, n_nodes * latdim),
        "metrics": recorded_metrics(meta), "select_on": meta.get("select_on"),
        "flags": {k: flags[k] for k in COMPACT_FLAGS if k in flags},
        "config": {k: v for k, v in (meta.get("config") or {}).items() if k in COMPACT_CONFIG},
    }
    return CompactModel(counts.n_users, counts.n_items, latdim, int(meta["gnn_layer"]), edge_indptr, edge_col, values,
                        emb_bitmap, emb_values, compact_meta)


def export_compact(ckpt: "ckpt_io.Checkpoint", graph, out_path: str) -> CompactModel:
    """Write the compact export of ``ckpt`` (propagating on ``graph``) to ``out_path``, atomically."""
    compact = compact_from_checkpoint(ckpt, graph)
    ckpt_io.save_checkpoint(out_path, compact.tensors(), compact.meta)
    compact.path = os.fspath(out_path)
    return compact


def compact_from_checkpoint_data(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any],
                                 path: Optional[str] = None) -> CompactModel:
    """A CompactModel from a loaded compact file's tensors and meta (checked)."""
    missing = [k for k in COMPACT_KEYS if k not in tensors]
    if missing or not is_compact(meta):
        raise CheckpointError(f"{path or 'checkpoint'} is not a compact export (missing {', '.join(missing) or 'meta'})")
    n_nodes, latdim = int(meta["n_users"]) + int(meta["n_items"]), int(meta["latdim"])
    indptr = tensors["edge_indptr"]
    n_pattern = int(np.unpackbits(tensors["emb_bitmap"].numpy(), count=n_nodes * latdim).sum()) \
        if tensors["emb_bitmap"].numel() == -(-n_nodes * latdim // 8) else -1
    if indptr.numel() != n_nodes + 1 or int(indptr[-1]) != tensors["edge_col"].numel() \
            or tensors["edge_col"].numel() != tensors["edge_values"].numel() \
            or n_pattern != tensors["emb_values"].numel():
        raise CheckpointError(f"compact export {path} is damaged: its arrays do not fit {n_nodes} nodes x {latdim}")
    return CompactModel(int(meta["n_users"]), int(meta["n_items"]), int(meta["latdim"]), int(meta["gnn_layer"]),
                        *(tensors[k] for k in COMPACT_KEYS), meta=dict(meta), path=path)


def load_compact(path: str) -> CompactModel:
    """Read a compact export written by :func:`export_compact` (``weights_only`` loading)."""
    loaded = ckpt_io.load_checkpoint(path)
    return compact_from_checkpoint_data(loaded.tensors, loaded.meta, loaded.path)


__all__ = [
    "COMPACT_CLASS", "CompactModel", "compression_report", "format_report", "save_report", "log_run_report",
    "export_compact", "load_compact", "compact_from_checkpoint", "recorded_metrics", "is_compact",
]
