"""How the cost grows with the data: one stage-1 epoch and one stage-3 epoch (exact and with
--contrast_candidates) on synthetic datasets of 1x, 2x and 4x Yelp's interactions and nodes.

    python bench/bench_growth.py [--scales 1,2,4] [--data_dir /tmp/lightgnn_growth] [--batches 2]

Each scale s is ``prepareData.py --format synthetic`` with s x Yelp's 42,712 users and 26,822
items and Yelp's ≈ 6.1 interactions per user (no k-core, the 70/5/25 split), written once
under --data_dir. Stage 1 is ``bench_teacher.py`` (a whole epoch of the 8-layer teacher);
stage 3 is ``bench_distill.py --stage 3`` timed on --batches batches, its epoch being that
per-batch time x the epoch's batches. Prints one JSON line per scale and stage, then one
with the exponent b of each fit  time ∝ interactions^b  (least squares on the logs).
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from Utils.Convert import Options, prepare  # noqa: E402

YELP_USERS, YELP_ITEMS, YELP_PER_USER = 42712, 26822, 6.1


def bench(script, *args):
    """The JSON lines a bench script prints."""
    out = subprocess.run([sys.executable, os.path.join(HERE, script), *args], check=True, capture_output=True,
                         text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="1,2,4")
    parser.add_argument("--data_dir", default="/tmp/lightgnn_growth")
    parser.add_argument("--batches", type=int, default=2, help="stage-3 batches timed per K")
    parser.add_argument("--contrast_candidates", default="0,2048")
    parser.add_argument("--threads", type=int, default=2)
    opts = parser.parse_args()
    rows = []
    for scale in [float(s) for s in opts.scales.split(",")]:
        name = f"growth{scale:g}x"
        if not os.path.isfile(os.path.join(opts.data_dir, f"sparse_{name}", "trnMat.pkl")):
            prepare(Options(format="synthetic", name=name, data_dir=opts.data_dir, n_users=round(YELP_USERS * scale),
                            n_items=round(YELP_ITEMS * scale), per_user=YELP_PER_USER, n_groups=50, kcore=0,
                            overwrite=True), log=lambda *_: None)
        common = ["--data_dir", opts.data_dir, "--dataset", name, "--threads", str(opts.threads)]
        [tea] = bench("bench_teacher.py", *common)
        row = {"bench": "growth", "scale": scale, "stage": 1, "epoch_s": tea["train_epoch_s"],
               "peak_rss_mb": tea["peak_rss_mb"]}
        print(json.dumps(row), flush=True)
        rows.append(row)
        for dist in bench("bench_distill.py", "--stage", "3", *common, "--batches", str(opts.batches),
                          "--parts_batches", "1", "--contrast_candidates", opts.contrast_candidates):
            row = {"bench": "growth", "scale": scale, "stage": 3, "contrast_candidates": dist["contrast_candidates"],
                   "train_interactions": dist["train_interactions"], "nodes": dist["nodes"],
                   "per_batch_s": dist["per_batch_s"], "epoch_batches": dist["full_epoch_batches"],
                   "epoch_s": round(dist["per_batch_s"] * dist["full_epoch_batches"], 1),
                   "peak_rss_mb": dist["peak_rss_mb"], "machine": dist["machine"]}
            for r in rows:  # the stage-1 row of this scale gets the sizes too
                if r["scale"] == scale and r["stage"] == 1:
                    r.update(train_interactions=dist["train_interactions"], nodes=dist["nodes"])
            print(json.dumps(row), flush=True)
            rows.append(row)
    fits = {}
    for key in sorted({(r["stage"], r.get("contrast_candidates")) for r in rows}):
        pts = [(r["train_interactions"], r["epoch_s"]) for r in rows if (r["stage"], r.get("contrast_candidates")) == key]
        if len(pts) >= 2:
            x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
            label = f"stage{key[0]}" + (f"_K{key[1]}" if key[1] is not None else "")
            fits[label] = round(float(np.polyfit(x, y, 1)[0]), 2)
    print(json.dumps({"bench": "growth_fit", "exponent_vs_interactions": fits}), flush=True)


if __name__ == "__main__":
    main()
