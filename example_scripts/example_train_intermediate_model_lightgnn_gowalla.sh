#!/usr/bin/env bash
# Published example example_train_intermediate_model_lightgnn_gowalla, with the published flags.
# Run from anywhere: CUDA_VISIBLE_DEVICES=0 bash example_scripts/example_train_intermediate_model_lightgnn_gowalla.sh [more flags]
# The GPU is the one CUDA_VISIBLE_DEVICES names (CPU when none); data: $DATA_DIR/sparse_gowalla/ (default ./Datasets).
# Reads the teacher written by example_train_teacher_model_gowalla.sh (override with TEACHER=path;
# the published script read a demo checkpoint from ./inModels/ that cannot be downloaded).
# The published script relied on edited defaults for the stage-2 switches; they are explicit here.
source "$(dirname "$0")/common.sh"
TEACHER=${TEACHER:-./outModels/gowalla/example3/tea_ckpts/teacher_gowalla.mod}
run_stage Main.py mid gowalla example2 mid_tea_ckpts mid_tea_his mid_teacher_gowalla \
    --dataset=gowalla \
    --mask_epoch=500 \
    --lr=0.0004 \
    --reg=1.3e-07 \
    --latdim=64 \
    --gnn_layer=6 \
    --adj_aug=True \
    --adj_aug_layer=1 \
    --use_adj_mask_aug=False \
    --use_SM_edgeW2aug=False \
    --PRUNING_START=1 \
    --PRUNING_END=1 \
    --train_middle_model=True \
    --distill_from_middle_model=False \
    --distill_from_teacher_model=True \
    --teacher_model="$TEACHER" \
    "$@"
