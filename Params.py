"""The one command line of LightGNN, shared by ``pretrainTeacher.py`` and ``Main.py``.

Every flag of the published tool exists here with its published name, type and
default, plus our additions (``--data_dir``, ``--select_on``, ``--device``, ``--threads``,
``--plots`` and the time-to-quality levers). This module owns the parsing of booleans and
comma-separated lists, the validation of flag combinations (one place, before anything
runs), the published args dump, :func:`run_cli`, and the frozen configs
(:mod:`Utils.config.Config`) the flags become: ``runtime_config``, ``teacher_config`` and
``distill_config``. Nothing below the entry points reads the parsed flags.

An entry point (``Main.py``)::

    def main(args):
        device, log, group = open_run(Params.runtime_config(args), Params.format_args(args),
                                      Params.history_file(args.his_save_path))
        stage = DistillStage.from_files(Params.distill_config(args, device), device, log, group)
        return run_stage(stage, log, group)

    if __name__ == '__main__':
        sys.exit(Params.run_cli(main, stage='main'))   # or stage='teacher'
"""
import argparse
import math
import signal
import sys
import textwrap
from pathlib import Path

import torch

from Utils.runtime.Errors import (ConfigError, OneLineErrorParser, Terminated, UserError, flush_stdout, interrupt_exit_code,
                          quiet_library_warnings, report_user_error, speaks)
from Utils.config import Config
from Utils.runtime import Runtime
from Utils.objective.Pruning import ENTRY_SCORES
from Utils.runtime.Runtime import MAX_SEED

STAGES = ('main', 'teacher')
ARGS_DUMP_WIDTH = 80  # the published dump pads "name....value" to 80 characters


# --------------------------------------------------------------------------- parsing

_TRUE = {'true', 'yes', '1'}
_FALSE = {'false', 'no', '0'}


def str2bool(value):
    """Parse true/false/yes/no/1/0 (any case); anything else is an error."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise argparse.ArgumentTypeError(
        f"expected a boolean (true/false/yes/no/1/0), got {value!r}")


def _split_list(value):
    """'0,600,600', '[0, 600, 600]' or '0 600 600' -> ['0', '600', '600']."""
    text = str(value).strip()
    if len(text) >= 2 and text[0] in '[(' and text[-1] in '])':
        text = text[1:-1]
    items = text.replace(',', ' ').split()
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {value!r}")
    return items


def _number_list(kind, what):
    """A parser of comma-separated ``kind`` values, e.g. int: '0,600,600' -> [0, 600, 600]."""
    def parse(value):
        if isinstance(value, (list, tuple)):
            return [kind(v) for v in value]
        try:
            return [kind(item) for item in _split_list(value)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {value!r}") from None

    parse.__name__ = f"{kind.__name__}_list"
    return parse


int_list = _number_list(int, "integers")  # '0,600,600' -> [0, 600, 600]
float_list = _number_list(float, "numbers")  # '0.05,1e-2' -> [0.05, 0.01]


_TYPES = {'int': int, 'float': float, 'str': str, 'bool': str2bool,
          'int_list': int_list, 'float_list': float_list}
_METAVARS = {'int': 'INT', 'float': 'FLOAT', 'str': 'STR', 'bool': 'BOOL',
             'int_list': 'INTS', 'float_list': 'FLOATS'}


class _HelpFormatter(argparse.HelpFormatter):
    """Wrap help at spaces only, so long default paths stay copyable."""

    def _split_lines(self, text, width):
        text = ' '.join(text.split())
        return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)



# --------------------------------------------------------------------------- flags

# The published flags, in the published order (which is also the order of the args
# dump). Defaults are kept exactly as published -- including the int 1 of
# --adj_mask_aug2/--tempsc and the mixed ints/floats of --adj_mask_aug_list2 -- so the
# dump of a default run matches the published one character for character.
# Per-run lists are indexed by pruning run number (index 0 is never a run of the
# published schedule, which starts at --PRUNING_START=1).
_BREAK_POINT = (
    './outModels/Fmodel5/sm_teacher64ly6Aaug_student64_ly2-reg1e-8-ereg1e-8_lr1e-3_IMP18-'
    'ep600-DYsubspcreg1e-4-IMP467-1e-7-loosen3-1adj_mask_aug5e-2-DY2adj_mask_aug-'
    'IMP7895e-2-IMP1011-8e-1-NOabs-adjPr0-gowalla_2nd_best_train_98_5.mod')

PUBLISHED_FLAGS = (
    # name, kind, default, help
    ('mask_epoch', 'int', 600,
     'training epochs of each pruning run (stages 2-3)'),
    ('fix_epoch', 'int', 600,
     'epochs of the frozen-mask copy trained with --run_no_adj_weights'),
    ('epoch_tea', 'int', 600,
     'teacher pretraining epochs (stage 1)'),
    ('use_dynamic_epoch', 'bool', False,
     'take each run\'s epoch count from --epoch_list[run] instead of --mask_epoch'),
    ('epoch_list', 'int_list', [0] + [600] * 23,
     'per-run epoch counts, indexed by pruning run (comma-separated ints)'),
    ('esc_train_prn_run', 'int', -1,
     'skip the training of this pruning run (-1: skip none)'),
    ('pruning_percent_adj', 'float', 0.05,
     'share of the remaining edges removed by each pruning run, in [0, 1)'),
    ('pruning_percent_emb', 'float', 0.2,
     'share of the remaining embedding entries removed by each pruning run, in [0, 1)'),
    ('lr', 'float', 0.001,
     'Adam learning rate'),
    ('seed', 'int', 1234,
     'random seed for python, numpy and torch'),
    ('batch', 'int', 4096,
     'training batch size (train interactions per batch)'),
    ('tstBat', 'int', 64,
     'users per evaluation batch'),
    ('model_save_path', 'str', './outModels/model0/teacher_gowalla',
     'checkpoint path prefix: stage 1 appends ".mod", stages 2-3 append '
     '"_best_global_E_M.mod" and the other record names'),
    ('his_save_path', 'str', './History/teacher_gowalla',
     'metric-history path prefix (".his" files, named like the checkpoints)'),
    ('train_stu_from_break_point', 'bool', False,
     'stage 3: start the student from --break_point instead of a fresh model'),
    ('break_point', 'str', _BREAK_POINT,
     'student checkpoint loaded with --train_stu_from_break_point'),
    ('load_model_tea', 'str', None,
     'stage 1: teacher checkpoint to continue training from (None: fresh teacher)'),
    ('load_his_tea', 'str', None,
     'stage 1: metric history to continue together with --load_model_tea'),
    ('teacher_model', 'str', './inModels/teacher_dim64_layer8_lr4e-4_ep1000_gowalla_reg1.3e-7.mod',
     'teacher checkpoint (stage 1 output): the supervisor with '
     '--distill_from_teacher_model, the edge scorer with --use_tea2drop_edges'),
    ('middle_teacher_model', 'str', './inModels/teacher64-student64aug-gowalla_best_global_new.mod',
     'intermediate-model checkpoint (stage 2 output): the supervisor with '
     '--distill_from_middle_model'),
    ('distill_from_middle_model', 'bool', True,
     'supervise the trainee with the intermediate model (stage 3)'),
    ('distill_from_teacher_model', 'bool', False,
     'supervise the trainee with the teacher (stage 2); exactly one of the two '
     'distill_from_* flags must be true'),
    ('train_middle_model', 'bool', False,
     'train the intermediate model on the closure graph (stage 2, needs --adj_aug=True) '
     'instead of the student'),
    ('reg', 'float', 1e-07,
     'weight decay on the trainee\'s embedding tables (squared Frobenius norms)'),
    ('use_ereg', 'bool', True,
     'add weight decay --ereg on the learnable edge weights'),
    ('ereg', 'float', 1e-08,
     'weight of the edge-weight decay'),
    ('use_emb_level_kd', 'bool', True,
     'add embedding-level KD: InfoNCE between the supervisor\'s layers >= 2 and the trainee'),
    ('use_pre_level_kd', 'bool', True,
     'add prediction-level KD on random (user, item, item) triples'),
    ('cdreg', 'float', 0.01,
     'weight of embedding-level KD'),
    ('softreg', 'float', 1.0,
     'weight of prediction-level KD'),
    ('use_adj_mask_aug', 'bool', False,
     'edge score for pruning adds adj_mask_aug1 * sigmoid(e_row . e_col) from the scoring model'),
    ('use_SM_edgeW2aug', 'bool', False,
     'edge score for pruning adds adj_mask_aug2 * the intermediate model\'s learned weight '
     'of the same edge'),
    ('adj_mask_aug1', 'float', 0.05,
     'beta1: weight of the embedding-similarity term of the edge score'),
    ('adj_mask_aug2', 'float', 1,
     'beta2: weight of the intermediate model\'s edge weight in the edge score'),
    ('use_dynamic_adj_mask_aug1', 'bool', False,
     'take beta1 of each run from --adj_mask_aug_list1[run]'),
    ('use_dynamic_adj_mask_aug2', 'bool', False,
     'take beta2 of each run from --adj_mask_aug_list2[run]'),
    ('adj_mask_aug_list1', 'float_list', [0.05] * 24,
     'per-run beta1, indexed by pruning run (comma-separated)'),
    ('adj_mask_aug_list2', 'float_list', [1] * 6 + [1.0] * 17,
     'per-run beta2, indexed by pruning run (comma-separated)'),
    ('adj_weights_abs', 'bool', False,
     'use |w_e| instead of the edge weight w_e in the edge score'),
    ('use_tanh2aug', 'bool', False,
     'tanh instead of sigmoid in the embedding-similarity term of the edge score'),
    ('latdim', 'int', 64,
     'embedding size d'),
    ('gnn_layer', 'int', 2,
     'number of propagation layers L'),
    ('adj_aug', 'bool', True,
     'the intermediate model propagates on the closure graph C = I + A + A^2 (+ ...); stage 2 '
     'requires true. Stage 3 builds C for its intermediate model whatever this says'),
    ('adj_aug_layer', 'int', 1,
     'number of path-length powers added to the closure graph (1: I + A + A^2)'),
    ('adj_aug_sample', 'bool', False,
     'keep only a share --adj_aug_sample_ratio of the entries of each added power'),
    ('adj_aug_sample_random', 'bool', False,
     'sample those entries uniformly at random instead of keeping the largest'),
    ('adj_aug_sample_ratio', 'float', 0.9,
     'share of each power\'s entries kept with --adj_aug_sample, in (0, 1]'),
    ('use_subspcreg', 'bool', True,
     'add the subspace uniformity constraint (student only, pruning runs '
     '--hyper_contr_start_prn_run..--hyper_contr_end_prn_run)'),
    ('subspcreg', 'float', 0.0001,
     'weight of the subspace term'),
    ('subspcreg_version', 'str', 'v3',
     'variant of the subspace term: v1, v2 or v3'),
    ('use_ly0emb4subspcreg', 'bool', False,
     'compute the subspace term on the masked layer-0 embeddings instead of the output'),
    ('use_dynamic_subspcreg', 'bool', False,
     'take the subspace weight of each run from --subspcreg_list[run]'),
    ('subspcreg_list', 'float_list', [0.0001] * 23,
     'per-run subspace weights, indexed by pruning run (comma-separated)'),
    ('use_contr_deno', 'bool', True,
     'add the auxiliary-denominator (uniformity) term'),
    ('screg', 'float', 1.0,
     'weight of the auxiliary-denominator term'),
    ('hyper_contr_start_prn_run', 'int', 2,
     'first pruning run with the subspace term'),
    ('hyper_contr_end_prn_run', 'int', 13,
     'last pruning run with the subspace term'),
    ('hyper_contr_resample', 'bool', False,
     'use a random share --hyper_contr_resample_ratio of the anchors and candidates '
     'in the subspace term'),
    ('hyper_contr_resample_ratio', 'float', 0.5,
     'share kept by --hyper_contr_resample, in (0, 1]'),
    ('hyper_contr_loosen_factor', 'int_list', [0, 0, 0, 2, 3, 4, 4, 3, 1] + [0] * 18,
     'per-run slack delta of the subspace positive-pair test, indexed by pruning run '
     '(comma-separated ints)'),
    ('keep_adj_weights2next_prn', 'bool', False,
     'keep the surviving edge weights\' values after pruning (else they restart at 1)'),
    ('use_mTea2drop_edges', 'bool', True,
     'score edges for pruning with the intermediate model\'s embeddings'),
    ('use_tea2drop_edges', 'bool', False,
     'score edges for pruning with the teacher\'s embeddings'),
    ('use_adj_random_pruning', 'bool', False,
     'prune a uniformly random share of the surviving edges instead'),
    ('use_emb_random_pruning', 'bool', False,
     'prune a uniformly random share of the surviving embedding entries instead'),
    ('run_no_adj_weights', 'bool', False,
     'also train a copy with all masks frozen (--fix_epoch epochs) before the first '
     'and after each run'),
    ('topk', 'int', 20,
     'K of Recall@K and NDCG@K'),
    ('topRange', 'int', 100000,
     'number of random (user, item, item) triples per batch for prediction-level KD'),
    ('tempsoft', 'float', 0.03,
     'temperature of prediction-level KD'),
    ('tempcd', 'float', 0.1,
     'temperature of embedding-level KD'),
    ('tempsc', 'float', 1,
     'temperature of the auxiliary-denominator term'),
    ('tempsubsp', 'float', 1,
     'temperature of the subspace term'),
    ('use_dynamic_tempsubsp', 'bool', False,
     'take the subspace temperature of each run from --tempsubsp_list[run]'),
    ('tempsubsp_list', 'float_list', [1] * 24,
     'per-run subspace temperatures, indexed by pruning run (comma-separated)'),
    ('dataset', 'str', 'gowalla',
     'dataset NAME, read from <data_dir>/sparse_NAME/'),
    ('tstEpoch', 'int', 1,
     'evaluate every this many epochs'),
    ('gpu', 'str', '2', None),  # special-cased in build_parser: default None
    ('train_2nd_best_gap', 'float', 0.99,
     'the "2nd best" record with learned edge weights is the latest point with '
     'metric >= (1 - gap) * best; in [0, 1]'),
    ('fixed_2nd_best_gap', 'float', 0.99,
     'the same gap for the records with frozen edge weights; in [0, 1]'),
    ('PRUNING_START', 'int', 1,
     'first pruning run (inclusive)'),
    ('PRUNING_END', 'int', 13,
     'last pruning run (inclusive)'),
)

PUBLISHED_GPU_DEFAULT = '2'
_GPU_HELP = ('GPU id(s) written to CUDA_VISIBLE_DEVICES before CUDA starts '
             '(published default: 2; ignored unless given, so the environment\'s '
             'CUDA_VISIBLE_DEVICES applies)')

# (switch, per-run list) pairs: the list must cover every run up to --PRUNING_END.
DYNAMIC_LISTS = (
    ('use_dynamic_epoch', 'epoch_list'),
    ('use_dynamic_adj_mask_aug1', 'adj_mask_aug_list1'),
    ('use_dynamic_adj_mask_aug2', 'adj_mask_aug_list2'),
    ('use_dynamic_subspcreg', 'subspcreg_list'),
    ('use_dynamic_tempsubsp', 'tempsubsp_list'),
    ('use_dynamic_lr', 'lr_list'),
)


# Our flags, by group: the additions, then the time-to-quality levers (each off by default).
ADDED, LEVERS = ('additions (not in the published tool)',
                 'time-to-quality levers (each off by default; the defaults are the published method)')
OUR_FLAGS = (  # group, flag, argparse options, help (one flag per line)
    (ADDED, 'data_dir', dict(type=str, default='./Datasets', metavar='DIR'), 'folder holding sparse_NAME/ dataset folders (default: %(default)s)'),
    (ADDED, 'select_on', dict(choices=('val', 'test'), default=None), 'split that chooses checkpoints and "best" records (default: val when valMat.pkl exists, else test as published)'),
    (ADDED, 'device', dict(choices=('auto', 'cpu', 'cuda'), default='auto'), 'where to run; auto = cuda when available (default: %(default)s)'),
    (ADDED, 'threads', dict(type=int, default=0, metavar='INT'), 'CPU threads for torch and the Numba kernels; 0 = the libraries\' default (default: %(default)s)'),
    (ADDED, 'deterministic', dict(type=str2bool, default=True, metavar='BOOL'), 'use only kernels whose sums do not depend on thread timing (torch.use_deterministic_algorithms), so that a rerun with the same seed, threads and machine writes identical files; False allows faster non-deterministic CUDA kernels (default: %(default)s)'),
    (ADDED, 'plots', dict(type=str2bool, default=True, metavar='BOOL'), 'stage 3: draw <his_save_path>_training.png and _tradeoff.png at the end (default: %(default)s)'),
    (ADDED, 'resume', dict(type=str2bool, default=False, metavar='BOOL'), 'continue the run whose <model_save_path>_last.ckpt (written after every epoch) is there, exactly as if it had not stopped; the same flags, except how long and where it runs (default: %(default)s)'),
    (ADDED, 'overwrite', dict(type=str2bool, default=False, metavar='BOOL'), 'replace the outputs of an earlier run of the same stage at --model_save_path/--his_save_path: once every input is checked, its history, _last.ckpt, checkpoints and reports are removed together, before the first epoch; without it (or --resume) a stage refuses to start there. Never replaces a file the stage reads or another stage\'s outputs (default: %(default)s)'),
    (ADDED, 'block_mb', dict(type=float, default=1024.0, metavar='MB'), 'stages 2-3 on a GPU: memory budget of one block of the all-node contrastive kernels; each term multiplies its whole anchor set against column blocks of at most this size (on the CPU the blocks are 256 x 4096, cache-sized) (default: %(default)s)'),
    (ADDED, 'learn_edge_weights', dict(type=str2bool, default=True, metavar='BOOL'), 'stages 2-3: the trainee learns its edge weights (adj_mask1_train), as published; False propagates with binary weights, 1 on every kept edge and never trained (the paper\'s BnEdge ablation: pruning then ranks edges by the other terms of the edge score; the runs fill the "without edge weights" records) (default: %(default)s)'),
    (ADDED, 'reg_batch', dict(type=str2bool, default=False, metavar='BOOL'), 'stage 1: apply --reg as LightGCN does, to the batch\'s layer-0 rows only: reg * 1/2 * mean over the batch of the squared norms of the user, positive and negative item embeddings, instead of reg * the squared norms of the whole tables (default: %(default)s)'),
    (LEVERS, 'patience', dict(type=int, default=0, metavar='N'), 'end stage-1 training, or a stage-2/3 pruning run, after N evaluations without a new best on the selection split; the best point is what is kept and carried (0 = off, every epoch runs; default: %(default)s)'),
    (LEVERS, 'contrast_candidates', dict(type=int, default=0, metavar='K'), 'stages 2-3: estimate every sum over a whole user/item table in the embedding-level KD, auxiliary denominator and subspace (v3) terms from K rows drawn per batch, scaled by table size / K (an unbiased estimate of each sum, but not of its log, the loss, nor of the gradient); K >= the table size is exact (0 = exact, the published objective; default: %(default)s)'),
    (LEVERS, 'contrast_estimator', dict(choices=('uniform', 'adaptive'), default='uniform'), 'stages 2-3, with --contrast_candidates K: how the all-node sums use their K rows. uniform: the plain scaled sample; adaptive: gradients close to the exact ones at about 1.5-2x the cost: the auxiliary-denominator and subspace sums add a second-order control variate summed over the whole table in closed form (the K rows estimate only what it leaves), and the embedding-level KD sums over each group of anchors the table clusters that carry 90 %% of its weight exactly and samples the other rows at rate K/table size (docs/method.md#adaptive-all-node-sums; default: %(default)s)'),
    (LEVERS, 'init_from_supervisor', dict(type=str2bool, default=False, metavar='BOOL'), 'stages 2-3: the first pruning run starts the trainee\'s layer-0 embeddings from the supervisor\'s (teacher or intermediate model, masked) instead of Xavier initialisation; ignored when a break point is loaded (default: %(default)s)'),
    (LEVERS, 'emb_prune_score', dict(choices=ENTRY_SCORES, default='magnitude'), 'stage 3: how each pruning step ranks the live embedding entries it removes the lowest --pruning_percent_emb of: magnitude |e| (the published step) or taylor |e * g|, g the gradient of the BPR loss averaged over one epoch of train triples (one uniform negative each) at the point being pruned, the first-order change of that loss when the entry is zeroed; costs one propagation forward and back per step and draws one epoch of negatives (default: %(default)s)'),
    (LEVERS, 'use_dynamic_lr', dict(type=str2bool, default=False, metavar='BOOL'), 'stages 2-3: take each pruning run\'s Adam learning rate from --lr_list[run] instead of --lr, e.g. a lower rate for the runs that fine-tune an already trained, freshly pruned model (default: %(default)s)'),
    (LEVERS, 'lr_list', dict(type=float_list, default=None, metavar='FLOATS'), 'per-run learning rates, indexed by pruning run like --epoch_list (comma-separated; used with --use_dynamic_lr=True; default: --lr for every run)'),
)


def build_parser(prog=None):
    """The argparse parser of both entry points (every published flag, then ours)."""
    parser = OneLineErrorParser(
        prog=prog, allow_abbrev=False, formatter_class=_HelpFormatter,
        description='LightGNN: distillation-based pruning of GNN recommenders '
                    '(stage 1 pretrainTeacher.py, stages 2-3 Main.py).')
    published = parser.add_argument_group('flags of the published tool')
    for name, kind, default, text in PUBLISHED_FLAGS:
        if name == 'gpu':
            published.add_argument('--gpu', type=str, default=None, metavar='IDS', help=_GPU_HELP)
            continue
        if isinstance(default, list):
            default = list(default)  # never share a mutable default between parses
        published.add_argument(
            f'--{name}', type=_TYPES[kind], default=default, metavar=_METAVARS.get(kind),
            help=f'{text} (default: %(default)s)')

    groups = {title: parser.add_argument_group(title) for title in (ADDED, LEVERS)}
    for title, name, options, text in OUR_FLAGS:
        groups[title].add_argument(f'--{name}', **options, help=text)
    return parser


# --------------------------------------------------------------------------- validation

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
    if args.patience < 0:
        _fail(f"--patience must be >= 0 (0 = off), got {args.patience}")
    if args.use_dynamic_lr and args.lr_list is None:
        _fail("--use_dynamic_lr=True needs --lr_list (one learning rate per pruning run, indexed from 0)")
    if args.resume and args.overwrite:
        _fail("--resume=True continues the earlier run and --overwrite=True replaces it: choose one")
    if not (math.isfinite(args.block_mb) and args.block_mb > 0):
        _fail(f"--block_mb must be a positive number of MiB, got {args.block_mb}")
    if args.device == 'cuda':
        expose_gpu(args)  # before the first CUDA query, which fixes the visible devices
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


def parse_args(argv=None, stage='main'):
    """Parse argv (default: sys.argv[1:]) and validate it for `stage` ('main' or 'teacher').

    Bad syntax (an unknown flag, 'maybe' for a boolean) exits through argparse with
    status 2; a bad combination raises ConfigError. If --gpu is given,
    CUDA_VISIBLE_DEVICES is set here, before anything can start CUDA.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    args = build_parser().parse_args(argv)
    expose_gpu(args)
    return validate(args, stage)


def expose_gpu(args):
    """--gpu, when given, replaces CUDA_VISIBLE_DEVICES before anything can start CUDA."""
    Runtime.expose_gpu(args.gpu)


def history_file(path):
    """The history file of a --his_save_path / --load_his_tea value (".his" appended when missing)."""
    return Config.history_file(path)


def dataset_dir(args):
    """Folder of the dataset: <--data_dir>/sparse_<--dataset>/."""
    return Path(args.data_dir) / f'sparse_{args.dataset}'


# --------------------------------------------------------------------------- configs
# The flags become frozen configs here, once; nothing below the entry points reads ``args``.

def runtime_config(args):
    return Config.Runtime(device=args.device, gpu=args.gpu, threads=args.threads,
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
    from Utils.objective.Losses import KDConfig

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
    from Utils.objective.Pruning import PruneConfig

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
    from Utils.kernels.Kernels import device_blocks

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


# --------------------------------------------------------------------------- running

def run_cli(main_fn, stage, argv=None):
    """Entry-point wrapper: parse and validate, call main_fn(args) and return its result.

    A UserError (ConfigError, DataError, CheckpointError) is printed as one line
    ``error: <message>`` on stderr and exits with status 2, without a traceback; under
    torchrun by rank 0 only (:func:`Utils.runtime.Errors.speaks`), the other ranks exit 2 silently.
    The library warnings a wrong input provokes first are silenced
    (:func:`Utils.runtime.Errors.quiet_library_warnings`). SIGTERM is raised as
    :class:`Utils.runtime.Errors.Terminated` (a KeyboardInterrupt), so a stage ends it as it ends
    Ctrl-C; one that arrives before the stage's handler exits 130 / 143 with one line.
    Other exceptions propagate unchanged.
    """
    def terminate(signum, frame):
        raise Terminated()

    quiet_library_warnings()
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        args = parse_args(argv, stage=stage)
        return main_fn(args)
    except UserError as err:
        sys.exit(report_user_error(err))
    except KeyboardInterrupt as err:  # before the stage's own handler was in place (start-up)
        flush_stdout()
        if speaks():
            print('interrupted during start-up, before training began', file=sys.stderr)
        sys.exit(interrupt_exit_code(err))
    finally:
        signal.signal(signal.SIGTERM, previous)


def format_args(args):
    """The published args dump: one 'name....value' line per flag, 80 characters wide.

    A value too long for the padding is printed straight after the name (no dots),
    exactly as the published tool does.
    """
    lines = []
    for name, value in vars(args).items():
        lines.append(name + str(value).rjust(ARGS_DUMP_WIDTH - len(name), '.'))
    return '\n'.join(lines)
