"""--resume and --overwrite: a run killed with SIGKILL and resumed ends exactly as the uninterrupted
run (stage 1, stage 2, stage 3 across pruning runs, and a stage-3 run killed at ten random
moments); an earlier run's outputs are never replaced unless asked."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, TINY_MID, TINY_STU, TINY_TEACHER, run_here, run_script, tiny_root_with_supervisors

pytestmark = pytest.mark.slow  # end-to-end runs in subprocesses


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """A --data_dir with the tiny split, a teacher and an intermediate model trained on it."""
    return tiny_root_with_supervisors(tmp_path_factory, "resume")


def stage_flags(root, stage):
    common = [f"--data_dir={root}", "--plots=False", "--threads=2"]  # the uninterrupted run's thread count
    if stage == "teacher":
        return "pretrainTeacher.py", [*TINY_TEACHER[:-1], "--epoch_tea=6", *common]
    if stage == "intermediate":
        return "Main.py", [*TINY_MID, "--mask_epoch=4", f"--teacher_model={root}/tea.mod", *common]
    extra = {"student": [],  # and the adaptive estimator, which keeps per-epoch clusters
             "student_adaptive": ["--contrast_candidates=16", "--contrast_estimator=adaptive"]}[stage]
    return "Main.py", [*TINY_STU, f"--middle_teacher_model={root}/mid_best_global_100_100.mod", *common, *extra]


def kill_after(script, flags, lines):
    """Start the stage, read ``lines`` lines of its output, then SIGKILL it; True if it was still running."""
    proc = subprocess.Popen([sys.executable, str(ROOT / script), *flags], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for _ in range(lines):
        if not proc.stdout.readline():
            break
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return running


def outputs(prefix):
    """Every checkpoint's tensors and the history's per-epoch numbers (no timings) of a run."""
    folder, name = os.path.split(prefix)
    mods = {f[len(name):]: torch.load(os.path.join(folder, f), weights_only=True)["tensors"]
            for f in os.listdir(folder) if f.startswith(name) and f.endswith(".mod")}
    with open(prefix + ".his") as fh:
        rows = [json.loads(line) for line in fh]
    numbers = [(r.get("prn_run"), r["epoch"], r["loss"], r.get("metrics")) for r in rows]
    return mods, numbers


def assert_same_outputs(a, b):
    mods_a, rows_a = outputs(a)
    mods_b, rows_b = outputs(b)
    assert sorted(mods_a) == sorted(mods_b) and mods_a
    for name, tensors in mods_a.items():
        assert sorted(tensors) == sorted(mods_b[name])
        for key, tensor in tensors.items():
            assert torch.equal(tensor, mods_b[name][key]), (name, key)
    assert rows_a == rows_b


@pytest.mark.parametrize("stage,kill_at", [("teacher", "Epoch 2/6, Time"), ("intermediate", "Epoch 1/4, Time"),
                                           ("student", "Pruning Run PRN:[2]"),
                                           ("student_adaptive", "Pruning Run PRN:[2]")])
def test_sigkill_then_resume_ends_as_the_uninterrupted_run(tiny_root, tmp_path, stage, kill_at):
    script, flags = stage_flags(tiny_root, stage)
    run_script(script, *flags, f"--model_save_path={tmp_path}/full", f"--his_save_path={tmp_path}/full")
    part = [*flags, f"--model_save_path={tmp_path}/part", f"--his_save_path={tmp_path}/part"]
    proc = subprocess.Popen([sys.executable, str(ROOT / script), *part], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # stage 3: killed in run 2, after run 1's pruning
        if kill_at in line:
            break
    assert proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    resumed = run_script(script, *part, "--resume=True").stdout
    assert "Resuming" in resumed
    assert_same_outputs(f"{tmp_path}/full", f"{tmp_path}/part")


def test_demo_teacher_killed_after_its_4th_epoch_resumes_bit_for_bit(demo_dir, tmp_path):
    """At the demo data's size torch's CPU kernels split their work over the 2 threads; the run
    killed after epoch 3 (its 4th) and resumed writes what the uninterrupted one does."""
    flags = ["--dataset=demo", f"--data_dir={demo_dir}", "--latdim=32", "--batch=2048", "--seed=7", "--lr=1e-3",
             "--gnn_layer=3", "--epoch_tea=6", "--threads=2"]
    run_script("pretrainTeacher.py", *flags, f"--model_save_path={tmp_path}/full", f"--his_save_path={tmp_path}/full")
    part = [*flags, f"--model_save_path={tmp_path}/part", f"--his_save_path={tmp_path}/part"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "pretrainTeacher.py"), *part], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "Epoch 4/6, Time" in line:  # epoch 4's line: the 4th epoch's _last.ckpt is written
            break
    assert proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert torch.load(f"{tmp_path}/part_last.ckpt", weights_only=True)["epoch"] >= 3
    assert "Resuming" in run_script("pretrainTeacher.py", *part, "--resume=True").stdout
    assert_same_outputs(f"{tmp_path}/full", f"{tmp_path}/part")


def test_stage3_killed_at_ten_random_moments_ends_with_the_same_records(tiny_root, tmp_path):
    script, flags = stage_flags(tiny_root, "student")
    run_script(script, *flags, f"--model_save_path={tmp_path}/full", f"--his_save_path={tmp_path}/full")
    part = [*flags, f"--model_save_path={tmp_path}/part", f"--his_save_path={tmp_path}/part"]
    rng = np.random.default_rng(0)
    kills = 0
    for _ in range(10):  # each time: resume if a resume file was written, else start afresh
        again = "--resume=True" if os.path.exists(f"{tmp_path}/part_last.ckpt") else "--overwrite=True"
        kills += kill_after(script, [*part, again], int(rng.integers(5, 220)))
    assert kills >= 5  # most kills hit a running stage
    run_script(script, *part, "--resume=True" if os.path.exists(f"{tmp_path}/part_last.ckpt") else "--overwrite=True")
    assert_same_outputs(f"{tmp_path}/full", f"{tmp_path}/part")


def test_an_earlier_run_is_not_replaced_unless_asked(tiny_root, tmp_path):
    script, flags = stage_flags(tiny_root, "teacher")
    paths = [f"--model_save_path={tmp_path}/tea", f"--his_save_path={tmp_path}/tea"]
    run_here(script, *flags, *paths)
    before = (tmp_path / "tea.mod").read_bytes(), (tmp_path / "tea.his").read_text()
    proc = run_here(script, *flags, "--epoch_tea=1", *paths, check=False)
    assert proc.returncode == 2 and "--resume=True" in proc.stderr and "--overwrite=True" in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert ((tmp_path / "tea.mod").read_bytes(), (tmp_path / "tea.his").read_text()) == before
    run_here(script, *flags, "--epoch_tea=1", *paths, "--overwrite=True")
    assert len((tmp_path / "tea.his").read_text().splitlines()) == 1

    script, flags = stage_flags(tiny_root, "student")
    paths = [f"--model_save_path={tmp_path}/stu", f"--his_save_path={tmp_path}/stu", "--PRUNING_END=1"]
    run_here(script, *flags, *paths)
    proc = run_here(script, *flags, *paths, check=False)
    assert proc.returncode == 2 and "stu" in proc.stderr


def test_resume_refuses_other_flags_and_a_missing_file(tiny_root, tmp_path):
    script, flags = stage_flags(tiny_root, "teacher")
    paths = [f"--model_save_path={tmp_path}/tea", f"--his_save_path={tmp_path}/tea"]
    proc = run_here(script, *flags, *paths, "--resume=True", check=False)
    assert proc.returncode == 2 and "tea_last.ckpt" in proc.stderr
    run_here(script, *flags, "--epoch_tea=2", *paths)
    proc = run_here(script, *flags, *paths, "--resume=True", "--lr=0.5", check=False)
    assert proc.returncode == 2 and "--lr" in proc.stderr
    run_here(script, *flags, *paths, "--resume=True")  # more epochs may be asked for
    assert len((tmp_path / "tea.his").read_text().splitlines()) == 6
    assert torch.load(tmp_path / "tea_last.ckpt", weights_only=True)["epoch"] == 5


def test_resume_refuses_a_changed_supervisor_and_says_when_only_the_rounding_changes(tiny_root, tmp_path):
    """Issue 36, cases 4 and 8: the resume file records the sha256 of every file the run reads again
    and the execution settings; another teacher copied over --teacher_model is refused, another
    thread count resumes with a line saying it is equal up to rounding only."""
    import shutil

    teacher = tmp_path / "tea.mod"
    shutil.copy(tiny_root / "tea.mod", teacher)
    script, flags = stage_flags(tiny_root, "intermediate")
    flags = [*flags, f"--teacher_model={teacher}", "--mask_epoch=1", f"--model_save_path={tmp_path}/m",
             f"--his_save_path={tmp_path}/m"]
    run_here(script, *flags)
    identity = torch.load(tmp_path / "m_last.ckpt", weights_only=True)["identity"]
    assert set(identity["inputs"]) == {"trnMat.pkl", "tstMat.pkl", "valMat.pkl", "--teacher_model"}
    assert identity["execution"]["threads"] == 2 and identity["execution"]["processes"] == 1
    ckpt = torch.load(teacher, weights_only=True)  # "another teacher": the same file with one entry changed
    ckpt["tensors"]["uEmbeds"][0, 0] += 1.0
    torch.save(ckpt, teacher)
    proc = run_here(script, *flags, "--mask_epoch=2", "--resume=True", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"--teacher_model={teacher} is not the file the run in {tmp_path}/m_last.ckpt began with" in proc.stderr
    shutil.copy(tiny_root / "tea.mod", teacher)  # the original back: it resumes, on another thread count
    out = run_here(script, *flags, "--mask_epoch=2", "--resume=True", "--threads=1").stdout
    assert "Resuming with other execution settings than the run began with (threads 2 -> 1)" in out
    assert "up to float rounding, not bit for bit" in out
    proc = run_here(script, *flags, "--mask_epoch=3", "--resume=True", "--cdreg=0.5", check=False)
    assert proc.returncode == 2 and "runs.1.kd.cdreg was 0.01, now 0.5 (--cdreg=0.5 where it used --cdreg=0.01)" \
        in proc.stderr, proc.stderr
