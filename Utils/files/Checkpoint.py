"""Checkpoint files: our own plain-data format, and reading either it or a published ``.mod``.

Our format (nanoGPT style: plain data, nothing pickled but tensors and builtins)::

    {'format': 'lightgnn-ckpt', 'version': 1,
     'tensors': {name: CPU tensor},      # the model's state_dict, published names
     'meta':    {...}}                   # str/int/float/bool/None, lists and dicts of those

It is written atomically (temporary file in the same directory, then ``os.replace``)
and read back with ``torch.load(weights_only=True)``, so loading never runs code.

Published files. The published tool saves ``torch.save({'model': obj})`` where ``obj``
is a pickled ``nn.Module``: ``Model.LightGCN`` for the stage-1 teacher, or a
``Model.Model`` wrapper holding ``teacher``, ``middle_teacher`` and ``student``
for stages 2–3. :func:`import_published_mod` reads these with a restricted
unpickler: the five ``Model.*`` classes and torch's ``nn.Sequential``/``ModuleList``/
``ModuleDict`` become inert stand-ins that only record their pickled state, only an
explicit allow-list of torch/collections globals is resolved, and anything else is
refused before it can run (:mod:`Utils.files.Published`). :func:`load_checkpoint` accepts
either kind of file. Writing goes through :func:`Utils.files.Atomic.atomic_write`.

Tensor names stay as published, matching the models' ``state_dict``:
``uEmbeds``, ``iEmbeds`` (layer-0 embeddings) and, for prunable models,
``adj_mask1_train`` (edge weights), ``adj_mask2_fixed`` (edge mask),
``emb_mask2_fixed`` (embedding mask).
"""
from __future__ import annotations

import argparse
import errno
import numbers
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from Utils.files.Atomic import atomic_write
from Utils.runtime.Errors import CheckpointError

FORMAT = "lightgnn-ckpt"
VERSION = 1

PathLike = Union[str, "os.PathLike[str]"]

# Roles of the published ``Model.Model`` wrapper, in the order the default choice tries
# them: stage 3 trains ``student`` (``middle_teacher`` is its frozen supervisor), stage 2
# trains ``middle_teacher`` (``student`` is None), and ``teacher`` is never trained there.
ROLES = ("student", "middle_teacher", "teacher")


@dataclass
class Checkpoint:
    """What a checkpoint file holds.

    ``tensors`` are CPU tensors (or on ``map_location``) keyed by published parameter
    name; ``meta`` is plain data; ``path`` the file it came from (used in error messages).
    """

    tensors: Dict[str, torch.Tensor]
    meta: Dict[str, Any] = field(default_factory=dict)
    path: Optional[str] = None

    def shapes(self) -> Dict[str, tuple]:
        """Name -> shape of every tensor (for messages and quick inspection)."""
        return {name: tuple(t.shape) for name, t in self.tensors.items()}


# --------------------------------------------------------------------------- saving


def plain(value: Any, where: str) -> Any:
    """Return ``value`` as str/int/float/bool/None or lists/dicts of those, or raise TypeError."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, argparse.Namespace):
        return plain(vars(value), where)
    if isinstance(value, np.ndarray):
        return plain(value.tolist(), where)
    if isinstance(value, np.generic):  # numpy scalars: np.float32, np.int64, np.bool_, ...
        return plain(value.item(), where)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dim() == 0:
        return plain(value.item(), where)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"checkpoint {where} has a non-string key {key!r}")
            out[key] = plain(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise TypeError(
        f"checkpoint {where} holds a {type(value).__name__}; only str, int, float, bool, None "
        "and lists/dicts of those can be saved"
    )


def _cpu_tensors(tensors: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for name, tensor in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"checkpoint tensor names must be strings, got {name!r}")
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"checkpoint tensor {name!r} is a {type(tensor).__name__}, not a Tensor")
        # clone: a view must not drag its whole base storage into the file
        out[name] = tensor.detach().cpu().clone()
    return out


def save_checkpoint(
    path: PathLike,
    tensors: Mapping[str, torch.Tensor],
    meta: Union[Mapping[str, Any], argparse.Namespace, None] = None,
) -> None:
    """Write a checkpoint atomically: a temporary file in the same directory, then ``os.replace``.

    A reader sees either the previous file or the complete new one, never a partial
    write; if writing fails the previous file is left as it was and no temporary file
    remains. Parent directories are created. ``meta`` (a dict or an argparse
    Namespace) must be plain data; numpy scalars and arrays, 0-d
    tensors and paths are converted, anything else raises TypeError.
    """
    path = os.fspath(path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "tensors": _cpu_tensors(tensors),
        "meta": plain({} if meta is None else meta, "meta"),
    }
    if not isinstance(payload["meta"], dict):
        raise TypeError(f"checkpoint meta must be a dict or Namespace, got {type(meta).__name__}")

    atomic_write(path, "wb", lambda handle: torch.save(payload, handle), "checkpoint")


def tensors_in(value: Any, where: str = "") -> Iterator[Tuple[str, torch.Tensor]]:
    """``(path, tensor)`` for every tensor inside a loaded checkpoint or resume file (dict keys in
    sorted order, list items by index), to compare two runs' files tensor by tensor."""
    if torch.is_tensor(value):
        yield where, value
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            yield from tensors_in(value[key], f"{where}/{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from tensors_in(item, f"{where}[{i}]")


# --------------------------------------------------------------------------- loading


def load_checkpoint(path: PathLike, map_location: Any = "cpu", role: Optional[str] = None) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` or a published ``.mod`` file.

    Our files are read with ``torch.load(weights_only=True)``. A file that the
    weights-only loader refuses is handed to :func:`import_published_mod` (``role``
    is passed on), which reads published files safely and refuses anything else.
    Raises CheckpointError (one line naming the path) when the file is missing,
    unreadable or corrupt, or not a checkpoint of either kind.
    """
    path = existing_file(path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # Refused by the weights-only loader (it references other globals) or not a
        # pickle at all; the restricted importer tells these apart with its own message.
        from Utils.files.Published import import_published_mod  # (here: Published builds a Checkpoint)

        return import_published_mod(path, role=role, map_location=map_location)
    except Exception as exc:  # zip/pickle readers raise many types on damaged files
        raise corrupt(path, exc) from exc

    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has an unknown format (neither a LightGNN checkpoint "
            "nor a published .mod file)"
        )
    if obj.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {obj.get('version')!r}; this program reads version {VERSION}"
        )
    tensors = obj.get("tensors")
    meta = obj.get("meta")
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise CheckpointError(f"checkpoint {path} is damaged: 'tensors' is not a dict of tensors")
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path} is damaged: 'meta' is not a dict")
    return Checkpoint(tensors=dict(tensors), meta=meta, path=path)


def check_compatible(
    ckpt: Checkpoint,
    n_users: int,
    n_items: int,
    latdim: Optional[int] = None,
    n_edges: Optional[int] = None,
    what: str = "teacher",
) -> Checkpoint:
    """Raise CheckpointError unless ``ckpt`` fits a dataset of ``n_users`` × ``n_items``.

    Checks the rows of ``uEmbeds``/``iEmbeds``, their width against ``latdim`` when
    given, and, when ``n_edges`` is given, the length of the edge vectors
    (``adj_mask1_train``, ``adj_mask2_fixed``, which must be present) and the shape
    of ``emb_mask2_fixed`` if present, and that every float tensor is finite (a NaN model is
    never accepted as a supervisor or a starting point). The message names the path, ``what`` the
    checkpoint is for, and the expected and found shapes. Returns ``ckpt``.
    """
    where = f"{what} checkpoint {ckpt.path or '<in memory>'}"
    missing = [name for name in ("uEmbeds", "iEmbeds") if name not in ckpt.tensors]
    if missing:
        raise CheckpointError(f"{where} has no {' or '.join(missing)} (it holds {sorted(ckpt.tensors)})")
    users, items = ckpt.tensors["uEmbeds"], ckpt.tensors["iEmbeds"]
    if users.dim() != 2 or items.dim() != 2 or users.shape[1] != items.shape[1]:
        raise CheckpointError(
            f"{where} is damaged: uEmbeds {tuple(users.shape)} and iEmbeds {tuple(items.shape)} "
            "are not two tables of the same width"
        )
    found_d = users.shape[1]
    want_d = found_d if latdim is None else int(latdim)
    if (users.shape[0], items.shape[0], found_d) != (n_users, n_items, want_d):
        d_text = "d" if latdim is None else str(want_d)
        raise CheckpointError(
            f"{where} does not fit this run: it has uEmbeds {tuple(users.shape)}, "
            f"iEmbeds {tuple(items.shape)}, expected ({n_users}, {d_text}), ({n_items}, {d_text}) "
            "(was it trained on another dataset or --latdim?)"
        )
    if n_edges is not None:
        for name in ("adj_mask1_train", "adj_mask2_fixed"):
            if name not in ckpt.tensors:
                raise CheckpointError(
                    f"{where} has no {name}: it is not a prunable (LightGCN_sp) model checkpoint"
                )
            found = tuple(ckpt.tensors[name].shape)
            if found != (n_edges,):
                raise CheckpointError(
                    f"{where} does not fit this graph: {name} has shape {found}, expected ({n_edges},) "
                    "(was it trained on another graph, e.g. Â versus the closure Ĉ?)"
                )
    for name, tensor in ckpt.tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{where} holds NaN or infinite values in {name}: it cannot be used")
    if "emb_mask2_fixed" in ckpt.tensors:
        found = tuple(ckpt.tensors["emb_mask2_fixed"].shape)
        if found != (n_users + n_items, found_d):
            raise CheckpointError(
                f"{where} does not fit this run: emb_mask2_fixed has shape {found}, "
                f"expected ({n_users + n_items}, {found_d})"
            )
    return ckpt


def checkpoint_role(meta: Dict[str, Any]) -> Optional[str]:
    """The role our checkpoints record (``role``; stage-1 files say ``stage: teacher``)."""
    role = meta.get("role") or (meta.get("stage") if meta.get("stage") == "teacher" else None)
    return role if role in ROLES else None


def check_identity(ckpt: Checkpoint, role: str, fingerprint: str, warn: Callable[[str], Any] = print) -> None:
    """Raise CheckpointError when ``ckpt`` was written for another role or another train
    split (``fingerprint``: :attr:`DataHandler.Dataset.fingerprint`). A checkpoint that
    records neither (a published ``.mod`` file) is accepted, and ``warn`` gets one line
    saying what could not be checked."""
    where = f"checkpoint {ckpt.path or '<in memory>'}"
    if ckpt.meta.get("source") == "published":
        warn(f"warning: {where} is a published .mod file: its role and dataset cannot be checked")
        return
    found = checkpoint_role(ckpt.meta)
    if found is not None and found != role:
        raise CheckpointError(f"{where} holds a {found} model, not a {role} model (check the flag that names it)")
    stored = ckpt.meta.get("train_fingerprint")
    if stored is not None and stored != fingerprint:
        raise CheckpointError(f"{where} was trained on another train split (fingerprint {stored}, this dataset's "
                              f"is {fingerprint}): dataset {ckpt.meta.get('dataset')!r} of "
                              f"{ckpt.meta.get('data_dir', 'its --data_dir')}")
    if found is None or stored is None:
        warn(f"warning: {where} records no {'role' if found is None else 'train-split fingerprint'}: not checked")


def existing_file(path: PathLike) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} is not a file")
    return path


def refused_objects(path: str, what: str = "checkpoint", detail: Optional[str] = None) -> CheckpointError:
    """The refusal of a file the weights-only reader will not load: one whole sentence (never
    torch's advice to load it with ``weights_only=False``, which would run its code)."""
    return CheckpointError(f"{what} {path} holds objects other than tensors and plain data"
                           + (f" ({detail})" if detail else "") + ", so it is refused")


def weights_only_error(path: str, exc: BaseException, what: str = "checkpoint") -> CheckpointError:
    """The error for a file ``torch.load(weights_only=True)`` raised ``exc`` on: a refused global
    (:func:`refused_objects`, naming it) or a damaged file (:func:`corrupt`)."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if found:
        return refused_objects(path, what, f"the global {found.group(1)}")
    return corrupt(path, exc, what)


def corrupt(path: str, exc: BaseException, what: str = "checkpoint") -> CheckpointError:
    if isinstance(exc, OSError) and exc.errno == errno.EINVAL:  # a zip cut short near its end: torch's
        # reader fails with "[Errno 22] Invalid argument", which says nothing about the file
        return CheckpointError(f"{what} {path} is not a PyTorch checkpoint or is corrupt (it is cut short or "
                               f"damaged: reading its {os.path.getsize(path):,} bytes failed)")
    text = str(exc).strip()
    reason = type(exc).__name__
    if "WeightsUnpickler error:" in text:  # torch's own reason follows a paragraph of advice
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    if text:  # first sentence of the first line: torch's zip errors run on for a paragraph
        reason += ": " + text.splitlines()[0].split(". ")[0][:160]
    return CheckpointError(f"{what} {path} is not a PyTorch checkpoint or is corrupt ({reason})")


__all__ = [
    "Checkpoint",
    "FORMAT",
    "VERSION",
    "ROLES",
    "save_checkpoint",
    "load_checkpoint",
    "check_identity",
    "checkpoint_role",
    "check_compatible",
]
