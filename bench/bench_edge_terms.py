"""What decides which edges a pruning step removes: the terms of the published edge score, measured.

    python bench/bench_edge_terms.py STUDENT_CKPT MIDDLE_CKPT [--beta1 1.0] [--beta2 0.05]
        [--cut 0.05] [--dataset yelp] [--data_dir ../shared/datasets]

The stage-3 edge score (docs/method.md, ``Pruning.edge_importance``) is
s_e = w_e + β₁ σ(Ē_u·Ē_i) + β₂ w^mid_e over the surviving edges: the student's own learned weight,
the intermediate model's predicted affinity of the edge's two ends and its learned weight on
the same edge of Ĉ (``--adj_mask_aug1``/``--adj_mask_aug2``). Not a timing: one JSON line with
each term's mean, spread and 5–95 % range over the kept edges, the rank correlation (Spearman)
of the score with each term, and how many of the ``--cut`` share of edges the score prunes
the student's weights alone would also prune.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from Utils.objective import Pruning  # noqa: E402
from Utils.tools import Serve  # noqa: E402


def spread(x: torch.Tensor) -> dict:
    x = x.double()
    return {"mean": round(float(x.mean()), 4), "std": round(float(x.std()), 4),
            "p5": round(float(x.quantile(0.05)), 4), "p95": round(float(x.quantile(0.95)), 4)}


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = torch.argsort(torch.argsort(a)).double()
    rb = torch.argsort(torch.argsort(b)).double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return round(float((ra * rb).sum() / (ra.norm() * rb.norm())), 4)


@torch.no_grad()
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("student")
    parser.add_argument("middle")
    parser.add_argument("--beta1", type=float, default=1.0, help="--adj_mask_aug1 (published Yelp: 1.0)")
    parser.add_argument("--beta2", type=float, default=0.05, help="--adj_mask_aug2 (published Yelp: 0.05)")
    parser.add_argument("--cut", type=float, default=0.05, help="share of the kept edges one step prunes")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--threads", type=int, default=2)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    student, middle = Serve.load_model_file(opts.student), Serve.load_model_file(opts.middle)
    dataset = Serve.load_data(student, opts.dataset, opts.data_dir)
    adj, _ = Serve.model_graph(student, dataset)
    closure, _ = Serve.model_graph(middle, dataset)
    mid_model = Serve.build_model(middle, dataset, closure)
    users, items = mid_model(closure)
    out = torch.cat([users, items])
    kept = student.ckpt.tensors["adj_mask2_fixed"] != 0
    row, col = adj.row.long(), adj.col.long()
    terms = {
        "w": student.ckpt.tensors["adj_mask1_train"].detach(),
        "beta1_affinity": opts.beta1 * torch.sigmoid((out[row] * out[col]).sum(1)),
        "beta2_middle_weight": opts.beta2 * Pruning.closure_weights_on_adj(
            adj.row, adj.col, closure.row, closure.col, mid_model.adj_mask1_train.detach(), adj.n_nodes),
    }
    terms = {name: value[kept] for name, value in terms.items()}
    score = sum(terms.values())
    n_cut = max(1, int(opts.cut * score.numel()))
    by_score = set(torch.argsort(score)[:n_cut].tolist())
    by_w = set(torch.argsort(terms["w"])[:n_cut].tolist())
    print(json.dumps({"bench": "edge_terms", "student": opts.student, "middle": opts.middle,
                      "beta1": opts.beta1, "beta2": opts.beta2, "kept_edges": int(kept.sum()),
                      **{name: spread(value) for name, value in terms.items()},
                      "spearman_score_with": {name: spearman(score, value) for name, value in terms.items()},
                      "cut": opts.cut, "pruned_by_score_also_pruned_by_w": round(len(by_score & by_w) / n_cut, 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
