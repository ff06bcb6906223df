"""LightGCN_sp and the fused propagation against the golden vectors and plain autograd (docs/method.md#prunable-model, docs/method.md#stages-2-and-3-distillation)."""
import numpy as np
import pytest
import torch

import DataHandler as dh
from Utils.training.Distill import DistillLoss, frozen_outputs
from Utils.objective.Losses import Supervisor
from Model import LightGCN_sp
from Params import parse_args
from Utils.config.Build import run_config
from Utils.kernels.Kernels import CPU_BLOCKS
from Utils.kernels.Spmm import propagate_layers, propagate_sum

RTOL, ATOL = 1e-4, 1e-6


@pytest.fixture
def tiny(ref, tiny_dir):
    data = dh.load_dataset_dir(str(tiny_dir), "tiny")
    adj = dh.Graph.from_scipy(dh.propagation_matrix(data.train))
    closure = dh.Graph.from_scipy(dh.closure_matrix(data.train, layers=1))
    models = ref("prunable_models.npz")

    def build(prefix, graph):
        model = LightGCN_sp(60, 40, int(models["latdim"]), int(models[f"{prefix}_layers"]), graph.nnz)
        state = {"uEmbeds": models[f"{prefix}_uEmbeds"], "iEmbeds": models[f"{prefix}_iEmbeds"],
                 "adj_mask1_train": models[f"{prefix}_edge_w"]}
        if prefix == "stu":
            state.update(adj_mask2_fixed=models["stu_edge_fixed"], emb_mask2_fixed=models["stu_emb_mask"])
        with torch.no_grad():
            for name, value in state.items():
                getattr(model, name).copy_(torch.from_numpy(value))
        return model

    return {"adj": adj, "closure": closure, "student": build("stu", adj), "middle": build("mid", closure)}


def test_prunable_forward_matches_golden(ref, tiny):
    fwd = ref("prunable_forward.npz")
    users, items = tiny["student"](tiny["adj"])
    np.testing.assert_allclose(users.detach().numpy(), fwd["stu_out_users"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(items.detach().numpy(), fwd["stu_out_items"], rtol=RTOL, atol=ATOL)
    mid = frozen_outputs(tiny["middle"], tiny["closure"])
    np.testing.assert_allclose(mid.users.numpy(), fwd["mid_out_users"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(mid.items.numpy(), fwd["mid_out_items"], rtol=RTOL, atol=ATOL)
    layers = torch.stack(tiny["middle"].layers(tiny["closure"])).detach().numpy()
    np.testing.assert_allclose(layers, fwd["mid_layers_list"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(mid.high_users.numpy(), fwd["mid_layers_list"][2:].sum(0)[:60], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("case", ["prn1", "prn4_v1", "prn4_v2", "prn4_v3"])
def test_stage3_objective_through_the_model_matches_golden(ref, tiny, case):
    """The student's loss and gradients as Main.py computes them: model forward + kd_objective."""
    kd, tea = ref(f"kd_loss_{case}.npz"), ref("teacher.npz")
    run = int(kd["prn_run"])
    args = parse_args(["--reg=1e-3", "--ereg=1e-2", "--use_ereg=True", "--cdreg=1e-2", "--softreg=1",
                       "--screg=1", "--subspcreg=0.5", f"--subspcreg_version={kd['subspcreg_version']}"])
    run_cfg = run_config(args, run, student=True, blocks=CPU_BLOCKS)
    assert run_cfg.kd.loosen == float(kd["loosen"])
    student = tiny["student"]
    sup = frozen_outputs(tiny["middle"], tiny["closure"])
    t = torch.from_numpy
    # the stage's own per-batch loss, with the golden random triples injected
    loss_fn = DistillLoss(student, tiny["adj"], sup, run_cfg.kd, args.topRange, torch.Generator().manual_seed(0))
    loss_fn.draw = lambda: (t(kd["rand_users"]), t(kd["rand_items1"]), t(kd["rand_items2"]))
    parts = loss_fn(t(tea["ancs"]), t(tea["poss"]), t(tea["negs"]))
    for name in ("total", "main", "emb_kd", "pred_kd", "reg"):
        np.testing.assert_allclose(parts[name].item(), kd[name], rtol=RTOL, atol=ATOL)
    parts["total"].backward()
    np.testing.assert_allclose(student.uEmbeds.grad.numpy(), kd["grad_uEmbeds"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(student.iEmbeds.grad.numpy(), kd["grad_iEmbeds"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(student.adj_mask1_train.grad.numpy(), kd["grad_edge_w"], rtol=RTOL, atol=ATOL)


def test_run_configs_take_the_learning_rate_of_the_run():
    args = parse_args(["--lr=1e-3"])
    assert run_config(args, 2, student=True, blocks=CPU_BLOCKS).lr == 1e-3
    args = parse_args(["--lr=1e-3", "--use_dynamic_lr=True", "--lr_list=0,5e-4,1e-4", "--PRUNING_END=2"])
    assert [run_config(args, run, student=True, blocks=CPU_BLOCKS).lr for run in (1, 2)] == [5e-4, 1e-4]


def test_fused_propagation_equals_layer_by_layer_autograd(tiny):
    graph = tiny["closure"]
    gen = torch.Generator().manual_seed(0)
    e0 = torch.randn(graph.n_nodes, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.rand(graph.nnz, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(graph.n_nodes, 5, dtype=torch.float64, generator=gen)
    values = lambda: graph.values.double() * w  # noqa: E731
    fused = propagate_sum(graph, values(), e0, 3)
    (fused * weight).sum().backward()
    g_fused = (e0.grad.clone(), w.grad.clone())
    e0.grad = w.grad = None
    plain = torch.stack(propagate_layers(graph, values(), e0, 3)).sum(0)
    (plain * weight).sum().backward()
    np.testing.assert_allclose(fused.detach(), plain.detach(), rtol=1e-12)
    np.testing.assert_allclose(g_fused[0], e0.grad, rtol=1e-10)
    np.testing.assert_allclose(g_fused[1], w.grad, rtol=1e-10)
    small = dh.Graph.from_scipy(dh.propagation_matrix(dh.sp.random(6, 4, density=0.5, random_state=1, format="csr")))
    x = torch.randn(small.n_nodes, 3, dtype=torch.float64, requires_grad=True)
    v = small.values.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda vv, xx: propagate_sum(small, vv, xx, 2), (v, x))


def test_frozen_outputs_of_a_one_layer_model_have_zero_high_part(tiny):
    model = LightGCN_sp(60, 40, 8, 1, tiny["adj"].nnz)
    out = frozen_outputs(model, tiny["adj"])
    assert isinstance(out, Supervisor) and float(out.high_users.abs().sum()) == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_restricted_propagation_is_bit_identical(tiny, dtype):
    """Stage 1 propagates only for the batch's rows: values and gradients equal the full path exactly."""
    graph = tiny["adj"]
    gen = torch.Generator().manual_seed(1)
    e0 = torch.randn(graph.n_nodes, 8, dtype=dtype, generator=gen, requires_grad=True)
    rows = torch.unique(torch.randint(0, graph.n_nodes, (40,), generator=gen))
    weight = torch.randn(rows.numel(), 8, dtype=dtype, generator=gen)
    values = graph.values.to(dtype)
    for layers in (0, 1, 3):
        restricted = propagate_sum(graph, values, e0, layers, rows=rows)
        (restricted * weight).sum().backward()
        grad = e0.grad.clone()
        e0.grad = None
        full = propagate_sum(graph, values, e0, layers)[rows]
        (full * weight).sum().backward()
        assert torch.equal(restricted, full) and torch.equal(grad, e0.grad), layers
        e0.grad = None
