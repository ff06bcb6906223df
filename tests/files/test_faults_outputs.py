"""Output files and checkpoints: a stage never writes over a file it reads or
another stage's files, a failed --overwrite run leaves nothing of the old run, a damaged resume
file is refused, --load_his_tea must be this teacher's history, save paths are checked before
training, and every refusal is one complete line."""
import errno
import json
import os
import shutil
import struct
import zipfile

import pytest
import torch

from conftest import TINY_MID, TINY_STU, TINY_TEACHER, run_here, tiny_root_with_supervisors
from conftest import _one_error_line
from Utils.config.Config import Outputs
from Utils.files import Checkpoint, Resume
from Utils.runtime.Errors import CheckpointError, ConfigError

pytestmark = pytest.mark.slow  # end-to-end runs in subprocesses


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A --data_dir with the tiny split, a teacher (tea.*) and an intermediate model (mid*) trained on it."""
    return tiny_root_with_supervisors(tmp_path_factory, "outputs")


@pytest.fixture
def copy(trained, tmp_path):
    """A fresh copy of the trained files (the tests may try to overwrite them); the --data_dir stays shared."""
    for path in trained.iterdir():
        if path.is_file():
            shutil.copy(path, tmp_path / path.name)
    return tmp_path


def _contents(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def _teacher(data, prefix, *flags, check=True):
    return run_here("pretrainTeacher.py", *TINY_TEACHER, f"--data_dir={data}", f"--model_save_path={prefix}",
                      f"--his_save_path={prefix}", *flags, check=check)


# ----------------------------------------------------------------------------- case 1: inputs and other stages
def test_stage3_never_writes_over_its_supervisor_even_with_overwrite(trained, copy):
    before = _contents(copy)
    mid = copy / "mid_best_global_100_100.mod"
    proc = run_here("Main.py", *TINY_STU, "--PRUNING_END=1", "--mask_epoch=1", "--plots=False",
                      f"--data_dir={trained}", f"--middle_teacher_model={mid}", f"--model_save_path={copy}/mid",
                      f"--his_save_path={copy}/mid", "--overwrite=True", check=False)
    _one_error_line(proc, f"--middle_teacher_model={mid}", "middle_teacher checkpoint this stage reads",
                    "--overwrite=True")
    assert _contents(copy) == before


@pytest.mark.parametrize("his, named", [("tea", "tea.his"), ("other", "tea_last.ckpt")])
def test_overwrite_never_replaces_another_stages_files(trained, copy, his, named):
    """Stage 2 at the teacher's prefix: the teacher's history and resume file are the teacher stage's."""
    before = _contents(copy)
    proc = run_here("Main.py", *TINY_MID, f"--data_dir={trained}", f"--teacher_model={copy}/tea.mod",
                      f"--model_save_path={copy}/tea", f"--his_save_path={copy}/{his}", "--overwrite=True",
                      check=False)
    _one_error_line(proc, f"{copy}/{named}", "the teacher stage's", "not this middle_teacher stage's")
    assert _contents(copy) == before


def test_overwrite_never_replaces_another_stages_record_history(trained, copy):
    """Issue 36, case 3: stage 3 whose main history would be stage 2's record file
    mid_best_global_100_100.his. A record saved at epoch 0 holds no history row to name its stage,
    so the record file itself names it."""
    record = copy / "mid_best_global_100_100.his"
    assert json.loads(record.read_text())["stage"] == "middle_teacher"
    before = _contents(copy)
    proc = run_here("Main.py", *TINY_STU, "--PRUNING_END=1", "--mask_epoch=1", "--plots=False",
                    f"--data_dir={trained}", f"--middle_teacher_model={copy}/mid_best_global_100_100.mod",
                    f"--model_save_path={copy}/stu", f"--his_save_path={copy}/mid_best_global_100_100",
                    "--overwrite=True", check=False)
    _one_error_line(proc, f"{record} is the middle_teacher stage's history, not this student stage's")
    assert _contents(copy) == before


# ----------------------------------------------------------------------------- case 2: a failed overwrite
def test_a_failed_overwrite_run_leaves_nothing_of_the_old_run(trained, tmp_path):
    _teacher(trained, tmp_path / "tea", "--epoch_tea=2")
    assert {"tea.mod", "tea_last.ckpt", "tea.his"} <= set(os.listdir(tmp_path))
    proc = _teacher(trained, tmp_path / "tea", "--overwrite=True", "--lr=1e30", check=False)
    _one_error_line(proc, "stage teacher", "epoch 0")  # NaN in the first epoch: nothing recorded
    assert "removed the 3 files of the earlier run" in proc.stdout
    assert sorted(os.listdir(tmp_path)) == ["tea.his"] and (tmp_path / "tea.his").read_text() == ""


# ----------------------------------------------------------------------------- case 3: the resume file's digest
def _flip_low_bit_of_first_tensor(path):
    """Flip the lowest bit of the first stored tensor's first byte (a float32's lowest mantissa bit)."""
    archive = zipfile.ZipFile(path)
    entry = min((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.filename)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[entry.header_offset + 26:entry.header_offset + 30])
    raw[entry.header_offset + 30 + name_len + extra_len] ^= 1
    path.write_bytes(bytes(raw))


def test_a_damaged_resume_file_is_refused_and_an_old_one_without_digest_resumes(trained, tmp_path):
    _teacher(trained, tmp_path / "tea", "--epoch_tea=2")
    last = tmp_path / "tea_last.ckpt"
    whole = last.read_bytes()
    assert "digest" in torch.load(last, weights_only=True)
    _flip_low_bit_of_first_tensor(last)
    proc = _teacher(trained, tmp_path / "tea", "--resume=True", check=False)
    _one_error_line(proc, str(last), "is damaged", "digest")
    last.write_bytes(whole)  # a file written before digests (and the run's identity) were stored still resumes
    data = torch.load(last, weights_only=True)
    del data["digest"], data["identity"]
    torch.save(data, last)
    out = _teacher(trained, tmp_path / "tea", "--resume=True").stdout
    assert "Resuming after epoch 1" in out
    assert "does not record its run's settings and inputs (an older resume file): they are not compared" in out


def test_the_digest_covers_every_tensor_byte_and_plain_value():
    payload = {"model": {"uEmbeds": torch.arange(6.0).reshape(2, 3)}, "epoch": 3, "flags": {"lr": 0.1},
               "rng": (1, [2, 3])}
    same = {"rng": [1, (2, 3)], "flags": {"lr": 0.1}, "epoch": 3,
            "model": {"uEmbeds": torch.arange(6.0).reshape(2, 3)}}
    assert Resume.digest(payload) == Resume.digest(same)  # key order and list/tuple do not matter
    for change in (lambda p: p["model"]["uEmbeds"].view(torch.int32)[0, 0].add_(1),  # lowest mantissa bit
                   lambda p: p["model"].update(uEmbeds=p["model"]["uEmbeds"].reshape(3, 2)),
                   lambda p: p["model"].update(uEmbeds=p["model"]["uEmbeds"].double()),
                   lambda p: p.update(epoch=3.0), lambda p: p["flags"].update(lr=0.1000001)):
        other = {k: (dict(v) if isinstance(v, dict) else v) for k, v in payload.items()}
        other["model"] = {"uEmbeds": payload["model"]["uEmbeds"].clone()}
        change(other)
        assert Resume.digest(other) != Resume.digest(payload)


# ----------------------------------------------------------------------------- case 4: --load_his_tea
def _continue(trained, copy, history):
    return _teacher(trained, copy / "cont", "--epoch_tea=4", f"--load_model_tea={copy}/tea.mod",
                    f"--load_his_tea={history}", check=False)


def test_load_his_tea_must_name_this_teachers_history(trained, copy):
    proc = _continue(trained, copy, copy / "typo")
    _one_error_line(proc, f"--load_his_tea={copy}/typo", "no history file", "typo.his")
    proc = _continue(trained, copy, copy / "mid")
    _one_error_line(proc, "mid.his is not a teacher history", "'middle_teacher'")
    # another dataset's or run's teacher history: the checkpoint's best epoch is not in it with its metrics
    best = torch.load(copy / "tea.mod", weights_only=True)["meta"]["epoch"]
    rows = [json.loads(line) for line in (copy / "tea.his").read_text().splitlines()]
    rows[best]["metrics"]["test"]["Recall"] += 0.01
    (copy / "other.his").write_text("".join(json.dumps(row) + "\n" for row in rows))
    proc = _continue(trained, copy, copy / "other.his")
    _one_error_line(proc, "other.his is not the history of --load_model_tea", f"epoch {best}")
    assert not list(copy.glob("cont*"))  # refused before anything was written
    assert "History Loaded: 3 epochs, resuming at epoch 3" in _continue(trained, copy, copy / "tea").stdout


# ----------------------------------------------------------------------------- case 5: output paths
def test_an_unwritable_model_save_path_is_refused_before_training(trained, tmp_path):
    (tmp_path / "file").write_text("a regular file")
    proc = run_here("pretrainTeacher.py", *TINY_TEACHER, f"--data_dir={trained}",
                      f"--model_save_path={tmp_path}/file/sub/tea", f"--his_save_path={tmp_path}/tea", check=False)
    _one_error_line(proc, f"--model_save_path={tmp_path}/file/sub/tea", f"{tmp_path}/file is a regular file")
    assert "Epoch 0" not in proc.stdout and not (tmp_path / "tea.his").exists()


@pytest.mark.parametrize("flag", ["model_save_path", "his_save_path"])
def test_a_save_path_ending_in_a_slash_is_refused(trained, tmp_path, flag):
    paths = {"model_save_path": f"{tmp_path}/new/m", "his_save_path": f"{tmp_path}/new/h", flag: f"{tmp_path}/out/"}
    proc = run_here("Main.py", *TINY_STU, f"--data_dir={trained}", "--plots=False",
                      f"--middle_teacher_model={trained}/mid_best_global_100_100.mod",
                      *(f"--{name}={value}" for name, value in paths.items()), check=False)
    _one_error_line(proc, f"--{flag}={tmp_path}/out/ names a folder", f"--{flag}={tmp_path}/out/run")
    assert os.listdir(tmp_path) == []  # not even the other path's folder was made (issue 36, case 9)


@pytest.mark.parametrize("role, name", [("teacher", "t.mod"), ("teacher", "t_last.ckpt"), ("student", "t.his")])
def test_a_folder_in_the_way_of_an_output_is_refused_before_training(tmp_path, role, name):
    """Issue 36, case 9: found when the file was first written (after epoch 0), now before anything runs."""
    (tmp_path / name).mkdir()
    with pytest.raises(ConfigError, match=f"{tmp_path / name} is a folder, in the way of the "):
        Resume.check_outputs(Outputs(str(tmp_path / "t"), str(tmp_path / "t")), role, {})


def test_an_invalid_argument_error_names_the_path_and_what_is_wrong(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(os, "replace", refuse)
    target = tmp_path / "run:1.mod"
    with pytest.raises(CheckpointError) as info:
        Checkpoint.save_checkpoint(target, {"uEmbeds": torch.zeros(2, 2)})
    message = str(info.value)
    assert str(target) in message and "file system refuses this name" in message and "Errno" not in message
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- case 6: refused objects
def test_a_resume_file_holding_other_objects_is_refused_in_one_whole_sentence(trained, tmp_path):
    import numpy as np

    torch.save({"format": Resume.FORMAT, "version": Resume.VERSION, "role": "teacher", "x": np.arange(3)},
               tmp_path / "tea_last.ckpt")
    proc = _teacher(trained, tmp_path / "tea", "--resume=True", check=False)
    line = _one_error_line(proc, f"resume checkpoint {tmp_path}/tea_last.ckpt holds objects other than tensors "
                                 "and plain data")
    assert line.endswith("so it is refused") and "weights_only" not in line


def test_a_checkpoint_holding_other_objects_is_refused_in_one_whole_sentence(tmp_path):
    import numpy as np

    path = tmp_path / "np.mod"
    torch.save({"format": Checkpoint.FORMAT, "version": Checkpoint.VERSION, "tensors": {},
                "meta": {"x": np.float64(1.0)}}, path)
    with pytest.raises(CheckpointError) as info:
        Checkpoint.load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"checkpoint {path} holds objects other than tensors and plain data")
    assert message.endswith("so it is refused") and "weights_only" not in message


def test_torch_s_own_write_error_becomes_our_one_line(tmp_path, monkeypatch):
    """Issue 36, case 7: a full disk while torch.save writes (its RuntimeError, not an OSError) is
    the same one line as our other write errors, and the earlier file stays."""
    from Utils.files import Checkpoint
    from Utils.runtime.Errors import CheckpointError

    path = tmp_path / "t_last.ckpt"
    path.write_bytes(b"earlier")

    def full_disk(obj, handle, *args, **kwargs):
        handle.write(b"part")
        raise RuntimeError("[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="the write failed part-way .is the disk full"):
        Checkpoint.save_checkpoint(str(path), {"x": torch.zeros(1)}, {})
    assert path.read_bytes() == b"earlier" and sorted(p.name for p in tmp_path.iterdir()) == ["t_last.ckpt"]
