# Shared by the published example scripts: run one stage from the project root,
# save under ./outModels/<dataset>/<example>/{<ckpt dir>,<history dir>}/ and tee to ./logs/.
# Usage (from a script): run_stage ENTRY LOGNAME DATASET EXAMPLE CKPT_DIR HIS_DIR TAG FLAG... -- "$@"
# RUN_NAME=name replaces EXAMPLE in the output and log paths (used by yelp_reproduce.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATA_DIR=${DATA_DIR:-./Datasets}

run_stage() {
    local entry=$1 logname=$2 dataset=$3 example=${RUN_NAME:-$4} ckpts=$5 his=$6 tag=$7
    shift 7
    local out=./outModels/$dataset/$example
    mkdir -p logs "$out/$ckpts" "$out/$his"
    python "$entry" "$@" --data_dir="$DATA_DIR" \
        --model_save_path="$out/$ckpts/$tag" --his_save_path="$out/$his/$tag" \
        | tee "./logs/${logname}_${dataset}_${example}_log"
}
