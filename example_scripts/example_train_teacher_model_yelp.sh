#!/usr/bin/env bash
# Published example: example_train_teacher_model_yelp (flags as published).
# Run from anywhere: CUDA_VISIBLE_DEVICES=0 bash example_scripts/example_train_teacher_model_yelp.sh
# The GPU is the one CUDA_VISIBLE_DEVICES names (CPU when none); data: $DATA_DIR/sparse_yelp/.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-./Datasets}
mkdir -p logs ./outModels/yelp/example3/tea_ckpts ./outModels/yelp/example3/tea_his
python pretrainTeacher.py --dataset=yelp \
    --epoch_tea=300 \
    --lr=0.0004 \
    --reg=1.5e-06 \
    --latdim=64 \
    --gnn_layer=8 \
    --data_dir="$DATA_DIR" \
    --model_save_path=./outModels/yelp/example3/tea_ckpts/teacher_yelp \
    --his_save_path=./outModels/yelp/example3/tea_his/teacher_yelp \
    "$@" | tee ./logs/tea_yelp_example3_log
