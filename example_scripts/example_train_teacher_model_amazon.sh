#!/usr/bin/env bash
# Published example: example_train_teacher_model_amazon (flags as published).
# Run from anywhere: CUDA_VISIBLE_DEVICES=0 bash example_scripts/example_train_teacher_model_amazon.sh
# The GPU is the one CUDA_VISIBLE_DEVICES names (CPU when none); data: $DATA_DIR/sparse_amazon/.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-./Datasets}
mkdir -p logs ./outModels/amazon/example3/tea_ckpts ./outModels/amazon/example3/tea_his
python pretrainTeacher.py --dataset=amazon \
    --epoch_tea=600 \
    --lr=0.0004 \
    --reg=1e-09 \
    --latdim=64 \
    --gnn_layer=8 \
    --data_dir="$DATA_DIR" \
    --model_save_path=./outModels/amazon/example3/tea_ckpts/teacher_amazon \
    --his_save_path=./outModels/amazon/example3/tea_his/teacher_amazon \
    "$@" | tee ./logs/tea_amazon_example3_log
