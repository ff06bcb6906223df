#!/usr/bin/env bash
# Published example: example_train_intermediate_model_lightgnn_amazon (flags as published).
# Run from anywhere: CUDA_VISIBLE_DEVICES=0 bash example_scripts/example_train_intermediate_model_lightgnn_amazon.sh
# The GPU is the one CUDA_VISIBLE_DEVICES names (CPU when none); data: $DATA_DIR/sparse_amazon/.
# Reads the teacher written by example_train_teacher_model_amazon.sh (override with TEACHER=path;
# the published script read a demo checkpoint from ./inModels/ that cannot be downloaded).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-./Datasets}
TEACHER=${TEACHER:-./outModels/amazon/example3/tea_ckpts/teacher_amazon.mod}
mkdir -p logs ./outModels/amazon/example2/mid_tea_ckpts ./outModels/amazon/example2/mid_tea_his
python Main.py --dataset=amazon \
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
    --train_middle_model=True --distill_from_middle_model=False --distill_from_teacher_model=True --teacher_model="$TEACHER" --data_dir="$DATA_DIR" \
    --model_save_path=./outModels/amazon/example2/mid_tea_ckpts/mid_teacher_amazon \
    --his_save_path=./outModels/amazon/example2/mid_tea_his/mid_teacher_amazon \
    "$@" | tee ./logs/mid_amazon_example2_log
