#!/usr/bin/env bash
# Published example: example_train_teacher_model_gowalla (flags as published).
# Run from anywhere: CUDA_VISIBLE_DEVICES=0 bash example_scripts/example_train_teacher_model_gowalla.sh
# The GPU is the one CUDA_VISIBLE_DEVICES names (CPU when none); data: $DATA_DIR/sparse_gowalla/.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-./Datasets}
mkdir -p logs ./outModels/gowalla/example3/tea_ckpts ./outModels/gowalla/example3/tea_his
python pretrainTeacher.py --dataset=gowalla \
    --epoch_tea=1000 \
    --lr=0.0004 \
    --reg=1.3e-7 \
    --latdim=64 \
    --gnn_layer=8 \
    --data_dir="$DATA_DIR" \
    --model_save_path=./outModels/gowalla/example3/tea_ckpts/teacher_gowalla \
    --his_save_path=./outModels/gowalla/example3/tea_his/teacher_gowalla \
    "$@" | tee ./logs/tea_gowalla_example3_log
