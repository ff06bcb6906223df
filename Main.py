"""Stages 2 and 3 of LightGNN: hierarchical distillation and pruning (``docs/method.md#stages-2-and-3-distillation``).

Stage 2 — distil the teacher into the intermediate model on the closure graph Ĉ:

    python Main.py --train_middle_model=True --distill_from_middle_model=False \
        --distill_from_teacher_model=True --teacher_model=outModels/yelp/teacher.mod ...

Stage 3 — distil the intermediate model into the student on Â while pruning:

    python Main.py --distill_from_middle_model=True \
        --middle_teacher_model=outModels/yelp/mid_best_global_100_100.mod ...

The stage itself lives in :mod:`Utils.training.Distill`; this file parses, builds, runs and
summarises. ``torchrun --nproc_per_node=N Main.py <flags>`` runs it data-parallel
(:mod:`Utils.runtime.Parallel`).
"""
from __future__ import annotations

import sys

import Params
from Utils.config import Build
from Utils.files import Lock
from Utils.training.Distill import DistillStage
from Utils.training.Training import open_run, run_stage


def main(args) -> int:
    ctx = open_run(Build.runtime_config(args), Params.format_args(args), Build.history_file(args.his_save_path))
    cfg = Build.distill_config(args, ctx.device)
    say = lambda line: ctx.log.line(line, stamp=False)  # noqa: E731
    with Lock.own(cfg.outputs, ctx.group.lead, say):  # one run per output prefix, plots included
        stage = DistillStage.from_files(cfg, ctx)  # reads and checks every input first
        status = run_stage(stage)
        if status == 0 and cfg.trainee_is_student and args.plots and ctx.group.lead:
            from Utils.tools import Plots  # matplotlib is loaded only when plots are drawn

            Plots.plot_after_training(args.his_save_path, cfg.middle_path, args.topk, say)
    return status


if __name__ == "__main__":
    sys.exit(Params.run_cli(main, stage="main"))
