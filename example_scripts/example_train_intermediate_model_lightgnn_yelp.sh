#!/usr/bin/env bash
# Published example example_train_intermediate_model_lightgnn_yelp, with the published flags.
# Run from anywhere: CUDA_VISIBLE_DEVICES=0 bash example_scripts/example_train_intermediate_model_lightgnn_yelp.sh [more flags]
# The GPU is the one CUDA_VISIBLE_DEVICES names (CPU when none); data: $DATA_DIR/sparse_yelp/ (default ./Datasets).
# Reads the teacher written by example_train_teacher_model_yelp.sh (override with TEACHER=path;
# the published script read a demo checkpoint from ./inModels/ that cannot be downloaded).
# The published script relied on edited defaults for the stage-2 switches; they are explicit here.
source "$(dirname "$0")/common.sh"
TEACHER=${TEACHER:-./outModels/yelp/example3/tea_ckpts/teacher_yelp.mod}
run_stage Main.py mid yelp example2 mid_tea_ckpts mid_tea_his mid_teacher_yelp \
    --dataset=yelp \
    --mask_epoch=300 \
    --lr=0.0001 \
    --reg=1e-6 \
    --use_ereg=True \
    --ereg=1e-10 \
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
