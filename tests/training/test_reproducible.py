"""The same command twice, at 2 threads, writes the same numbers: every tensor of every checkpoint
and resume file equal (``torch.equal``), and every history row equal but for its timings.

Thread timing could change a result only through a kernel that sums in the order threads
arrive (``Utils.runtime.Runtime.set_deterministic`` says which one and how it is fixed). The demo data
(3,000 users x 2,000 items) is large enough for torch's CPU kernels to split work across
threads; the tiny split checks the stage 2 -> 3 chain quickly.
"""
import pytest

from conftest import TINY_MID, TINY_STU, TINY_TEACHER, run_script
from Utils.tools.Compare import compare_runs, run_outputs

pytestmark = pytest.mark.slow  # end-to-end runs in subprocesses


THREADS = "--threads=2"


def assert_identical_runs(a, b):
    outputs = run_outputs(str(a))
    result = compare_runs(outputs, run_outputs(str(b)))
    assert any(name.endswith(".mod") for name in outputs)
    assert result.identical, result


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


def test_compare_reports_what_differs(tmp_path):
    """``modelTools.py compare``: identical files pass; a changed tensor, a changed metric and a
    missing file are each reported (exit 1), timings never."""
    import json

    import torch

    a, b = tmp_path / "a", tmp_path / "b"
    for folder, value, seconds in ((a, 1.0, 3.0), (b, 1.0, 9.0)):
        folder.mkdir()
        torch.save({"uEmbeds": torch.full((2, 3), value)}, folder / "m.mod")
        (folder / "m.his").write_text(json.dumps({"epoch": 0, "Recall": 0.5, "seconds": seconds}) + "\n")
    assert run_script("modelTools.py", "compare", a, b).stdout.splitlines()[-1].startswith("identical")
    torch.save({"uEmbeds": torch.full((2, 3), 1.25)}, b / "m.mod")
    (b / "m.his").write_text(json.dumps({"epoch": 0, "Recall": 0.6, "seconds": 9.0}) + "\n")
    (b / "extra.mod").write_bytes((b / "m.mod").read_bytes())
    proc = run_script("modelTools.py", "compare", a, b, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "m.mod: differs, largest absolute difference 0.25" in proc.stdout
    assert "m.his: differs" in proc.stdout and "extra.mod: only in" in proc.stdout
