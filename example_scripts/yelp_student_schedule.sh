# The student-stage flags of yelp_reproduce.sh (sourced by it and by yelp_ablation.sh, so that
# every ablation variant runs exactly the script's schedule); why each differs from the published
# example is said in yelp_reproduce.sh.
YELP_STUDENT_FLAGS=(
    --PRUNING_END=12 --contrast_candidates=2048 --init_from_supervisor=True --lr=5e-4 --patience=4
    --use_dynamic_epoch=True --epoch_list=0,16,5,5,5,14,14,14,14,14,14,14,14 --hyper_contr_end_prn_run=8
)
