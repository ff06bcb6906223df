"""Input faults: split files whose stored indices escape their shape in any
sparse format, empty splits, seeds and sizes past what the libraries or the machine accept, and a
pruning range that would train nothing. Each is refused in one line before anything is allocated
or written."""
import pickle
import re

import numpy as np
import pytest
import scipy.sparse as sp

import DataHandler as dh
import Params
from Utils.runtime import Runtime
from Utils.runtime.Errors import ConfigError, DataError
from conftest import TINY_TEACHER, run_here
from conftest import _one_error_line, _write_split


def _pickled(tmp_path, mat, name="trnMat.pkl"):
    path = tmp_path / name
    path.write_bytes(pickle.dumps(mat))
    return str(path)


# ----------------------------------------------------------------------------- indices outside the shape
def _lil_with(col):
    mat = sp.lil_matrix((4, 5), dtype=np.float32)
    mat[0, 1] = mat[2, 3] = 1.0
    mat.rows[1] = [col]  # what a hand-built or foreign pickle may hold: SciPy's setters would refuse it
    mat.data[1] = [1.0]
    return mat


def _dok_with(col):
    mat = sp.dok_matrix((4, 5), dtype=np.float32)
    mat[0, 1] = 1.0
    store = mat._dict if hasattr(mat, "_dict") else mat  # (a dict subclass before SciPy 1.13)
    dict.__setitem__(store, (1, col), 1.0)  # bypasses the bounds check of dok's __setitem__
    return mat


def _dia_with(col):
    # data[k, j] is the entry (j - offsets[k], j); column `col` of the diagonal of offset 0
    data = np.zeros((1, max(col + 1, 5)), dtype=np.float32)
    data[0, 1] = 1.0
    data[0, col] = 1.0
    mat = sp.dia_matrix((data[:, :5], [0]), shape=(4, 5))
    mat.data = data  # wider than the matrix: its last column lies past the shape
    return mat


@pytest.mark.parametrize("build, col", [(_lil_with, -1), (_lil_with, 7), (_dok_with, -1)],
                         ids=["lil-negative", "lil-past", "dok-negative"])
def test_lil_and_dok_indices_outside_the_shape_are_refused(tmp_path, build, col):
    """A negative index once wrapped silently to another item; one past the shape crashed. (SciPy
    cannot pickle a DOK holding a key past its shape: pickling reads every key back through the
    bounds-checked indexing, so that case never reaches a split file.)"""
    with pytest.raises(DataError, match=rf"trnMat\.pkl: item index {col} lies outside the matrix's shape 4x5"):
        dh.load_split(_pickled(tmp_path, build(col)))


def test_a_dia_value_past_the_shape_is_refused_and_its_padding_ignored(tmp_path):
    with pytest.raises(DataError, match=r"(user|item) index 7 lies outside the matrix.s shape 4x5"):
        dh.load_split(_pickled(tmp_path, _dia_with(7)))
    # a diagonal crossing the matrix stores padding where its rows fall outside: not entries
    padded = sp.dia_matrix((np.ones((1, 5), dtype=np.float32), [2]), shape=(4, 5))
    got = dh.load_split(_pickled(tmp_path, padded))
    assert got.nnz == 3 and (got != sp.csr_matrix(padded.toarray())).nnz == 0


@pytest.mark.slow
def test_a_negative_test_index_in_a_lil_split_is_one_line_error(tmp_path):
    folder = tmp_path / "sparse_lil"
    train = sp.coo_matrix(np.eye(4, 5, dtype=np.float32))
    _write_split(folder, train, _lil_with(-1))
    proc = run_here("pretrainTeacher.py", "--dataset=lil", f"--data_dir={tmp_path}", "--epoch_tea=1",
                      f"--model_save_path={tmp_path}/t", f"--his_save_path={tmp_path}/t", check=False)
    _one_error_line(proc, "tstMat.pkl", "item index -1")
    assert not (tmp_path / "t.his").exists()


# ----------------------------------------------------------------------------- empty splits
@pytest.mark.parametrize("name, words", [("test", "every Recall and NDCG would be 0"),
                                         ("validation", "delete it to select on test")])
def test_an_empty_test_or_validation_split_is_refused(tmp_path, name, words):
    train = sp.coo_matrix(np.eye(6, 5, dtype=np.float32))
    empty = sp.coo_matrix((6, 5), dtype=np.float32)
    folder = tmp_path / "sparse_e"
    if name == "test":
        _write_split(folder, train, empty, train)
    else:
        _write_split(folder, train, train, empty)
    with pytest.raises(DataError, match=f"{name} file .* has no interactions: .*{words}"):
        dh.load_dataset(str(tmp_path), "e")


# ----------------------------------------------------------------------------- seeds
@pytest.mark.parametrize("seed", [-1, 2**32, 99999999999])
def test_a_seed_numpy_refuses_is_refused_when_parsed(seed):
    with pytest.raises(ConfigError, match=r"--seed must be in \[0, 4294967295\]"):
        Params.parse_args([f"--seed={seed}"])
    assert Params.parse_args([f"--seed={2**32 - 1}"]).seed == 2**32 - 1


@pytest.mark.slow
def test_prepare_data_refuses_a_negative_seed_in_one_line(tmp_path):
    proc = run_here("prepareData.py", "--format=synthetic", "--name=s", f"--data_dir={tmp_path}", "--seed", "-1",
                      check=False)
    _one_error_line(proc, "--seed must be >= 0")
    assert not (tmp_path / "sparse_s").exists()


@pytest.mark.slow
def test_the_largest_seed_runs(tmp_path, tiny_data):
    run_here("pretrainTeacher.py", *TINY_TEACHER, f"--data_dir={tiny_data}", "--epoch_tea=1", f"--seed={2**32 - 1}",
               f"--model_save_path={tmp_path}/t", f"--his_save_path={tmp_path}/t")
    assert (tmp_path / "t.mod").exists()


# ----------------------------------------------------------------------------- sizes past the machine
@pytest.mark.slow
@pytest.mark.parametrize("script, flag, needle", [
    ("pretrainTeacher.py", "--latdim=100000000", "--latdim=100000000"),
    ("Main.py", "--topRange=100000000000", "--topRange=100000000000"),
])
def test_a_size_past_the_machine_is_refused_before_allocating(tmp_path, tiny_data, script, flag, needle):
    flags = [*TINY_TEACHER, "--epoch_tea=1"] if script == "pretrainTeacher.py" else [
        "--dataset=tiny", "--train_middle_model=True", "--distill_from_middle_model=False",
        "--distill_from_teacher_model=True", f"--teacher_model={tmp_path}/none.mod"]
    proc = run_here(script, *flags, f"--data_dir={tiny_data}", flag, f"--model_save_path={tmp_path}/t",
                      f"--his_save_path={tmp_path}/t", check=False)
    line = _one_error_line(proc, needle, "more than the")
    assert re.search(r"needs at least [\d.]+ [GT]iB of memory, more than the [\d.]+ GiB this machine has", line)
    assert not list(tmp_path.glob("t*"))


def test_a_split_shape_past_the_machine_is_refused_before_converting(tmp_path):
    """A pickle claiming 300 x 2e9 was killed for memory without a message."""
    mat = sp.coo_matrix((np.ones(2, np.float32), (np.array([0, 1]), np.array([0, 1]))), shape=(300, 5))
    mat._shape = (300, 2_000_000_000)  # what the pickle claims; SciPy never checks it on load
    with pytest.raises(DataError, match=r"trnMat\.pkl is 300x2000000000: .* needs at least 134\.1 GiB"):
        dh.load_split(_pickled(tmp_path, mat))


def test_require_memory_refuses_only_what_exceeds_the_whole_machine():
    total = Runtime.machine_memory()
    Runtime.require_memory(total // 2, "half", "nothing")
    with pytest.raises(ConfigError, match=r"^twice needs at least .* more than the .* this machine has; advice$"):
        Runtime.require_memory(2 * total, "twice", "advice")


# ----------------------------------------------------------------------------- a range that trains nothing
def test_skipping_the_only_pruning_run_is_refused():
    with pytest.raises(ConfigError, match="skips the training of the only pruning run"):
        Params.parse_args(["--PRUNING_START=1", "--PRUNING_END=1", "--esc_train_prn_run=1"])
    Params.parse_args(["--PRUNING_START=1", "--PRUNING_END=2", "--esc_train_prn_run=1"])
    Params.parse_args(["--PRUNING_START=1", "--PRUNING_END=1", "--esc_train_prn_run=1",
                       "--run_no_adj_weights=True"])


def test_an_evaluation_split_that_cannot_be_scored_is_named(tmp_path):
    """Issue 36, case 5: a test split whose every interaction is in train is an error (every Recall
    would be 0); some of them in train, or items never seen in train, are warnings with counts."""
    import DataHandler as dh
    from Utils.runtime.Errors import DataError

    train = sp.coo_matrix(np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 0]], dtype=np.float32))
    _write_split(tmp_path / "sparse_same", train, train)
    with pytest.raises(DataError, match="every one of its 6 interactions is also in train"):
        dh.load_dataset(str(tmp_path), "same")
    test = sp.coo_matrix(np.array([[1, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]], dtype=np.float32))
    _write_split(tmp_path / "sparse_some", train, test)
    warnings = dh.load_dataset(str(tmp_path), "some").warnings
    assert any("1 of its 3 interactions are also in train" in w for w in warnings)
    assert any("1 of its items never occur in train (first: item 3)" in w for w in warnings)


def test_non_integer_indices_in_a_crafted_split_are_refused(tmp_path):
    """Issue 36, case 8: a COO or LIL split whose indices are fractions (SciPy would truncate 1.5 to 1)."""
    import DataHandler as dh
    from Utils.runtime.Errors import DataError

    coo = sp.coo_matrix(np.eye(3, dtype=np.float32))
    coo.__dict__["coords"] = (coo.coords[0].astype(np.float64) + 0.5, coo.coords[1])  # what a crafted pickle holds
    lil = sp.lil_matrix(np.eye(3, dtype=np.float32))
    lil.rows[1] = [1.5]
    test = sp.coo_matrix(np.fliplr(np.eye(3, dtype=np.float32)))
    for name, mat, bad in (("coo", coo, "user index 0.5"), ("lil", lil, "item index 1.5")):
        _write_split(tmp_path / f"sparse_{name}", mat, test)
        with pytest.raises(DataError, match=re.escape(bad) + " is not an integer"):
            dh.load_dataset(str(tmp_path), name)
