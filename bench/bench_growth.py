"""How the cost grows with the data: one stage-1 epoch and one stage-3 epoch (exact and with
--contrast_candidates) on synthetic datasets of 1x, 2x and 4x Yelp's interactions and nodes,
and, beside them, on real splits.

    python bench/bench_growth.py [--scales 1,2,4] [--data_dir /tmp/lightgnn_growth] [--batches 2]
    python bench/bench_growth.py --scales "" --real gowalla_lightgcn   # a real point alone

Each scale s is ``prepareData.py --format synthetic`` with s x Yelp's 42,712 users and 26,822
items and Yelp's ≈ 6.1 interactions per user (no k-core, the 70/5/25 split), written once
under --data_dir. Stage 1 is ``bench_teacher.py`` (a whole epoch of the 8-layer teacher);
stage 3 is ``bench_distill.py --stage 3`` timed on --batches batches, its epoch being that
per-batch time x the epoch's batches. A real split (``--real``, read from --real_dir) also
gets stage 2 (``bench_distill.py --stage 2``: the intermediate model on Ĉ, whose size and build
time the rows give): a real graph's Ĉ = I + A + A² is far denser than a synthetic one's.
Prints one JSON line per dataset and stage, then one with the exponent b of each fit
time ∝ interactions^b over the synthetic scales (least squares on the logs).
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from Utils.data.Convert import Options, prepare  # noqa: E402

YELP_USERS, YELP_ITEMS, YELP_PER_USER = 42712, 26822, 6.1


def bench(script, *args):
    """The JSON lines a bench script prints."""
    out = subprocess.run([sys.executable, os.path.join(HERE, script), *args], check=True, capture_output=True,
                         text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def synthetic_set(scale: float, data_dir: str) -> str:
    """The name of the synthetic set of ``scale`` x Yelp under ``data_dir``, written on first use."""
    name = f"growth{scale:g}x"
    if not os.path.isfile(os.path.join(data_dir, f"sparse_{name}", "trnMat.pkl")):
        prepare(Options(format="synthetic", name=name, data_dir=data_dir, n_users=round(YELP_USERS * scale),
                        n_items=round(YELP_ITEMS * scale), per_user=YELP_PER_USER, n_groups=50, kcore=0,
                        overwrite=True), log=lambda *_: None)
    return name


def measure(data_dir: str, name: str, point: dict, stages, opts):
    """The rows of one dataset: a stage-1 epoch, then each of ``stages`` (2 and/or 3) once per K."""
    common = ["--data_dir", data_dir, "--dataset", name, "--threads", str(opts.threads)]
    [tea] = bench("bench_teacher.py", *common)
    first = {"bench": "growth", **point, "stage": 1, "epoch_s": tea["train_epoch_s"], "peak_rss_mb": tea["peak_rss_mb"]}
    rows = []
    for stage in stages:
        for dist in bench("bench_distill.py", "--stage", str(stage), *common, "--batches", str(opts.batches),
                          "--parts_batches", "1", "--contrast_candidates", opts.contrast_candidates):
            first.update(train_interactions=dist["train_interactions"], nodes=dist["nodes"])
            rows.append({"bench": "growth", **point, "stage": stage, "contrast_candidates": dist["contrast_candidates"],
                         "train_interactions": dist["train_interactions"], "nodes": dist["nodes"],
                         "closure_edges": dist["closure_edges"], "closure_build_s": dist["closure_build_s"],
                         "per_batch_s": dist["per_batch_s"], "epoch_batches": dist["full_epoch_batches"],
                         "epoch_s": round(dist["per_batch_s"] * dist["full_epoch_batches"], 1),
                         "peak_rss_mb": dist["peak_rss_mb"], "machine": dist["machine"]})
    for row in [first] + rows:
        print(json.dumps(row), flush=True)
    return [first] + rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="1,2,4", help="synthetic scales (empty: none)")
    parser.add_argument("--data_dir", default="/tmp/lightgnn_growth")
    parser.add_argument("--batches", type=int, default=2, help="stage-2/3 batches timed per K")
    parser.add_argument("--contrast_candidates", default="0,2048")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--real", default="", help="comma-separated real splits (sparse_NAME under --real_dir) "
                        "measured beside the synthetic ones, stages 1, 2 and 3; not in the fit")
    parser.add_argument("--real_dir", default=os.path.join(HERE, "..", "..", "shared", "datasets"))
    opts = parser.parse_args()
    rows = []
    for scale in [float(s) for s in opts.scales.split(",") if s]:
        rows += measure(opts.data_dir, synthetic_set(scale, opts.data_dir), {"scale": scale}, [3], opts)
    for name in [n for n in opts.real.split(",") if n]:
        measure(opts.real_dir, name, {"dataset": name}, [2, 3], opts)
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
