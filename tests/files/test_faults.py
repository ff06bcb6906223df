"""Hostile or broken input: each is a one-line error, and no code in a data file ever runs."""
import os
import pickle

import numpy as np
import pytest
import scipy.sparse as sp

import DataHandler as dh
from Utils.runtime.Errors import DataError
from conftest import _history, _one_error_line, _write_split, run_here
from conftest import tiny_data_dir as _tiny_data

pytestmark = pytest.mark.slow  # end-to-end runs in subprocesses


class _Payload:
    """A pickle that runs a shell command when loaded, then hands back a real matrix."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


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
    proc = run_here("pretrainTeacher.py", "--dataset=evil", f"--data_dir={tmp_path}", "--epoch_tea=1",
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

    data = _tiny_data(tmp_path, tiny_dir)
    his = tmp_path / "stu.his"
    his.write_text('{"epoch": 0}\n')
    proc = run_here("Main.py", *TINY_STU, f"--data_dir={data}", f"--middle_teacher_model={tmp_path}/typo.mod",
                      f"--model_save_path={tmp_path}/stu", f"--his_save_path={tmp_path}/stu", check=False)
    assert proc.returncode == 2 and "typo.mod" in proc.stderr
    assert his.read_text() == '{"epoch": 0}\n'


def test_a_history_folder_that_cannot_be_made_is_one_line_error(tmp_path, tiny_dir):
    from conftest import TINY_TEACHER

    data = _tiny_data(tmp_path, tiny_dir)
    (tmp_path / "file").write_text("not a folder")
    proc = run_here("pretrainTeacher.py", *TINY_TEACHER, f"--data_dir={data}", f"--model_save_path={tmp_path}/tea",
                      f"--his_save_path={tmp_path}/file/sub/tea", check=False)
    _one_error_line(proc, "file/sub")
    assert not (tmp_path / "tea.mod").exists()


@pytest.mark.parametrize("flag", ["--lr=inf", "--reg=nan", "--softreg=-1", "--seed=-1", "--tempsubsp_list=0,1",
                                  "--subspcreg_list=0.1,nan"])
def test_non_finite_or_negative_rates_are_refused_when_parsed(flag):
    import Params
    from Utils.runtime.Errors import ConfigError

    with pytest.raises(ConfigError, match=flag.split("=")[0]):
        Params.parse_args([flag])


def test_a_diverging_teacher_stops_and_never_saves_a_nan_model(tmp_path, tiny_dir):
    import torch
    from conftest import TINY_TEACHER

    data = _tiny_data(tmp_path, tiny_dir)
    proc = run_here("pretrainTeacher.py", *TINY_TEACHER, f"--data_dir={data}", "--lr=1e30", "--epoch_tea=5",
                      f"--model_save_path={tmp_path}/t", f"--his_save_path={tmp_path}/t", check=False)
    _one_error_line(proc, "stage teacher", "epoch", "stopped")
    if (tmp_path / "t.mod").exists():  # a record saved before the divergence is finite
        tensors = torch.load(tmp_path / "t.mod", weights_only=True)["tensors"]
        assert all(bool(torch.isfinite(t).all()) for t in tensors.values())


def test_a_non_finite_loss_part_names_stage_run_epoch_batch_and_part(tmp_path, tiny_dir):
    from conftest import TINY_MID, TINY_TEACHER

    data = _tiny_data(tmp_path, tiny_dir)
    run_here("pretrainTeacher.py", *TINY_TEACHER, f"--data_dir={data}", f"--model_save_path={tmp_path}/t",
               f"--his_save_path={tmp_path}/t")
    proc = run_here("Main.py", *TINY_MID, f"--data_dir={data}", f"--teacher_model={tmp_path}/t.mod",
                      "--softreg=1e40", f"--model_save_path={tmp_path}/m", f"--his_save_path={tmp_path}/m",
                      check=False)
    _one_error_line(proc, "stage middle_teacher", "prn_run 1", "epoch 0", "loss part 'pred_kd'",
                            "batch 1/")
    assert not list(tmp_path.glob("m_*.mod"))  # nothing was evaluated, nothing saved


def test_a_nan_checkpoint_is_not_accepted_as_a_supervisor(tmp_path, tiny_dir):
    import torch
    from conftest import TINY_MID, TINY_TEACHER

    data = _tiny_data(tmp_path, tiny_dir)
    run_here("pretrainTeacher.py", *TINY_TEACHER, f"--data_dir={data}", f"--model_save_path={tmp_path}/t",
               f"--his_save_path={tmp_path}/t")
    ckpt = torch.load(tmp_path / "t.mod", weights_only=True)
    ckpt["tensors"]["uEmbeds"][3, 1] = float("nan")
    torch.save(ckpt, tmp_path / "nan.mod")
    proc = run_here("Main.py", *TINY_MID, f"--data_dir={data}", f"--teacher_model={tmp_path}/nan.mod",
                      f"--model_save_path={tmp_path}/m", f"--his_save_path={tmp_path}/m", check=False)
    _one_error_line(proc, "nan.mod", "NaN or infinite", "uEmbeds")


def _start_long_teacher(tmp_path, tiny_dir):
    import signal
    import subprocess
    import sys

    from conftest import ROOT, TINY_TEACHER

    data = _tiny_data(tmp_path, tiny_dir)
    proc = subprocess.Popen([sys.executable, str(ROOT / "pretrainTeacher.py"), *TINY_TEACHER, f"--data_dir={data}",
                              "--epoch_tea=1000000", f"--model_save_path={tmp_path}/t",
                             f"--his_save_path={tmp_path}/t"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            # a shell's background jobs ignore SIGINT; a terminal's program does not
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:  # wait until it trains and has a record
        if "Epoch 2/" in line:
            return proc
    raise AssertionError(proc.stderr.read())


@pytest.mark.parametrize("signum, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_prints_the_summary_and_exits_without_traceback(tmp_path, tiny_dir, signum, code):
    import signal

    proc = _start_long_teacher(tmp_path, tiny_dir)
    proc.send_signal(getattr(signal, signum))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "Final Best Acc" in out and "Interrupted" in out
    assert "Peak memory: RSS " in out


def test_ctrl_c_under_tee_keeps_the_summary_on_stderr(tmp_path, tiny_dir):
    """`... | tee log` and Ctrl-C: tee dies with the program's stdout still open; the summary
    goes to stderr and nothing raises BrokenPipeError."""
    import signal

    proc = _start_long_teacher(tmp_path, tiny_dir)
    proc.stdout.close()  # the reader is gone
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "Final Best Acc" in err


def _teacher_and_mid(tmp_path, data):
    from conftest import TINY_MID, TINY_TEACHER

    run_here("pretrainTeacher.py", *TINY_TEACHER, f"--data_dir={data}", f"--model_save_path={tmp_path}/t",
               f"--his_save_path={tmp_path}/t")
    run_here("Main.py", *TINY_MID, f"--data_dir={data}", f"--teacher_model={tmp_path}/t.mod",
               f"--model_save_path={tmp_path}/m", f"--his_save_path={tmp_path}/m")
    return tmp_path / "t.mod", tmp_path / "m_best_global_100_100.mod"


def test_checkpoints_of_another_role_or_dataset_are_refused(tmp_path, tiny_dir):
    from conftest import TINY_MID, TINY_STU

    data = _tiny_data(tmp_path, tiny_dir)
    teacher, mid = _teacher_and_mid(tmp_path, data)
    # another role: the intermediate model given as the teacher, the teacher as the intermediate model
    proc = run_here("Main.py", *TINY_MID, f"--data_dir={data}", f"--teacher_model={mid}",
                      f"--model_save_path={tmp_path}/x", f"--his_save_path={tmp_path}/x", check=False)
    _one_error_line(proc, "holds a middle_teacher model, not a teacher model")
    # another dataset of the same shape: one train interaction moved
    train = dh.load_split(str(tiny_dir / "trnMat.pkl")).tolil()
    row, col = train.nonzero()
    train[row[0], col[0]] = 0
    train[row[0], (col[0] + 1) % train.shape[1]] = 1
    other = tmp_path / "Other" / "sparse_tiny"
    _write_split(other, sp.coo_matrix(train.tocsr()), dh.load_split(str(tiny_dir / "tstMat.pkl")),
                 dh.load_split(str(tiny_dir / "valMat.pkl")))
    proc = run_here("Main.py", *TINY_STU, f"--data_dir={tmp_path / 'Other'}", f"--middle_teacher_model={mid}",
                      f"--model_save_path={tmp_path}/y", f"--his_save_path={tmp_path}/y", check=False)
    _one_error_line(proc, "another train split")


def test_a_published_checkpoint_is_accepted_with_one_warning(tmp_path, tiny_dir):
    from conftest import REF, TINY_STU

    data = _tiny_data(tmp_path, tiny_dir)
    mid = REF / "published_checkpoints" / "mid_tiny_best_global_100_100.mod"
    proc = run_here("Main.py", *TINY_STU, f"--data_dir={data}", f"--middle_teacher_model={mid}",
                      "--PRUNING_END=1", "--mask_epoch=1", "--plots=False",
                      f"--model_save_path={tmp_path}/s", f"--his_save_path={tmp_path}/s")
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning:") and ".mod" in line]
    assert len(warnings) == 1 and "published .mod file" in warnings[0]


# ----------------------------------------------------------------------------- more one-line refusals


def test_topk_above_the_item_count_is_one_line_error_before_anything_is_written(tmp_path, tiny_dir):
    from conftest import REF, TINY_MID, TINY_TEACHER
    from Utils.runtime.Errors import ConfigError
    from Utils.training.Metrics import Evaluator

    data = _tiny_data(tmp_path, tiny_dir)
    train = dh.load_split(str(tiny_dir / "trnMat.pkl"))
    n_items = train.shape[1]
    with pytest.raises(ConfigError, match=rf"--topk={n_items + 1}.*{n_items}"):
        Evaluator(train, train, n_items + 1, 8, "cpu")
    Evaluator(train, train, n_items, 8, "cpu")  # K = the item count is allowed
    out = tmp_path / "out"
    teacher = REF / "published_checkpoints" / "teacher_tiny.mod"
    too_many = f"--topk={n_items + 1}"
    for script, flags in (("pretrainTeacher.py", TINY_TEACHER), ("Main.py", [*TINY_MID, f"--teacher_model={teacher}"])):
        proc = run_here(script, *flags, f"--data_dir={data}", too_many, f"--model_save_path={out}/x",
                          f"--his_save_path={out}/x", check=False)
        _one_error_line(proc, too_many, f"number of items, {n_items}")
        assert not out.exists() or not os.listdir(out), os.listdir(out)
    tool = ("modelTools.py", "evaluate", teacher, "--dataset=tiny", f"--data_dir={data}")
    _one_error_line(run_here(*tool, f"--topk={n_items + 1}", "--json", tmp_path / "m.json", check=False),
                    too_many)
    assert not (tmp_path / "m.json").exists()
    # recommend documents its behaviour instead: K is clipped, each user gets every unseen item
    proc = run_here("modelTools.py", "recommend", teacher, "--dataset=tiny", f"--data_dir={data}",
                      "--users=0,1", "--topk=1000")
    seen = np.diff(sp.csr_matrix(train).indptr)
    for user, line in zip((0, 1), proc.stdout.splitlines()):
        assert len(line.split(":", 1)[1].split()) == n_items - seen[user]


def test_plot_refuses_a_file_as_out_and_a_binary_history_in_one_line(tmp_path):
    from conftest import REF

    his = _history(tmp_path / "t.his")
    run_here("modelTools.py", "plot", his, "--out", tmp_path / "plots")
    png = tmp_path / "plots" / "training.png"
    mod = tmp_path / "t.mod"
    mod.write_bytes((REF / "published_checkpoints" / "teacher_tiny.mod").read_bytes())
    before = {p: p.read_bytes() for p in (png, mod)}
    for target in (png, mod):  # --out an existing file
        _one_error_line(run_here("modelTools.py", "plot", his, "--out", target, check=False),
                        str(target), "not a folder")
    for history in (png, mod):  # a PNG or a checkpoint given as a history
        _one_error_line(run_here("modelTools.py", "plot", history, "--out", tmp_path / "other", check=False),
                        str(history), "not a history file")
        _one_error_line(run_here("modelTools.py", "summary", history, check=False), str(history))
    assert {p: p.read_bytes() for p in (png, mod)} == before
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("flags, ok", [
    (["--use_dynamic_epoch=True", "--epoch_list=0,0,0", "--PRUNING_START=1", "--PRUNING_END=2"], False),
    (["--use_dynamic_epoch=True", "--epoch_list=0,3,-1", "--PRUNING_START=1", "--PRUNING_END=2"], False),
    (["--use_dynamic_epoch=True", "--PRUNING_START=0", "--PRUNING_END=1"], False),  # the default list's run 0
    (["--use_dynamic_epoch=True", "--epoch_list=0,5,0", "--PRUNING_END=2", "--esc_train_prn_run=2"], True),
    (["--use_dynamic_epoch=False", "--epoch_list=0,0,0", "--PRUNING_END=2"], True),  # --mask_epoch counts
])
def test_a_trained_pruning_run_of_no_epoch_is_refused(flags, ok):
    import Params
    from Utils.runtime.Errors import ConfigError

    if ok:
        Params.parse_args(flags)
    else:
        with pytest.raises(ConfigError, match=r"--epoch_list\[\d\].*at least 1 epoch"):
            Params.parse_args(flags)


@pytest.mark.parametrize("flags", [["--mask_epoch=0"], ["--run_no_adj_weights=True", "--fix_epoch=0"]])
def test_mask_and_fix_epoch_of_zero_are_refused(flags):
    import Params
    from Utils.runtime.Errors import ConfigError

    with pytest.raises(ConfigError, match=flags[-1].split("=")[0]):
        Params.parse_args(flags)


def test_epoch_list_of_zeros_is_one_line_error_on_the_command_line(tmp_path, tiny_dir):
    from conftest import REF, TINY_MID

    data = _tiny_data(tmp_path, tiny_dir)
    proc = run_here("Main.py", *TINY_MID, f"--data_dir={data}", "--epoch_list=0,0,0", "--use_dynamic_epoch=True",
                      f"--teacher_model={REF / 'published_checkpoints' / 'teacher_tiny.mod'}",
                      f"--model_save_path={tmp_path}/out/m", f"--his_save_path={tmp_path}/out/m", check=False)
    _one_error_line(proc, "--epoch_list[1] is 0", "--use_dynamic_epoch=True")
    assert not (tmp_path / "out").exists()


def _convert(tmp_path, fmt, name, text):
    from Utils.data.Convert import Options, prepare

    path = tmp_path / name
    path.write_text(text)
    prepare(Options(format=fmt, input=str(path), name="x", kcore=0, data_dir=str(tmp_path / "D")),
            log=lambda *_: None)


@pytest.mark.parametrize("fmt, name, text, where", [
    ("csv", "two.csv", "user,item\n1,2\n1,3\n2,4\nuser,item\n3,4\n", "two.csv:5"),
    ("csv", "two.tsv", "userId\tmovieId\trating\n1\t2\t5\n\nuserId\tmovieId\trating\n3\t4\t1\n", "two.tsv:4"),
    ("recbole", "two.inter", "user_id:token\titem_id:token\n1\t2\nuser_id:token\titem_id:token\n2\t3\n",
     "two.inter:3"),
])
def test_a_repeated_header_line_is_an_error_naming_its_line(tmp_path, fmt, name, text, where):
    with pytest.raises(DataError, match=rf"{where}: repeats the header of line 1"):
        _convert(tmp_path, fmt, name, text)
    assert not (tmp_path / "D").exists()


@pytest.mark.parametrize("name, text, where", [
    ("no_comma.csv", "1,2\n1,3\n14\n2,3\n3,1\n", "no_comma.csv:3: expected 2 fields, found 1"),
    ("space.tsv", "user\titem\n1\t2\n1 3\n2\t3\n", "space.tsv:3: expected 2 fields, found 1"),
    ("short_first.csv", "14\n1,2\n1,3\n", "short_first.csv:1:"),  # the first line is the malformed one
])
def test_a_malformed_line_is_blamed_on_its_own_line(tmp_path, name, text, where):
    with pytest.raises(DataError, match=where):
        _convert(tmp_path, "csv", name, text)


def test_prepare_data_reports_a_repeated_header_in_one_line(tmp_path):
    path = tmp_path / "cat.csv"
    path.write_text("user,item\n" + "".join(f"{u},{i}\n" for u in range(5) for i in range(4)) + "user,item\n9,9\n")
    proc = run_here("prepareData.py", "--format=csv", f"--input={path}", "--name=x", f"--data_dir={tmp_path / 'D'}",
                      check=False)
    _one_error_line(proc, "cat.csv:22", "repeats the header")
    assert not (tmp_path / "D").exists()
