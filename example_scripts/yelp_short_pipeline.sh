#!/usr/bin/env bash
# The short Yelp pipeline: the three published Yelp examples with fewer epochs (teacher
# 20 epochs -> intermediate 5 -> student 5 pruning runs x 5 epochs, 5% of edges and 20% of
# entries pruned per run). A schedule test, far too short to show the method's quality
# (yelp_reproduce.sh does that).
#   DATA_DIR=../shared/datasets bash example_scripts/yelp_short_pipeline.sh
# About 2 hours on a 2-core CPU. Logs: logs/{tea,mid,stu}_yelp_example{3,2,1}_log.
# FAST=1 runs the same epochs with the time-to-quality flags of yelp_reproduce.sh
# (--contrast_candidates=2048 --init_from_supervisor=True in stages 2-3), under
# ./outModels/yelp/short_fast/ and logs/*_yelp_short_fast_log.
# FROM=intermediate or FROM=student starts at that stage and reuses the checkpoints
# the earlier stages of this script left under ./outModels/yelp/.
# Run again over the same outputs with RESUME=1 (each stage continues from its _last.ckpt:
# an interrupted run ends as if it had not stopped, a finished stage returns at once) or
# OVERWRITE=1 (start afresh); without either a stage refuses to replace an earlier run.
set -euo pipefail
export DATA_DIR=${DATA_DIR:-../shared/datasets}
source "$(dirname "$0")/common.sh"  # (cd to the project root; start_stage)
FROM=$(start_stage teacher intermediate student)
FAST_FLAGS=()
if [ "${FAST:-0}" = 1 ]; then
    export RUN_NAME=short_fast
    export TEACHER=./outModels/yelp/short_fast/tea_ckpts/teacher_yelp.mod
    export MIDDLE=./outModels/yelp/short_fast/mid_tea_ckpts/mid_teacher_yelp_best_global_100_100.mod
    FAST_FLAGS=(--contrast_candidates=2048 --init_from_supervisor=True)
fi
if [ "$FROM" = teacher ]; then
    bash example_scripts/example_train_teacher_model_yelp.sh --epoch_tea=20
fi
if [ "$FROM" != student ]; then
    bash example_scripts/example_train_intermediate_model_lightgnn_yelp.sh --mask_epoch=5 "${FAST_FLAGS[@]}"
fi
bash example_scripts/example_train_final_student_lightgnn_yelp.sh --mask_epoch=5 --PRUNING_END=5 "${FAST_FLAGS[@]}"
