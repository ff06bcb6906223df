#!/usr/bin/env bash
# The teacher (a 3-layer LightGCN) on LightGCN's own Gowalla split with LightGCN's recipe, to be
# compared with its published table (Recall@20 0.1830, NDCG@20 0.1554; the authors' PyTorch
# version 0.1824 / 0.1547):
#   DATA_DIR=../shared/datasets bash example_scripts/gowalla_lightgcn_reproduce.sh
# Recipe (LightGCN-PyTorch): 64-d, 3 layers, lr 1e-3, batch 2048, weight decay 1e-4 on the
# batch's layer-0 rows (--reg_batch=True, docs/method.md#weight-decay), 1000 epochs, seed 2020.
# The split has no validation file, so checkpoints are selected on test, as LightGCN's table
# was; evaluated every 10 epochs (as LightGCN-PyTorch logs).
# Long: RESUME=1 continues an interrupted run from its _last.ckpt (bit-identical to an
# uninterrupted one); OVERWRITE=1 starts afresh. EPOCHS=N changes the epoch count (a resumed
# run may be given more). Outputs under ./outModels/gowalla_lightgcn/reproduce/, log in logs/.
set -euo pipefail
export DATA_DIR=${DATA_DIR:-../shared/datasets}
source "$(dirname "$0")/common.sh"
start=$SECONDS
run_stage pretrainTeacher.py tea gowalla_lightgcn reproduce tea_ckpts tea_his teacher_gowalla_lightgcn \
    --dataset=gowalla_lightgcn \
    --epoch_tea="${EPOCHS:-1000}" \
    --lr=1e-3 \
    --batch=2048 \
    --reg=1e-4 \
    --reg_batch=True \
    --latdim=64 \
    --gnn_layer=3 \
    --seed=2020 \
    --tstEpoch=10 \
    "$@"
echo "gowalla_lightgcn_reproduce.sh: teacher took $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
