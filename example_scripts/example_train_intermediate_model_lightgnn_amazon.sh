#!/usr/bin/env bash
# Published example example_train_intermediate_model_lightgnn_amazon, with the published flags.
# Run from anywhere: CUDA_VISIBLE_DEVICES=0 bash example_scripts/example_train_intermediate_model_lightgnn_amazon.sh [more flags]
# The GPU is the one CUDA_VISIBLE_DEVICES names (CPU when none); data: $DATA_DIR/sparse_amazon/ (default ./Datasets).
# Reads the teacher written by example_train_teacher_model_amazon.sh (override with TEACHER=path;
# the published script read a demo checkpoint from ./inModels/ that cannot be downloaded).
# The published script relied on edited defaults for the stage-2 switches; they are explicit here.
source "$(dirname "$0")/common.sh"
TEACHER=${TEACHER:-./outModels/amazon/example3/tea_ckpts/teacher_amazon.mod}
run_stage Main.py mid amazon example2 mid_tea_ckpts mid_tea_his mid_teacher_amazon \
    --dataset=amazon \
    --mask_epoch=200 \
    --lr=0.001 \
    --reg=1e-5 \
    --latdim=64 \
    --gnn_layer=6 \
    --adj_aug=True \
    --adj_aug_layer=1 \
    --adj_aug_sample=True \
    --adj_aug_sample_ratio=0.9 \
    --use_adj_mask_aug=False \
    --use_SM_edgeW2aug=False \
    --PRUNING_START=1 \
    --PRUNING_END=1 \
    --train_middle_model=True \
    --distill_from_middle_model=False \
    --distill_from_teacher_model=True \
    --teacher_model="$TEACHER" \
    "$@"
