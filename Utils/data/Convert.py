"""Turning interaction logs into the LightGNN dataset format (docs/method.md#data), for ``prepareData.py``.

Pipeline (:func:`prepare`)::

    read  ->  rating >= min_rating  ->  dedupe (user, item)  ->  k-core (iterated)
          ->  reindex 0..U-1 / 0..I-1  ->  split train/val/test  ->  write (atomically)

Readers return :class:`Interactions`: one row per (user, item) event with the original
ids as strings, optional rating and timestamp, the source line of each row (for error
messages) and, when the train/test split is given, the part each row belongs to.

Output, in ``<data_dir>/sparse_<name>/``:

* ``trnMat.pkl``, ``valMat.pkl`` (omitted when ``val_ratio`` is 0), ``tstMat.pkl``:
  pickled ``scipy.sparse.coo_matrix``, float32, value 1.0, shape U×I, as published.
* ``idmap.json``: ``{"users": [...], "items": [...]}`` where ``users[k]`` is the
  original id (a string) of user index ``k``, likewise for items.
* ``stats.json``: the statistics table and the options that produced the dataset.

The directory is built under a temporary name next to the target and renamed into
place only when everything is written, so a failure leaves no partial output.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import json
import lzma
import os
import pickle
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import scipy.sparse as sp

from Utils.runtime.Errors import ConfigError, DataError

TRAIN, VAL, TEST = 0, 1, 2
PART_NAMES = ("train", "val", "test")
SPLIT_FILES = ("trnMat.pkl", "valMat.pkl", "tstMat.pkl")
FORMATS = ("lightgcn", "recbole", "csv", "synthetic")

# Column names recognised in CSV headers, compared after lower-casing and removing
# '_', '-', ' ' and a RecBole-style ':type' suffix.
USER_NAMES = ("user", "userid", "uid", "u", "users", "customerid", "reviewerid", "visitorid")
ITEM_NAMES = ("item", "itemid", "iid", "i", "items", "movie", "movieid", "product", "productid",
              "asin", "businessid", "songid", "trackid", "bookid", "isbn")
RATING_NAMES = ("rating", "ratings", "score", "stars", "rate", "overall", "r", "value", "weight")
TIME_NAMES = ("timestamp", "time", "ts", "t", "datetime", "unixreviewtime", "unixtime")
RECBOLE_FIELDS = {"user": "user_id", "item": "item_id", "rating": "rating", "time": "timestamp"}


# ----------------------------------------------------------------------------- options
@dataclass
class Options:
    """Everything ``prepareData.py`` can be asked; the defaults are the CLI defaults."""

    format: str
    name: str
    input: Optional[str] = None
    test: Optional[str] = None
    data_dir: str = "./Datasets"
    kcore: int = 3
    min_rating: Optional[float] = None
    split: str = "random"
    seed: int = 2025
    val_ratio: float = 0.05
    test_ratio: float = 0.25
    overwrite: bool = False  # replace an existing dataset of the same name
    # CSV / RecBole columns: a header name or a 0-based index; "none" drops an optional column
    sep: Optional[str] = None
    header: str = "auto"
    user_col: Optional[str] = None
    item_col: Optional[str] = None
    rating_col: Optional[str] = None
    time_col: Optional[str] = None
    # synthetic
    n_users: int = 3000
    n_items: int = 2000
    n_groups: int = 20
    per_user: float = 20.0
    in_group: float = 0.8

    def check(self) -> None:
        """Fail early (ConfigError naming the flag) on values that cannot work."""
        if self.format not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if not self.name or os.sep in self.name or self.name in (".", ".."):
            raise ConfigError(f"--name must be a plain name (it becomes sparse_NAME), got {self.name!r}")
        if self.format == "synthetic":
            if self.input or self.test:
                raise ConfigError("--input/--test are not used with --format synthetic")
            if min(self.n_users, self.n_items, self.n_groups) < 1:
                raise ConfigError("--n_users, --n_items and --n_groups must be positive")
            if self.n_groups > min(self.n_users, self.n_items):
                raise ConfigError("--n_groups cannot exceed --n_users or --n_items")
            if not 1.0 <= self.per_user <= self.n_items:
                raise ConfigError("--per_user must be between 1 and --n_items")
            if not 0.0 <= self.in_group <= 1.0:
                raise ConfigError("--in_group must be in [0, 1]")
        elif not self.input:
            raise ConfigError(f"--input is required with --format {self.format}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0 (NumPy's generators refuse negative seeds), got {self.seed}")
        if self.kcore < 0:
            raise ConfigError(f"--kcore must be >= 0 (0 disables the filter), got {self.kcore}")
        if self.split not in ("random", "time"):
            raise ConfigError(f"--split must be random or time, got {self.split!r}")
        if self.test and self.split == "time":
            raise ConfigError("--split time cannot be combined with --test: the given train/test split is kept")
        if not 0.0 <= self.val_ratio < 1.0:
            raise ConfigError(f"--val_ratio must be in [0, 1), got {self.val_ratio}")
        if not 0.0 < self.test_ratio < 1.0:
            raise ConfigError(f"--test_ratio must be in (0, 1), got {self.test_ratio}")
        if self.val_ratio + self.test_ratio >= 1.0:
            raise ConfigError("--val_ratio + --test_ratio must be below 1 (train needs a share)")
        if self.header not in ("auto", "yes", "no"):
            raise ConfigError(f"--header must be auto, yes or no, got {self.header!r}")


# ----------------------------------------------------------------------------- reading
@dataclass
class Interactions:
    """Raw interactions as read: one entry per row of the source (before any filter)."""

    users: np.ndarray  # str array, original ids
    items: np.ndarray  # str array, original ids
    lines: np.ndarray  # int64, source line (1-based) of each row, for messages and stable order
    ratings: Optional[np.ndarray] = None  # float64
    times: Optional[np.ndarray] = None  # float64
    part: Optional[np.ndarray] = None  # int8 TRAIN/TEST when the split is given, else None
    sources: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def take(self, index: np.ndarray) -> "Interactions":
        pick = lambda a: None if a is None else a[index]  # noqa: E731
        return Interactions(self.users[index], self.items[index], self.lines[index], pick(self.ratings),
                            pick(self.times), pick(self.part), list(self.sources))


def concat(train: Interactions, test: Interactions) -> Interactions:
    """Train and test interactions of a given split in one table, tagged by ``part``."""
    if (train.ratings is None) != (test.ratings is None) or (train.times is None) != (test.times is None):
        raise DataError(f"{train.sources[0]} and {test.sources[0]} do not have the same columns")
    cat = lambda a, b: None if a is None else np.concatenate([a, b])  # noqa: E731
    part = np.concatenate([np.full(len(train), TRAIN, np.int8), np.full(len(test), TEST, np.int8)])
    return Interactions(cat(train.users, test.users), cat(train.items, test.items),
                        cat(train.lines, test.lines), cat(train.ratings, test.ratings),
                        cat(train.times, test.times), part, train.sources + test.sources)


# Compressed inputs, recognised by their first bytes, whatever the file's name.
_COMPRESSED = ((b"\x1f\x8b", "gzip", gzip.decompress), (b"BZh", "bzip2", bz2.decompress),
               (b"\xfd7zXZ\x00", "xz", lzma.decompress))


def _read_text(path: str) -> str:
    """The file as text (UTF-8, BOM allowed; gzip, bzip2 or xz compressed files are read through);
    DataError naming the line of an undecodable byte."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise DataError(f"input file not found: {path}") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    for magic, kind, decompress in _COMPRESSED:
        if raw.startswith(magic):
            try:
                raw = decompress(raw)
            except (OSError, EOFError, ValueError, lzma.LZMAError) as exc:
                raise DataError(f"{path} is a {kind} file that cannot be decompressed ({exc})") from None
            break
    if raw.startswith(b"PK\x03\x04"):
        raise DataError(f"{path} is a zip archive: extract the interaction file from it and give that")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text ({exc.reason})") from None


def _lines(text, start: int = 0) -> Iterator[Tuple[int, str]]:
    """(1-based line number, line without its end) for the non-blank lines of ``text``
    (a string, or the list of its lines split at ``\\n``)."""
    physical = text.split("\n") if isinstance(text, str) else text
    for number, line in enumerate(physical[start:], start + 1):
        if line.strip():
            yield number, line.rstrip("\r")


def _floats(values: Sequence[str], lines: np.ndarray, path: str, what: str) -> np.ndarray:
    """Parse a column of numbers; DataError ``path:line`` on the first non-numeric or non-finite one."""
    try:
        out = np.array([float(v) for v in values], dtype=np.float64)
    except ValueError:
        out = None
    if out is not None and np.isfinite(out).all():
        return out
    for k, v in enumerate(values):
        try:
            ok = np.isfinite(float(v))
        except ValueError:
            ok = False
        if not ok:
            raise DataError(f"{path}:{lines[k]}: {what} {v.strip()!r} is not a finite number")
    raise AssertionError("unreachable")


def _norm(name: str) -> str:
    name = name.split(":", 1)[0].strip().lower()
    for ch in "_- ":
        name = name.replace(ch, "")
    return name


def _resolve_column(spec: Optional[str], header: Optional[List[str]], role: str, flag: str,
                    path: str) -> Optional[int]:
    """Index of the column a ``--*_col`` value names (a header name or a 0-based index)."""
    if spec is None:
        return None
    text = str(spec).strip()
    if text.lower() == "none":
        return -1
    if text.lstrip("-").isdigit():
        index = int(text)
        width = len(header) if header is not None else None
        if index < 0 or (width is not None and index >= width):
            raise ConfigError(f"{flag} {index} is out of range for {path} ({width} columns)")
        return index
    if header is None:
        raise ConfigError(f"{flag} {text!r} names a column but {path} has no header (give a 0-based index)")
    names = [h.strip() for h in header]
    for key, candidates in ((text, names), (text, [h.split(":", 1)[0].strip() for h in names]),
                            (_norm(text), [_norm(h) for h in names])):
        if key in candidates:
            return candidates.index(key)
    raise ConfigError(f"{flag} {text!r}: no {role} column of that name in {path} (columns: {', '.join(names)})")


def _collect(rows: Iterable[Tuple[int, List[str]]], path: str, width: int, cols: Dict[str, int],
             header: Optional[Tuple[int, List[str]]] = None) -> Interactions:
    """Pick the user/item/rating/time fields out of split rows, checking each row.

    ``header`` is (line number, fields) of the file's header, when it has one: a later row
    equal to it (two files concatenated) is a DataError, never a user named like a column."""
    header_key = [f.strip().lower() for f in header[1]] if header is not None else None
    for role, index in cols.items():
        if index >= width:
            raise ConfigError(f"--{role}_col {index} is out of range: {path} has {width} columns")
    uc, ic = cols["user"], cols["item"]
    rc, tc = cols.get("rating", -1), cols.get("time", -1)
    users: List[str] = []
    items: List[str] = []
    ratings: List[str] = []
    times: List[str] = []
    lines: List[int] = []
    for number, fields in rows:
        if header_key is not None and [f.strip().lower() for f in fields] == header_key:
            raise DataError(f"{path}:{number}: repeats the header of line {header[0]} (two files concatenated?); "
                            "remove this line, or the header's column names would be read as ids")
        if len(fields) != width:
            raise DataError(f"{path}:{number}: expected {width} fields, found {len(fields)}")
        user, item = fields[uc].strip(), fields[ic].strip()
        if not user or not item:
            raise DataError(f"{path}:{number}: empty {'user' if not user else 'item'} id")
        users.append(user)
        items.append(item)
        lines.append(number)
        if rc >= 0:
            ratings.append(fields[rc])
        if tc >= 0:
            times.append(fields[tc])
    line_arr = np.asarray(lines, dtype=np.int64)
    return Interactions(
        users=np.asarray(users, dtype=str), items=np.asarray(items, dtype=str), lines=line_arr,
        ratings=_floats(ratings, line_arr, path, "rating") if rc >= 0 else None,
        times=_floats(times, line_arr, path, "timestamp") if tc >= 0 else None,
        sources=[path])


def read_lightgcn(path: str) -> Interactions:
    """LightGCN ``train.txt``/``test.txt``: one line per user, ``user item item ...`` (integer ids)."""
    text = _read_text(path)
    users: List[str] = []
    items: List[str] = []
    lines: List[int] = []
    for number, line in _lines(text):
        tokens = line.split()
        user = tokens[0]
        for token in tokens:
            if not _is_int(token):
                raise DataError(f"{path}:{number}: id {token!r} is not a non-negative integer "
                                f"(LightGCN lines are 'user item item ...')")
        k = len(tokens) - 1
        users.extend([user] * k)
        items.extend(tokens[1:])
        lines.extend([number] * k)
    return Interactions(np.asarray(users, dtype=str), np.asarray(items, dtype=str),
                        np.asarray(lines, dtype=np.int64), sources=[path])


def _is_int(token: str) -> bool:
    return token.isdigit() and token.isascii()


def read_recbole(path: str, opts: Options) -> Interactions:
    """RecBole atomic ``.inter``: tab-separated, header ``name:type`` (user_id, item_id, rating, timestamp)."""
    text = _read_text(path)
    rows = _lines(text)
    try:
        number, header_line = next(rows)
    except StopIteration:
        raise DataError(f"{path}: empty file") from None
    header = header_line.split("\t")
    if not any(":" in h for h in header):
        raise DataError(f"{path}:{number}: not a RecBole header (expected tab-separated fields such as "
                        f"user_id:token, item_id:token)")
    names = [h.split(":", 1)[0].strip() for h in header]

    def find(role: str, spec: Optional[str], flag: str, required: bool) -> int:
        index = _resolve_column(spec, header, role, flag, path)
        if index is not None:
            return index
        wanted = RECBOLE_FIELDS[role]
        for match in (lambda n: n == wanted, lambda n: n.startswith(wanted)):
            hits = [k for k, n in enumerate(names) if match(n)]
            if hits:
                return hits[0]
        if required:
            raise DataError(f"{path}:{number}: no {wanted} field in the header (fields: {', '.join(names)}); "
                            f"name it with {flag}")
        return -1

    cols = {"user": find("user", opts.user_col, "--user_col", True),
            "item": find("item", opts.item_col, "--item_col", True),
            "rating": find("rating", opts.rating_col, "--rating_col", False),
            "time": find("time", opts.time_col, "--time_col", False)}
    return _collect(((n, line.split("\t")) for n, line in rows), path, len(header), cols, (number, header))


def _sniff_separator(sample: List[str]) -> str:
    """The first of tab, comma, semicolon, bar whose count is the same non-zero number on every
    sample line; else the first present on every sample line (ragged counts: quoted fields);
    else the one present on most (over half) of the sample lines, so that a malformed line
    lacking it is reported at its own line number; otherwise runs of whitespace (``" "``)."""
    for sep in ("\t", ",", ";", "|"):
        counts = {line.count(sep) for line in sample}
        if len(counts) == 1 and counts.pop() > 0:
            return sep
    for sep in ("\t", ",", ";", "|"):  # ragged counts (quoted fields): take the most frequent one
        if all(sep in line for line in sample):
            return sep
    present = {sep: sum(sep in line for line in sample) for sep in ("\t", ",", ";", "|")}
    best = max(present, key=lambda sep: present[sep])  # the first of equals
    if 2 * present[best] > len(sample):
        return best
    return " "


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_csv(path: str, opts: Options) -> Interactions:
    """CSV/TSV with user, item and optional rating and timestamp columns.

    Separator: ``--sep`` or sniffed (tab, comma, semicolon, bar, else whitespace). Header:
    ``--header auto`` takes the first line as a header when it contains a known column name
    (user/userId/item_id/movieId/rating/timestamp, ...) or when a field that is numeric on
    the second line is not numeric on the first. Columns: ``--user_col`` etc. (name or 0-based
    index), else by known names, else by position: user, item, rating, timestamp.
    """
    text = _read_text(path).split("\n")
    nonblank = _take(_lines(text), 2)
    if not nonblank:
        raise DataError(f"{path}: empty file")
    sample = [line for _, line in _take(_lines(text), 50)]
    sep = opts.sep if opts.sep is not None else _sniff_separator(sample)
    sep = {"\\t": "\t", "tab": "\t", "space": " ", "whitespace": " "}.get(sep, sep)
    if sep == " ":
        split_line = lambda line: line.split()  # noqa: E731
        rows: Iterator[Tuple[int, List[str]]] = ((n, line.split()) for n, line in _lines(text))
    else:
        if len(sep) != 1:
            raise ConfigError(f"--sep must be one character (or 'tab'/'space'), got {opts.sep!r}")
        split_line = lambda line: next(csv.reader([line], delimiter=sep))  # noqa: E731

        def csv_rows() -> Iterator[Tuple[int, List[str]]]:
            physical = (line[:-1] if line.endswith("\r") else line for line in text)
            reader = csv.reader(physical, delimiter=sep)
            try:
                for fields in reader:
                    if fields and any(f.strip() for f in fields):
                        yield reader.line_num, fields
            except csv.Error as exc:
                raise DataError(f"{path}:{reader.line_num}: {exc}") from None

        rows = csv_rows()
    first = split_line(nonblank[0][1])
    second = split_line(nonblank[1][1]) if len(nonblank) > 1 else None
    known = set(USER_NAMES + ITEM_NAMES + RATING_NAMES + TIME_NAMES)
    if opts.header == "auto":
        has_header = any(_norm(f) in known and not _is_number(f) for f in first) or (
            second is not None and len(second) == len(first)
            and any(_is_number(b) and not _is_number(a) for a, b in zip(first, second)))
    else:
        has_header = opts.header == "yes"
    header = first if has_header else None
    if has_header:
        next(rows)  # the header row
    width = len(first)

    def find(role: str, spec: Optional[str], flag: str, names: Sequence[str], position: int) -> int:
        index = _resolve_column(spec, header, role, flag, path)
        if index is not None:
            return index
        if header is not None:
            normed = [_norm(h) for h in header]
            for name in names:
                if name in normed:
                    return normed.index(name)
            if role in ("user", "item"):
                raise DataError(f"{path}:{nonblank[0][0]}: no {role} column found in the header "
                                f"({', '.join(h.strip() for h in header)}); name it with {flag}")
            return -1
        return position if position < width else -1

    cols = {"user": find("user", opts.user_col, "--user_col", USER_NAMES, 0),
            "item": find("item", opts.item_col, "--item_col", ITEM_NAMES, 1),
            "rating": find("rating", opts.rating_col, "--rating_col", RATING_NAMES, 2),
            "time": find("time", opts.time_col, "--time_col", TIME_NAMES, 3)}
    if cols["user"] < 0 or cols["item"] < 0 or cols["user"] == cols["item"]:
        raise DataError(f"{path}:{nonblank[0][0]}: need distinct user and item columns, found {width} field(s)")
    return _collect(rows, path, width, cols, (nonblank[0][0], first) if has_header else None)


def _take(it: Iterator, k: int) -> list:
    out = []
    for x in it:
        out.append(x)
        if len(out) == k:
            break
    return out


# ----------------------------------------------------------------------------- synthetic data
@dataclass
class SyntheticTruth:
    """The latent structure behind a synthetic dataset (original ids are the indices)."""

    user_group: np.ndarray
    item_group: np.ndarray
    item_weight: np.ndarray


def synthetic(opts: Options) -> Tuple[Interactions, SyntheticTruth]:
    """A seeded implicit-feedback dataset with latent groups and popularity skew.

    Users and items are dealt evenly into ``n_groups`` groups. Item popularity follows a
    Zipf-like law (weight ∝ 1/(rank+5)^0.9 over a random global ranking). Each user draws
    ``n_u`` ~ 3 + Geometric interactions (mean ``per_user``); each is, with probability
    ``in_group``, an item of the user's own group drawn by popularity, otherwise any item
    drawn by popularity (no repeats). Timestamps increase along each user's sequence.
    The same options give the same interactions, bit for bit.
    """
    rng = np.random.default_rng(opts.seed)
    n_users, n_items, n_groups = opts.n_users, opts.n_items, opts.n_groups
    user_group = rng.permutation(np.arange(n_users) % n_groups)
    item_group = rng.permutation(np.arange(n_items) % n_groups)
    rank = rng.permutation(n_items)
    weight = 1.0 / (rank + 5.0) ** 0.9
    log_weight = np.log(weight)
    group_items = [np.flatnonzero(item_group == g) for g in range(n_groups)]
    min_count = min(3, n_items)
    mean_extra = max(opts.per_user - min_count, 0.0)
    extra = rng.geometric(1.0 / (mean_extra + 1.0), size=n_users) - 1 if mean_extra > 0 else np.zeros(n_users, int)
    counts = np.minimum(min_count + extra, n_items // 2 if n_items >= 2 * min_count else n_items)
    users: List[np.ndarray] = []
    items: List[np.ndarray] = []
    for u in range(n_users):
        n_u = int(counts[u])
        own = group_items[user_group[u]]
        n_in = min(int(rng.binomial(n_u, opts.in_group)), own.size)
        # popularity-weighted sampling without replacement via Gumbel top-k
        keys = log_weight[own] + rng.gumbel(size=own.size)
        chosen = own[np.argpartition(-keys, n_in - 1)[:n_in]] if n_in > 0 else own[:0]
        keys = log_weight + rng.gumbel(size=n_items)
        keys[chosen] = -np.inf
        n_out = min(n_u - n_in, n_items - n_in)
        others = np.argpartition(-keys, n_out - 1)[:n_out] if n_out > 0 else chosen[:0]
        seq = rng.permutation(np.concatenate([chosen, others]))
        users.append(np.full(seq.size, u, dtype=np.int64))
        items.append(seq)
    u_arr = np.concatenate(users)
    i_arr = np.concatenate(items).astype(np.int64)
    start = rng.integers(1_500_000_000, 1_600_000_000, size=n_users)
    step = np.arange(u_arr.size) - np.repeat(np.cumsum(counts) - counts, counts)
    times = (start[u_arr] + 3600 * step + rng.integers(0, 3600, size=u_arr.size)).astype(np.float64)
    inter = Interactions(u_arr.astype(str), i_arr.astype(str), np.arange(1, u_arr.size + 1, dtype=np.int64),
                         times=times, sources=[f"synthetic(seed={opts.seed})"])
    return inter, SyntheticTruth(user_group, item_group, weight)


# ----------------------------------------------------------------------------- filters
def factorize(ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(codes, uniques): ``uniques[codes] == ids``; uniques in numeric order when every id is a
    canonical integer, else in string order."""
    if ids.size and np.char.isdigit(ids).all():
        values = ids.astype(np.int64)
        if (values.astype(str) == ids).all():  # no leading zeros: the integer is the id
            uniq, codes = np.unique(values, return_inverse=True)
            return codes.astype(np.int64), uniq.astype(str)
    uniq, codes = np.unique(ids, return_inverse=True)
    return codes.astype(np.int64), uniq


def dedupe(users: np.ndarray, items: np.ndarray, n_items: int, priority: Sequence[np.ndarray]) -> np.ndarray:
    """Indices (ascending) keeping one row per (user, item): the first by ``priority`` keys
    (most significant first; e.g. the given part, then time, then source line)."""
    key = users * np.int64(n_items) + items
    order = np.lexsort(tuple(reversed(list(priority))) + (key,)) if priority else np.argsort(key, kind="stable")
    sorted_key = key[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = sorted_key[1:] != sorted_key[:-1]
    return np.sort(order[first])


def kcore(users: np.ndarray, items: np.ndarray, k: int, n_users: int, n_items: int,
          among: Optional[np.ndarray] = None) -> Tuple[np.ndarray, int]:
    """Mask of the interactions in the k-core: repeatedly drop every interaction of a user or
    item with fewer than ``k`` interactions until none is left to drop. Returns (mask, rounds).
    ``among`` (a mask): only those interactions are counted and dropped, the others always
    kept (a given test split is never filtered: the core is that of its train split)."""
    subject = np.ones(users.size, dtype=bool) if among is None else among.astype(bool)
    keep = np.ones(users.size, dtype=bool)
    rounds = 0
    if k <= 1:
        return keep, rounds
    while True:
        counted = keep & subject
        du = np.bincount(users[counted], minlength=n_users)
        di = np.bincount(items[counted], minlength=n_items)
        drop = counted & ((du[users] < k) | (di[items] < k))
        if not drop.any():
            return keep, rounds
        keep &= ~drop
        rounds += 1


def _round(x: float) -> int:
    return int(np.floor(x + 0.5))


def _one_per_user(index: np.ndarray, users: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Split ``index`` (rows) into one random row per user and the rest, the rest shuffled."""
    perm = rng.permutation(index)
    _, first = np.unique(users[perm], return_index=True)
    is_first = np.zeros(perm.size, dtype=bool)
    is_first[first] = True
    return perm[is_first], perm[~is_first]


def split_random(users: np.ndarray, val_ratio: float, test_ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Part of each interaction: round(test_ratio·n) test, round(val_ratio·n) val, the rest train,
    uniformly at random, except that every user keeps one random interaction in train (when
    that needs more than the train share, val and test shrink)."""
    n = users.size
    n_test, n_val = _round(test_ratio * n), _round(val_ratio * n)
    n_train = n - n_test - n_val
    part = np.full(n, TEST, dtype=np.int8)
    protected, rest = _one_per_user(np.arange(n), users, rng)
    part[protected] = TRAIN
    extra = max(n_train - protected.size, 0)
    part[rest[:extra]] = TRAIN
    part[rest[extra:extra + n_val]] = VAL
    return part


def split_time(users: np.ndarray, times: np.ndarray, lines: np.ndarray, n_users: int, val_ratio: float,
               test_ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Per user, by time (ties by source line): the earliest share train, then val, the latest test.

    A user with n interactions gets floor(f·n + r) in train and floor((f+val_ratio)·n + r) in
    train+val, with f = 1 − val_ratio − test_ratio and one r ~ U[0,1) per user: every user's
    counts are within one of the exact shares and the totals are right in expectation (plain
    rounding would give no validation at all to users with fewer than 10 interactions).
    Every user keeps at least one train interaction.
    """
    n = users.size
    order = np.lexsort((lines, times, users))
    sorted_users = users[order]
    counts = np.bincount(users, minlength=n_users)
    starts = np.cumsum(counts) - counts
    position = np.arange(n) - starts[sorted_users]
    r = rng.random(n_users)
    train_share = 1.0 - val_ratio - test_ratio
    cut1 = np.maximum(np.floor(train_share * counts + r), np.minimum(counts, 1)).astype(np.int64)
    cut2 = np.maximum(np.floor((train_share + val_ratio) * counts + r), cut1).astype(np.int64)
    cut2 = np.minimum(cut2, counts)
    sorted_part = np.where(position < cut1[sorted_users], TRAIN,
                           np.where(position < cut2[sorted_users], VAL, TEST)).astype(np.int8)
    part = np.empty(n, dtype=np.int8)
    part[order] = sorted_part
    return part


def carve_validation(users: np.ndarray, part: np.ndarray, n_val: int, rng: np.random.Generator) -> np.ndarray:
    """Move ``n_val`` random train interactions to val, never a user's last train interaction."""
    part = part.copy()
    _, candidates = _one_per_user(np.flatnonzero(part == TRAIN), users, rng)
    part[candidates[:n_val]] = VAL
    return part


# ----------------------------------------------------------------------------- the pipeline
@dataclass
class Result:
    """What :func:`prepare` produced (also summarised in ``stats.json``)."""

    directory: str
    n_users: int
    n_items: int
    counts: Dict[str, int]  # train/val/test interactions
    steps: List[Tuple[str, int]]  # (pipeline step, interactions after it)
    notes: List[str]
    replaced: bool

    @property
    def n_interactions(self) -> int:
        return sum(self.counts.values())

    @property
    def density(self) -> float:
        return self.n_interactions / max(self.n_users * self.n_items, 1)

    def table(self) -> str:
        """The statistics table printed by ``prepareData.py``."""
        total = self.n_interactions
        rows = [("users", f"{self.n_users:,}", ""), ("items", f"{self.n_items:,}", ""),
                ("interactions", f"{total:,}", f"density {100 * self.density:.4f}%")]
        for name in PART_NAMES:
            if name in self.counts:
                share = 100.0 * self.counts[name] / max(total, 1)
                rows.append((f"  {name}", f"{self.counts[name]:,}", f"{share:.1f}%"))
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        body = [f"{a:<{w0}}  {b:>{w1}}  {c}".rstrip() for a, b, c in rows]
        rule = "-" * max(len(line) for line in body)
        return "\n".join([rule] + body + [rule])


def read_input(opts: Options) -> Tuple[Interactions, Optional[SyntheticTruth]]:
    """Interactions of the source named by the options (with ``part`` set when --test is given)."""
    if opts.format == "synthetic":
        return synthetic(opts)
    reader = {"lightgcn": lambda p: read_lightgcn(p), "recbole": lambda p: read_recbole(p, opts),
              "csv": lambda p: read_csv(p, opts)}[opts.format]
    inter = reader(opts.input)
    if opts.test:
        inter = concat(inter, reader(opts.test))
    return inter, None


def prepare(opts: Options, log=print) -> Result:
    """Run the whole pipeline and write the dataset; ``log`` receives one line per step."""
    opts.check()
    target = os.path.join(opts.data_dir, f"sparse_{opts.name}")
    if os.path.exists(target) and not opts.overwrite:
        raise DataError(f"{target} exists: pass --overwrite to replace it (a new split makes the checkpoints "
                        "trained on the old one refuse to load), or choose another --name")
    inter, _ = read_input(opts)
    steps: List[Tuple[str, int]] = [("read", len(inter))]
    notes: List[str] = []
    log(f"read {len(inter):,} interactions from {' + '.join(inter.sources)}")
    if len(inter) == 0:
        raise DataError(f"no interactions in {' + '.join(inter.sources)}")

    if opts.min_rating is not None:
        if inter.ratings is None:
            notes.append(f"--min_rating {opts.min_rating:g} ignored: the input has no rating column")
        else:
            inter = inter.take(np.flatnonzero(inter.ratings >= opts.min_rating))
            steps.append((f"rating >= {opts.min_rating:g}", len(inter)))

    user_codes, user_ids = factorize(inter.users)
    item_codes, item_ids = factorize(inter.items)
    inter, user_codes, item_codes = _dedupe_and_core(inter, user_codes, item_codes, user_ids.size, item_ids.size,
                                                     opts, steps, notes)

    kept_users, users = np.unique(user_codes, return_inverse=True)
    kept_items, items = np.unique(item_codes, return_inverse=True)
    users, items = users.astype(np.int64), items.astype(np.int64)
    n_users, n_items = kept_users.size, kept_items.size

    rng = np.random.default_rng(opts.seed)
    n = users.size
    if inter.part is not None:
        part = carve_validation(users, inter.part, _round(opts.val_ratio * n), rng)
        no_train = np.setdiff1d(np.arange(n_users), users[part == TRAIN]).size
        if no_train:
            notes.append(f"{no_train} users have test interactions but none in train (given split kept)")
        cold = np.setdiff1d(np.arange(n_items), items[part == TRAIN]).size
        if cold:
            notes.append(f"{cold} items appear only in test (given split kept): no model learns them from train")
    elif opts.split == "time":
        if inter.times is None:
            raise DataError(f"--split time needs a timestamp column, and {inter.sources[0]} has none")
        part = split_time(users, inter.times, inter.lines, n_users, opts.val_ratio, opts.test_ratio, rng)
    else:
        part = split_random(users, opts.val_ratio, opts.test_ratio, rng)

    parts = (TRAIN, VAL, TEST) if opts.val_ratio > 0 else (TRAIN, TEST)
    counts = {PART_NAMES[p]: int((part == p).sum()) for p in parts}
    directory = os.path.join(opts.data_dir, f"sparse_{opts.name}")
    result = Result(directory, n_users, n_items, counts, steps, notes, replaced=os.path.exists(directory))
    idmap = {"users": user_ids[kept_users].tolist(), "items": item_ids[kept_items].tolist()}
    stats = {"name": opts.name, "sources": inter.sources, "n_users": n_users, "n_items": n_items,
             "interactions": counts, "density": result.density,
             "steps": [{"step": s, "interactions": c} for s, c in steps], "notes": notes,
             "options": asdict(opts)}
    matrices = {SPLIT_FILES[p]: _coo(users[part == p], items[part == p], n_users, n_items) for p in parts}
    write_dataset(directory, matrices, {"idmap.json": idmap, "stats.json": stats})
    return result


def _dedupe_and_core(inter: Interactions, user_codes: np.ndarray, item_codes: np.ndarray, n_users: int,
                     n_items: int, opts: Options, steps: list, notes: list):
    """One row per (user, item), then the k-core; with a given test split (``--test``) the core is
    that of train and test is kept whole, less the pairs also in train (counted in ``notes``)."""
    priority = [a for a in (inter.part, inter.times, inter.lines) if a is not None]
    given = inter.part is not None
    n_test = int((inter.part == TEST).sum()) if given else 0
    keep = dedupe(user_codes, item_codes, n_items, priority)
    inter, user_codes, item_codes = inter.take(keep), user_codes[keep], item_codes[keep]
    steps.append(("dedupe (user, item)", len(inter)))
    if given:
        dropped = n_test - int((inter.part == TEST).sum())
        if dropped:  # (the train copy is kept: dedupe prefers the train part)
            notes.append(f"{dropped} of the {n_test} given test interactions are also in train: dropped from test")
        if not (inter.part == TEST).any():
            raise DataError(f"every interaction of {opts.test} is also in {opts.input}: the test split would be empty")
    mask, rounds = kcore(user_codes, item_codes, opts.kcore, n_users, n_items,
                         among=(inter.part == TRAIN) if given else None)
    if opts.kcore > 1:
        label = f"{opts.kcore}-core{' of train' if given else ''}"
        steps.append((f"{label} ({rounds} round{'s' if rounds != 1 else ''})", int(mask.sum())))
    if not (mask if not given else mask & (inter.part == TRAIN)).any():
        raise DataError(f"no {'train ' if given else ''}interactions left after the {opts.kcore}-core filter "
                        "(lower --kcore)")
    return inter.take(np.flatnonzero(mask)), user_codes[mask], item_codes[mask]


def _coo(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int) -> sp.coo_matrix:
    order = np.lexsort((cols, rows))
    data = np.ones(rows.size, dtype=np.float32)
    return sp.coo_matrix((data, (rows[order], cols[order])), shape=(n_rows, n_cols), dtype=np.float32)


# ----------------------------------------------------------------------------- writing
def write_dataset(directory: str, matrices: Dict[str, sp.spmatrix], documents: Dict[str, object]) -> None:
    """Write pickles and JSON documents into ``directory`` all-or-nothing.

    Everything goes into a fresh temporary directory beside the target, which is then
    renamed into place. An existing target is first renamed aside and deleted only after the
    new one is in place (and put back if that rename fails), so at every moment the target
    is either the complete old dataset, absent for an instant, or the complete new one.
    """
    directory = os.path.abspath(directory)
    parent, base = os.path.split(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise DataError(f"{directory} exists and is not a directory")
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
    except OSError as exc:
        raise DataError(f"cannot create a directory in {parent}: {exc.strerror or exc}") from None
    try:
        os.chmod(tmp, 0o755)
        for fname, mat in matrices.items():
            with open(os.path.join(tmp, fname), "wb") as fh:
                pickle.dump(mat, fh, protocol=pickle.HIGHEST_PROTOCOL)
        for fname, doc in documents.items():
            with open(os.path.join(tmp, fname), "w", encoding="utf-8") as fh:
                # idmap.json holds long lists: one line per key keeps it small and readable
                json.dump(doc, fh, indent=None if fname == "idmap.json" else 1, ensure_ascii=False)
                fh.write("\n")
        if os.path.isdir(directory):
            old = os.path.join(parent, f".{base}.old-{uuid.uuid4().hex[:8]}")
            os.rename(directory, old)
            try:
                os.rename(tmp, directory)
            except BaseException:
                os.rename(old, directory)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, directory)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise DataError(f"cannot write {directory}: {exc.strerror or exc}") from None
        raise
