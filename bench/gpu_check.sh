#!/usr/bin/env bash
# The CUDA path on a machine with a GPU: the tests that exercise it, then the stage-1/2/3
# benches on --device=cuda, each printing JSON lines (copy them into bench/README.md).
#   bash bench/gpu_check.sh            # DATA_DIR defaults to ../shared/datasets (Yelp)
# Exits 3 at once, running nothing, where torch sees no CUDA device.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-../shared/datasets}
if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: torch sees no CUDA device here (torch $(python -c 'import torch; print(torch.__version__)'))" >&2
    exit 3
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -m pytest -q -rs tests/training/test_gpu.py tests/training/test_parallel.py -k "not two_processes"
python bench/bench_teacher.py --data_dir "$DATA_DIR" --device cuda
python bench/bench_distill.py --stage 2 --data_dir "$DATA_DIR" --device cuda --batches 8 --parts_batches 2 \
    --contrast_candidates 0,2048
python bench/bench_distill.py --stage 3 --data_dir "$DATA_DIR" --device cuda --batches 8 --parts_batches 2 \
    --contrast_candidates 0,2048 --blocks device,cpu --count_ops
