"""Exact resume and protection of earlier runs' outputs.

Every stage writes ``<model_save_path>_last.ckpt`` at the end of each epoch (atomically,
``torch.load(..., weights_only=True)`` reads it): the trainee's weights and masks, the
optimiser state, where the stage is (pruning run, epoch, whether the run is over), the
records, the best state of the current run, the early-stopping counter, every random
generator the stage draws from and the history rows. ``--resume=True`` rebuilds all of it,
so the continued run computes what the uninterrupted one would have, bit for bit.

Before a stage writes anything it checks that it does not replace another run's outputs
(:func:`check_outputs`): an earlier history, checkpoint or ``_last.ckpt`` at its paths is
an error unless ``--resume=True`` (continue that run) or ``--overwrite=True`` (replace it).
"""
from __future__ import annotations

import glob
import os
import random
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from Utils import Checkpoint
from Utils.Errors import CheckpointError, ConfigError

FORMAT = "lightgnn-resume"
VERSION = 1

# Flags a resumed run may change: where and how fast it runs, and how long it goes on.
MAY_CHANGE = {"resume", "overwrite", "threads", "device", "gpu", "block_mb", "plots", "epoch_tea", "mask_epoch",
              "use_dynamic_epoch", "epoch_list", "PRUNING_END", "patience", "load_model_tea", "load_his_tea"}


def last_path(model_save_path: str) -> str:
    return f"{model_save_path}_last.ckpt"


# ----------------------------------------------------------------------------- random generators
def capture_rngs(rng: np.random.Generator, generator: Optional[torch.Generator] = None) -> Dict[str, Any]:
    """Every random state a stage draws from: its NumPy sampler and torch generator, and the
    global python / NumPy / torch ones (weights-only loadable: tensors, ints, lists)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy_global": [kind, torch.from_numpy(keys.astype(np.int64)), pos,
                                                          has_gauss, cached],
            "torch": torch.get_rng_state(), "sampler": rng.bit_generator.state,
            "generator": generator.get_state() if generator is not None else None}


def restore_rngs(states: Dict[str, Any], rng: np.random.Generator, generator: Optional[torch.Generator] = None):
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy_global"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    rng.bit_generator.state = states["sampler"]
    if generator is not None:
        generator.set_state(states["generator"])


# ----------------------------------------------------------------------------- the file
def save_last(path: str, payload: Dict[str, Any]) -> None:
    """Write the resume file atomically (the previous one stays whole until the new one is)."""
    data = {"format": FORMAT, "version": VERSION, **payload}
    Checkpoint.atomic_write(path, "wb", lambda handle: torch.save(data, handle), "resume checkpoint")


def load_last(path: str, role: str, fingerprint: str, flags: Dict[str, Any]) -> Dict[str, Any]:
    """Read ``path`` for ``--resume=True``; it must be this stage's, on this train split, with
    the same flags except :data:`MAY_CHANGE`."""
    if not os.path.isfile(path):
        raise CheckpointError(f"--resume=True but there is no {path} to continue from (the stage writes it at "
                              f"the end of every epoch; start without --resume)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle readers raise many types on damaged files
        raise CheckpointError(f"cannot read resume checkpoint {path}: {' '.join(str(exc).split())[:200]}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        raise CheckpointError(f"{path} is not a resume checkpoint of this program")
    if data["role"] != role:
        raise CheckpointError(f"{path} resumes a {data['role']} stage, not a {role} stage")
    if data["train_fingerprint"] != fingerprint:
        raise CheckpointError(f"{path} was written on another train split than this dataset's")
    changed = sorted(name for name, value in flags.items()
                     if name not in MAY_CHANGE and data["flags"].get(name, value) != value)
    if changed:
        name = changed[0]
        raise ConfigError(f"--resume=True with --{name}={flags[name]} but the run in {path} used "
                          f"--{name}={data['flags'][name]}" + (f" (and {len(changed) - 1} other flags)"
                                                                 if len(changed) > 1 else "")
                          + "; only how long and where it runs may change")
    return data


# ----------------------------------------------------------------------------- earlier outputs
def existing_outputs(model_save_path: str, his_save_path: str, checkpoint_patterns: List[str]) -> List[str]:
    """The files of an earlier run at these paths: its history, ``_last.ckpt`` and checkpoints."""
    found = []
    his = his_save_path if his_save_path.endswith(".his") else his_save_path + ".his"
    if os.path.isfile(his) and os.path.getsize(his) > 0:
        found.append(his)
    if os.path.isfile(last_path(model_save_path)):
        found.append(last_path(model_save_path))
    for pattern in checkpoint_patterns:
        found += sorted(glob.glob(glob.escape(model_save_path) + pattern))
    return found


def check_outputs(args, checkpoint_patterns: List[str]) -> None:
    """Refuse to replace an earlier run's outputs unless told to resume or overwrite it."""
    if args.resume or args.overwrite:
        return
    found = existing_outputs(args.model_save_path, args.his_save_path, checkpoint_patterns)
    if found:
        raise ConfigError(f"an earlier run's outputs are at these paths ({found[0]}"
                          + (f" and {len(found) - 1} more" if len(found) > 1 else "") + "): pass --resume=True to "
                          "continue it, --overwrite=True to replace it, or other --model_save_path/--his_save_path")
