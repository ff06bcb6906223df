"""Issue 36, case 2: an output prefix is owned by one run at a time (Utils/files/Lock.py)."""
import json
import os
import subprocess
import sys

import pytest

from Utils.config.Config import Outputs
from Utils.files import Lock
from Utils.runtime.Errors import ConfigError
from conftest import ROOT, TINY_TEACHER, _one_error_line, run_script, tiny_data_dir


def _holder(path, ready):
    """A process that holds the locks of ``path`` until killed (prints ``ready`` once it does)."""
    code = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r})\n"
            "from Utils.config.Config import Outputs\nfrom Utils.files import Lock\n"
            f"with Lock.own(Outputs({path!r}, {path!r})):\n    print({ready!r}, flush=True)\n    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == ready
    return proc


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    prefix = str(tmp_path / "out" / "t")
    holder = _holder(prefix, "held")
    try:
        with pytest.raises(ConfigError, match=rf"{prefix} is in use by another run \(PID {holder.pid} on "):
            with Lock.own(Outputs(prefix, prefix)):
                pass
    finally:
        holder.kill()
        holder.wait()
    said = []
    with Lock.own(Outputs(prefix, prefix), say=said.append):  # killed -9: the OS let the lock go
        assert json.loads(open(prefix + ".lock").read())["pid"] == os.getpid()
    assert said == [f"Took over the lock {prefix}.lock left by PID {holder.pid}, which no longer runs"]
    assert not os.path.exists(prefix + ".lock")  # a run that ends removes its lock


def test_both_prefixes_are_locked_and_released_on_an_error(tmp_path):
    outputs = Outputs(str(tmp_path / "ckpts" / "s"), str(tmp_path / "his" / "s"))
    with pytest.raises(RuntimeError):
        with Lock.own(outputs):
            assert sorted(os.listdir(tmp_path / "ckpts")) == ["s.lock"] and os.listdir(tmp_path / "his") == ["s.lock"]
            raise RuntimeError("the stage failed")
    assert os.listdir(tmp_path / "ckpts") == [] and os.listdir(tmp_path / "his") == []
    with Lock.own(outputs):  # taken again by the same process: nothing was left held
        pass
    with Lock.own(outputs, lead=False):  # ranks other than 0 take nothing
        assert os.listdir(tmp_path / "ckpts") == []


def test_without_flock_a_live_holder_is_refused_and_a_dead_one_taken_over(tmp_path, monkeypatch):
    monkeypatch.setattr(Lock, "fcntl", None)
    prefix = str(tmp_path / "t")
    with open(prefix + ".lock", "w") as fh:  # a live process (this test's parent) holds it
        json.dump({"pid": os.getppid(), "host": Lock.socket.gethostname()}, fh)
    with pytest.raises(ConfigError, match=rf"in use by another run \(PID {os.getppid()} on "):
        with Lock.own(Outputs(prefix, prefix)):
            pass
    dead = _dead_pid()
    with open(prefix + ".lock", "w") as fh:
        json.dump({"pid": dead, "host": Lock.socket.gethostname()}, fh)
    said = []
    with Lock.own(Outputs(prefix, prefix), say=said.append):
        assert json.loads(open(prefix + ".lock").read())["pid"] == os.getpid()
    assert said == [f"Took over the lock {prefix}.lock left by PID {dead}, which no longer runs"]
    assert not os.path.exists(prefix + ".lock")


@pytest.mark.slow
def test_two_runs_started_together_on_one_prefix_one_exits_2_naming_the_other(tmp_path, tiny_dir):
    """The issue's case: two teacher runs started 0.3 s apart on one output prefix; the outputs
    are then those of one run alone (``modelTools.py compare`` with a run that had the prefix
    to itself). Each trains long enough (30 epochs, a few seconds) to hold the prefix while the
    other starts: runs that do not overlap are the earlier-run case (--resume/--overwrite)."""
    data = tiny_data_dir(tmp_path, tiny_dir)

    def teacher(folder):
        return subprocess.Popen([sys.executable, str(ROOT / "pretrainTeacher.py"), *TINY_TEACHER, f"--data_dir={data}",
                                 "--epoch_tea=30", "--threads=1", f"--model_save_path={folder}/t",
                                 f"--his_save_path={folder}/t"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first = teacher(tmp_path / "both")
    subprocess.run(["sleep", "0.3"])
    second = teacher(tmp_path / "both")
    results = {proc.pid: (proc, *proc.communicate(timeout=300)) for proc in (first, second)}
    codes = sorted(proc.returncode for proc, _, _ in results.values())
    assert codes == [0, 2], [err for _, _, err in results.values()]
    (refused, _, err), = [r for r in results.values() if r[0].returncode == 2]
    winner = next(pid for pid in results if pid != refused.pid)
    _one_error_line(subprocess.CompletedProcess(refused.args, 2, "", err),
                    f"{tmp_path}/both/t is in use by another run (PID {winner} on ", "pretrainTeacher.py")
    alone = teacher(tmp_path / "alone")
    assert alone.wait(timeout=300) == 0
    same = run_script("modelTools.py", "compare", tmp_path / "both", tmp_path / "alone")
    assert same.stdout.splitlines()[-1].startswith("identical"), same.stdout
    assert sorted(os.listdir(tmp_path / "both")) == ["t.his", "t.mod", "t_last.ckpt"]  # no lock left
