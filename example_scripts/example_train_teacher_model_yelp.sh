#!/usr/bin/env bash
# Published example example_train_teacher_model_yelp, with the published flags.
# Run from anywhere: CUDA_VISIBLE_DEVICES=0 bash example_scripts/example_train_teacher_model_yelp.sh [more flags]
# The GPU is the one CUDA_VISIBLE_DEVICES names (CPU when none); data: $DATA_DIR/sparse_yelp/ (default ./Datasets).
source "$(dirname "$0")/common.sh"
run_stage pretrainTeacher.py tea yelp example3 tea_ckpts tea_his teacher_yelp \
    --dataset=yelp \
    --epoch_tea=300 \
    --lr=0.0004 \
    --reg=1.5e-06 \
    --latdim=64 \
    --gnn_layer=8 \
    "$@"
