"""Data-parallel runs (Utils/runtime/Parallel.py): each process's share of the loss, and torchrun end to end.

The share tests need no processes: the shares of ranks 0..N-1 of one batch, summed, must be
the one-process loss and gradients. The end-to-end tests start 2 gloo processes with
``python -m torch.distributed.run`` on the tiny data and compare with one process.
"""
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY_STU, TINY_TEACHER, kd_parts, run_script, train_tiny_supervisors
from conftest import _batch_inputs
from Utils.objective import Losses as L
from Utils.runtime.Parallel import SOLO, Group
from Utils.files.History import read_history

LEAVES = ("stu_users", "stu_items", "stu_u_embeds", "stu_i_embeds", "stu_edge_weight")


def _loss_and_grads(cfg, inputs, **kwargs):
    """The parts and the gradients w.r.t. the trainee's tensors (zeros where a share does not use one)."""
    parts = kd_parts(cfg, inputs, **kwargs)
    leaves = [inputs[k] for k in LEAVES]
    grads = torch.autograd.grad(parts["total"], leaves, allow_unused=True)
    return parts, [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads)]


def test_group_split_takes_contiguous_shares():
    index = torch.arange(7)
    assert SOLO.split(index)[1] is None and SOLO.split(index)[0] is index
    shares = [Group(rank, 3).split(index) for rank in range(3)]
    assert [s.tolist() for s, _ in shares] == [[0, 1, 2], [3, 4], [5, 6]]
    assert {total for _, total in shares} == {7}
    (a, b), total = Group(1, 3).split_rows(index, index + 10)
    assert a.tolist() == [3, 4] and b.tolist() == [13, 14] and total == 7
    assert SOLO.split_rows(index, index)[1] is None


@pytest.mark.parametrize("config", [
    dict(),
    dict(use_subspcreg=True, loosen=1.0, subspcreg=0.5, subspcreg_version="v3"),
    dict(use_subspcreg=True, loosen=1.0, subspcreg=0.5, subspcreg_version="v1"),
    dict(use_subspcreg=True, loosen=1.0, subspcreg=0.5, subspcreg_version="v2"),
    dict(use_subspcreg=True, loosen=2.0, subspcreg=0.5, resample_ratio=0.5),
    dict(use_subspcreg=True, loosen=1.0, subspcreg=0.5, use_ly0emb4subspcreg=True, contrast_candidates=10),
])
@pytest.mark.parametrize("world", [2, 3])
def test_shares_of_the_stage_2_3_loss_sum_to_the_one_process_loss(config, world):
    inputs = _batch_inputs(seed=5)
    cfg = L.KDConfig(**config)
    whole, whole_grads = _loss_and_grads(cfg, inputs, generator=torch.Generator().manual_seed(2))
    summed, summed_grads = {}, [torch.zeros_like(inputs[k]) for k in LEAVES]
    for rank in range(world):  # every process draws from a generator in the same state
        parts, grads = _loss_and_grads(cfg, inputs, generator=torch.Generator().manual_seed(2),
                                       group=Group(rank, world))
        assert float(parts["reg"].detach()) == (float(whole["reg"].detach()) if rank == 0 else 0.0)  # whole-table term: rank 0
        for name, value in parts.items():
            summed[name] = summed.get(name, 0.0) + value.detach()
        summed_grads = [s + g for s, g in zip(summed_grads, grads)]
    for name in whole:
        torch.testing.assert_close(summed[name], whole[name].detach(), rtol=1e-5, atol=1e-7, msg=name)
    for name, s, w in zip(LEAVES, summed_grads, whole_grads):
        torch.testing.assert_close(s, w, rtol=1e-5, atol=1e-7, msg=name)


def test_shares_of_the_teacher_loss_sum_to_the_one_process_loss():
    from DataHandler import Graph, propagation_matrix
    from Model import LightGCN
    from Utils.training.Teacher import teacher_loss
    import scipy.sparse as sp

    torch.manual_seed(0)
    train = sp.random(30, 20, density=0.2, format="csr", random_state=0)
    train.data[:] = 1.0
    graph = Graph.from_scipy(propagation_matrix(train))
    model = LightGCN(30, 20, 8, 3)
    g = torch.Generator().manual_seed(1)
    batch = [torch.randint(0, n, (41,), generator=g) for n in (30, 20, 20)]

    def parts_and_grads(group):
        model.zero_grad()
        parts = teacher_loss(model, graph, 1e-3, group)(*batch)
        parts["total"].backward()
        return {k: v.detach() for k, v in parts.items()}, [p.grad.clone() for p in model.parameters()]

    whole, whole_grads = parts_and_grads(SOLO)
    shares = [parts_and_grads(Group(rank, 2)) for rank in range(2)]
    for name in whole:
        torch.testing.assert_close(shares[0][0][name] + shares[1][0][name], whole[name], rtol=1e-5, atol=1e-8)
    for a, b, w in zip(shares[0][1], shares[1][1], whole_grads):
        torch.testing.assert_close(a + b, w, rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------------------- torchrun on tiny
def _torchrun(script, *flags, nproc=2):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", str(ROOT / script), *map(str, flags)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"torchrun {script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def _assert_close_rows(one, two, rtol=1e-4):
    """Every loss part and metric of every epoch within ``rtol`` relative; the rest equal."""
    assert len(one) == len(two) and one

    def walk(a, b, where):
        if isinstance(a, dict):
            assert set(a) == set(b), where
            for key in a:
                if key not in ("seconds", "train_seconds"):
                    walk(a[key], b[key], f"{where}/{key}")
        elif isinstance(a, float):
            assert b == pytest.approx(a, rel=rtol, abs=1e-12), where
        elif where.endswith("/path") and a and b:  # a checkpoint's path: same name, other folder
            assert os.path.basename(a) == os.path.basename(b), where
        else:
            assert a == b, where

    for number, (a, b) in enumerate(zip(one, two)):
        walk(a, b, f"row {number}")


def _outputs(folder):
    return sorted(name for name in os.listdir(folder))


def _stage_pair(tmp_path, data_dir, script, flags):
    """The same stage run by one process and by two; returns the two output folders."""
    folders = []
    for nproc in (1, 2):
        out = tmp_path / f"np{nproc}"
        out.mkdir()
        run_flags = [*flags, f"--data_dir={data_dir}", f"--model_save_path={out}/run", f"--his_save_path={out}/run",
                     "--plots=False"]
        if nproc == 1:
            run_script(script, *run_flags)
        else:
            proc = _torchrun(script, *run_flags)
            assert "Data-parallel run: 2 processes (gloo)" in proc.stdout
            assert proc.stdout.count("Start\n") == 1  # rank 1 prints nothing
        folders.append(out)
    return folders



@pytest.mark.slow
def test_two_processes_train_the_teacher_as_one(tmp_path, tiny_data):
    one, two = _stage_pair(tmp_path, tiny_data, "pretrainTeacher.py", TINY_TEACHER)
    assert _outputs(one) == _outputs(two)  # same files, written once (rank 0)
    _assert_close_rows(read_history(str(one / "run.his")), read_history(str(two / "run.his")))


@pytest.mark.slow
def test_two_processes_distil_and_prune_the_student_as_one(tmp_path, tiny_data):
    middle = train_tiny_supervisors(tmp_path, tiny_data)
    one, two = _stage_pair(tmp_path, tiny_data, "Main.py", [
        *TINY_STU, f"--middle_teacher_model={middle}", "--use_subspcreg=True", "--contrast_candidates=40"])
    assert _outputs(one) == _outputs(two)
    assert any(name.endswith("_72_63.mod") for name in _outputs(one))  # pruned twice
    _assert_close_rows(read_history(str(one / "run.his")), read_history(str(two / "run.his")))
    for name in _outputs(one):
        if name.endswith(".mod"):
            a = torch.load(one / name, weights_only=True)["tensors"]
            b = torch.load(two / name, weights_only=True)["tensors"]
            for key in ("adj_mask2_fixed", "emb_mask2_fixed"):
                assert torch.equal(a[key], b[key]), (name, key)
        if name.endswith(".his"):
            _assert_close_rows(read_history(str(one / name)), read_history(str(two / name)))
