"""The one command line of LightGNN, shared by ``pretrainTeacher.py`` and ``Main.py``.

Every flag of the published tool exists here with its published name, type and
default, plus our additions (``--data_dir``, ``--select_on``, ``--device``, ``--threads``,
``--plots`` and the time-to-quality levers). This module owns the flag tables, the parsing
of booleans and comma-separated lists, the published args dump and :func:`run_cli`; the
validation of flag combinations is :mod:`Utils.config.Validate` (called by :func:`parse_args`,
before anything runs) and the frozen configs the flags become are built by
:mod:`Utils.config.Build`. Nothing below the entry points reads the parsed flags.

An entry point (``Main.py``)::

    def main(args):
        ctx = open_run(Build.runtime_config(args), Params.format_args(args), Build.history_file(args.his_save_path))
        cfg = Build.distill_config(args, ctx.device)
        with Lock.own(cfg.outputs, ctx.group.lead):  # save paths checked; one run per output prefix
            return run_stage(DistillStage.from_files(cfg, ctx))

    if __name__ == '__main__':
        sys.exit(Params.run_cli(main, stage='main'))   # or stage='teacher'
"""
import argparse
import signal
import sys
import textwrap

from Utils.runtime.Errors import (OneLineErrorParser, Terminated, UserError, flush_stdout, interrupt_exit_code,
                          quiet_library_warnings, report_user_error, speaks)
from Utils.config import Config
from Utils.config.Validate import STAGES, validate
from Utils.objective.Pruning import ENTRY_SCORES
from Utils.runtime import Runtime

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

# Our flags, in the same row format: the additions, then the time-to-quality levers (each off by
# default; the defaults are the published method). A kind that is a tuple lists the choices.
ADDED_FLAGS = (
    ('data_dir', 'str', Config.DEFAULT_DATA_DIR,
     'folder holding sparse_NAME/ dataset folders'),
    ('select_on', ('val', 'test'), None,
     'split that chooses checkpoints and "best" records (default: val when valMat.pkl exists, else test as published)'),
    ('device', ('auto', 'cpu', 'cuda'), 'auto',
     'where to run; auto = cuda when available'),
    ('threads', 'int', 0,
     "CPU threads for torch and the Numba kernels; 0 = the libraries' default"),
    ('deterministic', 'bool', True,
     'use only kernels whose sums do not depend on thread timing (torch.use_deterministic_algorithms), so that a rerun with the same seed, threads and machine writes identical files; False allows faster non-deterministic CUDA kernels'),
    ('plots', 'bool', True,
     'stage 3: draw <his_save_path>_training.png and _tradeoff.png at the end'),
    ('resume', 'bool', False,
     'continue the run whose <model_save_path>_last.ckpt (written after every epoch) is there, exactly as if it had not stopped; the same flags, except how long and where it runs'),
    ('overwrite', 'bool', False,
     "replace the outputs of an earlier run of the same stage at --model_save_path/--his_save_path: once every input is checked, its history, _last.ckpt, checkpoints and reports are removed together, before the first epoch; without it (or --resume) a stage refuses to start there. Never replaces a file the stage reads or another stage's outputs"),
    ('block_mb', 'float', 1024.0,
     'stages 2-3 on a GPU: memory budget of one block of the all-node contrastive kernels; each term multiplies its whole anchor set against column blocks of at most this size (on the CPU the blocks are 256 x 4096, cache-sized)'),
    ('learn_edge_weights', 'bool', True,
     'stages 2-3: the trainee learns its edge weights (adj_mask1_train), as published; False propagates with binary weights, 1 on every kept edge and never trained (the paper\'s BnEdge ablation: pruning then ranks edges by the other terms of the edge score; the runs fill the "without edge weights" records)'),
    ('reg_batch', 'bool', False,
     "stage 1: apply --reg as LightGCN does, to the batch's layer-0 rows only: reg * 1/2 * mean over the batch of the squared norms of the user, positive and negative item embeddings, instead of reg * the squared norms of the whole tables"),
)
LEVER_FLAGS = (
    ('patience', 'int', 0,
     'end stage-1 training, or a stage-2/3 pruning run, after N evaluations without a new best on the selection split; the best point is what is kept and carried (0 = off, every epoch runs)'),
    ('contrast_candidates', 'int', 0,
     'stages 2-3: estimate every sum over a whole user/item table in the embedding-level KD, auxiliary denominator and subspace (v3) terms from K rows drawn per batch, scaled by table size / K (an unbiased estimate of each sum, but not of its log, the loss, nor of the gradient); K >= the table size is exact (0 = exact, the published objective)'),
    ('contrast_estimator', ('uniform', 'adaptive'), 'uniform',
     'stages 2-3, with --contrast_candidates K: how the all-node sums use their K rows. uniform: the plain scaled sample; adaptive: gradients close to the exact ones at about 1.5-2x the cost: the auxiliary-denominator and subspace sums add a second-order control variate summed over the whole table in closed form (the K rows estimate only what it leaves), and the embedding-level KD sums over each group of anchors the table clusters that carry 90 %% of its weight exactly and samples the other rows at rate K/table size (docs/method.md#adaptive-all-node-sums)'),
    ('init_from_supervisor', 'bool', False,
     "stages 2-3: the first pruning run starts the trainee's layer-0 embeddings from the supervisor's (teacher or intermediate model, masked) instead of Xavier initialisation; ignored when a break point is loaded"),
    ('emb_prune_score', ENTRY_SCORES, 'magnitude',
     'stage 3: how each pruning step ranks the live embedding entries it removes the lowest --pruning_percent_emb of: magnitude |e| (the published step) or taylor |e * g|, g the gradient of the BPR loss averaged over one epoch of train triples (one uniform negative each) at the point being pruned, the first-order change of that loss when the entry is zeroed; costs one propagation forward and back per step and draws one epoch of negatives'),
    ('use_dynamic_lr', 'bool', False,
     "stages 2-3: take each pruning run's Adam learning rate from --lr_list[run] instead of --lr, e.g. a lower rate for the runs that fine-tune an already trained, freshly pruned model"),
    ('lr_list', 'float_list', None,
     'per-run learning rates, indexed by pruning run like --epoch_list (comma-separated; used with --use_dynamic_lr=True; default: --lr for every run)'),
)
FLAG_GROUPS = (('flags of the published tool', PUBLISHED_FLAGS),
               ('additions (not in the published tool)', ADDED_FLAGS),
               ('time-to-quality levers (each off by default; the defaults are the published method)', LEVER_FLAGS))


def build_parser(prog=None):
    """The argparse parser of both entry points: every flag of :data:`FLAG_GROUPS`, one row format."""
    parser = OneLineErrorParser(
        prog=prog, allow_abbrev=False, formatter_class=_HelpFormatter,
        description='LightGNN: distillation-based pruning of GNN recommenders '
                    '(stage 1 pretrainTeacher.py, stages 2-3 Main.py).')
    for title, rows in FLAG_GROUPS:
        group = parser.add_argument_group(title)
        for name, kind, default, text in rows:
            if name == 'gpu':
                group.add_argument('--gpu', type=str, default=None, metavar='IDS', help=_GPU_HELP)
                continue
            if isinstance(default, list):
                default = list(default)  # never share a mutable default between parses
            options = (dict(choices=kind) if isinstance(kind, tuple)
                       else dict(type=_TYPES[kind], metavar=_METAVARS.get(kind)))
            group.add_argument(f'--{name}', default=default, help=f'{text} (default: %(default)s)', **options)
    return parser


def parse_args(argv=None, stage='main'):
    """Parse argv (default: sys.argv[1:]) and validate it for `stage` ('main' or 'teacher').

    Bad syntax (an unknown flag, 'maybe' for a boolean) exits through argparse with
    status 2; a bad combination raises ConfigError. If --gpu is given,
    CUDA_VISIBLE_DEVICES is set here, before anything can start CUDA.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    args = build_parser().parse_args(argv)
    Runtime.expose_gpu(args.gpu)  # before anything can start CUDA
    return validate(args, stage)


def expose_gpu(args):
    """--gpu, when given, replaces CUDA_VISIBLE_DEVICES before anything can start CUDA."""
    Runtime.expose_gpu(args.gpu)


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
