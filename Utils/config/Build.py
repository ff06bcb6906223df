"""The flags become frozen configs (:mod:`Utils.config.Config`) here, once, at the entry points.

``runtime_config``, ``teacher_config`` and ``distill_config`` are what ``pretrainTeacher.py`` and
``Main.py`` call; nothing below them reads the parsed flags.
"""
from pathlib import Path

from Utils.config import Config
from Utils.kernels.Kernels import device_blocks
from Utils.objective.Losses import KDConfig
from Utils.objective.Pruning import PruneConfig


def history_file(path):
    """The history file of a --his_save_path / --load_his_tea value (".his" appended when missing)."""
    return Config.history_file(path)


def dataset_dir(args):
    """Folder of the dataset: <--data_dir>/sparse_<--dataset>/."""
    return Path(args.data_dir) / f'sparse_{args.dataset}'


def runtime_config(args):
    return Config.Execution(device=args.device, gpu=args.gpu, threads=args.threads,
                          deterministic=args.deterministic, seed=args.seed)


def _common(args):
    """The parts every stage shares: data, loop, evaluation, outputs, and the flags to record."""
    return dict(
        data=Config.Data(data_dir=str(args.data_dir), dataset=args.dataset, latdim=args.latdim,
                         gnn_layer=args.gnn_layer),
        loop=Config.Loop(batch=args.batch, tst_every=args.tstEpoch, patience=args.patience, seed=args.seed),
        evaluation=Config.Evaluation(topk=args.topk, batch_users=args.tstBat, select_on=args.select_on),
        outputs=Config.Outputs(model_path=args.model_save_path, history_path=args.his_save_path,
                               resume=args.resume, overwrite=args.overwrite),
        flags=dict(vars(args)))


def teacher_config(args):
    """Stage 1's settings."""
    return Config.TeacherConfig(**_common(args), epochs=args.epoch_tea, lr=args.lr, reg=args.reg,
                                reg_batch=args.reg_batch, load_model=args.load_model_tea or "",
                                load_history=args.load_his_tea or "")


def closure_config(flags):
    """How Ĉ is built, from a flags mapping (``vars(args)``, or a checkpoint's flags over the defaults)."""
    return Config.Closure(layers=int(flags["adj_aug_layer"]), sample=bool(flags["adj_aug_sample"]),
                          sample_ratio=float(flags["adj_aug_sample_ratio"]),
                          sample_random=bool(flags["adj_aug_sample_random"]), seed=int(flags["seed"]))


def edge_scorer(args):
    """The model whose embeddings score the student's edges (--use_adj_mask_aug), or None."""
    if not args.use_adj_mask_aug:
        return None
    return "teacher" if args.use_tea2drop_edges else "middle" if args.use_mTea2drop_edges else "student"


def _pick(args, switch, values, default, run):
    """A per-run value: ``values[run]`` when the --use_dynamic_* ``switch`` is on, else ``default``."""
    return getattr(args, values)[run] if getattr(args, switch) else getattr(args, default)


def kd_config(args, run, student, blocks):
    """The loss of pruning ``run``; ``blocks`` is the kernels' block shape on this device."""
    return KDConfig(
        use_pre_level_kd=args.use_pre_level_kd, softreg=args.softreg, tempsoft=args.tempsoft,
        use_emb_level_kd=args.use_emb_level_kd, cdreg=args.cdreg, tempcd=args.tempcd,
        use_contr_deno=args.use_contr_deno, screg=args.screg, tempsc=args.tempsc, reg=args.reg,
        use_ereg=args.use_ereg, ereg=args.ereg,
        use_subspcreg=bool(args.use_subspcreg and student
                           and args.hyper_contr_start_prn_run <= run <= args.hyper_contr_end_prn_run),
        subspcreg=float(_pick(args, 'use_dynamic_subspcreg', 'subspcreg_list', 'subspcreg', run)),
        tempsubsp=float(_pick(args, 'use_dynamic_tempsubsp', 'tempsubsp_list', 'tempsubsp', run)),
        subspcreg_version=args.subspcreg_version,
        loosen=float(args.hyper_contr_loosen_factor[run]) if run < len(args.hyper_contr_loosen_factor) else 0.0,
        use_ly0emb4subspcreg=args.use_ly0emb4subspcreg,
        resample_ratio=args.hyper_contr_resample_ratio if args.hyper_contr_resample else None,
        contrast_candidates=args.contrast_candidates, contrast_estimator=args.contrast_estimator, blocks=blocks)


def prune_config(args, run):
    """The pruning step after the student's ``run``."""
    return PruneConfig(
        edge_cut=args.pruning_percent_adj, emb_cut=args.pruning_percent_emb,
        keep_weights=args.keep_adj_weights2next_prn, scoring=edge_scorer(args),
        beta1=float(_pick(args, 'use_dynamic_adj_mask_aug1', 'adj_mask_aug_list1', 'adj_mask_aug1', run)),
        use_middle_weights=args.use_SM_edgeW2aug,
        beta2=float(_pick(args, 'use_dynamic_adj_mask_aug2', 'adj_mask_aug_list2', 'adj_mask_aug2', run)),
        use_tanh=args.use_tanh2aug, use_abs=args.adj_weights_abs, random_edges=args.use_adj_random_pruning,
        random_embeddings=args.use_emb_random_pruning, emb_score=args.emb_prune_score)


def run_config(args, run, student, blocks):
    """Pruning run ``run``: its epochs, learning rate, loss, and (student) pruning step."""
    return Config.RunConfig(
        run=run, epochs=int(_pick(args, 'use_dynamic_epoch', 'epoch_list', 'mask_epoch', run)),
        lr=float(_pick(args, 'use_dynamic_lr', 'lr_list', 'lr', run)), kd=kd_config(args, run, student, blocks),
        prune=prune_config(args, run) if student else None, train=run != args.esc_train_prn_run)


def distill_config(args, device='cpu'):
    """Stages 2-3's settings; ``device`` fixes the block shape of the loss kernels (``--block_mb``)."""
    student = not args.train_middle_model
    blocks = device_blocks(device, args.block_mb)
    scorer = edge_scorer(args) if student else None
    reads_teacher = args.distill_from_teacher_model or scorer == "teacher"
    uses_closure = args.train_middle_model or args.distill_from_middle_model
    return Config.DistillConfig(
        **_common(args), role="student" if student else "middle_teacher",
        runs=tuple(run_config(args, run, student, blocks) for run in range(args.PRUNING_START, args.PRUNING_END + 1)),
        supervisor="middle" if args.distill_from_middle_model else "teacher",
        teacher_path=args.teacher_model if reads_teacher else None,
        middle_path=args.middle_teacher_model if args.distill_from_middle_model else None,
        break_point=args.break_point if student and args.train_stu_from_break_point else None,
        closure=closure_config(vars(args)) if uses_closure else None, top_range=args.topRange,
        init_from_supervisor=args.init_from_supervisor,
        middle_edge_weights=bool(student and args.use_SM_edgeW2aug and args.distill_from_middle_model),
        fixed_copy_epochs=args.fix_epoch if args.run_no_adj_weights else None,
        learn_edge_weights=args.learn_edge_weights,
        gaps=(args.train_2nd_best_gap, args.fixed_2nd_best_gap))
