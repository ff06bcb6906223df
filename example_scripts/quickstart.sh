#!/usr/bin/env bash
# Quick start: the three LightGNN stages end to end on a generated demo dataset
# (3,000 users x 2,000 items with latent groups), about a minute on an idle 2-core CPU.
#   bash example_scripts/quickstart.sh
# Logs are appended to logs/quickstart_{tea,mid,stu,eval}.log (every run kept, each after a dated
# line); checkpoints go to outModels/demo/ (the sparsest student also as the compact export
# outModels/demo/student_compact.mod), and a rerun replaces them (--overwrite=True).
# Data-parallel: LAUNCH="torchrun --standalone --nproc_per_node=2" bash example_scripts/quickstart.sh
# runs each training stage as 2 processes (Utils/runtime/Parallel.py); the outputs are the same files.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-./Datasets}
OUT=./outModels/demo
mkdir -p logs "$OUT"
for name in tea mid stu eval; do  # the logs keep every run, each after a line with its date
    printf '\n===== %s: %s =====\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$0 $*" >> "logs/quickstart_$name.log"
done
if [ ! -f "$DATA_DIR/sparse_demo/trnMat.pkl" ]; then
    python prepareData.py --format synthetic --name demo --data_dir "$DATA_DIR"
fi
LAUNCH=${LAUNCH:-python}
COMMON="--dataset=demo --data_dir=$DATA_DIR --latdim=32 --batch=2048 --seed=1234 --overwrite=True"

# Stage 1: a 3-layer LightGCN teacher. At lr 1e-3 its validation Recall@20 climbs for about ten
# epochs towards the data's ceiling (the generator's own probabilities rank at ~0.48); at 1e-2
# the first epoch already lands near it and the following ones overfit (test 0.47 -> 0.41).
$LAUNCH pretrainTeacher.py $COMMON --epoch_tea=15 --lr=1e-3 --reg=1e-6 --gnn_layer=3 \
    --model_save_path=$OUT/teacher --his_save_path=$OUT/teacher | tee -a logs/quickstart_tea.log

# Stage 2: the intermediate model on I + A + A^2 with learnable edge weights
$LAUNCH Main.py $COMMON --train_middle_model=True --distill_from_middle_model=False \
    --distill_from_teacher_model=True --teacher_model=$OUT/teacher.mod --gnn_layer=2 \
    --mask_epoch=4 --lr=5e-3 --reg=1e-6 --topRange=20000 --PRUNING_START=1 --PRUNING_END=1 \
    --model_save_path=$OUT/mid --his_save_path=$OUT/mid | tee -a logs/quickstart_mid.log

# Stage 3: the 2-layer student, 4 pruning runs removing 15% of edges / 20% of entries each;
# it starts from the intermediate model's layer-0 embeddings instead of a random initialisation
$LAUNCH Main.py $COMMON --distill_from_middle_model=True --middle_teacher_model=$OUT/mid_best_global_100_100.mod \
    --gnn_layer=2 --mask_epoch=3 --lr=5e-3 --reg=1e-6 --topRange=20000 --PRUNING_START=1 --PRUNING_END=4 \
    --pruning_percent_adj=0.15 --pruning_percent_emb=0.2 --use_adj_mask_aug=True --use_SM_edgeW2aug=True \
    --init_from_supervisor=True \
    --model_save_path=$OUT/stu --his_save_path=$OUT/stu | tee -a logs/quickstart_stu.log

# On the demo test split: the student of the global best record against a popularity ranking,
# then the sparsest student kept (the last pruning run's "2nd best with edge weights" record)
STU=$(ls -t $OUT/stu_best_global_*.mod | head -1)
SPARSEST=$(ls -t $OUT/stu_2nd_best_w_edge_wei_*.mod | head -1)
python modelTools.py evaluate "$STU" --split test --baseline popularity | tee -a logs/quickstart_eval.log
python modelTools.py evaluate "$SPARSEST" --split test | tee -a logs/quickstart_eval.log

# The sparsest student as a compact export (surviving edges + non-zero entries), the file the
# README's Python snippet loads: lightgnn.load(lightgnn.ROOT / "outModels/demo/student_compact.mod")
python modelTools.py export "$SPARSEST" $OUT/student_compact.mod --overwrite | tail -n 1
