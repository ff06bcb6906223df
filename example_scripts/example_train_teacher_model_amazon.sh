#!/usr/bin/env bash
# Published example example_train_teacher_model_amazon, with the published flags.
# Run from anywhere: CUDA_VISIBLE_DEVICES=0 bash example_scripts/example_train_teacher_model_amazon.sh [more flags]
# The GPU is the one CUDA_VISIBLE_DEVICES names (CPU when none); data: $DATA_DIR/sparse_amazon/ (default ./Datasets).
source "$(dirname "$0")/common.sh"
run_stage pretrainTeacher.py tea amazon example3 tea_ckpts tea_his teacher_amazon \
    --dataset=amazon \
    --epoch_tea=600 \
    --lr=0.0004 \
    --reg=1e-09 \
    --latdim=64 \
    --gnn_layer=8 \
    "$@"
