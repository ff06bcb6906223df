"""The CUDA path against the CPU path. Every test here skips without a CUDA device;
``bench/gpu_check.sh`` runs them (then the benches) on a machine that has one."""

import pytest
import torch

from conftest import TINY_MID, TINY_STU, TINY_TEACHER, kd_parts, run_script
from conftest import _batch_inputs
from Utils.kernels import Kernels as K
from Utils.objective import Losses as L
from Utils.files.History import read_history

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"), pytest.mark.slow]

LEAVES = ("stu_users", "stu_items", "stu_u_embeds", "stu_i_embeds", "stu_edge_weight")


def _parts_and_grads(cfg, inputs):
    parts = kd_parts(cfg, inputs)
    grads = torch.autograd.grad(parts["total"], [inputs[k] for k in LEAVES])
    return {k: v.detach().cpu() for k, v in parts.items()}, [g.cpu() for g in grads]


@pytest.mark.parametrize("budget_mb", [1024, 1e-3])  # whole anchor sets; rows and columns split
def test_the_objective_on_the_device_with_its_blocks_is_the_cpu_objective(budget_mb):
    cfg = dict(use_subspcreg=True, loosen=1.0, subspcreg=0.5)
    cpu = _batch_inputs(seed=7)
    ref_parts, ref_grads = _parts_and_grads(L.KDConfig(**cfg), cpu)
    gpu = {k: (v.detach().cuda().requires_grad_(v.requires_grad)) for k, v in cpu.items()}
    parts, grads = _parts_and_grads(L.KDConfig(**cfg, blocks=K.device_blocks("cuda", budget_mb)), gpu)
    for name in ref_parts:
        torch.testing.assert_close(parts[name], ref_parts[name], rtol=1e-4, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)



def _close_rows(cpu_rows, gpu_rows, rtol):
    assert len(cpu_rows) == len(gpu_rows)
    for a, b in zip(cpu_rows, gpu_rows):
        for name, value in a["loss"].items():
            assert b["loss"][name] == pytest.approx(value, rel=rtol, abs=1e-9), name


def test_three_stages_on_the_device_track_the_cpu(tmp_path, tiny_data):
    """The tiny pipeline with --device=cuda: the same per-epoch losses as on the CPU (float
    rounding apart) and a student pruned to the same kept percentages."""
    outputs = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        common = [f"--data_dir={tiny_data}", f"--device={device}", "--plots=False"]
        run_script("pretrainTeacher.py", *TINY_TEACHER, *common, f"--model_save_path={out}/tea",
                   f"--his_save_path={out}/tea")
        run_script("Main.py", *TINY_MID, *common, f"--teacher_model={out}/tea.mod", f"--model_save_path={out}/mid",
                   f"--his_save_path={out}/mid")
        run_script("Main.py", *TINY_STU, *common, f"--middle_teacher_model={out}/mid_best_global_100_100.mod",
                   "--use_subspcreg=True", f"--model_save_path={out}/stu", f"--his_save_path={out}/stu")
        outputs[device] = out
    for stage in ("tea", "mid", "stu"):
        _close_rows(read_history(str(outputs["cpu"] / f"{stage}.his")),
                    read_history(str(outputs["cuda"] / f"{stage}.his")), rtol=1e-3)
    kept = lambda folder: sorted(p.name for p in folder.glob("stu_best_global_*.mod"))  # noqa: E731
    assert kept(outputs["cpu"]) == kept(outputs["cuda"])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpu_processes_train_the_teacher_as_one(tmp_path, tiny_data):
    from test_parallel import _assert_close_rows, _torchrun

    folders = []
    for nproc in (1, 2):
        out = tmp_path / f"np{nproc}"
        flags = [*TINY_TEACHER, f"--data_dir={tiny_data}", "--device=cuda", f"--model_save_path={out}/run",
                 f"--his_save_path={out}/run"]
        _torchrun("pretrainTeacher.py", *flags, nproc=nproc)
        folders.append(out)
    _assert_close_rows(read_history(str(folders[0] / "run.his")), read_history(str(folders[1] / "run.his")))
