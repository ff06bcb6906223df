"""Compare the files two runs wrote (``modelTools.py compare``): did a rerun reproduce?

A run's outputs are its checkpoints and resume file (``.mod``, ``_last.ckpt``: every tensor
inside, compared with ``torch.equal``) and its histories (``.his``: every row, compared without
its wall-clock timings). Two runs of the same command with the same seed, ``--threads`` and
kind of machine are identical (README, "Reproducible runs"); across thread counts or process
counts :func:`compare_runs` says by how much they differ.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List

import torch

from Utils.files.Checkpoint import tensors_in, weights_only_error
from Utils.runtime.Errors import ConfigError
from Utils.files.History import read_history

#: History fields that measure wall-clock time, different in every run.
TIMINGS = frozenset({"seconds", "train_seconds", "time", "wall_seconds"})


def without_timings(value: Any) -> Any:
    """``value`` (history rows) with every :data:`TIMINGS` field dropped, at any depth."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def run_outputs(folder: str) -> Dict[str, Any]:
    """Every output file in ``folder`` by name: ``{path: tensor}`` for checkpoints and resume
    files, the rows without timings for histories."""
    if not os.path.isdir(folder):
        raise ConfigError(f"{folder} is not a folder (give the folders two runs wrote their outputs in)")
    found: Dict[str, Any] = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith((".mod", ".ckpt")):
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # damaged or foreign files: one line, as the stages refuse them
                raise weights_only_error(path, exc) from exc
            found[name] = dict(tensors_in(loaded))
        elif name.endswith(".his"):
            found[name] = without_timings(read_history(path))
    return found


@dataclass
class Comparison:
    """How two runs' outputs differ: files only one run has, files whose contents differ (with
    the largest absolute difference of any of their floating-point tensors)."""
    files: int = 0
    only_in_a: List[str] = field(default_factory=list)
    only_in_b: List[str] = field(default_factory=list)
    different: Dict[str, float] = field(default_factory=dict)  # file -> largest |a - b| (0.0: not numeric)

    @property
    def identical(self) -> bool:
        return not (self.only_in_a or self.only_in_b or self.different)

    @property
    def max_abs_diff(self) -> float:
        return max(self.different.values(), default=0.0)


def compare_runs(a: Dict[str, Any], b: Dict[str, Any]) -> Comparison:
    """Compare two :func:`run_outputs`."""
    result = Comparison(files=len(set(a) & set(b)), only_in_a=sorted(set(a) - set(b)),
                        only_in_b=sorted(set(b) - set(a)))
    for name in sorted(set(a) & set(b)):
        mine, theirs = a[name], b[name]
        if name.endswith(".his"):
            if mine != theirs:
                result.different[name] = 0.0
            continue
        largest, same = 0.0, sorted(mine) == sorted(theirs)
        for key, tensor in mine.items():
            other = theirs.get(key)
            if other is None or other.shape != tensor.shape or other.dtype != tensor.dtype:
                same = False
            elif not torch.equal(tensor, other):
                same = False
                if tensor.is_floating_point():
                    largest = max(largest, (tensor.double() - other.double()).abs().max().item())
        if not same:
            result.different[name] = largest
    return result
