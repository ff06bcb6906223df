"""Whether the parsed flags can work: ranges, and the combinations that contradict each other.

:func:`validate` raises :class:`~Utils.runtime.Errors.ConfigError` (one line naming the flags)
before anything runs; ``Params.parse_args`` calls it. With ``Params.py`` (the parser) and
:mod:`Utils.config.Build` (flags into frozen configs) this is the only code that reads the
parsed flags.
"""
import math
import os

import torch

from Utils.runtime import Runtime
from Utils.runtime.Errors import ConfigError
from Utils.runtime.Runtime import MAX_SEED

STAGES = ('main', 'teacher')
MAX_LAYERS = 64  # --gnn_layer / --adj_aug_layer: far above any LightGCN, far below a run that never ends
MAX_THREADS = max(64, 4 * (os.cpu_count() or 1))

# (switch, per-run list) pairs: the list must cover every run up to --PRUNING_END.
DYNAMIC_LISTS = (
    ('use_dynamic_epoch', 'epoch_list'),
    ('use_dynamic_adj_mask_aug1', 'adj_mask_aug_list1'),
    ('use_dynamic_adj_mask_aug2', 'adj_mask_aug_list2'),
    ('use_dynamic_subspcreg', 'subspcreg_list'),
    ('use_dynamic_tempsubsp', 'tempsubsp_list'),
    ('use_dynamic_lr', 'lr_list'),
)



def _fail(message):
    raise ConfigError(message)


def validate(args, stage='main'):
    """Raise ConfigError (one line naming the flags) for values or combinations that cannot work."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")

    _validate_ranges(args)
    _validate_runtime(args)
    if stage == 'main':
        if args.reg_batch:
            _fail("--reg_batch is stage 1's (pretrainTeacher.py) weight decay; stages 2-3 keep the published one")
        _validate_main(args)
    elif args.load_his_tea and not args.load_model_tea:
        _fail("--load_his_tea continues a teacher's history and needs its weights: give --load_model_tea too "
              "(or --resume=True)")
    return args


def _validate_ranges(args):
    """Each number in its range, each list entry finite."""
    for name in ('mask_epoch', 'fix_epoch', 'epoch_tea', 'batch', 'tstBat', 'latdim',
                 'gnn_layer', 'adj_aug_layer', 'topk', 'topRange', 'tstEpoch'):
        if getattr(args, name) <= 0:
            _fail(f"--{name} must be a positive integer, got {getattr(args, name)}")
    for name in ('pruning_percent_adj', 'pruning_percent_emb'):
        value = getattr(args, name)
        if not 0.0 <= value < 1.0:
            _fail(f"--{name} must be in [0, 1), got {value}")
    for name in ('adj_aug_sample_ratio', 'hyper_contr_resample_ratio'):
        value = getattr(args, name)
        if not 0.0 < value <= 1.0:
            _fail(f"--{name} must be in (0, 1], got {value}")
    for name in ('train_2nd_best_gap', 'fixed_2nd_best_gap'):
        value = getattr(args, name)
        if not 0.0 <= value <= 1.0:
            _fail(f"--{name} must be in [0, 1], got {value}")
    for name in ('lr', 'tempsoft', 'tempcd', 'tempsc', 'tempsubsp'):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) > 0):
            _fail(f"--{name} must be a positive finite number, got {getattr(args, name)}")
    for name in ('reg', 'ereg', 'cdreg', 'softreg', 'screg', 'subspcreg'):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) >= 0):
            _fail(f"--{name} must be a finite number >= 0, got {getattr(args, name)}")
    lists = (('subspcreg_list', '>= 0', lambda v: v >= 0), ('tempsubsp_list', '> 0', lambda v: v > 0),
             ('adj_mask_aug_list1', '', None), ('adj_mask_aug_list2', '', None))
    for name, rule, ok in lists:
        bad = [v for v in getattr(args, name) if not math.isfinite(v) or (ok is not None and not ok(v))]
        if bad:
            _fail(f"--{name} holds {bad[0]}: every entry must be a finite number {rule}".rstrip())
    for name in ('adj_mask_aug1', 'adj_mask_aug2'):  # β weights of the edge scores (any sign)
        if not math.isfinite(getattr(args, name)):
            _fail(f"--{name} must be a finite number, got {getattr(args, name)}")
    for name in ('gnn_layer', 'adj_aug_layer'):
        if getattr(args, name) > MAX_LAYERS:
            _fail(f"--{name}={getattr(args, name)} is more than {MAX_LAYERS} layers: LightGCN models use 1-8 (the "
                  "published teachers 6-8), and each layer costs a full propagation per step")
    if not 0 <= args.seed <= MAX_SEED:
        _fail(f"--seed must be in [0, {MAX_SEED}] (NumPy's seeding refuses negative seeds and seeds of 2**32 "
              f"or more), got {args.seed}")
    if args.subspcreg_version not in ('v1', 'v2', 'v3'):
        _fail(f"--subspcreg_version must be v1, v2 or v3, got {args.subspcreg_version!r}")
    if args.contrast_candidates < 0:
        _fail(f"--contrast_candidates must be >= 0 (0 = exact sums), got {args.contrast_candidates}")
    if args.contrast_estimator != 'uniform' and args.contrast_candidates == 0:
        _fail(f"--contrast_estimator={args.contrast_estimator} says how the --contrast_candidates K rows are used, "
              "but K is 0 (the exact sums): give K > 0, e.g. --contrast_candidates=2048")
    if args.lr_list is not None:
        bad = [v for v in args.lr_list if not (math.isfinite(v) and v >= 0)]
        if bad:
            _fail(f"--lr_list holds {bad[0]}: every entry must be a finite number >= 0")


def _validate_runtime(args):
    """How the run executes: threads, patience, resume/overwrite, the device."""
    if args.threads < 0:
        _fail(f"--threads must be >= 0 (0 = torch's default), got {args.threads}")
    if args.threads > MAX_THREADS:
        _fail(f"--threads={args.threads} is more than {MAX_THREADS} (4 per CPU core here, at least 64): each thread "
              "holds its own buffers, so that many would only exhaust memory")
    if args.patience < 0:
        _fail(f"--patience must be >= 0 (0 = off), got {args.patience}")
    if args.use_dynamic_lr and args.lr_list is None:
        _fail("--use_dynamic_lr=True needs --lr_list (one learning rate per pruning run, indexed from 0)")
    if args.resume and args.overwrite:
        _fail("--resume=True continues the earlier run and --overwrite=True replaces it: choose one")
    if not (math.isfinite(args.block_mb) and args.block_mb > 0):
        _fail(f"--block_mb must be a positive number of MiB, got {args.block_mb}")
    if args.device == 'cuda':
        Runtime.expose_gpu(args.gpu)  # before the first CUDA query, which fixes the visible devices
        if not torch.cuda.is_available():
            _fail("--device=cuda but CUDA is not available here (use --device=auto or --device=cpu)")


def _validate_entry_score(args):
    """--emb_prune_score other than magnitude: only where entries are pruned by a score."""
    if args.emb_prune_score == 'magnitude':
        return
    if args.train_middle_model:
        _fail(f"--emb_prune_score={args.emb_prune_score} ranks the entries a student's pruning step removes; "
              "the intermediate model (--train_middle_model=True) is not pruned")
    if args.use_emb_random_pruning:
        _fail(f"--emb_prune_score={args.emb_prune_score} contradicts --use_emb_random_pruning=True, which removes "
              "entries at random")


def _validate_main(args):
    """Checks that only concern distillation and pruning (Main.py)."""
    if args.distill_from_middle_model == args.distill_from_teacher_model:
        _fail(f"exactly one of --distill_from_middle_model and --distill_from_teacher_model "
              f"must be true (got {args.distill_from_middle_model} and "
              f"{args.distill_from_teacher_model})")
    if args.train_middle_model and args.distill_from_middle_model:
        _fail("--train_middle_model=True contradicts --distill_from_middle_model=True: the "
              "intermediate model cannot supervise itself (stage 2 uses "
              "--distill_from_middle_model=False --distill_from_teacher_model=True)")
    if args.train_middle_model and not args.adj_aug:
        _fail("--train_middle_model=True requires --adj_aug=True (the intermediate model "
              "propagates on the closure graph)")

    if args.resume and args.run_no_adj_weights:
        _fail("--resume=True is not supported with --run_no_adj_weights=True (its frozen copies keep no resume "
              "state); rerun with --overwrite=True")
    if args.PRUNING_START < 0 or args.PRUNING_END < args.PRUNING_START:
        _fail(f"need 0 <= --PRUNING_START <= --PRUNING_END, got "
              f"{args.PRUNING_START} and {args.PRUNING_END}")
    if args.PRUNING_START == args.PRUNING_END == args.esc_train_prn_run and not args.run_no_adj_weights:
        _fail(f"--esc_train_prn_run={args.esc_train_prn_run} skips the training of the only pruning run "
              f"(--PRUNING_START = --PRUNING_END = {args.PRUNING_END}): nothing would be trained and no checkpoint "
              "written; widen the range or leave out --esc_train_prn_run")
    needed = args.PRUNING_END + 1  # lists are indexed by run number
    for switch, list_name in DYNAMIC_LISTS:
        values = getattr(args, list_name)
        if getattr(args, switch) and len(values) < needed:
            _fail(f"--{list_name} has {len(values)} entries but --{switch}=True needs one "
                  f"per pruning run up to --PRUNING_END={args.PRUNING_END} "
                  f"({needed} entries, indexed from 0)")
    if args.use_dynamic_epoch:  # (--mask_epoch and --fix_epoch are checked positive for every stage)
        empty = [run for run in range(args.PRUNING_START, needed)
                 if run != args.esc_train_prn_run and args.epoch_list[run] < 1]
        if empty:
            _fail(f"--epoch_list[{empty[0]}] is {args.epoch_list[empty[0]]}: with --use_dynamic_epoch=True, pruning "
                  f"run {empty[0]} would train no epoch. Every run from --PRUNING_START={args.PRUNING_START} to "
                  f"--PRUNING_END={args.PRUNING_END} that is trained needs at least 1 epoch, or it saves no "
                  f"checkpoint (--esc_train_prn_run skips a run's training)")
    if args.use_subspcreg and len(args.hyper_contr_loosen_factor) < needed:
        _fail(f"--hyper_contr_loosen_factor has {len(args.hyper_contr_loosen_factor)} entries "
              f"but --use_subspcreg=True needs one per pruning run up to "
              f"--PRUNING_END={args.PRUNING_END} ({needed} entries, indexed from 0)")
    if args.use_dynamic_lr and min(args.lr_list[args.PRUNING_START:needed]) <= 0:
        _fail(f"--lr_list must hold a positive learning rate for every pruning run from --PRUNING_START="
              f"{args.PRUNING_START} to --PRUNING_END={args.PRUNING_END} (--use_dynamic_lr=True)")
    if args.use_dynamic_tempsubsp and min(args.tempsubsp_list[:needed]) <= 0:
        _fail("--tempsubsp_list must hold positive temperatures (--use_dynamic_tempsubsp=True)")

    _validate_entry_score(args)
    if not args.train_middle_model:  # the student is trained and pruned
        if args.use_adj_mask_aug and args.use_mTea2drop_edges and args.use_tea2drop_edges:
            _fail("--use_mTea2drop_edges=True and --use_tea2drop_edges=True both choose the "
                  "edge-scoring model of --use_adj_mask_aug; set one of them to False")
        if args.distill_from_teacher_model:  # no intermediate model is loaded
            if args.use_SM_edgeW2aug:
                _fail("--use_SM_edgeW2aug=True needs the intermediate model's edge weights, but "
                      "--distill_from_teacher_model=True loads no intermediate model")
            if args.use_adj_mask_aug and args.use_mTea2drop_edges:
                _fail("--use_adj_mask_aug=True with --use_mTea2drop_edges=True scores edges with "
                      "the intermediate model, but --distill_from_teacher_model=True loads none "
                      "(use --use_mTea2drop_edges=False)")
