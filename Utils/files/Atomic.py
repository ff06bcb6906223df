"""Writing a file so that a reader never sees half of it, and saying in words why a write failed.

Every file the tools write (checkpoints, resume files, histories, reports, exports,
recommendations) goes through :func:`atomic_write`; :func:`os_error_reason` turns an
``OSError`` on a path the user gave into a sentence they can act on.
"""
from __future__ import annotations

import errno
import os
import secrets
from typing import Any, List, Optional

from Utils.runtime.Errors import CheckpointError


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
        if isinstance(exc, RuntimeError) and "PytorchStreamWriter" in str(exc):  # torch.save's own write error
            raise CheckpointError(f"cannot write {what} {path}: the write failed part-way (is the disk full?); "
                                  "the previous file, if any, is unchanged") from exc
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
