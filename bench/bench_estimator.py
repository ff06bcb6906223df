"""How far the sampled all-node sums (``--contrast_candidates K``) move each loss term and its
gradient from the exact ones, on a saved student state.

    python bench/bench_estimator.py --student STU.mod --supervisor MID.mod [--run 6] [--ks 2048,8192]
                                    [--estimators uniform,adaptive] [--draws 8] [--batches 2]
                                    [--data_dir ../shared/datasets]

The student checkpoint is a state of pruning run ``--run`` (its masks give the subspace term's
positives); the flags it was trained with, recorded in it, give every weight and temperature,
and ``--run`` the per-run settings (the subspace term is on from run 2). The supervisor (the
intermediate model the student was distilled from) gives H. On ``--batches`` batches of the
seeded sampler, each all-node term of stage 3 (``emb_kd``: the two InfoNCE terms,
``contr_deno``: the four auxiliary denominators, ``subspace``: the v3 soft-target cross entropy)
is computed exactly and with ``--draws`` samples of K rows per table, with its gradient with
respect to the student's propagated embeddings Ē. One JSON line per (term, K):

* ``value_rel_err``: (mean over draws of the sampled value − exact) / |exact|; ``value_rel_sd``
  the spread of one draw's value around it, relative to |exact|;
* ``grad_norm_ratio``: mean over draws of ‖g_K‖ / ‖g_exact‖;
* ``grad_cos``: mean over draws of cos(g_K, g_exact); ``mean_grad_cos``: cos of the mean of
  the draws' gradients with g_exact (what averaging over batches can reach: a bias);
* ``param_grad_norm_ratio``, ``param_grad_cos``: the same for the gradient carried back through
  the student's propagation to what the optimiser updates (its layer-0 tables, masked entries
  excluded, and its edge weights). Once pruning has left rows whose output is exactly 0
  (``dead_rows``), the gradient with respect to Ē is dominated by them (the InfoNCE term
  normalises Ē + 1e-8, a 1e7-fold gain on such a row) although none of it reaches a parameter;
  this is the figure that says what training sees;

and one line per denominator (``mass``): over the batch's anchors, how many rows of the table
carry 90 % of exp(a·b/τ) (median and 90th percentile) against the table's size and K.
"""
import argparse
import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import DataHandler as dh  # noqa: E402
import Params  # noqa: E402
from Utils.config import Build  # noqa: E402
from Utils.files import Checkpoint  # noqa: E402
from Utils.kernels import Kernels
from Utils.objective import Estimators, Losses
from Utils.training.Distill import frozen_outputs, load_model  # noqa: E402

TERMS = ("emb_kd", "contr_deno", "subspace")


def recorded_args(path: str, data_dir: str, dataset: str):
    """The flags the checkpoint was trained with, over today's defaults, on this data."""
    flags = Checkpoint.load_checkpoint(path).meta.get("flags", {})
    args = Params.parse_args(["--distill_from_middle_model=True"])
    for key, value in flags.items():
        if hasattr(args, key):
            setattr(args, key, value)
    args.data_dir, args.dataset, args.contrast_candidates = data_dir, dataset, 0
    return args


@dataclass
class Problem:
    """One saved student under its supervisor: the loss config, the student's outputs as leaves,
    the student, the supervisor's outputs and the subspace pairs listed once."""

    cfg: Losses.KDConfig
    users: torch.Tensor
    items: torch.Tensor
    student: torch.nn.Module
    sup: Losses.Supervisor
    pairs: Optional[dict]
    profiles: Optional[tuple] = None  # the adaptive estimator's (users, items) TableProfile
    adj: object = None  # the student's graph (to carry a gradient back to its parameters)

    @property
    def dead_rows(self) -> int:
        """Rows whose output is exactly 0 (every entry and edge that feeds them pruned)."""
        return int((torch.cat([self.users, self.items]).detach().abs().sum(dim=1) == 0).sum())


def term_values_and_grads(problem: Problem, batch, sample, estimator: str = "uniform", generator=None, k: int = 0):
    """{term: (value, gradient wrt [Ē_users; Ē_items])} of one batch with ``sample`` (the uniform
    rows), used as ``estimator`` says (``adaptive``: its clusters are the problem's)."""
    p = problem
    ancs, poss, negs = batch
    trainee = Losses.Trainee(p.users, p.items, p.student.uEmbeds, p.student.iEmbeds, p.student.adj_mask1_train,
                             p.student.emb_mask2_fixed)
    cfg = dataclasses.replace(p.cfg, contrast_estimator=estimator, contrast_candidates=k)
    rows = Losses.draw_batch(cfg, (ancs, poss, negs), (ancs[:1], poss[:1], negs[:1]),
                             (p.users.shape[0], p.items.shape[0]), generator=generator,
                             sample=sample if estimator == "uniform" else None, profiles=p.profiles)
    parts = Losses.kd_objective(cfg, trainee, p.sup, rows, subspace_pairs=p.pairs)
    users, items = p.users, p.items
    out = {}
    for term in TERMS:
        value = parts[term]
        if not value.requires_grad:
            continue
        grads = torch.autograd.grad(value, [users, items], retain_graph=True)
        out[term] = (float(value.detach()), torch.cat([g.reshape(-1) for g in grads]).double())
    return out


def mass_rows(anchors: torch.Tensor, table: torch.Tensor, temp: float, share: float = 0.9) -> np.ndarray:
    """Per anchor: how many rows of ``table`` carry ``share`` of Σ_m exp(a·b_m/τ)."""
    counts = []
    for start in range(0, anchors.shape[0], 256):
        logits = anchors[start:start + 256] @ table.T / temp
        weights = torch.softmax(logits, dim=1).sort(dim=1, descending=True).values.cumsum(dim=1)
        counts.append((weights < share).sum(dim=1) + 1)
    return torch.cat(counts).numpy()


def load_problem(opts):
    """The student of ``--student`` under ``--supervisor`` with its recorded flags, and the data."""
    args = recorded_args(opts.student, opts.data_dir, opts.dataset)
    data = dh.load_dataset(args.data_dir, args.dataset)
    adj = dh.Graph.from_scipy(dh.propagation_matrix(data.train))
    closure = dh.closure_graph(data.train, Build.closure_config(vars(args)))
    sup = frozen_outputs(load_model(opts.supervisor, "middle_teacher", data, "cpu", graph=closure), closure)
    student = load_model(opts.student, "student", data, "cpu", graph=adj, n_layers=args.gnn_layer)
    cfg = Build.kd_config(args, opts.run, student=True, blocks=Kernels.CPU_BLOCKS)
    U = data.n_users
    mask = student.emb_mask2_fixed.detach()
    pairs = Kernels.subspace_pair_index(mask[:U], mask[U:], cfg.loosen, cfg.blocks) if cfg.use_subspcreg else None
    with torch.no_grad():
        out_u, out_i = student(adj)
    profiles = (Estimators.TableProfile.build(out_u, sup.high_users), Estimators.TableProfile.build(out_i, sup.high_items))
    problem = Problem(cfg, out_u.clone().requires_grad_(), out_i.clone().requires_grad_(), student, sup, pairs,
                      profiles, adj)
    return problem, data, args


def parameter_gradient(problem: Problem, grad: torch.Tensor) -> torch.Tensor:
    """A gradient with respect to Ē (users then items, flattened) carried back through the
    student's propagation to what the optimiser updates: its layer-0 tables (masked entries get
    none) and its edge weights, flattened."""
    student = problem.student
    params = [student.uEmbeds, student.iEmbeds, student.adj_mask1_train]
    out = torch.cat(student(problem.adj), dim=0)
    grads = torch.autograd.grad(out, params, grad_outputs=grad.to(out.dtype).view_as(out))
    return torch.cat([g.reshape(-1) for g in grads]).double()


def sample_stats(problem: Problem, batches, k: int, draws: int, generator, estimator: str = "uniform") -> dict:
    """Per term, over batches and draws of K rows used as ``estimator`` says: the value's relative
    error, the gradient's norm ratio and cosine against exact (with respect to Ē and to the
    student's parameters), and the cosine of the draws' mean gradient."""
    stats = {term: {"rel": [], "norm": [], "cos": [], "exact": [], "mean_grad_cos": [], "param_norm": [],
                    "param_cos": []} for term in TERMS}
    cosine = torch.nn.functional.cosine_similarity
    n_users, n_items = problem.users.shape[0], problem.items.shape[0]
    for batch in batches:
        exact = term_values_and_grads(problem, batch, Kernels.EXACT)
        exact_params = {term: parameter_gradient(problem, grad) for term, (_, grad) in exact.items()}
        sums = {term: 0.0 for term in exact}
        for _ in range(draws):
            sample = Kernels.draw_contrast_sample(n_users, n_items, k, generator) if estimator == "uniform" else None
            for term, (value, grad) in term_values_and_grads(problem, batch, sample, estimator, generator, k).items():
                ex_value, ex_grad = exact[term]
                stats[term]["rel"].append((value - ex_value) / abs(ex_value))
                stats[term]["norm"].append(float(grad.norm() / ex_grad.norm()))
                stats[term]["cos"].append(float(cosine(grad, ex_grad, dim=0)))
                params = parameter_gradient(problem, grad)
                stats[term]["param_norm"].append(float(params.norm() / exact_params[term].norm()))
                stats[term]["param_cos"].append(float(cosine(params, exact_params[term], dim=0)))
                sums[term] = sums[term] + grad
        for term in exact:
            stats[term]["mean_grad_cos"].append(float(cosine(sums[term], exact[term][1], dim=0)))
    return stats


def print_mass(problem: Problem, batch, base: dict) -> None:
    """How many rows carry 90 % of each all-node denominator of ``batch``'s anchors."""
    ancs, poss, _ = batch
    uu, ui = torch.unique(ancs), torch.unique(poss)
    norm = torch.nn.functional.normalize
    sup, cfg = problem.sup, problem.cfg
    with torch.no_grad():
        out_u, out_i = problem.users.detach(), problem.items.detach()
        tables = {  # name: (anchors, table, τ)
            "emb_kd_users": (norm(sup.high_users[uu] + 1e-8, dim=1), norm(out_u + 1e-8, dim=1), cfg.tempcd),
            "emb_kd_items": (norm(sup.high_items[ui] + 1e-8, dim=1), norm(out_i + 1e-8, dim=1), cfg.tempcd),
            "deno_ui": (out_u[uu], out_i, cfg.tempsc), "deno_iu": (out_i[ui], out_u, cfg.tempsc),
            "deno_uu": (out_u[uu], out_u, cfg.tempsc), "deno_ii": (out_i[ui], out_i, cfg.tempsc),
        }
        for name, (anchors, table, temp) in tables.items():
            rows = mass_rows(anchors, table, temp)
            print(json.dumps({**base, "mass": name, "temp": temp, "table_rows": table.shape[0],
                              "rows_for_90pct_median": int(np.median(rows)),
                              "rows_for_90pct_p90": int(np.percentile(rows, 90)),
                              "anchors": int(anchors.shape[0])}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", required=True, help="a student checkpoint of pruning run --run")
    parser.add_argument("--supervisor", required=True, help="the intermediate model it was distilled from")
    parser.add_argument("--run", type=int, required=True, help="the pruning run of --student")
    parser.add_argument("--ks", default="2048,8192")
    parser.add_argument("--estimators", default="uniform",
                        help="comma-separated --contrast_estimator values to measure (uniform, adaptive)")
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--data_dir", default=os.path.join(HERE, "..", "..", "shared", "datasets"))
    parser.add_argument("--dataset", default="yelp")
    parser.add_argument("--threads", type=int, default=2)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    problem, data, args = load_problem(opts)
    sampler = dh.NegativeSampler(data.train)
    batches = [tuple(torch.from_numpy(a) for a in b)
               for b in list(sampler.epoch_batches(np.random.default_rng(0), args.batch))[:opts.batches]]
    base = {"bench": "estimator", "student": opts.student, "run": opts.run, "draws": opts.draws,
            "batches": opts.batches, "edge_kept_pct": round(problem.student.edge_kept_pct(), 2),
            "emb_kept_pct": round(problem.student.emb_kept_pct(), 2)}
    generator = torch.Generator().manual_seed(0)
    for estimator, k in [(e, int(k)) for e in opts.estimators.split(",") for k in opts.ks.split(",")]:
        for term, s in sample_stats(problem, batches, k, opts.draws, generator, estimator).items():
            if not s["rel"]:
                continue
            print(json.dumps({**base, "term": term, "estimator": estimator, "k": k,
                              "value_rel_err": round(float(np.mean(s["rel"])), 5),
                              "value_rel_sd": round(float(np.std(s["rel"])), 5),
                              "grad_norm_ratio": round(float(np.mean(s["norm"])), 4),
                              "grad_cos": round(float(np.mean(s["cos"])), 4),
                              "mean_grad_cos": round(float(np.mean(s["mean_grad_cos"])), 4),
                              "param_grad_norm_ratio": round(float(np.mean(s["param_norm"])), 4),
                              "param_grad_cos": round(float(np.mean(s["param_cos"])), 4),
                              "dead_rows": problem.dead_rows}), flush=True)
    print_mass(problem, batches[0], base)


if __name__ == "__main__":
    main()
