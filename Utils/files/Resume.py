"""Exact resume and protection of earlier runs' outputs.

Every stage writes ``<model_save_path>_last.ckpt`` at the end of each epoch (atomically,
``torch.load(..., weights_only=True)`` reads it): the trainee's weights and masks, the
optimiser state, where the stage is (pruning run, epoch, whether the run is over), the
records, the best state of the current run, the early-stopping counter, every random
generator the stage draws from and the history rows. ``--resume=True`` rebuilds all of it,
so the continued run computes what the uninterrupted one would have, bit for bit.

Before a stage reads its data it checks that its save paths are file-name prefixes in folders
it can write (:func:`check_output_paths`). Before it writes anything it checks that it does
not replace another run's outputs (:func:`check_outputs`): a file it reads (a supervisor, a
break point, ``--load_model_tea``/``--load_his_tea``) or another stage's file among its
outputs is always an error, even with ``--overwrite=True``; an earlier history, checkpoint or
``_last.ckpt`` of its own stage is an error unless ``--resume=True`` (continue that run) or
``--overwrite=True`` (replace it). ``--overwrite=True`` removes that earlier run's files as
the new run starts (:func:`clear_earlier_run`), so a new run that fails before its first
record leaves its own (empty) history and nothing of the old run: never a mixture of both.

The resume file holds a sha256 digest of its contents (:func:`digest`), checked on
``--resume=True``: a file damaged on disk is refused instead of resuming into another model.
It also records how its run began (:func:`run_identity`): the stage's config, the sha256 of
every file the run reads again (the splits, the supervisors) and the execution settings. A
resume with another input file, or settings other than how long the run goes on, is refused
(:func:`check_same_run`); other threads, processes or device are allowed, with a line saying the
continued run will equal an uninterrupted one up to float rounding only.
"""
from __future__ import annotations

import fnmatch
import glob
import hashlib
import os
import random
import tempfile
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np
import torch

from Utils.files import Checkpoint
from Utils.files.Atomic import atomic_write, os_error_reason
from Utils.config import Config
from Utils.config.Config import Outputs
from Utils.runtime.Errors import CheckpointError, ConfigError
from Utils.files.History import written_by

FORMAT = "lightgnn-resume"
VERSION = 1

# What a resumed run may change without a word (glob patterns over the paths of ``Config.record``):
# how long it goes on (epochs, patience, pruning runs after the last one), where its inputs lie
# (the files themselves are compared by digest) and how its outputs are treated.
FREE = ("outputs", "outputs.*", "epochs", "loop.patience", "load_model", "load_history", "data.data_dir",
        "teacher_path", "middle_path", "break_point", "runs.*.epochs")
# Settings that only change how the sums are rounded: a resume says so and goes on.
ROUNDING = ("runs.*.kd.blocks",)


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
def digest(data: Dict[str, Any]) -> str:
    """sha256 of a resume file's contents: every tensor's dtype, shape and bytes and every plain
    value, walked in a fixed order (dict keys sorted), so the same contents always give the same
    digest however the file was written or on which device the tensors were."""
    hasher = hashlib.sha256()
    _feed(hasher, data)
    return hasher.hexdigest()


def _feed(hasher, value: Any) -> None:
    """Add ``value`` to ``hasher``, each kind tagged so that e.g. 1, 1.0, "1" and [1] differ."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        hasher.update(f"T{tensor.dtype}{tuple(tensor.shape)}:".encode())
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):  # keys of one dict are all str or all int (the optimiser's state)
        hasher.update(f"D{len(value)}:".encode())
        for key in sorted(value, key=repr):
            _feed(hasher, key)
            _feed(hasher, value[key])
    elif isinstance(value, (list, tuple)):  # (a reader may give either back)
        hasher.update(f"L{len(value)}:".encode())
        for item in value:
            _feed(hasher, item)
    else:  # None, bool, int, float, str: repr() is exact (floats round-trip)
        hasher.update(f"{type(value).__name__}:{value!r};".encode("utf-8", "surrogatepass"))


def save_last(path: str, payload: Dict[str, Any]) -> None:
    """Write the resume file atomically (the previous one stays whole until the new one is),
    with the :func:`digest` of everything else it holds under ``digest``."""
    data = {"format": FORMAT, "version": VERSION, **payload}
    data["digest"] = digest(data)
    atomic_write(path, "wb", lambda handle: torch.save(data, handle), "resume checkpoint")


def load_last(path: str, role: str, fingerprint: str, identity: Mapping[str, Any], flags: Mapping[str, Any],
              say: Callable[[str], Any]) -> Dict[str, Any]:
    """Read ``path`` for ``--resume=True``: it must be whole (its digest), this stage's, on this
    train split, and the same run as ``identity`` (:func:`run_identity`) describes:
    :func:`check_same_run` (``flags``: this run's, to name what the user changed)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"--resume=True but there is no {path} to continue from (the stage writes it at "
                              f"the end of every epoch; start without --resume)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle readers raise many types on damaged files
        raise Checkpoint.weights_only_error(path, exc, "resume checkpoint") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        raise CheckpointError(f"{path} is not a resume checkpoint of this program")
    stored = data.pop("digest", None)  # None: written before digests were stored; resumed unchecked
    if stored is not None and stored != digest(data):
        raise CheckpointError(f"resume checkpoint {path} is damaged: its contents do not match the sha256 digest "
                              "written with them, so it is not resumed from (rerun with --overwrite=True to "
                              "start again)")
    if data["role"] != role:
        raise CheckpointError(f"{path} resumes a {data['role']} stage, not a {role} stage")
    if data["train_fingerprint"] != fingerprint:
        raise CheckpointError(f"{path} was written on another train split than this dataset's")
    check_same_run(path, data, identity, flags, say)
    return data


# ----------------------------------------------------------------------------- what a resume compares
def file_digest(path: str) -> str:
    """sha256 of a file's bytes."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def run_identity(cfg, files: Mapping[str, Optional[str]], execution: Mapping[str, Any]) -> Dict[str, Any]:
    """What a run's resume file records about how it began, for :func:`check_same_run`:

    * ``config``: the stage's frozen config (``Config.record``);
    * ``inputs``: the sha256 of every file the resumed run reads again: the splits in the data
      folder and ``files`` (flag name -> path: its supervisors);
    * ``execution``: what changes only the rounding (threads, processes, device, deterministic
      kernels)."""
    folder = cfg.data.folder
    paths = {name: os.path.join(folder, name) for name in ("trnMat.pkl", "tstMat.pkl", "valMat.pkl")}
    paths.update({f"--{flag}": path for flag, path in files.items() if path})
    return {"config": Config.record(cfg), "execution": dict(execution),
            "inputs": {name: {"path": path, "sha256": file_digest(path)}
                       for name, path in paths.items() if os.path.isfile(path)}}


def check_same_run(path: str, data: Mapping[str, Any], identity: Mapping[str, Any], flags: Mapping[str, Any],
                   say: Callable[[str], Any]) -> None:
    """Refuse to resume the run in ``path`` (its ``data``) with other inputs or other settings than it
    began with; say when only the rounding will differ (threads, processes, device, kernel blocks)."""
    then = data.get("identity")
    if not then:  # (written before resume files recorded it)
        say(f"{path} does not record its run's settings and inputs (an older resume file): they are not compared")
        return
    for name, now_file in identity["inputs"].items():
        before = then["inputs"].get(name)
        if before is not None and before["sha256"] != now_file["sha256"]:
            what = (f"the split {now_file['path']}" if name.endswith(".pkl")
                    else f"{name}={now_file['path']}")
            raise CheckpointError(f"--resume=True but {what} is not the file the run in {path} began with (its "
                                  "sha256 differs): the continued run would learn from two different inputs; put "
                                  "the original back, or start again with --overwrite=True")
    missing = sorted(set(then["inputs"]) - set(identity["inputs"]))
    if missing:
        raise CheckpointError(f"--resume=True but the run in {path} also read {then['inputs'][missing[0]]['path']} "
                              f"({missing[0]}), which this run does not; only how long and where it runs may change")
    changes = _differences(then["config"], identity["config"])
    refused = [change for change in changes if not _matches(change[0], FREE + ROUNDING)]
    if refused:
        name, before, after = refused[0]
        named = _changed_flags(data.get("flags") or {}, flags, before, after)
        raise ConfigError(f"--resume=True but the run in {path} was set up otherwise: {name} was {before!r}, now "
                          f"{after!r}" + (f" ({named})" if named else "") + "; only how long and where it runs may "
                          "change (start again with --overwrite=True, or other save paths)")
    rounding = [f"{name} {before} -> {after}" for name, before, after in changes if _matches(name, ROUNDING)]
    rounding += [f"{key} {then['execution'].get(key)} -> {value}" for key, value in identity["execution"].items()
                 if then["execution"].get(key, value) != value]
    if rounding:
        say(f"Resuming with other execution settings than the run began with ({'; '.join(rounding[:3])}"
            + (f" and {len(rounding) - 3} more" if len(rounding) > 3 else "") + "): the continued run equals an "
            "uninterrupted one up to float rounding, not bit for bit")


def _differences(then: Any, now: Any, name: str = "") -> List[tuple]:
    """(dotted name, before, after) of every plain value that differs between two config records;
    the pruning runs are matched by their number, and runs only one side has are the end of the
    schedule (allowed: ``--PRUNING_END``) unless they come before the other side's last run."""
    if isinstance(then, Mapping) and isinstance(now, Mapping):
        out = []
        for key in sorted(set(then) | set(now), key=str):
            out += _differences(then.get(key), now.get(key), f"{name}.{key}" if name else str(key))
        return out
    if name == "runs" and isinstance(then, (list, tuple)) and isinstance(now, (list, tuple)):
        before, after = ({str(run["run"]): run for run in side} for side in (then, now))
        last = min(max(map(int, before), default=0), max(map(int, after), default=0))
        out = []
        for key in sorted(set(before) | set(after), key=int):
            if key in before and key in after:
                out += _differences(before[key], after[key], f"runs.{key}")
            elif int(key) <= last:
                out.append((f"runs.{key}", "a pruning run" if key in before else None,
                            "a pruning run" if key in after else None))
        return out
    if isinstance(then, (list, tuple)) and isinstance(now, (list, tuple)) and len(then) == len(now):
        return [change for i, (a, b) in enumerate(zip(then, now)) for change in _differences(a, b, f"{name}.{i}")]
    return [] if then == now else [(name, then, now)]


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _changed_flags(then: Mapping[str, Any], now: Mapping[str, Any], before: Any, after: Any) -> str:
    """The published flags that went from ``before`` to ``after``, the values of the refused
    setting (the user set flags, not config fields): "--lr=0.5 where it used --lr=0.001"."""
    changed = [name for name in sorted(now) if name in then and then[name] != now[name]
               and _same_value(then[name], before) and _same_value(now[name], after)]
    return ", ".join(f"--{name}={now[name]} where it used --{name}={then[name]}" for name in changed)


def _same_value(flag: Any, setting: Any) -> bool:
    try:
        return flag == setting or float(flag) == float(setting)
    except (TypeError, ValueError):
        return str(flag) == str(setting)


# ----------------------------------------------------------------------------- the output paths
def check_output_paths(outputs: Outputs) -> None:
    """Refuse a ``--model_save_path``/``--his_save_path`` that names a folder rather than the
    start of file names (``out/`` would write the hidden ``out/.mod``), or whose folder cannot
    be made or written, before any data is read or any output written."""
    paths = (("model_save_path", str(outputs.model_path)), ("his_save_path", str(outputs.history_path)))
    for flag, value in paths:  # (both checked before either folder is made)
        if value.endswith(("/", os.sep)) or os.path.basename(value) in ("", ".", ".."):
            raise ConfigError(f"--{flag}={value} names a folder, but it is the start of the file names the stage "
                              f"writes (--{flag}=out/run writes out/run.his, out/run_last.ckpt, ...): add a name, "
                              f"e.g. --{flag}={os.path.join(value, 'run')}")
    for flag, value in paths:
        folder = os.path.dirname(os.path.abspath(value))
        try:
            os.makedirs(folder, exist_ok=True)
            handle, probe = tempfile.mkstemp(dir=folder, prefix=".lightgnn-write-test-")
            os.close(handle)
            os.remove(probe)
        except OSError as exc:
            raise CheckpointError(f"--{flag}={value}: cannot write in {folder}: "
                                  f"{os_error_reason(exc, value)}") from None


def output_patterns(outputs: Outputs, role: str) -> List[str]:
    """Glob patterns of every file the ``role`` stage writes at its save paths."""
    model, his = glob.escape(outputs.model_path), glob.escape(outputs.history_path)
    patterns = [glob.escape(outputs.last_path), glob.escape(outputs.history_file)]
    if role == "teacher":
        return patterns + [model + ".mod"]
    patterns += [model + "_best_*.mod", model + "_2nd_best_*.mod", his + "_best_*.his", his + "_2nd_best_*.his",
                 his + "_compression_prn*.json"]
    return patterns + ([his + "_training.png", his + "_tradeoff.png"] if role == "student" else [])


def existing_outputs(outputs: Outputs, role: str) -> List[str]:
    """The files already at the ``role`` stage's output paths (absolute, each once)."""
    return sorted({os.path.abspath(path) for pattern in output_patterns(outputs, role)
                   for path in glob.glob(pattern) if os.path.isfile(path)})


def output_role(path: str) -> Optional[str]:
    """The stage (role) that wrote an output file, as the file records it: a checkpoint's
    metadata, a resume file's ``role``, a history row's ``stage``; None when it records none or
    cannot be read (then it is not known to be another stage's)."""
    try:
        if path.endswith(".his"):
            return written_by(path)
        if path.endswith("_last.ckpt"):
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            return data.get("role") if isinstance(data, dict) else None
        if path.endswith(".mod"):
            ckpt = Checkpoint.load_checkpoint(path)
            return None if ckpt.meta.get("source") == "published" else Checkpoint.checkpoint_role(ckpt.meta)
    except Exception:  # unreadable or not ours: nothing says it is another stage's
        return None
    return None


def _kind(path: str) -> str:
    return ("resume checkpoint" if path.endswith("_last.ckpt") else "checkpoint" if path.endswith(".mod")
            else "history" if path.endswith(".his") else "output")


def check_outputs(outputs: Outputs, role: str, inputs: Mapping[str, Optional[str]], continuing: bool = False) -> None:
    """Before the ``role`` stage writes anything, refuse outputs that would replace

    * a file the stage reads (``inputs``: flag name -> path, None when not read), or a file
      another stage wrote: always, even with ``--overwrite=True``;
    * an earlier run of this stage: unless ``--resume=True`` (continue it), ``--overwrite=True``
      (replace it) or ``continuing`` (``--load_model_tea`` with ``--load_his_tea``: the run
      they name goes on in its own files, its rows kept first).
    """
    fixed = [outputs.history_file, outputs.last_path] + ([outputs.model_path + ".mod"] if role == "teacher" else [])
    for path in fixed:
        if os.path.isdir(path):
            raise ConfigError(f"{path} is a folder, in the way of the {_kind(path)} this stage writes there: move it, "
                              "or choose other --model_save_path/--his_save_path")
    found = existing_outputs(outputs, role)
    real = {os.path.realpath(path): path for path in found}
    for flag, path in inputs.items():
        if path and os.path.realpath(path) in real:
            raise ConfigError(f"--{flag}={path} (the {output_role(path) or role} {_kind(path)} this stage reads) "
                              f"is among the files it writes at --model_save_path={outputs.model_path} / "
                              f"--his_save_path={outputs.history_path}: a stage never writes over its own input, even "
                              "with --overwrite=True; choose other save paths")
    if outputs.resume:  # the resume file's role was checked; the rest are the resumed run's own outputs
        return
    for path in found:
        owner = output_role(path)
        if owner is not None and owner != role:
            raise ConfigError(f"{path} is the {owner} stage's {_kind(path)}, not this {role} stage's: "
                              "--overwrite=True only replaces an earlier run of the same stage; choose other "
                              "--model_save_path/--his_save_path")
    earlier = [path for path in found if not (path.endswith(".his") and os.path.getsize(path) == 0)]
    if earlier and not (outputs.overwrite or continuing):
        raise ConfigError(f"an earlier run's outputs are at these paths ({earlier[0]}"
                          + (f" and {len(earlier) - 1} more" if len(earlier) > 1 else "") + "): pass --resume=True to "
                          "continue it, --overwrite=True to replace it, or other --model_save_path/--his_save_path")


def clear_earlier_run(outputs: Outputs, role: str, say: Callable[[str], Any]) -> None:
    """``--overwrite=True``: remove the earlier run's files (its history, ``_last.ckpt``,
    checkpoints, record histories, reports and plots) together, as the new run starts, after
    every input was checked and before its history is written. The new run then owns every
    file at its paths: one that fails before its first record leaves no checkpoint of the old
    run beside its new history."""
    if not outputs.overwrite:
        return
    files = existing_outputs(outputs, role)
    for path in files:
        try:
            os.remove(path)
        except OSError as exc:
            raise CheckpointError(f"--overwrite=True: cannot remove the earlier run's {path}: "
                                  f"{os_error_reason(exc, path)}") from None
    if files:
        say(f"--overwrite=True: removed the {len(files)} files of the earlier run at these paths")
