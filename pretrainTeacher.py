"""Stage 1 of LightGNN: pretrain the LightGCN teacher (``docs/method.md#stage-1-teacher-pretraining``).

    python pretrainTeacher.py --dataset=yelp --epoch_tea=300 --lr=4e-4 --reg=1.5e-6 \
        --latdim=64 --gnn_layer=8 --model_save_path=outModels/yelp/teacher --his_save_path=outModels/yelp/teacher

Writes ``<model_save_path>.mod`` (the best checkpoint, selected on ``--select_on``) and
``<his_save_path>.his`` (one JSON line per epoch). The stage lives in :mod:`Utils.training.Teacher`.
``torchrun --nproc_per_node=N pretrainTeacher.py <flags>`` runs it data-parallel (:mod:`Utils.runtime.Parallel`).
"""
from __future__ import annotations

import sys

import Params
from Utils.config import Build
from Utils.files import Lock
from Utils.training.Teacher import TeacherStage
from Utils.training.Training import open_run, run_stage


def main(args) -> int:
    ctx = open_run(Build.runtime_config(args), Params.format_args(args), Build.history_file(args.his_save_path))
    cfg = Build.teacher_config(args)
    with Lock.own(cfg.outputs, ctx.group.lead, lambda line: ctx.log.line(line, stamp=False)):  # one run per prefix
        return run_stage(TeacherStage.from_files(cfg, ctx))


if __name__ == "__main__":
    sys.exit(Params.run_cli(main, stage="teacher"))
