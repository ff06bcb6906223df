#!/usr/bin/env bash
# Published example: example_train_intermediate_model_lightgnn_yelp (flags as published).
# Run from anywhere: CUDA_VISIBLE_DEVICES=0 bash example_scripts/example_train_intermediate_model_lightgnn_yelp.sh
# The GPU is the one CUDA_VISIBLE_DEVICES names (CPU when none); data: $DATA_DIR/sparse_yelp/.
# Reads the teacher written by example_train_teacher_model_yelp.sh (override with TEACHER=path;
# the published script read a demo checkpoint from ./inModels/ that cannot be downloaded).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-./Datasets}
TEACHER=${TEACHER:-./outModels/yelp/example3/tea_ckpts/teacher_yelp.mod}
mkdir -p logs ./outModels/yelp/example2/mid_tea_ckpts ./outModels/yelp/example2/mid_tea_his
python Main.py --dataset=yelp \
    --mask_epoch=300 \
    --lr=0.0001 \
    --reg=1e-6 \
    --use_ereg=True \
    --ereg=1e-10 \
    --latdim=64 \
    --gnn_layer=6 \
    --adj_aug=True \
    --adj_aug_layer=1 \
    --use_adj_mask_aug=False \
    --use_SM_edgeW2aug=False \
    --PRUNING_START=1 \
    --PRUNING_END=1 \
    --train_middle_model=True --distill_from_middle_model=False --distill_from_teacher_model=True --teacher_model="$TEACHER" --data_dir="$DATA_DIR" \
    --model_save_path=./outModels/yelp/example2/mid_tea_ckpts/mid_teacher_yelp \
    --his_save_path=./outModels/yelp/example2/mid_tea_his/mid_teacher_yelp \
    "$@" | tee ./logs/mid_yelp_example2_log
