"""Hostile or broken input: each is a one-line error, and no code in a data file ever runs."""
import os
import pickle

import numpy as np
import pytest
import scipy.sparse as sp

import DataHandler as dh
from Utils.Errors import DataError
from conftest import run_script


class _Payload:
    """A pickle that runs a shell command when loaded, then hands back a real matrix."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write_split(folder, train, test=None, val=None):
    folder.mkdir(parents=True, exist_ok=True)
    for name, mat in (("trnMat.pkl", train), ("tstMat.pkl", test if test is not None else train),
                      ("valMat.pkl", val)):
        if mat is not None:
            with open(folder / name, "wb") as fh:
                pickle.dump(mat, fh)


def _eye(n=6, m=5):
    return sp.coo_matrix(np.eye(n, m, dtype=np.float32))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_every_sparse_format_and_protocol_loads(tmp_path, protocol):
    base = sp.random(7, 9, density=0.4, format="coo", random_state=0, dtype=np.float64)
    for fmt in ("coo", "csr", "csc", "lil", "dok", "bsr", "dia"):
        path = tmp_path / f"{fmt}.pkl"
        path.write_bytes(pickle.dumps(base.asformat(fmt), protocol=protocol))
        got = dh.load_split(str(path))
        assert (got != (base != 0).astype(np.float32)).nnz == 0, fmt


def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "sparse_evil"
    _write_split(folder, _eye())
    (folder / "trnMat.pkl").write_bytes(pickle.dumps((_Payload(marker), _eye())))
    with pytest.raises(DataError, match=r"trnMat\.pkl.*(system|posix)"):
        dh.load_dataset(str(tmp_path), "evil")
    assert not marker.exists()


def test_the_cli_refuses_it_in_one_line(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "sparse_evil"
    _write_split(folder, _eye())
    (folder / "tstMat.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    proc = run_script("pretrainTeacher.py", "--dataset=evil", f"--data_dir={tmp_path}", "--epoch_tea=1",
                      f"--model_save_path={tmp_path}/t", f"--his_save_path={tmp_path}/t", check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and "tstMat.pkl" in lines[0]
    assert not marker.exists()


@pytest.mark.parametrize("value", [-1.0, np.nan, np.inf])
def test_negative_or_non_finite_values_are_refused(tmp_path, value):
    mat = _eye().tocsr()
    mat.data[2] = value
    path = tmp_path / "trnMat.pkl"
    path.write_bytes(pickle.dumps(mat))
    with pytest.raises(DataError, match="negative, NaN or infinite.*user 2"):
        dh.load_split(str(path))


def test_explicit_zeros_are_not_interactions(tmp_path):
    mat = _eye().tocsr()
    mat.data[1] = 0.0
    path = tmp_path / "trnMat.pkl"
    path.write_bytes(pickle.dumps(mat))
    assert dh.load_split(str(path)).nnz == 4


@pytest.mark.parametrize("fmt", ["coo", "csr"])
def test_an_index_past_the_shape_is_refused(tmp_path, fmt):
    mat = _eye().asformat(fmt)
    if fmt == "coo":
        mat.col[0] = 50
    else:
        mat.indices[0] = 50
    path = tmp_path / "trnMat.pkl"
    path.write_bytes(pickle.dumps(mat))
    with pytest.raises(DataError, match="trnMat.pkl"):
        dh.load_split(str(path))


def test_a_bad_input_leaves_the_earlier_history_untouched(tmp_path, tiny_dir):
    from conftest import TINY_STU

    data = tmp_path / "Datasets"
    data.mkdir()
    os.symlink(tiny_dir, data / "sparse_tiny")
    his = tmp_path / "stu.his"
    his.write_text('{"epoch": 0}\n')
    proc = run_script("Main.py", *TINY_STU, f"--data_dir={data}", f"--middle_teacher_model={tmp_path}/typo.mod",
                      f"--model_save_path={tmp_path}/stu", f"--his_save_path={tmp_path}/stu", check=False)
    assert proc.returncode == 2 and "typo.mod" in proc.stderr
    assert his.read_text() == '{"epoch": 0}\n'
