"""What one pruning step costs a student before any retraining, split into its two parts: the
edges (``--pruning_percent_adj``) and the embedding entries (``--pruning_percent_emb``).

    python bench/bench_prune_step.py STUDENT_CKPT MIDDLE_CKPT --run R [--data_dir ../shared/datasets]

STUDENT_CKPT is a run's best checkpoint (what the stage prunes at the end of run R), MIDDLE_CKPT
the intermediate model that scores its edges. The step is the stage's own (the ``PruneConfig``
the student's checkpoint records, ``Pruning.prune_state``), done three ways: both parts, the
edges alone (no entry removed) and the entries alone (no edge removed). Then the entry step
with other importance scores in place of |e| (the same number of entries removed, the edges
kept): ``row_relative`` |e_rc| / ‖e_r‖ (each row's share), ``influence`` |e_rc|·s_r and
``sqrt_influence`` |e_rc|·√s_r, where s_r = Σ_j (I + Â + … + Â^L)_jr is how much node r's
layer-0 row feeds every output (Â with the student's edge weights and mask); and two scores
from the gradient g of the BPR loss over train triples (one uniform negative each): ``taylor``
|e_rc · ḡ_rc| (first-order change of the loss when the entry is zeroed, ḡ the mean gradient
over one epoch's triples: the stage's ``--emb_prune_score=taylor``) and ``fisher``
e_rc² · mean_b g_rc,b² over batches of 4096 (``--grad_epochs`` epochs; the second-order term
with the empirical Fisher as the curvature, as in Optimal Brain Damage).
The edge step, too, is done with other scores (the entries kept): ``edges_by_own_weight``
the student's own learned weight w_e alone (no β₁, β₂ terms), ``edges_by_middle_outputs``
w_e + σ(Ē_r·Ē_c) of the intermediate model's outputs (β₁ = 1, no β₂: what Yelp's published
flags weigh most), ``edges_by_student_outputs``
the β₁ term from the student's own output embeddings instead of the intermediate model's,
and ``edges_random`` (uniform, seed 0), the baseline any score must beat.
One JSON line each: val and test Recall@20 before and right after the step. ``--parts``
picks some of them (the gradient scores take the longest).
"""
import argparse
import dataclasses
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import DataHandler as dh  # noqa: E402
import modelTools  # noqa: E402
from Model import model_from_tensors  # noqa: E402
from Utils.objective import Pruning  # noqa: E402
from Utils.training.Distill import frozen_outputs  # noqa: E402
from Utils.objective.Losses import bpr_loss  # noqa: E402
from Utils.training.Metrics import Evaluator  # noqa: E402
from Utils.training.Training import mean_bpr_gradient  # noqa: E402


STEP_PARTS = ("both", "edges_only", "entries_only", "edges_by_own_weight", "edges_by_middle_outputs",
              "edges_by_student_outputs", "edges_random")
ENTRY_SCORES = ("row_relative", "influence", "sqrt_influence", "taylor", "fisher")
PARTS = STEP_PARTS + tuple(f"entries_by_{name}" for name in ENTRY_SCORES)


def recall(tensors, dataset, layers, graph, evaluators) -> dict:
    """{split: Recall@20} of the student holding ``tensors``."""
    model = model_from_tensors(tensors, dataset.n_users, dataset.n_items, layers).eval()
    with torch.no_grad():
        users, items = model(graph)
    return {split: round(ev.evaluate(users, items)["Recall"], 5) for split, ev in evaluators.items()}


def live_embeds(tensors):
    """[uEmbeds; iEmbeds] ⊙ emb_mask2_fixed: the student's layer-0 entries, pruned ones 0."""
    return torch.cat([tensors["uEmbeds"], tensors["iEmbeds"]]) * tensors["emb_mask2_fixed"]


def entry_scores(tensors, adj, layers) -> dict:
    """{name: N×d importance of each layer-0 entry} for the alternatives to |e| (see the docstring)."""
    embeds = live_embeds(tensors)
    values = adj.values * tensors["adj_mask1_train"] * tensors["adj_mask2_fixed"]
    n = embeds.shape[0]
    a_t = torch.sparse_coo_tensor(torch.stack([adj.col, adj.row]), values, (n, n), check_invariants=False).coalesce()
    reach = step = torch.ones(n, 1)
    for _ in range(layers):
        step = torch.sparse.mm(a_t, step)
        reach = reach + step
    return {"row_relative": embeds.abs() / embeds.norm(dim=1, keepdim=True).clamp_min(1e-12),
            "influence": embeds.abs() * reach, "sqrt_influence": embeds.abs() * reach.sqrt()}


def taylor_scores(tensors, dataset, layers, graph, seed: int = 0) -> dict:
    """{'taylor': |e·ḡ|}, as ``--emb_prune_score=taylor`` computes it (one epoch's draw of negatives)."""
    model = model_from_tensors(tensors, dataset.n_users, dataset.n_items, layers)
    sampler = dh.NegativeSampler(dataset.train)
    triples = (sampler.users, sampler.items, sampler.sample(np.random.default_rng(seed)))
    return {"taylor": Pruning.taylor_entry_scores(live_embeds(tensors), mean_bpr_gradient(model, graph, triples, "cpu"))}


def fisher_scores(tensors, dataset, layers, graph, epochs: int, seed: int = 0) -> dict:
    """{'fisher': e²·mean g²}: N×d scores from the per-batch BPR gradients of the layer-0 entries."""
    model = model_from_tensors(tensors, dataset.n_users, dataset.n_items, layers)
    sampler = dh.NegativeSampler(dataset.train)
    rng = np.random.default_rng(seed)
    square = torch.zeros_like(model.emb_mask2_fixed)
    steps = 0
    for _ in range(epochs):
        for batch in sampler.epoch_batches(rng, 4096):
            model.zero_grad()
            users, items = model(graph)
            ancs, poss, negs = (torch.from_numpy(x) for x in batch)
            bpr_loss(users[ancs], items[poss], items[negs]).backward()
            grad = torch.cat([model.uEmbeds.grad, model.iEmbeds.grad]) * model.emb_mask2_fixed
            square += grad * grad
            steps += 1
    embeds = live_embeds(tensors)
    return {"fisher": embeds * embeds * square / steps}


def entry_alternatives(tensors, dataset, layers, graph, grad_epochs: int, wanted):
    """Yield (name, N×d score) for each entry score of ENTRY_SCORES in ``wanted`` (all when empty),
    computing each family of scores once."""
    families = {"row_relative": lambda: entry_scores(tensors, graph, layers),
                "taylor": lambda: taylor_scores(tensors, dataset, layers, graph),
                "fisher": lambda: fisher_scores(tensors, dataset, layers, graph, grad_epochs)}
    families["influence"] = families["sqrt_influence"] = families["row_relative"]
    scores = {}
    for name in ENTRY_SCORES:
        if wanted and f"entries_by_{name}" not in wanted:
            continue
        if name not in scores:
            scores.update(families[name]())
        yield name, scores[name]


def prune_entries_by(tensors, score, emb_cut) -> dict:
    """The student's tensors with the live entries of lowest ``score`` removed, by the stage's rule."""
    users, items, mask = Pruning.prune_embeddings(tensors["uEmbeds"], tensors["iEmbeds"], tensors["emb_mask2_fixed"],
                                                  emb_cut, score=score)
    return {**tensors, "emb_mask2_fixed": mask, "uEmbeds": users, "iEmbeds": items}


def recorded_prune_config(meta, run):
    """The pruning step after ``run`` as the student's stage configured it, or None."""
    runs = (meta.get("config") or {}).get("runs") or []
    recorded = next((r["prune"] for r in runs if r["run"] == run and r.get("prune")), None)
    return Pruning.PruneConfig(**recorded) if recorded is not None else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("student")
    parser.add_argument("middle")
    parser.add_argument("--run", type=int, required=True, help="the pruning run the student checkpoint ends")
    parser.add_argument("--data_dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets"))
    parser.add_argument("--dataset", default="yelp")
    parser.add_argument("--grad_epochs", type=int, default=1, help="epochs of BPR gradients for fisher (taylor: one, "
                        "as the stage's --emb_prune_score=taylor)")
    parser.add_argument("--parts", default="", help="comma-separated parts to report (default: all), e.g. "
                        "both,edges_only,entries_only,edges_random")
    opts = parser.parse_args()
    wanted = set(filter(None, opts.parts.split(",")))
    if wanted - set(PARTS):
        parser.error(f"--parts: unknown {sorted(wanted - set(PARTS))}; known: {', '.join(PARTS)}")
    student, middle = modelTools.load_model_file(opts.student), modelTools.load_model_file(opts.middle)
    dataset = modelTools.load_data(student, opts.dataset, opts.data_dir)
    adj, _ = modelTools.model_graph(student, dataset)
    closure, _ = modelTools.model_graph(middle, dataset)
    mid_model = modelTools.build_model(middle, dataset, closure)
    with torch.no_grad():
        mid_all = frozen_outputs(mid_model, closure).all
    mid_weight = Pruning.closure_weights_on_adj(adj.row, adj.col, closure.row, closure.col,
                                                mid_model.adj_mask1_train.detach(), adj.n_nodes)
    cfg = recorded_prune_config(student.meta, opts.run)
    if cfg is None:
        parser.error(f"{opts.student} records no pruning step for run {opts.run} (its stage's config: checkpoints "
                     "store it since 2026-12-06)")
    evaluators = {"val": Evaluator(dataset.train, dataset.val, 20, 256, "cpu")} if dataset.val is not None else {}
    evaluators["test"] = Evaluator(dataset.train, dataset.test, 20, 256, "cpu")
    tensors = student.ckpt.tensors
    layers = int(student.meta["gnn_layer"])
    before = recall(tensors, dataset, layers, adj, evaluators)

    def report(part, pruned):
        print(json.dumps({"bench": "prune_step", "checkpoint": os.path.basename(opts.student), "run": opts.run,
                          "part": part, "edge_kept_pct": round(Pruning.kept_percent(pruned["adj_mask2_fixed"]), 2),
                          "emb_kept_pct": round(Pruning.kept_percent(pruned["emb_mask2_fixed"]), 2),
                          "recall_before": before,
                          "recall_after": recall(pruned, dataset, layers, adj, evaluators)}), flush=True)

    def student_outputs():
        model = model_from_tensors(tensors, dataset.n_users, dataset.n_items, layers).eval()
        with torch.no_grad():
            return torch.cat(model(adj))

    edges_only = dataclasses.replace(cfg, emb_cut=0.0)
    steps = {"both": cfg, "edges_only": edges_only, "entries_only": dataclasses.replace(cfg, edge_cut=0.0),
             "edges_by_own_weight": dataclasses.replace(edges_only, scoring=None, use_middle_weights=False),
             "edges_by_middle_outputs": dataclasses.replace(edges_only, scoring="middle", beta1=1.0,
                                                            use_middle_weights=False),
             "edges_by_student_outputs": dataclasses.replace(edges_only, scoring="student"),
             "edges_random": dataclasses.replace(edges_only, random_edges=True)}
    assert tuple(steps) == STEP_PARTS
    for part, step in steps.items():
        if wanted and part not in wanted:
            continue
        report(part, {**tensors, **Pruning.prune_state(
            dict(tensors), step, edges=(adj.row, adj.col), scorers={"middle": lambda: mid_all, "student": student_outputs},
            mid_weight=mid_weight, generator=torch.Generator().manual_seed(0))})
    if wanted and not wanted - set(STEP_PARTS):
        return
    for name, score in entry_alternatives(tensors, dataset, layers, adj, opts.grad_epochs, wanted):
        report(f"entries_by_{name}", prune_entries_by(tensors, score, cfg.emb_cut))

if __name__ == "__main__":
    main()
