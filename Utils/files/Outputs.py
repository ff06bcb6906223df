"""The one rule for a file a model tool writes (reports, exports, plots, recommendations, metrics).

:func:`claim` refuses, before anything is computed or written:

* a path that is one of the files the command reads (``report CK --json CK`` would replace
  the model it reports on);
* an existing file without ``--overwrite``;
* even with ``--overwrite``, a file a training stage wrote (a checkpoint of any role, a resume
  file, a training history or record file, a published ``.mod``): only its own stage replaces
  those (``--overwrite=True`` there), so a tool never clobbers a model or another run's curves.

A stage's own outputs follow the same idea through :mod:`Utils.files.Resume`.
"""
from __future__ import annotations

import json
import os
import zipfile
from typing import Iterable, Optional

import torch

from Utils.files import Checkpoint
from Utils.runtime.Errors import ConfigError

TRAINING_SUFFIXES = (".mod", ".ckpt", ".his", ".pt", ".pth")


def training_output(path: str) -> Optional[str]:
    """What a training stage wrote at ``path`` ("a student checkpoint", "a training history", …),
    or None when it is none of those (a report, a plot, a compact export, any other file)."""
    if not os.path.isfile(path):
        return None
    if path.endswith(".his"):
        return "a training history"
    if zipfile.is_zipfile(path):  # torch.save's format: ours, a resume file or a published .mod
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a pickled module: a published .mod (never unpickled here)
            return "a model file (a published .mod)"
        if isinstance(data, dict) and data.get("format") == Checkpoint.FORMAT:
            meta = data.get("meta") or {}
            if meta.get("stage") == "compact":
                return None  # a tool's own output: export --overwrite replaces it
            return f"a {meta.get('role') or meta.get('stage') or 'model'} checkpoint"
        if isinstance(data, dict) and "optimizer" in data and "history" in data:
            return "a resume file"
        return "a PyTorch file"
    if path.endswith(TRAINING_SUFFIXES):
        with open(path, "rb") as fh:
            if fh.read(1) == b"\x80":  # a pickle: torch.save's legacy (non-zip) format
                return "a model file (a pickled checkpoint)"
        return None  # not a file a stage writes, whatever its name
    try:
        with open(path, encoding="utf-8") as fh:
            head = json.loads(fh.readline() or "null")
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return "a training history" if isinstance(head, dict) and "epoch" in head and "loss" in head else None


def claim(path: str, reads: Iterable[Optional[str]] = (), overwrite: bool = False, what: str = "output") -> None:
    """Refuse (:class:`ConfigError`, one line) to write ``path`` under the rule of the module docstring."""
    if not os.path.lexists(path):
        return
    for source in reads:
        if source and os.path.exists(source) and os.path.samefile(path, source):
            raise ConfigError(f"{path} is a file this command reads: write the {what} somewhere else")
    if os.path.isdir(path):
        raise ConfigError(f"{path} is a folder: give a file path for the {what}")
    if not overwrite:
        raise ConfigError(f"{path} exists: pass --overwrite to replace it, or choose another path for the {what}")
    kind = training_output(path)
    if kind:
        raise ConfigError(f"{path} is {kind}, which only its training stage replaces: --overwrite does not apply; "
                          f"choose another path for the {what}")
