#!/usr/bin/env bash
# Published example example_train_teacher_model_gowalla, with the published flags.
# Run from anywhere: CUDA_VISIBLE_DEVICES=0 bash example_scripts/example_train_teacher_model_gowalla.sh [more flags]
# The GPU is the one CUDA_VISIBLE_DEVICES names (CPU when none); data: $DATA_DIR/sparse_gowalla/ (default ./Datasets).
source "$(dirname "$0")/common.sh"
run_stage pretrainTeacher.py tea gowalla example3 tea_ckpts tea_his teacher_gowalla \
    --dataset=gowalla \
    --epoch_tea=1000 \
    --lr=0.0004 \
    --reg=1.3e-7 \
    --latdim=64 \
    --gnn_layer=8 \
    "$@"
