"""Stage-2 / stage-3 benchmark on Yelp: one training epoch, one evaluation, one pruning step.

    python bench/bench_distill.py --stage 2   # intermediate model, 6 layers on Ĉ, teacher 8 layers on Â
    python bench/bench_distill.py --stage 3   # student, 2 layers on Â, intermediate 6 layers on Ĉ, run 2

Flags are those of the published Yelp examples (batch 4096, 64-d, topRange 100,000).
Models start from their random initialisation (timing does not depend on the values);
stage 3 first prunes the student once (that step is timed) and trains pruning run 2,
where the subspace term is on. Prints one JSON line: seconds of the whole epoch (the
real training step of Main.py), of a full evaluation (test, and validation where the split has one), of the
pruning step, a per-part breakdown measured on the first ``--parts_batches``
batches (propagation forward/backward, each loss term forward+backward, optimiser,
sampling), and the process's peak RSS. ``--batches N`` times N batches instead of
the whole epoch (the JSON says which).

``--contrast_candidates 0,2048`` times the same batches once per K (0 = the exact
objective) from the same starting weights and prints one JSON line per K, each with its
speed-up against the first K; ``--patience``/``--init_from_supervisor`` do not change
the cost of a batch, so they are not benched here.

``--blocks cpu,device`` does the same once per block shape of the all-node kernels:
``cpu`` (256 x 4096, what a CPU run uses) and ``device`` (what a GPU run uses: whole anchor
sets against column blocks of at most ``--block_mb`` MiB, here run on the CPU).
``--prn_run N`` (stage 3) prunes the student N − 1 times first and times run N with its
flags (run 6: 77.4 % of the edges, 32.8 % of the entries, the subspace slack δ = 4 of the
published Yelp list); ``--subspace_pairs per_run,per_batch`` times the subspace term with its
positive pairs listed once for the run (what Main.py does; the build is
``pair_index_build_s``) and listed again in every batch (as before 2026-12-02), from the same
weights: the same loss, so only the time differs.

``--contrast_estimator uniform,adaptive`` times each estimator for every K; the adaptive one's
cost depends on the embeddings (how many clusters carry each group's weight), so give it
``--supervisor MID.mod`` (stage 3: the trained intermediate model, the student starting from
its layer-0 embeddings as ``--init_from_supervisor`` does) rather than random models.
``contrast_rows`` in the breakdown is the drawing of the batch's rows (and the adaptive plans).

``--count_ops`` adds ``ops_per_step``: the number of aten operators one training step
dispatches (torch profiler, CPU; nested calls included), after the timing, and
``op_self_ms``: the self CPU milliseconds of that step's five costliest operators and of
the accumulating ``index_put_`` (the one kernel ``--deterministic`` changes on CPU), so that
modes compare by operator rather than by a wall time that drifts with the VM.

``--device cuda`` runs everything on the GPU (``bench/gpu_check.sh``); ``--blocks`` then
defaults to the device's shape.
"""
import argparse
import copy
import json
import os
import platform
import resource
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import DataHandler as dh  # noqa: E402
import Params  # noqa: E402
from Utils.config import Build  # noqa: E402
from Utils.runtime import Runtime  # noqa: E402
from Utils.training.Distill import DistillLoss, frozen_outputs, load_model  # noqa: E402
from Model import LightGCN, LightGCN_sp  # noqa: E402
from Utils.kernels import Kernels  # noqa: E402
from Utils.objective import Losses, Pruning
from Utils.training.Training import build_eval_suite, train_epoch  # noqa: E402
from bench_teacher import deterministic_modes, sync  # noqa: E402  (bench/ is on the path as the script's folder)

STAGE_FLAGS = {
    2: ["--train_middle_model=True", "--distill_from_middle_model=False", "--distill_from_teacher_model=True",
        "--lr=1e-4", "--reg=1e-6", "--use_ereg=True", "--ereg=1e-10", "--gnn_layer=6"],
    3: ["--distill_from_middle_model=True", "--lr=1e-4", "--reg=5e-7", "--ereg=1e-9", "--gnn_layer=2",
        "--use_adj_mask_aug=True", "--use_SM_edgeW2aug=True", "--adj_mask_aug1=1.0", "--adj_mask_aug2=0.05",
        "--pruning_percent_adj=0.05", "--pruning_percent_emb=0.2"],
}


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn):
    start = time.perf_counter()
    out = sync(fn())
    return out, time.perf_counter() - start


def count_ops(loss_fn, batch, optimizer, device):
    """(aten operators dispatched by one training step, profiled on the CPU with nested calls
    included; {operator: self CPU ms} of its five costliest and of ``aten::_index_put_impl_``)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_epoch(loss_fn, iter([batch]), 1, optimizer, device)
    ops = [event for event in prof.key_averages() if event.key.startswith("aten::")]
    costly = sorted(ops, key=lambda event: event.self_cpu_time_total, reverse=True)[:5]
    costly += [event for event in ops if event.key == "aten::_index_put_impl_" and event not in costly]
    return (sum(event.count for event in ops),
            {event.key: round(event.self_cpu_time_total / 1000, 1) for event in costly})


def part_breakdown(loss, batches, optimizer):
    """Time each piece of a training step of ``loss`` (a :class:`Utils.training.Distill.DistillLoss`)
    separately: the same work as kd_objective, term by term."""
    parts = {}

    def add(name, seconds):
        parts[name] = parts.get(name, 0.0) + seconds

    model, graph, sup, cfg, gen = loss.model, loss.graph, loss.supervisor, loss.kd, loss.generator
    top_range, pair_index = loss.top_range, loss.pair_index
    n_users = model.n_users
    for ancs, poss, negs in batches:
        ancs, poss, negs = (torch.from_numpy(a).to(sup.users.device) for a in (ancs, poss, negs))
        (users, items), t = timed(lambda: model(graph))
        add("propagation_forward", t)
        leaf = torch.cat([users, items]).detach().requires_grad_()
        out = (leaf[:n_users], leaf[n_users:])
        rand = tuple(torch.randint(0, n, (top_range,), generator=gen).to(ancs.device)
                     for n in (model.n_users, model.n_items, model.n_items))
        batch, t = timed(lambda: Losses.draw_batch(cfg, (ancs, poss, negs), rand, (model.n_users, model.n_items), gen,
                                                   profiles=loss.profiles()))
        add("contrast_rows", t)
        anchors = (batch.users, batch.items)
        cache = {} if cfg.use_subspcreg else None
        terms = {
            "bpr": lambda: Losses.bpr_loss(out[0][ancs], out[1][poss], out[1][negs]),
            "pred_kd": lambda: Losses.prediction_kd_loss(out, (sup.users, sup.items), rand, cfg.tempsoft),
            "emb_kd": lambda: Losses.embedding_kd_loss((sup.high_users, sup.high_items), out, anchors, cfg.tempcd,
                                                       batch.sample, blocks=cfg.blocks) * cfg.cdreg,
            "contr_deno": lambda: Losses.contrastive_denominator_loss(out, anchors, cfg.tempsc, lse_cache=cache,
                                                                      sample=batch.sample,
                                                                      blocks=cfg.blocks) * cfg.screg,
        }
        if cfg.use_subspcreg:
            terms["subspace"] = lambda: Losses.subspace_loss(
                out, model.emb_mask2_fixed, batch.subspace, cfg, lse_cache=cache, sample=batch.sample,
                pair_index=pair_index) * cfg.subspcreg
        for name, fn in terms.items():
            loss, t_fwd = timed(fn)
            _, t_bwd = timed(lambda: loss.backward(retain_graph=True))
            add(f"{name}_forward", t_fwd)
            add(f"{name}_backward", t_bwd)
        optimizer.zero_grad(set_to_none=True)
        reg, t = timed(lambda: Losses.embedding_reg(model.uEmbeds, model.iEmbeds, cfg.reg)
                       + Losses.edge_weight_reg(model.adj_mask1_train, cfg.ereg))
        _, t2 = timed(lambda: reg.backward())
        add("reg", t + t2)
        _, t = timed(lambda: torch.cat([users, items]).backward(leaf.grad))
        add("propagation_backward", t)
        _, t = timed(optimizer.step)
        add("optimizer", t)
    return {k: round(v / len(batches), 4) for k, v in parts.items()}


def parse_options():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", type=int, choices=(2, 3), required=True)
    parser.add_argument("--data_dir", default=os.path.join(ROOT, "..", "shared", "datasets"))
    parser.add_argument("--dataset", default="yelp", help="sparse_NAME under --data_dir (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, default=0, help="0 = the whole epoch")
    parser.add_argument("--parts_batches", type=int, default=3)
    parser.add_argument("--contrast_candidates", default="0",
                        help="comma-separated K values of --contrast_candidates to time in turn (0 = exact)")
    parser.add_argument("--contrast_estimator", default="uniform",
                        help="comma-separated --contrast_estimator values to time in turn (uniform, adaptive)")
    parser.add_argument("--supervisor", default=None,
                        help="stage 3: a trained intermediate-model checkpoint as the supervisor, the student starting "
                             "from its layer-0 embeddings (--init_from_supervisor), instead of random models: the "
                             "adaptive estimator's cost depends on the embeddings' structure")
    parser.add_argument("--blocks", default=None,
                        help="comma-separated block shapes to time in turn: cpu (256 x 4096) and/or device "
                             "(whole anchor sets, --block_mb per block); default: the device's own")
    parser.add_argument("--block_mb", type=float, default=1024.0)
    parser.add_argument("--count_ops", action="store_true", help="also count the operators of one step")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--deterministic", default="1",
                        help="comma-separated 1/0 to time in turn in this process, e.g. 1,0,1,0: 1 = deterministic "
                             "kernels, as the stages run by default (--deterministic=True) (default: %(default)s)")
    parser.add_argument("--prn_run", type=int, default=2,
                        help="stage 3: the pruning run timed, after N-1 pruning steps (default: %(default)s)")
    parser.add_argument("--subspace_pairs", default="per_run",
                        help="comma-separated: per_run (listed once, as Main.py does) and/or per_batch")
    opts = parser.parse_args()
    shapes = (opts.blocks or ("cpu" if opts.device == "cpu" else "device")).split(",")
    if set(shapes) - {"cpu", "device"}:
        parser.error(f"--blocks takes cpu and/or device, not {opts.blocks}")
    listings = opts.subspace_pairs.split(",")
    if set(listings) - {"per_run", "per_batch"}:
        parser.error(f"--subspace_pairs takes per_run and/or per_batch, not {opts.subspace_pairs}")
    if opts.prn_run < 1 or (opts.stage == 2 and opts.prn_run != 2):
        parser.error("--prn_run is stage 3's (1 or more)")
    modes = deterministic_modes(parser, opts.deterministic)
    ks = [int(k) for k in opts.contrast_candidates.split(",")]
    estimators = opts.contrast_estimator.split(",")
    if set(estimators) - {"uniform", "adaptive"}:
        parser.error(f"--contrast_estimator takes uniform and/or adaptive, not {opts.contrast_estimator}")
    if opts.supervisor is not None and opts.stage != 3:
        parser.error("--supervisor is stage 3's (an intermediate model)")
    return opts, [(k, shape, listing, mode, est) for mode in modes for k in ks for est in estimators
                  for shape in shapes for listing in listings]


def build(opts):
    """The data, graphs, a random supervisor (outputs computed once) and the trainee of the run timed."""
    args = Params.parse_args([f"--dataset={opts.dataset}", f"--data_dir={opts.data_dir}", f"--threads={opts.threads}",
                              f"--device={opts.device}", *STAGE_FLAGS[opts.stage]])
    device = Runtime.select_device(Build.runtime_config(args))
    Runtime.seed_everything(0)
    data = dh.load_dataset(args.data_dir, opts.dataset)
    adj = dh.Graph.from_scipy(dh.propagation_matrix(data.train)).to(device)
    closure, t_closure = timed(lambda: dh.Graph.from_scipy(dh.closure_matrix(data.train, 1)).to(device))
    U, I = data.n_users, data.n_items
    result = {"bench": f"stage{opts.stage}", "dataset": opts.dataset, "train_interactions": int(data.train.nnz),
              "nodes": data.n_nodes, "threads": opts.threads,
              "adj_edges": adj.nnz, "closure_edges": closure.nnz, "closure_build_s": round(t_closure, 2)}
    if opts.stage == 2:
        supervisor, sup_graph = LightGCN(U, I, 64, 8).to(device), adj
        trainee, graph, run = LightGCN_sp(U, I, 64, 6, closure.nnz).to(device), closure, 1
    else:
        supervisor, sup_graph = LightGCN_sp(U, I, 64, 6, closure.nnz).to(device), closure
        trainee, graph, run = LightGCN_sp(U, I, 64, 2, adj.nnz).to(device), adj, opts.prn_run
        if opts.supervisor is not None:  # a trained intermediate model; the student starts from its E0
            supervisor = load_model(opts.supervisor, "middle_teacher", data, device, graph=closure)
            with torch.no_grad():
                trainee.uEmbeds.copy_(supervisor.uEmbeds)
                trainee.iEmbeds.copy_(supervisor.iEmbeds)
            result["supervisor"] = opts.supervisor
    sup, t = timed(lambda: frozen_outputs(supervisor, sup_graph))
    result["supervisor_once_s"] = round(t, 3)
    if opts.stage == 3:  # the pruning steps that lead into the run, the last one timed
        mid_w, t_map = timed(lambda: Pruning.closure_weights_on_adj(adj.row, adj.col, closure.row, closure.col,
                                                                    supervisor.adj_mask1_train.detach(), adj.n_nodes))
        t_prune = 0.0  # run 1 starts unpruned
        for before in range(1, run):
            state, t_prune = timed(lambda: Pruning.prune_state(
                trainee.state_dict(), Build.prune_config(args, before), edges=(adj.row, adj.col),
                scorers={"middle": lambda: sup.all}, mid_weight=mid_w))
            trainee.load_state_dict(state)
        result.update(prn_run=run, pruning_step_s=round(t_prune, 3), closure_weight_map_once_s=round(t_map, 3),
                      edge_kept_pct=round(trainee.edge_kept_pct(), 2), emb_kept_pct=round(trainee.emb_kept_pct(), 2))
    run_cfg = Build.run_config(args, run, student=opts.stage == 3, blocks=Kernels.CPU_BLOCKS)
    return SimpleNamespace(args=args, device=device, data=data, graph=graph, trainee=trainee, sup=sup,
                           run_cfg=run_cfg, result=result)


def time_config(b, config, batches, opts) -> dict:
    """One configuration (K, block shape, pair listing, deterministic mode) timed on ``batches``."""
    k, shape, listing, mode, estimator = config
    device, trainee = b.device, b.trainee
    Runtime.set_deterministic(mode == "1", device)
    block_shapes = {"cpu": Kernels.CPU_BLOCKS, "device": Kernels.device_blocks("cuda", opts.block_mb)}
    cfg = Losses.KDConfig(**{**b.run_cfg.kd.__dict__, "contrast_candidates": k, "blocks": block_shapes[shape],
                             "contrast_estimator": estimator if k > 0 else "uniform"})
    optimizer = Runtime.make_optimizer(trainee.parameters(), b.args.lr)
    row = dict(b.result, deterministic=int(mode), contrast_candidates=k, contrast_estimator=cfg.contrast_estimator,
               blocks=shape,
               use_subspcreg=cfg.use_subspcreg, loosen=cfg.loosen, subspace_pairs=listing)
    if shape == "device":
        row["block_mb"] = opts.block_mb
    loss_fn, t_index = timed(lambda: DistillLoss(trainee, b.graph, b.sup, cfg, b.args.topRange,
                                                 torch.Generator().manual_seed(0)))
    if listing == "per_batch":
        loss_fn.pair_index = None  # list the subspace positives in every batch instead
    elif cfg.use_subspcreg:
        row["pair_index_build_s"] = round(t_index, 3)
    part_breakdown(loss_fn, batches[:1], optimizer)  # warm-up, not counted
    row["parts_per_batch_s"] = part_breakdown(loss_fn, batches[1:1 + opts.parts_batches], optimizer)
    epoch_batches = batches[:opts.batches] if opts.batches else batches
    _, t_epoch = timed(lambda: train_epoch(loss_fn, iter(epoch_batches), len(epoch_batches), optimizer, device))
    row.update(epoch_batches=len(epoch_batches), full_epoch_batches=len(batches), train_epoch_s=round(t_epoch, 2),
               per_batch_s=round(t_epoch / len(epoch_batches), 3))
    suite = build_eval_suite(b.data, 20, b.args.tstBat, "val" if b.data.val is not None else "test", device)
    trainee.eval()
    _, t_eval = timed(lambda: suite.evaluate(lambda: trainee(b.graph)))
    if opts.count_ops:
        row["ops_per_step"], row["op_self_ms"] = count_ops(loss_fn, batches[0], optimizer, device)
    machine = f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}"
    if device.type == "cuda":
        machine += f", {torch.cuda.get_device_name(device)}"
    row.update(eval_test_and_val_s=round(t_eval, 3), peak_rss_mb=round(rss_mb(), 1), machine=machine)
    return row


def main():
    opts, configs = parse_options()
    b = build(opts)
    sampler = dh.NegativeSampler(b.data.train)
    rng = np.random.default_rng(0)
    batches, t_sample = timed(lambda: list(sampler.epoch_batches(rng, b.args.batch)))
    b.result["sampling_s"] = round(t_sample, 3)
    start_state = copy.deepcopy(b.trainee.state_dict())
    first_per_batch = None
    for config in configs:  # the same batches from the same weights
        b.trainee.load_state_dict(start_state)
        row = time_config(b, config, batches, opts)
        first_per_batch = first_per_batch or row["per_batch_s"]
        row["speedup_vs_first"] = round(first_per_batch / row["per_batch_s"], 2)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
