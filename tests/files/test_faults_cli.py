"""Command-line and process faults: each is one ``error:`` line (exit 2) or a
documented behaviour: a model evaluated on another train split, plots to a folder that cannot be
written, Ctrl-C under ``| tee``, errors under torchrun, library warnings before a refusal."""
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import scipy.sparse as sp

import DataHandler as dh
from Utils.runtime import Errors
from conftest import ROOT, TINY_TEACHER, run_here
from conftest import tiny_data_dir as _tiny_data
from conftest import _history, _one_error_line, _write_split

pytestmark = pytest.mark.slow  # end-to-end runs in subprocesses


TEACHER = [*TINY_TEACHER, "--epoch_tea=1"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny teacher trained once: (its checkpoint, its --data_dir, a dataset of the same shape
    whose train split has one interaction moved)."""
    root = tmp_path_factory.mktemp("faults_cli")
    tiny = ROOT / "tests" / "data" / "reference" / "tiny"
    if not tiny.is_dir():
        pytest.skip("tests/data/reference/tiny is not available")
    data = _tiny_data(root, tiny)
    run_here("pretrainTeacher.py", *TEACHER, f"--data_dir={data}", f"--model_save_path={root}/tea",
               f"--his_save_path={root}/tea")
    train = dh.load_split(str(tiny / "trnMat.pkl")).tolil()
    row, col = train.nonzero()
    train[row[0], col[0]] = 0
    train[row[0], (col[0] + 1) % train.shape[1]] = 1
    _write_split(root / "Other" / "sparse_tiny", sp.coo_matrix(train.tocsr()),
                 dh.load_split(str(tiny / "tstMat.pkl")), dh.load_split(str(tiny / "valMat.pkl")))
    return root / "tea.mod", data, root / "Other"


# ----------------------------------------------------------------------------- 1. another train split
def test_model_tools_refuse_a_model_of_another_train_split_as_the_stages_do(teacher, tmp_path):
    checkpoint, data, other = teacher
    compact = tmp_path / "tea.cmp"
    run_here("modelTools.py", "export", checkpoint, compact)  # on its own dataset: accepted
    assert "Recall@20" in run_here("modelTools.py", "evaluate", compact).stdout
    for argv in (("evaluate", checkpoint), ("recommend", checkpoint, "--users=0"), ("evaluate", compact),
                 ("export", checkpoint, tmp_path / "x.cmp")):
        proc = run_here("modelTools.py", *argv, f"--data_dir={other}", check=False)
        _one_error_line(proc, "another train split", str(data), str(other / "sparse_tiny"), "--data_dir")
        assert proc.stdout == ""
    assert not (tmp_path / "x.cmp").exists()


# ----------------------------------------------------------------------------- 2. plots that cannot be written
@pytest.mark.parametrize("how", ["missing subfolder", "name too long", "read-only folder"])
def test_a_plot_that_cannot_be_written_is_one_line_error(tmp_path, how):
    his = _history(tmp_path / "t.his")
    out, prefix = tmp_path / "plots", ""
    out.mkdir()
    if how == "missing subfolder":
        prefix = "nothere/"
    elif how == "name too long":
        prefix = "x" * 300
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only folder (the two cases above fail the same write)")
        out.chmod(0o555)
    for command in ("plot", "curve"):
        proc = run_here("modelTools.py", command, his, "--out", out, "--prefix", prefix, check=False)
        _one_error_line(proc, "cannot write the plot", str(out))
    assert os.listdir(out) == []


# ----------------------------------------------------------------------------- 3. Ctrl-C under | tee
def _teacher_command(tmp_path, data):
    return [sys.executable, str(ROOT / "pretrainTeacher.py"), *TINY_TEACHER, f"--data_dir={data}",
            "--epoch_tea=1000000", f"--model_save_path={tmp_path}/t", f"--his_save_path={tmp_path}/t"]


def _terminal_sigint():
    """A shell's background jobs ignore SIGINT; a terminal's foreground group does not."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_keeps_the_summary_on_stderr_when_the_pipe_reader_dies_unread(tmp_path, tiny_dir):
    """The summary lines reach the pipe, but its reader (tee, hit by the same Ctrl-C) never reads
    them: no BrokenPipeError tells the program, so they are printed on stderr as well."""
    data = _tiny_data(tmp_path, tiny_dir)
    with open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen(_teacher_command(tmp_path, data), cwd=ROOT, stdout=subprocess.PIPE, stderr=err,
                                text=True, preexec_fn=_terminal_sigint)
        for line in proc.stdout:
            if "Epoch 2/" in line:
                break
        proc.send_signal(signal.SIGINT)  # and stop reading: what follows stays unread in the pipe
        assert proc.wait(timeout=120) == 130
    unread, err = proc.stdout.read(), (tmp_path / "err").read_text()
    assert "Final Best Acc" in unread  # it went into the pipe, where a dead reader loses it
    assert "Final Best Acc" in err and "Interrupted" in err and "Traceback" not in err, err


def test_ctrl_c_to_the_group_of_a_tee_pipeline_never_loses_the_summary(tmp_path, tiny_dir):
    """``python pretrainTeacher.py ... | tee log`` in its own session, SIGINT to the whole group:
    the summary is on stderr or in the log (before the fix, in neither in 2 of 3 tries)."""
    data = _tiny_data(tmp_path, tiny_dir)
    log, err = tmp_path / "log", tmp_path / "err"
    pipeline = f"{shlex.join(_teacher_command(tmp_path, data))} 2>{err} | tee {log} >/dev/null"
    proc = subprocess.Popen(["bash", "-c", pipeline], cwd=ROOT, start_new_session=True,
                            preexec_fn=_terminal_sigint)
    deadline = time.time() + 120
    while not (log.exists() and "Epoch 2/" in log.read_text()):
        assert time.time() < deadline and proc.poll() is None, err.read_text()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)
    assert "Final Best Acc" in err.read_text() and "Traceback" not in err.read_text(), err.read_text()


# ----------------------------------------------------------------------------- 4. torchrun
def test_only_rank_0_prints_a_user_error(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    assert Errors.report_user_error(Errors.ConfigError("bad flag")) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    Errors.report_user_error(Errors.ConfigError("bad flag"))
    assert capsys.readouterr().err == "error: bad flag\n"


def _torchrun(script, *flags):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(ROOT / script), *map(str, flags)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.mark.parametrize("case", ["every rank fails", "only rank 0 fails"])
def test_torchrun_prints_an_error_once_and_rank_1_exits_without_traceback(tmp_path, tiny_data, case):
    flags = [*TEACHER, "--epoch_tea=2", f"--data_dir={tiny_data}", f"--model_save_path={tmp_path}/t",
             f"--his_save_path={tmp_path}/t"]
    holder = None
    if case == "every rank fails":  # a folder in the way of t.mod: every rank sees it before training
        (tmp_path / "t.mod").mkdir()  # (issue 36, case 9: it used to stop rank 0 only, after epoch 0)
        flags.append("--overwrite=True")
        needle = "t.mod is a folder, in the way of the checkpoint"
    else:  # only rank 0 takes the output prefix's lock: another run holding it stops rank 0 alone
        code = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r})\n"
                "from Utils.config.Config import Outputs\nfrom Utils.files import Lock\n"
                f"with Lock.own(Outputs({str(tmp_path / 't')!r}, {str(tmp_path / 't')!r})):\n"
                "    print('held', flush=True)\n    time.sleep(600)\n")
        holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
        needle = f"is in use by another run (PID {holder.pid} "
    try:
        proc = _torchrun("pretrainTeacher.py", *flags)
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    output = proc.stdout + proc.stderr
    assert "Epoch 0" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1 and needle in errors[0], output[-3000:]
    assert "[rank1]" not in output and "Connection closed" not in output, output[-3000:]


# ----------------------------------------------------------------------------- 5. warnings before a refusal
def test_a_split_pickle_given_as_a_checkpoint_is_refused_in_one_line(tmp_path, tiny_dir):
    """torch.load warns about the pickle protocol of any non-torch pickle before refusing it."""
    data = _tiny_data(tmp_path, tiny_dir)
    split = tiny_dir / "trnMat.pkl"
    _one_error_line(run_here("modelTools.py", "evaluate", split, check=False), str(split), "refused")
    proc = run_here("pretrainTeacher.py", *TEACHER, f"--data_dir={data}", f"--load_model_tea={split}",
                      f"--model_save_path={tmp_path}/t", f"--his_save_path={tmp_path}/t", check=False)
    _one_error_line(proc, str(split), "refused")
