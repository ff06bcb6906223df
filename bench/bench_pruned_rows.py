"""Where a pruned student loses its Recall: test Recall@20 of the users grouped by how many of
their 64 layer-0 embedding entries the pruning left, one JSON line per checkpoint and group.

    python bench/bench_pruned_rows.py CKPT [CKPT ...] [--data_dir ../shared/datasets] [--dataset yelp]

Global magnitude pruning (``--pruning_percent_emb``) takes the smallest entries of the whole
table, so late runs leave some rows with no entry at all (their output is then what
propagation brings from their neighbours). If those users carried the loss, a per-row floor
would be the lever; this says whether they do. Each line: the group's bounds, its number of
test users, their mean test Recall@20, their mean number of train interactions, and their
share of the summed Recall.
"""
import argparse
import json
import os
import sys

import numpy as np
import scipy.sparse as sp
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import modelTools  # noqa: E402
from Utils.training.Metrics import Evaluator  # noqa: E402

GROUPS = ((0, 0), (1, 2), (3, 5), (6, 64))


@torch.no_grad()
def per_user_recall(users_emb, items_emb, dataset, k=20) -> np.ndarray:
    """Test Recall@k of every user (0 for users without test items), train items excluded."""
    recall = np.zeros(dataset.n_users)
    for users, user_recall, _ in Evaluator(dataset.train, dataset.test, k, 2048, "cpu").per_user(users_emb, items_emb):
        recall[users.numpy()] = user_recall.numpy()
    return recall


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--data_dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets"))
    parser.add_argument("--dataset", default="yelp")
    opts = parser.parse_args()
    for path in opts.checkpoints:
        loaded = modelTools.load_model_file(path)
        dataset = modelTools.load_data(loaded, opts.dataset, opts.data_dir)
        recall = per_user_recall(*modelTools.propagated(loaded, dataset, torch.device("cpu")), dataset)
        kept = (loaded.ckpt.tensors["emb_mask2_fixed"][:dataset.n_users] != 0).sum(1).numpy()
        users = np.flatnonzero(np.diff(sp.csr_matrix(dataset.test).indptr) > 0)
        degree = np.diff(sp.csr_matrix(dataset.train).indptr)
        for low, high in GROUPS:
            group = users[(kept[users] >= low) & (kept[users] <= high)]
            print(json.dumps({"bench": "pruned_rows", "checkpoint": os.path.basename(path),
                              "all_users_recall": round(float(recall[users].mean()), 5),
                              "kept_entries": [low, high], "users": int(group.size),
                              "recall": round(float(recall[group].mean()), 5) if group.size else None,
                              "train_degree": round(float(degree[group].mean()), 2) if group.size else None,
                              "share_of_recall": round(float(recall[group].sum() / recall[users].sum()), 3)}))


if __name__ == "__main__":
    main()
