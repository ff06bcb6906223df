"""Reading the published tool's ``.mod`` files safely (see :mod:`Utils.files.Checkpoint`).

The published tool saves ``torch.save({'model': obj})`` with a pickled ``nn.Module``;
:func:`import_published_mod` unpickles it with a restricted unpickler whose only classes
are inert stand-ins (:class:`PickledModule`) and an allow-list of torch/collections
globals, and returns the model's tensors as a :class:`~Utils.files.Checkpoint.Checkpoint`.
"""
from __future__ import annotations

import pickle
import types
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional

import torch

from Utils.files.Checkpoint import ROLES, Checkpoint, PathLike, corrupt, existing_file, refused_objects
from Utils.runtime.Errors import CheckpointError


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
        raise corrupt(path, exc) from exc
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
    path = existing_file(path)
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
