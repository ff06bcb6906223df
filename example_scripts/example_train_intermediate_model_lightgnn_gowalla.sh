#!/usr/bin/env bash
# Published example: example_train_intermediate_model_lightgnn_gowalla (flags as published).
# Run from anywhere: CUDA_VISIBLE_DEVICES=0 bash example_scripts/example_train_intermediate_model_lightgnn_gowalla.sh
# The GPU is the one CUDA_VISIBLE_DEVICES names (CPU when none); data: $DATA_DIR/sparse_gowalla/.
# Reads the teacher written by example_train_teacher_model_gowalla.sh (override with TEACHER=path;
# the published script read a demo checkpoint from ./inModels/ that cannot be downloaded).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-./Datasets}
TEACHER=${TEACHER:-./outModels/gowalla/example3/tea_ckpts/teacher_gowalla.mod}
mkdir -p logs ./outModels/gowalla/example2/mid_tea_ckpts ./outModels/gowalla/example2/mid_tea_his
python Main.py --dataset=gowalla \
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
    --train_middle_model=True --distill_from_middle_model=False --distill_from_teacher_model=True --teacher_model="$TEACHER" --data_dir="$DATA_DIR" \
    --model_save_path=./outModels/gowalla/example2/mid_tea_ckpts/mid_teacher_gowalla \
    --his_save_path=./outModels/gowalla/example2/mid_tea_his/mid_teacher_gowalla \
    "$@" | tee ./logs/mid_gowalla_example2_log
