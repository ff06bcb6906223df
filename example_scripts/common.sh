# Shared by the published example scripts: run one stage from the project root,
# save under ./outModels/<dataset>/<example>/{<ckpt dir>,<history dir>}/ and tee to ./logs/.
# Usage (from a script): run_stage ENTRY LOGNAME DATASET EXAMPLE CKPT_DIR HIS_DIR TAG FLAG... -- "$@"
# RUN_NAME=name replaces EXAMPLE in the output and log paths (used by yelp_reproduce.sh).
# Console logs are appended to, each run after a line with its date and command (an earlier run's
# log is never lost, a refused rerun or a RESUME=1 sitting included).
# A stage refuses to replace the outputs of an earlier run at its paths: RESUME=1 continues an
# interrupted run from its _last.ckpt (--resume=True), OVERWRITE=1 replaces it (--overwrite=True).
# LAUNCH="torchrun --standalone --nproc_per_node=N" runs each stage as N data-parallel processes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATA_DIR=${DATA_DIR:-./Datasets}

run_stage() {
    local entry=$1 logname=$2 dataset=$3 example=${RUN_NAME:-$4} ckpts=$5 his=$6 tag=$7
    shift 7
    local out=./outModels/$dataset/$example again=()
    [ "${RESUME:-0}" = 1 ] && again+=(--resume=True)
    [ "${OVERWRITE:-0}" = 1 ] && again+=(--overwrite=True)
    mkdir -p logs "$out/$ckpts" "$out/$his"
    local log="./logs/${logname}_${dataset}_${example}_log"
    log_separator "$log" "$entry" "$@" "${again[@]}"
    ${LAUNCH:-python} "$entry" "$@" "${again[@]}" --data_dir="$DATA_DIR" \
        --model_save_path="$out/$ckpts/$tag" --his_save_path="$out/$his/$tag" \
        | tee -a "$log"
}

log_separator() {  # log_separator LOG COMMAND...: a console log keeps every run, each after this line
    local log=$1
    shift
    printf '\n===== %s: %s =====\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$*" >> "$log"
}

timed() {  # timed NAME COMMAND...: run a stage of a pipeline script and report its wall time
    local name=$1 start=$SECONDS
    shift
    "$@"
    echo "$(basename "$0"): $name took $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
}

start_stage() {  # start_stage CHOICE...: the stage a pipeline script starts at ($FROM, default the first
    # CHOICE), or exit 2 naming the choices
    local from=${FROM:-$1} choice
    for choice in "$@"; do
        [ "$from" = "$choice" ] && { echo "$from"; return 0; }
    done
    local list=$*
    [ $# -gt 1 ] && list="$(IFS=,; echo "${*:1:$#-1}" | sed 's/,/, /g') or ${!#}"
    echo "$(basename "$0"): FROM must be $list, not '$from'" >&2
    exit 2
}
