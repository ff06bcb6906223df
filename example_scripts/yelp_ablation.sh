#!/usr/bin/env bash
# The paper's ablation (Table 3) on Yelp: the student stage of yelp_reproduce.sh, whole (12 pruning
# runs, the same schedule and flags, but the published edge score's beta1 = 1.0 where the script
# uses 0.1), with one component of LightGNN removed or replaced.
#   DATA_DIR=../shared/datasets bash example_scripts/yelp_ablation.sh VARIANT [more flags]
# VARIANT (the paper's row name in brackets):
#   lightgnn    nothing removed: the script's student stage at beta1 = 1.0           [LightGNN]
#   no_bialn    no prediction- or embedding-level KD (--softreg=0 --cdreg=0)          [-BiAln]
#   no_intkd    no intermediate model: the student is distilled from the teacher, whose
#               predictions also replace the intermediate model's in the edge score   [-IntKD]
#   no_impd     edges ranked by the student's own learned weights only, without the
#               intermediate model's predictions and weights                         [-ImpD]
#   bnedge      the student propagates with binary edge weights (1 on kept edges,
#               not learned); edges still ranked by the intermediate model's terms    [BnEdge]
#   rand_edge   edges pruned uniformly at random (entries by magnitude)              [~EdgeP]
#   rand_emb    embedding entries pruned uniformly at random (edges by score)        [~EmbP]
#   rand_both   both at random                                                       [~BothP]
# Reads the teacher and intermediate model that yelp_reproduce.sh leaves (or TEACHER=/MIDDLE=;
# ../shared/checkpoints/yelp/reproduce/ holds them). Writes ./outModels/yelp/ablation_VARIANT/
# and logs/stu_yelp_ablation_VARIANT_log; RESUME=1 / OVERWRITE=1 as in the other scripts.
# Each run's figures (validation-selected epoch, test Recall/NDCG at 20 and 40, and the best test
# Recall of any epoch, the published tool's selection):
#   python modelTools.py summary outModels/yelp/ablation_VARIANT/fnl_student_his/student_yelp.his \
#       --checkpoints outModels/yelp/ablation_VARIANT/fnl_student_ckpts --topk 20,40
set -euo pipefail
export DATA_DIR=${DATA_DIR:-../shared/datasets}
source "$(dirname "$0")/common.sh"  # (cd to the project root; run_stage's RESUME/OVERWRITE)
source example_scripts/yelp_student_schedule.sh  # YELP_STUDENT_FLAGS
variant=${1:-}
[ $# -gt 0 ] && shift
OUT=./outModels/yelp/reproduce
export TEACHER=${TEACHER:-$OUT/tea_ckpts/teacher_yelp.mod}
export MIDDLE=${MIDDLE:-$OUT/mid_tea_ckpts/mid_teacher_yelp_best_global_100_100.mod}
case "$variant" in
    lightgnn)  flags=() ;;
    no_bialn)  flags=(--softreg=0 --cdreg=0) ;;
    no_intkd)  flags=(--distill_from_middle_model=False --distill_from_teacher_model=True
                      --teacher_model="$TEACHER" --use_mTea2drop_edges=False --use_tea2drop_edges=True
                      --use_SM_edgeW2aug=False) ;;
    no_impd)   flags=(--use_adj_mask_aug=False --use_SM_edgeW2aug=False) ;;
    bnedge)    flags=(--learn_edge_weights=False) ;;
    rand_edge) flags=(--use_adj_random_pruning=True) ;;
    rand_emb)  flags=(--use_emb_random_pruning=True) ;;
    rand_both) flags=(--use_adj_random_pruning=True --use_emb_random_pruning=True) ;;
    *) echo "$(basename "$0"): VARIANT must be lightgnn, no_bialn, no_intkd, no_impd, bnedge, rand_edge," \
            "rand_emb or rand_both, not '$variant'" >&2
       exit 2 ;;
esac
export RUN_NAME=ablation_$variant
timed "student ($variant)" bash example_scripts/example_train_final_student_lightgnn_yelp.sh \
    "${YELP_STUDENT_FLAGS[@]}" "${flags[@]}" "$@"
