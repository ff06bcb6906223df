"""One run at a time per output prefix.

A stage writes many files under ``--model_save_path`` and ``--his_save_path`` (its history,
``_last.ckpt``, its checkpoints) over hours. Two runs started on the same paths would each
pass the check "no earlier run is here" and then write over each other, leaving files of
both. So before a stage checks or writes anything there it takes ``<prefix>.lock`` for each
of the two prefixes (:func:`own`), and holds it until it ends:

* the lock is the operating system's (``flock``) on that file, which a process loses when it
  ends however it ends (an error, Ctrl-C, ``kill -9``): a crashed run never blocks the next;
* the file says who holds it (PID, host, start time, command), so a refused run names the
  one that holds the prefix: ``error: outModels/t is in use by another run (PID 4242, ...)``;
* a lock file left by a run that ended without removing it (killed) is taken over, saying so;
* a run that ends normally removes its lock files.

Only rank 0 of a data-parallel run takes the locks (its processes are one run). Where the
platform has no ``flock`` (Windows), the file is created exclusively and a holder whose PID no
longer runs is taken over.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from typing import Callable, Iterator, List, Tuple

from Utils.config.Config import Outputs
from Utils.files.Resume import check_output_paths
from Utils.runtime.Errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

SUFFIX = ".lock"


def lock_paths(outputs: Outputs) -> List[str]:
    """The lock files of a stage's two output prefixes (one when both are the same prefix)."""
    return sorted({os.path.abspath(outputs.model_path) + SUFFIX, os.path.abspath(outputs.history_path) + SUFFIX})


@contextlib.contextmanager
def own(outputs: Outputs, lead: bool = True, say: Callable[[str], object] = lambda line: None) -> Iterator[None]:
    """Hold the lock of both output prefixes for the ``with`` block (only ``lead`` takes them);
    :class:`ConfigError` naming the holder when another live run holds one. The save paths are
    checked first (:func:`Utils.files.Resume.check_output_paths`: their folders are made)."""
    check_output_paths(outputs)
    held: List[Tuple[int, str]] = []
    try:
        if lead:
            for path in lock_paths(outputs):
                held.append((_acquire(path, say), path))
        yield
    finally:
        for fd, path in held:
            _release(fd, path)


def _acquire(path: str, say: Callable[[str], object]) -> int:
    prefix = path[:-len(SUFFIX)]
    for _ in range(5):  # (retried only when the file was replaced between open and lock)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | (0 if fcntl else os.O_EXCL), 0o644)
        except FileExistsError:  # no flock: the file itself is the lock
            holder = _read(path)
            if _alive(holder):
                raise _busy(prefix, holder) from None
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            _say_taken_over(say, path, holder)
            continue
        except OSError as exc:
            raise ConfigError(f"cannot create the lock file {path}: {exc.strerror or exc}") from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # (BlockingIOError: another process holds it)
                holder = _read(path)
                os.close(fd)
                raise _busy(prefix, holder) from None
            if not _same_file(fd, path):  # its holder removed it after we opened it: take the new one
                os.close(fd)
                continue
            holder = _read(path)
            if holder and holder.get("pid") != os.getpid():
                _say_taken_over(say, path, holder)
        _write(fd)
        return fd
    raise ConfigError(f"cannot take the lock {path}: other runs keep replacing it")


def _release(fd: int, path: str) -> None:
    """Remove the lock file if it is still ours, then let the lock go (closing the file)."""
    try:
        if _same_file(fd, path):
            os.remove(path)
    except OSError:
        pass  # a lock file left behind is taken over by the next run
    finally:
        os.close(fd)


def _write(fd: int) -> None:
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:300]}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(holder) + "\n").encode())


def _read(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            holder = json.loads(fh.read() or "{}")
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def _same_file(fd: int, path: str) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except OSError:
        return False


def _alive(holder: dict) -> bool:
    """Whether the holder's process still runs (on another host: assumed to)."""
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    if holder.get("host") not in (None, socket.gethostname()):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _busy(prefix: str, holder: dict) -> ConfigError:
    who = f"PID {holder['pid']}" if "pid" in holder else "a process"
    if holder.get("host"):
        who += f" on {holder['host']}"
    if holder.get("started"):
        who += f", started {holder['started']}"
    command = f": {holder['command']}" if holder.get("command") else ""
    return ConfigError(f"{prefix} is in use by another run ({who}{command}); two runs on one output prefix "
                       "would write over each other's files: wait for it to end, stop it, or choose other "
                       "--model_save_path/--his_save_path")


def _say_taken_over(say: Callable[[str], object], path: str, holder: dict) -> None:
    who = f"PID {holder['pid']}" if "pid" in holder else "an earlier run"
    say(f"Took over the lock {path} left by {who}, which no longer runs")
