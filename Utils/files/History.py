"""Training histories on disk: a run's JSON-lines ``.his`` file and the record ``.his`` files.

A run's history holds one JSON object per line per epoch (loss parts, metrics, sparsity,
seconds), rewritten whole and atomically after each epoch (:func:`write_rows`); a record
file is one JSON document ``{"stage": role, "record": …, "history": rows}`` (:func:`save_record`).
:func:`read_history` reads either; :func:`written_by` says which stage wrote one.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

from Utils.files.Atomic import atomic_write
from Utils.files.Checkpoint import plain
from Utils.runtime.Errors import DataError


def write_rows(path: str, rows: list) -> None:
    """Write ``rows`` as JSON lines, atomically (a kill leaves the previous complete file)."""
    text = "".join(json.dumps(row) + "\n" for row in rows)
    atomic_write(path, "w", lambda handle: handle.write(text), "history")


def save_record(path: str, obj: Any) -> None:
    """Write plain data as JSON atomically (the record ``.his`` files)."""
    text = json.dumps(plain(obj, "history"), indent=1)
    atomic_write(os.fspath(path), "w", lambda handle: handle.write(text), "history")


def written_by(path: str) -> Optional[str]:
    """The role of the stage that wrote a history or record file (its rows', or the record's own
    ``stage``: a record saved at epoch 0 holds no row yet), or None when it records none."""
    try:
        with open(path, encoding="utf-8") as fh:
            whole = json.loads(fh.read())
        if isinstance(whole, dict) and isinstance(whole.get("stage"), str) and "record" in whole:
            return whole["stage"]
    except (OSError, UnicodeDecodeError, ValueError):
        pass  # JSON lines: read below
    return next((row["stage"] for row in read_history(path) if "stage" in row), None)


def read_history(path: str, missing_ok: bool = True) -> list:
    """The rows of a history file: the JSON lines :meth:`RunLog.record` writes, or a record
    file ``{"record": …, "history": rows}``. A missing file is no rows (an error when not
    ``missing_ok``); a line that is not a JSON object is a :class:`DataError` naming it."""
    if not path or not os.path.isfile(path):
        if missing_ok:
            return []
        raise DataError(f"history file not found: {path}")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict) and isinstance(whole.get("history"), list):
        return whole["history"]
    if isinstance(whole, list):
        return whole
    if isinstance(whole, dict):  # a JSON-lines file of a single row
        return [whole]
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not a history row ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: not a history row (expected a JSON object)")
        rows.append(row)
    return rows
