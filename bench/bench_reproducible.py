"""How far apart two runs of the same command end: same threads, another thread count, torchrun.

    python bench/bench_reproducible.py [--data_dir /tmp/lightgnn_repro] [--epochs 3] [--configs ...]

Runs the quick start's stage 1 (3-layer teacher, 32-d, on the generated demo data) and then
stage 2 (the intermediate model distilled from that teacher, one epoch) once per
configuration, each into its own folder, and compares every tensor of every checkpoint and
resume file, and every history row but its timings, with the first configuration's
(``t2``). Configurations (``--configs``, comma-separated):

    t2        --threads=2 (the reference)
    t2_again  --threads=2 again: identical files expected (``--deterministic=True``)
    t2_nondet --threads=2 --deterministic=False: what the switch prevents
    t1        --threads=1
    torchrun2 torchrun --standalone --nproc_per_node=2 (one thread each)

Prints one JSON line per configuration: ``identical`` (every tensor ``torch.equal`` and every
history row equal), ``max_abs_diff`` over all tensors, and the files compared.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from Utils.tools.Compare import compare_runs, run_outputs  # noqa: E402

CONFIGS = {
    "t2": ([sys.executable], ["--threads=2"]),
    "t2_again": ([sys.executable], ["--threads=2"]),
    "t2_nondet": ([sys.executable], ["--threads=2", "--deterministic=False"]),
    "t1": ([sys.executable], ["--threads=1"]),
    "torchrun2": ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"], []),
}


def run_pipeline(launch, extra, data_dir, out, epochs):
    common = ["--dataset=demo", f"--data_dir={data_dir}", "--latdim=32", "--batch=2048", "--seed=7", *extra]
    commands = [
        ["pretrainTeacher.py", *common, f"--epoch_tea={epochs}", "--lr=1e-3", "--reg=1e-6", "--gnn_layer=3",
         f"--model_save_path={out}/tea", f"--his_save_path={out}/tea"],
        ["Main.py", *common, "--train_middle_model=True", "--distill_from_middle_model=False",
         "--distill_from_teacher_model=True", f"--teacher_model={out}/tea.mod", "--gnn_layer=2", "--mask_epoch=1",
         "--lr=5e-3", "--topRange=20000", "--PRUNING_START=1", "--PRUNING_END=1", "--plots=False",
         f"--model_save_path={out}/mid", f"--his_save_path={out}/mid"],
    ]
    for script, *flags in commands:
        subprocess.run([*launch, os.path.join(ROOT, script), *flags], cwd=ROOT, check=True, capture_output=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="/tmp/lightgnn_repro")
    parser.add_argument("--epochs", type=int, default=3, help="teacher epochs")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    opts = parser.parse_args()
    names = opts.configs.split(",")
    if names[0] != "t2" or any(name not in CONFIGS for name in names):
        parser.error(f"--configs: start with t2, then any of {', '.join(CONFIGS)}")
    if not os.path.isfile(os.path.join(opts.data_dir, "sparse_demo", "trnMat.pkl")):
        subprocess.run([sys.executable, os.path.join(ROOT, "prepareData.py"), "--format=synthetic", "--name=demo",
                        f"--data_dir={opts.data_dir}"], check=True, capture_output=True)
    with tempfile.TemporaryDirectory(prefix="lightgnn_repro_") as work:
        reference = None
        for name in names:
            launch, extra = CONFIGS[name]
            out = os.path.join(work, name)
            start = time.perf_counter()
            run_pipeline(launch, extra, opts.data_dir, out, opts.epochs)
            found = run_outputs(out)
            row = {"bench": "reproducible", "config": name, "wall_s": round(time.perf_counter() - start, 1)}
            if reference is None:
                reference = found
            else:
                result = compare_runs(reference, found)
                row.update(identical=result.identical, max_abs_diff=result.max_abs_diff, files=result.files,
                           different={name: float(f"{diff:.3g}") for name, diff in result.different.items()})
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
