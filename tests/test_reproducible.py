"""The same command twice, at 2 threads, writes the same numbers: every tensor of every checkpoint
and resume file equal (``torch.equal``), and every history row equal but for its timings.

Thread timing could change a result only through a kernel that sums in the order threads
arrive (``Utils.Runtime.set_deterministic`` says which one and how it is fixed). The demo data
(3,000 users x 2,000 items) is large enough for torch's CPU kernels to split work across
threads; the tiny split checks the stage 2 -> 3 chain quickly.
"""
import os

import torch

from conftest import TINY_MID, TINY_STU, TINY_TEACHER, run_script
from Utils.Training import read_history

THREADS = "--threads=2"
TIMINGS = {"seconds", "train_seconds", "time", "wall_seconds"}


def _strip_timings(value):
    if isinstance(value, dict):
        return {k: _strip_timings(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [_strip_timings(v) for v in value]
    return value


def _tensors(value, path=""):
    """(path, tensor) for every tensor inside a loaded checkpoint or resume file."""
    if torch.is_tensor(value):
        yield path, value
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            yield from _tensors(value[key], f"{path}/{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{path}[{i}]")


def run_outputs(folder):
    """Every file a run wrote: tensors of .mod/.ckpt files, history rows without timings."""
    found = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith((".mod", ".ckpt")):
            found[name] = dict(_tensors(torch.load(path, weights_only=True)))
        elif name.endswith(".his"):  # a history (JSON lines) or a stage-3 record file
            found[name] = _strip_timings(read_history(path))
    return found


def assert_identical_runs(a, b):
    out_a, out_b = run_outputs(a), run_outputs(b)
    assert sorted(out_a) == sorted(out_b) and any(n.endswith(".mod") for n in out_a)
    for name, content in out_a.items():
        if name.endswith(".his"):
            assert content == out_b[name], name
            continue
        assert sorted(content) == sorted(out_b[name]), name
        for key, tensor in content.items():
            other = out_b[name][key]
            assert torch.equal(tensor, other), (name, key, (tensor.double() - other.double()).abs().max().item())


DEMO = ["--dataset=demo", "--latdim=32", "--batch=2048", "--seed=7", THREADS]
DEMO_TEACHER = [*DEMO, "--lr=1e-3", "--reg=1e-6", "--gnn_layer=3"]


def test_stage1_twice_on_the_demo_data_is_bit_identical(demo_dir, tmp_path):
    for run in ("a", "b"):
        out = tmp_path / run
        run_script("pretrainTeacher.py", *DEMO_TEACHER, f"--data_dir={demo_dir}", "--epoch_tea=3",
                   f"--model_save_path={out}/tea", f"--his_save_path={out}/tea")
    assert_identical_runs(tmp_path / "a", tmp_path / "b")


def test_stages_1_to_3_twice_on_the_demo_data_are_bit_identical(demo_dir, tmp_path):
    """Teacher, intermediate model and a student over two pruning runs, twice: the stage-3 runs
    reach the accumulating kernels through the distillation terms, at the demo data's size."""
    for run in ("a", "b"):
        out = tmp_path / run
        run_script("pretrainTeacher.py", *DEMO_TEACHER, f"--data_dir={demo_dir}", "--epoch_tea=1",
                   f"--model_save_path={out}/tea", f"--his_save_path={out}/tea")
        distil = [*DEMO, f"--data_dir={demo_dir}", "--gnn_layer=2", "--lr=5e-3", "--topRange=20000", "--plots=False"]
        run_script("Main.py", *distil, "--train_middle_model=True", "--distill_from_middle_model=False",
                   "--distill_from_teacher_model=True", f"--teacher_model={out}/tea.mod", "--mask_epoch=1",
                   "--PRUNING_START=1", "--PRUNING_END=1", f"--model_save_path={out}/mid",
                   f"--his_save_path={out}/mid")
        run_script("Main.py", *distil, "--distill_from_middle_model=True",
                   f"--middle_teacher_model={out}/mid_best_global_100_100.mod", "--mask_epoch=1",
                   "--PRUNING_START=1", "--PRUNING_END=2", "--pruning_percent_adj=0.15", "--pruning_percent_emb=0.2",
                   f"--model_save_path={out}/stu", f"--his_save_path={out}/stu")
    assert_identical_runs(tmp_path / "a", tmp_path / "b")


def test_the_tiny_chain_twice_is_bit_identical(tiny_data, tmp_path):
    for run in ("a", "b"):
        out = tmp_path / run
        common = [f"--data_dir={tiny_data}", THREADS, "--plots=False"]
        run_script("pretrainTeacher.py", *TINY_TEACHER, *common[:2], f"--model_save_path={out}/tea",
                   f"--his_save_path={out}/tea")
        run_script("Main.py", *TINY_MID, *common, f"--teacher_model={out}/tea.mod", f"--model_save_path={out}/mid",
                   f"--his_save_path={out}/mid")
        run_script("Main.py", *TINY_STU, *common, f"--middle_teacher_model={out}/mid_best_global_100_100.mod",
                   f"--model_save_path={out}/stu", f"--his_save_path={out}/stu")
    assert_identical_runs(tmp_path / "a", tmp_path / "b")
