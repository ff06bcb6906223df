#!/usr/bin/env bash
# Dense LightGCNs at small dimensions on Yelp: what simply training a smaller model gives, to set
# beside the pruned students (bench/bench_inference.py --fig4: test Recall against bytes and
# against propagation multiply-adds). Each is the teacher script's recipe (lr 4e-4, reg 1.5e-6,
# 300 epochs) at the student's depth (2 layers) and DIM dimensions, evaluated every 5 epochs with
# patience 4 (an evaluation without a new best validation Recall four times ends it).
#   DATA_DIR=../shared/datasets bash example_scripts/yelp_dense_baselines.sh [DIM ...] [--flag=value ...]
# DIMs default to 8 16 32 64; arguments starting with -- go to every run (e.g. --threads=1).
# Writes ./outModels/yelp/dense_dDIM/tea_ckpts/teacher_yelp.mod and logs/tea_yelp_dense_dDIM_log;
# RESUME=1 / OVERWRITE=1 as in the other scripts.
set -euo pipefail
export DATA_DIR=${DATA_DIR:-../shared/datasets}
source "$(dirname "$0")/common.sh"  # (cd to the project root; timed)
dims=()
extra=()
for arg in "$@"; do
    case "$arg" in
        --*) extra+=("$arg") ;;
        *) dims+=("$arg") ;;
    esac
done
[ ${#dims[@]} -eq 0 ] && dims=(8 16 32 64)
for dim in "${dims[@]}"; do
    case "$dim" in
        ''|*[!0-9]*) echo "$(basename "$0"): DIM must be a positive integer, not '$dim'" >&2; exit 2 ;;
    esac
done
for dim in "${dims[@]}"; do
    RUN_NAME=dense_d$dim timed "dense LightGCN, $dim dimensions" \
        bash example_scripts/example_train_teacher_model_yelp.sh --gnn_layer=2 --latdim="$dim" --tstEpoch=5 --patience=4 \
        "${extra[@]}"
done
