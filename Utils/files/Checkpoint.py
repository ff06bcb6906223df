"""Checkpoint I/O: our own plain-data format and a safe importer for published ``.mod`` files.

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
refused before it can run. :func:`load_checkpoint` accepts either kind of file.

Tensor names stay as published, matching the models' ``state_dict``:
``uEmbeds``, ``iEmbeds`` (layer-0 embeddings) and, for prunable models,
``adj_mask1_train`` (edge weights), ``adj_mask2_fixed`` (edge mask),
``emb_mask2_fixed`` (embedding mask).
"""
from __future__ import annotations

import argparse
import errno
import numbers
import json
import os
import pickle
import re
import secrets
import types
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch

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


def _plain(value: Any, where: str) -> Any:
    """Return ``value`` as str/int/float/bool/None or lists/dicts of those, or raise TypeError."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, argparse.Namespace):
        return _plain(vars(value), where)
    if isinstance(value, np.ndarray):
        return _plain(value.tolist(), where)
    if isinstance(value, np.generic):  # numpy scalars: np.float32, np.int64, np.bool_, ...
        return _plain(value.item(), where)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dim() == 0:
        return _plain(value.item(), where)
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
            out[key] = _plain(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
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
        "meta": _plain({} if meta is None else meta, "meta"),
    }
    if not isinstance(payload["meta"], dict):
        raise TypeError(f"checkpoint meta must be a dict or Namespace, got {type(meta).__name__}")

    atomic_write(path, "wb", lambda handle: torch.save(payload, handle), "checkpoint")


def save_json(path: PathLike, obj: Any) -> None:
    """Write plain data as JSON atomically (the record ``.his`` files)."""
    text = json.dumps(_plain(obj, "history"), indent=1)
    atomic_write(os.fspath(path), "w", lambda handle: handle.write(text), "history")


def atomic_write(path: str, mode: str, write: Any, what: str) -> None:
    """Write through ``write(handle)`` into a temporary file beside ``path``, then ``os.replace``.

    A reader sees either the previous file or the complete new one; on failure the
    previous file is untouched and no temporary file remains.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        os.makedirs(directory, exist_ok=True)
        # O_EXCL: never clobber someone else's file; 0o666 & umask like a normal open()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise CheckpointError(f"cannot write {what} {path}: {os_error_reason(exc, path)}") from exc
        raise


# What each errno means for a path the user gave, in words a researcher can act on.
_OS_REASONS = {
    errno.EINVAL: "the file system refuses this name (Invalid argument): FAT, NTFS and SMB drives forbid "
                  "the characters : * ? \" < > | and names ending in a space or a dot; choose a plain name",
    errno.ENOTDIR: "a part of the folder path is a regular file, not a folder",
    errno.EISDIR: "a folder of that name is in the way",
    errno.EACCES: "permission denied: choose a folder you can write to",
    errno.EPERM: "operation not permitted: choose a folder you can write to",
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.ENAMETOOLONG: "the file name is too long",
}


def os_error_reason(exc: OSError, path: Optional[str] = None) -> str:
    """Why writing the user's ``path`` failed, in words (never the bare ``[Errno N] …`` text);
    when a part of the folder path is a regular file, which one."""
    reason = _OS_REASONS.get(exc.errno, exc.strerror or str(exc) or type(exc).__name__)
    if exc.errno in (errno.ENOTDIR, errno.EEXIST) and path:  # (EEXIST: os.makedirs met a file)
        path = os.path.abspath(path)
        blocker = next((part for part in [*_parents(path), path] if os.path.isfile(part)), None)
        if blocker:
            reason = f"{blocker} is a regular file, not a folder"
    return reason


def _parents(path: str) -> List[str]:
    """``path``'s folders from the top down (``/a``, ``/a/b`` for ``/a/b/c``)."""
    parts = []
    while os.path.dirname(path) != path:
        path = os.path.dirname(path)
        parts.append(path)
    return parts[::-1]


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
    path = _existing_file(path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # Refused by the weights-only loader (it references other globals) or not a
        # pickle at all; the restricted importer tells these apart with its own message.
        return import_published_mod(path, role=role, map_location=map_location)
    except Exception as exc:  # zip/pickle readers raise many types on damaged files
        raise _corrupt(path, exc) from exc

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


def _existing_file(path: PathLike) -> str:
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
    (:func:`refused_objects`, naming it) or a damaged file (:func:`_corrupt`)."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if found:
        return refused_objects(path, what, f"the global {found.group(1)}")
    return _corrupt(path, exc, what)


def _corrupt(path: str, exc: BaseException, what: str = "checkpoint") -> CheckpointError:
    text = str(exc).strip()
    reason = type(exc).__name__
    if "WeightsUnpickler error:" in text:  # torch's own reason follows a paragraph of advice
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    if text:  # first sentence of the first line: torch's zip errors run on for a paragraph
        reason += ": " + text.splitlines()[0].split(". ")[0][:160]
    return CheckpointError(f"{what} {path} is not a PyTorch checkpoint or is corrupt ({reason})")


# --------------------------------------------------------------------------- published .mod import


class PickledModule:
    """Inert stand-in for a pickled ``nn.Module`` of the published tool.

    It has no behaviour: unpickling creates it with ``__new__`` and hands it the
    module's ``__dict__`` through ``__setstate__``, which is stored as ``state``.
    ``published_name`` says which class it stands for (e.g. ``'Model.LightGCN_sp'``).
    """

    published_name = "?"
    dump_patches = False  # read by torch's legacy loader; never write patch files

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # only reached via REDUCE
        self.state: Dict[str, Any] = {}
        self.init_args = (args, kwargs)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            merged = dict(state[0] or {})
            merged.update(state[1] or {})
            state = merged
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.published_name} state is a {type(state).__name__}, not a dict")
        self.state = state

    def attr(self, name: str, default: Any = None) -> Any:
        """Look ``name`` up as ``nn.Module.__getattr__`` would: parameters, buffers, submodules, then __dict__."""
        state = getattr(self, "state", {})
        for slot in ("_parameters", "_buffers", "_modules"):
            table = state.get(slot)
            if isinstance(table, Mapping) and name in table:
                return table[name]
        return state.get(name, default)

    def own_tensors(self) -> Dict[str, torch.Tensor]:
        """This module's tensors (not its submodules'): parameters, buffers, tensor attributes."""
        state = getattr(self, "state", {})
        out: Dict[str, torch.Tensor] = {}
        for slot in ("_parameters", "_buffers"):
            table = state.get(slot)
            if isinstance(table, Mapping):
                out.update({k: v for k, v in table.items() if isinstance(v, torch.Tensor)})
        out.update({k: v for k, v in state.items() if isinstance(v, torch.Tensor) and k not in out})
        return out

    def submodules(self) -> Dict[str, "PickledModule"]:
        table = getattr(self, "state", {}).get("_modules")
        if not isinstance(table, Mapping):
            return {}
        return {k: v for k, v in table.items() if isinstance(v, PickledModule)}

    def __repr__(self) -> str:
        return f"<pickled {self.published_name}>"


def _stand_in(qualified: str) -> type:
    short = qualified.rsplit(".", 1)[1]
    return type(f"Pickled_{short}", (PickledModule,), {"published_name": qualified, "__module__": __name__})


# Classes of the published Model.py and torch containers: inert stand-ins, never imported.
_STAND_INS: Dict[tuple, type] = {
    (module, name): _stand_in(f"{module}.{name}")
    for module, name in [
        ("Model", "LightGCN"),
        ("Model", "GCNLayer"),
        ("Model", "Model"),
        ("Model", "LightGCN_sp"),
        ("Model", "GCNLayer_sp"),
        ("torch.nn.modules.container", "Sequential"),
        ("torch.nn.modules.container", "ModuleList"),
        ("torch.nn.modules.container", "ModuleDict"),
    ]
}

# Real globals a pickled module may reference: tensor rebuilding and plain containers.
# (Storage classes such as ``torch FloatStorage`` never reach find_class: torch.load
# answers every "*Storage" name itself with an inert dtype holder.)
_ALLOWED: Dict[tuple, Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
}


def _restricted_pickle_module(path: str) -> types.ModuleType:
    """A module-like object for ``torch.load(pickle_module=...)`` that resolves only allowed globals.

    torch.load subclasses ``pickle_module.Unpickler`` (overriding ``find_class`` to
    answer storage names, then calling ours through ``super()``) and installs its
    own ``persistent_load``, so tensor storages still come from the zip records.
    """

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            key = (module, name)
            if key in _STAND_INS:
                return _STAND_INS[key]
            if key in _ALLOWED:
                return _ALLOWED[key]
            raise refused_objects(path, detail=f"refusing to load global {module}.{name}")

    def load(file: Any, **kwargs: Any) -> Any:
        return RestrictedUnpickler(file, **kwargs).load()

    module = types.ModuleType("lightgnn_restricted_pickle")
    module.Unpickler = RestrictedUnpickler
    module.load = load
    module.UnpicklingError = pickle.UnpicklingError
    return module


def _read_published(path: str, map_location: Any) -> PickledModule:
    try:
        obj = torch.load(
            path,
            map_location=map_location,
            pickle_module=_restricted_pickle_module(path),
            weights_only=False,
        )
    except CheckpointError:
        raise
    except Exception as exc:
        raise _corrupt(path, exc) from exc
    model = obj.get("model") if isinstance(obj, dict) else None
    if not isinstance(model, PickledModule):
        raise CheckpointError(
            f"checkpoint {path} has an unknown format (neither a LightGNN checkpoint "
            "nor a published .mod file holding {'model': <module>})"
        )
    return model


def _choose_role(wrapper: PickledModule, role: Optional[str], path: str) -> tuple:
    present = [r for r in ROLES if isinstance(wrapper.attr(r), PickledModule)]
    if role is None:
        if not present:
            raise CheckpointError(f"published checkpoint {path} holds no teacher, middle_teacher or student model")
        role = present[0]
    elif role not in ROLES:
        raise CheckpointError(f"unknown role {role!r} for {path}; choose one of {', '.join(ROLES)}")
    elif role not in present:
        raise CheckpointError(
            f"published checkpoint {path} has no {role} model (it holds: {', '.join(present) or 'none'})"
        )
    return role, wrapper.attr(role), present


def _layer_count(model: PickledModule) -> Optional[int]:
    layers = model.attr("gcnLayers") or model.attr("net_layer")
    if isinstance(layers, PickledModule):
        return len(layers.submodules())
    count = model.attr("layer_num")
    return int(count) if isinstance(count, int) else None


def import_published_mod(path: PathLike, role: Optional[str] = None, map_location: Any = "cpu") -> Checkpoint:
    """Read a ``.mod`` file of the published tool without running any of its pickled code.

    * ``Model.LightGCN`` (stage-1 teacher): tensors ``uEmbeds``, ``iEmbeds``.
    * ``Model.Model`` (stages 2–3) holds up to three models: ``teacher``
      (LightGCN), ``middle_teacher`` and ``student`` (LightGCN_sp). The default
      ``role=None`` takes the one that was being trained when the file was written:
      ``student`` when present (stage 3; ``middle_teacher`` is then its frozen
      supervisor), else ``middle_teacher`` (stage 2 leaves ``student`` None), else
      ``teacher``. Pass ``role='student' | 'middle_teacher' | 'teacher'`` to pick one.
      A LightGCN_sp yields ``uEmbeds``, ``iEmbeds``, ``adj_mask1_train``,
      ``adj_mask2_fixed``, ``emb_mask2_fixed``.

    ``meta`` = {'source': 'published', 'model_class': 'LightGCN' | 'LightGCN_sp',
    'role': the role taken (None for a bare teacher file), 'roles_available',
    'gnn_layer', 'n_users', 'n_items', 'latdim' and, for LightGCN_sp, 'n_edges'}.
    Any global outside the published classes and torch's tensor-rebuilding helpers
    is refused with CheckpointError before it is called.
    """
    path = _existing_file(path)
    top = _read_published(path, map_location)
    top_class = top.published_name.rsplit(".", 1)[1]
    present: List[str] = []
    if top_class == "Model":
        role, model, present = _choose_role(top, role, path)
        if not isinstance(model, PickledModule):  # pragma: no cover - _choose_role guarantees it
            raise CheckpointError(f"published checkpoint {path} has no {role} model")
    elif top_class in ("LightGCN", "LightGCN_sp"):
        if role not in (None, "teacher") and top_class == "LightGCN":
            raise CheckpointError(f"published checkpoint {path} holds only a teacher (LightGCN), not a {role}")
        model = top
        if top_class == "LightGCN":
            role, present = "teacher", ["teacher"]
    else:
        raise CheckpointError(f"published checkpoint {path} holds a {top.published_name}, not a LightGNN model")

    model_class = model.published_name.rsplit(".", 1)[1]
    tensors = {name: t.detach().clone() for name, t in model.own_tensors().items()}
    for name in ("uEmbeds", "iEmbeds"):
        if name not in tensors:
            raise CheckpointError(f"published checkpoint {path}: its {model_class} has no {name}")
    meta: Dict[str, Any] = {
        "source": "published",
        "model_class": model_class,
        "role": role,
        "roles_available": present,
        "gnn_layer": _layer_count(model),
        "n_users": int(tensors["uEmbeds"].shape[0]),
        "n_items": int(tensors["iEmbeds"].shape[0]),
        "latdim": int(tensors["uEmbeds"].shape[1]),
    }
    if "adj_mask1_train" in tensors:
        meta["n_edges"] = int(tensors["adj_mask1_train"].numel())
    return Checkpoint(tensors=tensors, meta=meta, path=path)


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
    "import_published_mod",
    "PickledModule",
]
