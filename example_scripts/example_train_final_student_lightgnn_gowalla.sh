#!/usr/bin/env bash
# Published example example_train_final_student_lightgnn_gowalla, with the published flags.
# Run from anywhere: CUDA_VISIBLE_DEVICES=0 bash example_scripts/example_train_final_student_lightgnn_gowalla.sh [more flags]
# The GPU is the one CUDA_VISIBLE_DEVICES names (CPU when none); data: $DATA_DIR/sparse_gowalla/ (default ./Datasets).
# Reads the intermediate model written by example_train_intermediate_model_lightgnn_gowalla.sh
# (override with MIDDLE=path; a published .mod file works too).
source "$(dirname "$0")/common.sh"
MIDDLE=${MIDDLE:-./outModels/gowalla/example2/mid_tea_ckpts/mid_teacher_gowalla_best_global_100_100.mod}
run_stage Main.py stu gowalla example1 fnl_student_ckpts fnl_student_his student_gowalla \
    --dataset=gowalla \
    --mask_epoch=300 \
    --lr=0.001 \
    --reg=1e-8 \
    --latdim=64 \
    --gnn_layer=2 \
    --adj_aug=True \
    --adj_aug_layer=1 \
    --use_adj_mask_aug=True \
    --use_SM_edgeW2aug=True \
    --adj_mask_aug1=0.05 \
    --adj_mask_aug2=1.0 \
    --use_mTea2drop_edges=True \
    --use_tea2drop_edges=False \
    --PRUNING_START=1 \
    --PRUNING_END=13 \
    --pruning_percent_adj=0.15 \
    --pruning_percent_emb=0.2 \
    --distill_from_middle_model=True \
    --middle_teacher_model="$MIDDLE" \
    "$@"
