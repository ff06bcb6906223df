#!/usr/bin/env bash
# Published example example_train_final_student_lightgnn_amazon, with the published flags.
# Run from anywhere: CUDA_VISIBLE_DEVICES=0 bash example_scripts/example_train_final_student_lightgnn_amazon.sh [more flags]
# The GPU is the one CUDA_VISIBLE_DEVICES names (CPU when none); data: $DATA_DIR/sparse_amazon/ (default ./Datasets).
# Reads the intermediate model written by example_train_intermediate_model_lightgnn_amazon.sh
# (override with MIDDLE=path; a published .mod file works too).
source "$(dirname "$0")/common.sh"
MIDDLE=${MIDDLE:-./outModels/amazon/example2/mid_tea_ckpts/mid_teacher_amazon_best_global_100_100.mod}
run_stage Main.py stu amazon example1 fnl_student_ckpts fnl_student_his student_amazon \
    --dataset=amazon \
    --mask_epoch=200 \
    --lr=0.001 \
    --reg=1e-6 \
    --latdim=64 \
    --gnn_layer=2 \
    --adj_aug=True \
    --adj_aug_sample=True \
    --adj_aug_sample_ratio=0.9 \
    --adj_aug_layer=1 \
    --use_adj_mask_aug=True \
    --use_SM_edgeW2aug=True \
    --adj_mask_aug1=0.05 \
    --adj_mask_aug2=0.0001 \
    --use_mTea2drop_edges=True \
    --use_tea2drop_edges=False \
    --PRUNING_START=1 \
    --PRUNING_END=13 \
    --pruning_percent_adj=0.15 \
    --pruning_percent_emb=0.2 \
    --distill_from_middle_model=True \
    --middle_teacher_model="$MIDDLE" \
    "$@"
