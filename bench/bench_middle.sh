#!/usr/bin/env bash
# The intermediate model's quality against wall time, for the levers that could make it a real
# teacher in CPU time. Each variant trains the published Yelp intermediate example from the
# teacher of yelp_reproduce.sh, with --contrast_candidates=2048 as the script runs it, and
# prints one CSV line per evaluated epoch (modelTools.py curve: wall minutes, val/test Recall).
#   DATA_DIR=../shared/datasets bash bench/bench_middle.sh [VARIANT...]
# Variants (default: all of them, in this order):
#   start    the untrained model: the teacher's layer-0 embeddings on C, one epoch at lr 1e-7
#   script   what yelp_reproduce.sh runs: from the teacher's embeddings, lr 1e-4, 6 layers
#   layers2  the same with 2 layers (the paper's appendix A.4) instead of the published 6
#   xavier   6 layers from Xavier at lr 1e-3 (the published recipe is 300 epochs at 1e-4)
#   xavier2  2 layers from Xavier at lr 1e-3
#   sample   the script's model on the sparsified closure graph (--adj_aug_sample_ratio=0.3)
# EPOCHS (default 8) caps each variant; every variant stops after 2 evaluations without a new best.
# Outputs under ./outModels/yelp/middle_<variant>/, logs in logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
export DATA_DIR=${DATA_DIR:-../shared/datasets}
export TEACHER=${TEACHER:-./outModels/yelp/reproduce/tea_ckpts/teacher_yelp.mod}
EPOCHS=${EPOCHS:-8}
if [ ! -f "$TEACHER" ]; then
    echo "bench_middle.sh: no teacher at $TEACHER (run example_scripts/yelp_reproduce.sh first, or set TEACHER)" >&2
    exit 2
fi
variant_flags() {
    case $1 in
        start) echo "--init_from_supervisor=True --lr=1e-7 --mask_epoch=1" ;;
        script) echo "--init_from_supervisor=True --lr=1e-4" ;;
        layers2) echo "--init_from_supervisor=True --lr=1e-4 --gnn_layer=2" ;;
        xavier) echo "--init_from_supervisor=False --lr=1e-3" ;;
        xavier2) echo "--init_from_supervisor=False --lr=1e-3 --gnn_layer=2" ;;
        sample) echo "--init_from_supervisor=True --lr=1e-4 --adj_aug_sample=True --adj_aug_sample_ratio=0.3" ;;
        *) echo "bench_middle.sh: unknown variant '$1'" >&2; return 2 ;;
    esac
}
VARIANTS=("$@")
[ ${#VARIANTS[@]} -gt 0 ] || VARIANTS=(start script layers2 xavier xavier2 sample)
for v in "${VARIANTS[@]}"; do
    flags=$(variant_flags "$v")
    start=$SECONDS
    RUN_NAME=middle_$v OVERWRITE=1 bash example_scripts/example_train_intermediate_model_lightgnn_yelp.sh \
        --contrast_candidates=2048 --mask_epoch="$EPOCHS" --patience=2 $flags > /dev/null
    echo "# $v: $flags ($(( SECONDS - start )) s)"
    python modelTools.py curve "outModels/yelp/middle_$v/mid_tea_his/mid_teacher_yelp.his"
done
