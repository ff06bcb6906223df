"""Data: reading and checking the splits, the graphs Â and Ĉ, negative sampling.

A dataset NAME lives in ``<data_dir>/sparse_NAME/`` as ``trnMat.pkl``, ``tstMat.pkl``
and optionally ``valMat.pkl``: pickled SciPy sparse U×I matrices (docs/method.md#data).
Every non-zero entry is an interaction; values are binarised to 1.0.

Graphs (docs/method.md#graphs) are kept as :class:`Graph`: the non-zeros of an N×N matrix in
row-major (CSR) order, which is the order every per-edge vector (edge weights,
masks) follows. Node ids: users 0..U-1, items U..N-1.
"""
from __future__ import annotations

import functools
import hashlib
import os
import pickle
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import scipy.sparse as sp
import torch

from Utils.runtime.Errors import DataError
from Utils.runtime.Runtime import require_memory


# ----------------------------------------------------------------------------- splits
#: The only globals a split pickle may name: SciPy's sparse matrix/array classes and what
#: NumPy needs to rebuild their arrays. Anything else (``os.system``, ``builtins.eval``…) is refused.
_SPARSE_CLASSES = frozenset(f"{fmt}_{kind}" for fmt in ("coo", "csr", "csc", "bsr", "dia", "dok", "lil")
                            for kind in ("matrix", "array"))
_NUMPY_GLOBALS = frozenset({("numpy", "ndarray"), ("numpy", "dtype"),
                            ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                            ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                            ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                            ("copyreg", "_reconstructor"), ("builtins", "object"), ("builtins", "dict"),
                            ("_codecs", "encode")})  # bytes in protocols 0-2; dok_matrix is a dict
_PY2_NAMES = {"copy_reg": "copyreg", "__builtin__": "builtins"}  # protocols 0-2 spell these the Python 2 way


class _SplitUnpickler(pickle.Unpickler):
    """Unpickles a sparse matrix without running any other code the file names."""

    def find_class(self, module: str, name: str):
        module = _PY2_NAMES.get(module, module)
        allowed = ((module, name) in _NUMPY_GLOBALS
                   or (module.split(".")[:2] == ["scipy", "sparse"] and name in _SPARSE_CLASSES)
                   or (module.startswith("numpy.dtypes") and name.endswith("DType")))
        if not allowed:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a sparse-matrix pickle never needs "
                                         f"(only SciPy sparse classes and NumPy arrays are loaded)")
        return super().find_class(module, name)


def _stored_coords(mat, where: str):
    """(rows, cols) of every entry a COO, LIL, DOK or DIA matrix stores, read from its own
    arrays: a pickle bypasses SciPy's constructor checks, and SciPy's conversions trust them
    (a negative index wraps to another item, one past the shape is dropped or crashes)."""
    n_rows = mat.shape[0]
    if mat.format == "coo":
        if not (mat.row.size == mat.col.size == mat.data.size):
            raise DataError(f"{where}: its row, column and value arrays differ in length")
        return np.asarray(mat.row), np.asarray(mat.col)
    if mat.format == "lil":
        if len(mat.rows) != n_rows or len(mat.data) != n_rows:
            raise DataError(f"{where}: it holds {len(mat.rows)} row lists for its {n_rows} rows")
        lengths = np.fromiter(map(len, mat.rows), dtype=np.int64, count=n_rows)
        if not np.array_equal(lengths, np.fromiter(map(len, mat.data), dtype=np.int64, count=n_rows)):
            raise DataError(f"{where}: its column and value lists differ in length")
        cols = np.concatenate([np.asarray(r).ravel() for r in mat.rows] + [np.zeros(0, np.int64)])
        return np.repeat(np.arange(n_rows, dtype=np.int64), lengths), cols
    if mat.format == "dok":
        keys = list(mat.keys())
        if not all(isinstance(k, tuple) and len(k) == 2 for k in keys):
            raise DataError(f"{where}: its keys are not (user, item) pairs")
        coords = np.array(keys).reshape(-1, 2)
        return coords[:, 0], coords[:, 1]
    # dia: data[k, j] is the entry (j - offsets[k], j). Within a diagonal that crosses the matrix,
    # the positions whose row falls outside it are the format's padding (SciPy ignores them); a
    # value on a diagonal that misses the matrix, or in a column past it, is an entry outside it
    data, offsets = np.asarray(mat.data), np.asarray(mat.offsets, dtype=np.int64).ravel()
    if data.ndim != 2 or data.shape[0] != offsets.size:
        raise DataError(f"{where}: its {offsets.size} diagonal offsets do not match its values of shape {data.shape}")
    diag, cols = np.nonzero(data)
    offs = offsets[diag]
    rows = cols - offs
    padding = (offs > -n_rows) & (offs < mat.shape[1]) & (cols < mat.shape[1]) & ((rows < 0) | (rows >= n_rows))
    return rows[~padding], cols[~padding]


#: Bytes per node (user or item) that the propagation graph Â of any dataset needs at least while it
#: is built: the Graph's two int64 row pointers (16 B) plus, for its N self-loops, 40 B in the
#: Graph and 16 B in the SciPy CSR matrix it is converted from (docs/method.md#propagation-graph).
GRAPH_BYTES_PER_NODE = 72


def _require_graph_memory(n_rows: int, n_cols: int, where: str) -> None:
    """Refuse a split whose shape alone makes the dataset's graph larger than this machine's memory
    (checked before the split itself is converted, which allocates a pointer per row)."""
    require_memory(GRAPH_BYTES_PER_NODE * (n_rows + n_cols),
                   f"{where} is {n_rows}x{n_cols}: the graph of a dataset of that shape "
                   f"({n_rows} users + {n_cols} items, {GRAPH_BYTES_PER_NODE} bytes each)",
                   "check the shape: user and item ids must be numbered 0..n-1 without gaps "
                   "(prepareData.py renumbers them)", error=DataError)


def _first_fraction(idx) -> str:
    idx = np.asarray(idx)
    if idx.dtype.kind not in "iuf":
        return f"of type {idx.dtype}"
    return repr(float(idx[np.flatnonzero(np.mod(idx, 1) != 0)[0]]))


def _checked_csr(mat, where: str) -> sp.csr_matrix:
    """CSR of an unpickled sparse matrix whose indices were checked against its shape first,
    the same check for every format (a pickle bypasses SciPy's constructor checks, and
    converting out-of-range indices is unsafe), and whose shape fits in memory."""
    n_rows, n_cols = mat.shape
    try:
        if mat.format in ("csr", "csc", "bsr"):
            mat.check_format(full_check=True)
        else:
            rows, cols = _stored_coords(mat, where)
            for name, idx in (("user", rows), ("item", cols)):
                kind = np.asarray(idx).dtype.kind
                if kind not in "iu" and not (kind == "f" and np.all(np.mod(idx, 1) == 0)):
                    # a crafted pickle: SciPy's conversions would truncate 1.5 to 1 without a word
                    raise DataError(f"{where}: {name} index {_first_fraction(idx)} is not an integer")
            for name, idx, bound in (("user", rows, n_rows), ("item", cols, n_cols)):
                bad = np.flatnonzero((idx < 0) | (idx >= bound)) if idx.size else idx
                if bad.size:
                    raise DataError(f"{where}: {name} index {int(idx[bad[0]])} lies outside the matrix's shape "
                                    f"{n_rows}x{n_cols} ({bad.size} of its {idx.size} stored entries have a {name} index "
                                    f"outside it)")
        _require_graph_memory(n_rows, n_cols, where)
        return sp.csr_matrix(mat)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{where} holds an inconsistent sparse matrix: {exc}") from None


def load_split(path: str, what: str = "split") -> sp.csr_matrix:
    """Read one pickled sparse matrix and return it binarised as float32 CSR.

    The pickle is read by :class:`_SplitUnpickler`, so a file cannot run code. Raises
    :class:`DataError` (one line naming the file) when the file is missing, is not a
    readable pickle, names anything but SciPy sparse / NumPy classes, does not hold a
    2-D SciPy sparse matrix, or holds a stored value that is negative, NaN or infinite
    (an interaction is a positive value; explicit zeros are dropped).
    """
    if not os.path.isfile(path):
        raise DataError(f"{what} file not found: {path}")
    try:
        with open(path, "rb") as fh:
            mat = _SplitUnpickler(fh).load()
    except Exception as exc:  # any unpickling failure is a data problem for the user
        raise DataError(f"cannot read {what} file {path}: {type(exc).__name__}: {exc}") from None
    if isinstance(mat, np.ndarray) and mat.ndim == 2:
        mat = sp.csr_matrix(mat)
    if not sp.issparse(mat) or len(mat.shape) != 2:
        raise DataError(f"{what} file {path} holds {type(mat).__name__}, expected a 2-D SciPy sparse matrix")
    mat = _checked_csr(mat, f"{what} file {path}")
    values = np.asarray(mat.data)
    if values.dtype.kind not in "biuf":
        raise DataError(f"{what} file {path} holds {values.dtype} values, expected numbers")
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        row = int(np.searchsorted(mat.indptr, np.flatnonzero(bad)[0], side="right") - 1)
        raise DataError(f"{what} file {path}: {int(bad.sum())} stored values are negative, NaN or infinite "
                        f"(first at user {row}); interactions must be positive numbers")
    mat.eliminate_zeros()
    mat.sum_duplicates()
    mat.sort_indices()
    mat.data = np.ones_like(mat.data, dtype=np.float32)
    return mat.astype(np.float32)


@dataclass
class Dataset:
    """The three splits of one dataset as binary float32 CSR matrices (U×I)."""

    name: str
    directory: str
    train: sp.csr_matrix
    test: sp.csr_matrix
    val: Optional[sp.csr_matrix]
    warnings: List[str] = field(default_factory=list)

    @property
    def n_users(self) -> int:
        return self.train.shape[0]

    @property
    def n_items(self) -> int:
        return self.train.shape[1]

    @property
    def n_nodes(self) -> int:
        return self.n_users + self.n_items

    @functools.cached_property
    def fingerprint(self) -> str:
        """A short hash of the train split (shape and interactions), stored in checkpoints so
        that one trained on other data is refused."""
        digest = hashlib.sha256(np.asarray(self.train.shape, dtype=np.int64).tobytes())
        digest.update(np.ascontiguousarray(self.train.indptr, dtype=np.int64).tobytes())
        digest.update(np.ascontiguousarray(self.train.indices, dtype=np.int64).tobytes())
        return digest.hexdigest()[:16]

    def split(self, name: str) -> sp.csr_matrix:
        if name == "test":
            return self.test
        if name == "val":
            if self.val is None:
                raise DataError(f"no valMat.pkl in {self.directory}: cannot evaluate on validation")
            return self.val
        raise ValueError(f"unknown split {name!r}")

    def summary(self) -> str:
        parts = [f"USER {self.n_users} ITEM {self.n_items}", f"NUM OF INTERACTIONS {self.train.nnz}"]
        parts += [f"warning: {w}" for w in self.warnings]
        return "\n".join(parts)


def dataset_dir(data_dir: str, name: str) -> str:
    return os.path.join(data_dir, f"sparse_{name}")


def load_dataset(data_dir: str, name: str) -> Dataset:
    """Load ``<data_dir>/sparse_<name>/{trn,val,tst}Mat.pkl`` and check them (docs/method.md#data)."""
    directory = dataset_dir(data_dir, name)
    if not os.path.isdir(directory):
        raise DataError(f"dataset directory not found: {directory} (set --data_dir/--dataset)")
    return load_dataset_dir(directory, name)


def load_dataset_dir(directory: str, name: str = "") -> Dataset:
    """Load and check the splits stored in ``directory`` (docs/method.md#data): each one holds
    interactions (an empty file is a mistake, not a split to skip; without ``valMat.pkl``
    checkpoints are selected on test) and all have the same shape."""
    train_path = os.path.join(directory, "trnMat.pkl")
    test_path = os.path.join(directory, "tstMat.pkl")
    val_path = os.path.join(directory, "valMat.pkl")
    train = load_split(train_path, "train")
    test = load_split(test_path, "test")
    val = load_split(val_path, "validation") if os.path.exists(val_path) else None
    empty = (("train", train, train_path, "nothing to train on"),
             ("test", test, test_path, "every Recall and NDCG would be 0"),
             ("validation", val, val_path, "checkpoints would be selected on nothing; delete it to select on "
                                           "test, or give it interactions"))
    for what, mat, path, consequence in empty:
        if mat is not None and mat.nnz == 0:
            raise DataError(f"{what} file {path} has no interactions: {consequence}")
    for mat, path in ((test, test_path), (val, val_path)):
        if mat is not None and mat.shape != train.shape:
            raise DataError(
                f"shape mismatch: {path} is {mat.shape[0]}x{mat.shape[1]} but {train_path} is "
                f"{train.shape[0]}x{train.shape[1]}"
            )
    warnings = []
    train_items = np.bincount(train.indices, minlength=train.shape[1])  # (shared by both splits' checks)
    for mat, path in ((test, test_path), (val, val_path)):
        if mat is not None:
            warnings += _split_warnings(mat, train, train_items, path)
    return Dataset(name=name, directory=directory, train=train, test=test, val=val, warnings=warnings)


def _split_warnings(mat: sp.csr_matrix, train: sp.csr_matrix, train_items: np.ndarray, path: str) -> List[str]:
    """What an evaluation split holds that it cannot score: interactions already in train (a
    user's train items are never recommended; all of them: an error), users and items never
    seen in train (their embeddings are never trained)."""
    in_train = int(mat.multiply(train).nnz)
    if in_train == mat.nnz:
        raise DataError(f"{path}: every one of its {mat.nnz} interactions is also in train, and a user's train "
                        "items are never recommended: every Recall and NDCG would be 0 (a train split given twice?)")
    warnings = []
    if in_train:
        warnings.append(f"{path}: {in_train} of its {mat.nnz} interactions are also in train; they can never "
                        "be recommended (train items are excluded) and count as misses")
    cold = np.flatnonzero((np.diff(mat.indptr) > 0) & (np.diff(train.indptr) == 0))
    if cold.size:  # the published Yelp split has such users; they are evaluated, as published
        warnings.append(f"{path}: {cold.size} evaluated users have no train interactions "
                        f"(first: user {cold[0]}); they are evaluated like the others")
    unseen = np.flatnonzero((np.bincount(mat.indices, minlength=mat.shape[1]) > 0) & (train_items == 0))
    if unseen.size:
        warnings.append(f"{path}: {unseen.size} of its items never occur in train (first: item {unseen[0]}); "
                        "their embeddings are never trained")
    return warnings


# ----------------------------------------------------------------------------- graphs
@dataclass
class Graph:
    """An N×N sparse matrix held as its non-zeros in row-major (CSR) order.

    ``transpose_perm[k]`` is the edge index of the mirror of the k-th edge of the
    transposed matrix (CSR order of Mᵀ), so ``values[transpose_perm]`` are the
    values of Mᵀ in its own CSR order: the backward pass of a propagation needs it.
    """

    indptr: torch.Tensor  # (N+1,) int64
    col: torch.Tensor  # (nnz,) int64
    row: torch.Tensor  # (nnz,) int64
    values: torch.Tensor  # (nnz,) float32, the normalised edge values
    n_nodes: int
    t_indptr: torch.Tensor
    t_col: torch.Tensor
    transpose_perm: torch.Tensor
    t_values: torch.Tensor  # values[transpose_perm]: Mᵀ's values in its CSR order
    # reusable work arrays of the CPU propagation (Utils.kernels.Spmm._scratch); a copy starts without them
    scratch: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def nnz(self) -> int:
        return int(self.col.numel())

    def to(self, device) -> "Graph":
        return Graph(*(getattr(self, f).to(device) if torch.is_tensor(getattr(self, f)) else getattr(self, f)
                       for f in self.__dataclass_fields__ if f != "scratch"))

    @classmethod
    def from_scipy(cls, mat: sp.spmatrix) -> "Graph":
        csr = sp.csr_matrix(mat)
        csr.sum_duplicates()
        csr.sort_indices()
        n = csr.shape[0]
        rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(csr.indptr))
        cols = csr.indices.astype(np.int64)
        # CSR of the transpose: order edges by (col, row) and remember where each came from
        perm = np.lexsort((rows, cols))
        values = csr.data.astype(np.float32)
        t_indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(cols, minlength=n), out=t_indptr[1:])
        return cls(
            indptr=torch.from_numpy(csr.indptr.astype(np.int64)),
            col=torch.from_numpy(cols),
            row=torch.from_numpy(rows),
            values=torch.from_numpy(values),
            n_nodes=n,
            t_indptr=torch.from_numpy(t_indptr),
            t_col=torch.from_numpy(rows[perm]),
            transpose_perm=torch.from_numpy(perm.astype(np.int64)),
            t_values=torch.from_numpy(values[perm]),
        )


def bipartite_adjacency(train: sp.csr_matrix) -> sp.csr_matrix:
    """A = [[0, R], [Rᵀ, 0]] as a binary N×N CSR matrix (float64)."""
    r = sp.csr_matrix(train, dtype=np.float64)
    return sp.bmat([[None, r], [r.T, None]], format="csr")


def sym_normalise(mat: sp.spmatrix) -> sp.csr_matrix:
    """D^-½ M D^-½ with D the (weighted) row sums of M."""
    mat = sp.csr_matrix(mat, dtype=np.float64)
    deg = np.asarray(mat.sum(axis=1)).ravel()
    with np.errstate(divide="ignore"):
        inv = np.where(deg > 0, deg ** -0.5, 0.0)
    d = sp.diags(inv)
    out = (d @ mat @ d).tocsr()
    out.sort_indices()
    return out


def propagation_matrix(train: sp.csr_matrix) -> sp.csr_matrix:
    """Â = D^-½ (A + I) D^-½ (docs/method.md#propagation-graph), float64 CSR, nnz = 2·nnz(R) + N."""
    a = bipartite_adjacency(train)
    return sym_normalise(a + sp.eye(a.shape[0], format="csr"))


def _keep_top(p: sp.csr_matrix, ratio: float, random: bool, rng: np.random.Generator) -> sp.csr_matrix:
    """Keep ⌊ratio·nnz(P)⌋ entries of P: the largest values (ties: earlier in row-major order) or a random subset."""
    p = sp.csr_matrix(p)
    p.sort_indices()
    n_keep = int(np.floor(ratio * p.nnz))
    coo = p.tocoo()
    if random:
        keep = rng.choice(p.nnz, size=n_keep, replace=False)
    else:
        keep = np.argsort(-coo.data, kind="stable")[:n_keep]
    out = sp.csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=p.shape)
    out.sort_indices()
    return out


def closure_matrix(train: sp.csr_matrix, layers: int = 1, sample: bool = False, sample_ratio: float = 0.9,
                   sample_random: bool = False, seed: int = 0) -> sp.csr_matrix:
    """Ĉ = D_C^-½ C D_C^-½ with C = I + A + A² + … (docs/method.md#closure-graph).

    C starts as I + A and P as A; each of ``layers`` repetitions does P ← P·A (a real
    sparse product, so values count paths), optionally keeps only part of P
    (``sample``), and adds P to C. The kept P is the base of the next repetition.
    """
    a = bipartite_adjacency(train)
    c = a + sp.eye(a.shape[0], format="csr")
    p = a
    rng = np.random.default_rng(seed)
    for _ in range(layers):
        p = (p @ a).tocsr()
        if sample:
            p = _keep_top(p, sample_ratio, sample_random, rng)
        c = c + p
    return sym_normalise(c)


def closure_graph(train: sp.csr_matrix, closure) -> Graph:
    """Ĉ as a :class:`Graph`, built as ``closure`` (:class:`Utils.config.Config.Closure`) says."""
    return Graph.from_scipy(closure_matrix(train, closure.layers, closure.sample, closure.sample_ratio,
                                           closure.sample_random, closure.seed))


# ----------------------------------------------------------------------------- sampling
class NegativeSampler:
    """Per-epoch BPR triples: every train interaction (u, i) with one negative item j
    drawn uniformly among the items u has not interacted with in train (docs/method.md#negative-sampling).

    Vectorised rejection sampling: draw all j at once, redraw the ones that hit a
    train item, until none do.
    """

    def __init__(self, train: sp.csr_matrix):
        coo = sp.csr_matrix(train).tocoo()
        self.n_items = train.shape[1]
        self.users = coo.row.astype(np.int64)
        self.items = coo.col.astype(np.int64)
        self._keys = np.sort(self.users * self.n_items + self.items)
        full = np.flatnonzero(np.diff(sp.csr_matrix(train).indptr) >= self.n_items)
        if full.size:
            raise DataError(f"user {full[0]} interacted with every item: no negative item can be drawn")

    def _is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users * self.n_items + items
        pos = np.searchsorted(self._keys, keys)
        pos = np.minimum(pos, self._keys.size - 1)
        return self._keys[pos] == keys

    def sample(self, rng: np.random.Generator, users: Optional[np.ndarray] = None) -> np.ndarray:
        """Negative items for ``users`` (default: the user of every train interaction)."""
        users = self.users if users is None else users
        negs = rng.integers(0, self.n_items, size=users.size, dtype=np.int64)
        todo = np.flatnonzero(self._is_positive(users, negs))
        while todo.size:
            negs[todo] = rng.integers(0, self.n_items, size=todo.size, dtype=np.int64)
            todo = todo[self._is_positive(users[todo], negs[todo])]
        return negs

    def epoch_batches(self, rng: np.random.Generator, batch_size: int):
        """Yield shuffled (ancs, poss, negs) int64 arrays of at most ``batch_size``."""
        negs = self.sample(rng)
        order = rng.permutation(self.users.size)
        for start in range(0, order.size, batch_size):
            idx = order[start:start + batch_size]
            yield self.users[idx], self.items[idx], negs[idx]

    def n_batches(self, batch_size: int) -> int:
        return -(-self.users.size // batch_size)
