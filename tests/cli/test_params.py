"""The command line: published flags and defaults, bool/list parsing, validation, CLI errors, args dump."""
import argparse
import json
import os
import re
import subprocess
import sys

import pytest
import torch

import Params
from Utils.config import Build
from Utils.runtime import Runtime
from Utils.runtime.Errors import CheckpointError, ConfigError, DataError, UserError
from conftest import REF, ROOT

FLAGS_JSON = REF / "published_flags.json"
TEA_LOG = REF / "published_checkpoints" / "tea.log"


@pytest.fixture
def published_flags():
    if not FLAGS_JSON.exists():
        pytest.skip(f"{FLAGS_JSON} is not available")
    with open(FLAGS_JSON) as f:
        return json.load(f)


@pytest.fixture
def no_cuda_env(monkeypatch):
    """Let a test set CUDA_VISIBLE_DEVICES and have it restored afterwards."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "unset-by-test")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")


def _help_blocks(text):
    """{'--flag': its help entry with all whitespace removed} from --help output."""
    blocks, current = {}, None
    for line in text.splitlines():
        match = re.match(r"^  (--\w+)", line)
        if match:
            current = match.group(1)
            blocks[current] = [line]
        elif current and line.startswith("   "):
            blocks[current].append(line)
        else:
            current = None
    return {flag: "".join("".join(lines).split()) for flag, lines in blocks.items()}


# --------------------------------------------------------------------------- published flags

def test_flag_table_matches_published_list(published_flags):
    ours = [(f"--{name}", kind, default) for name, kind, default, _ in Params.PUBLISHED_FLAGS]
    assert [name for name, _, _ in ours] == [flag["flag"] for flag in published_flags]
    for (name, kind, default), flag in zip(ours, published_flags):
        assert kind.split("_")[-1] == flag["type"], name
        assert default == flag["default"], name


def test_defaults_equal_published(published_flags):
    args = Params.parse_args([])
    for flag in published_flags:
        name = flag["flag"][2:]
        if name == "gpu":
            assert args.gpu is None  # [fix] only overrides CUDA_VISIBLE_DEVICES when given
            assert Params.PUBLISHED_GPU_DEFAULT == flag["default"]
            continue
        value = getattr(args, name)
        assert value == flag["default"], name
        assert type(value) is type(flag["default"]) or flag["default"] is None, name
    teacher = Params.parse_args([], stage="teacher")
    assert vars(teacher) == vars(args)


def test_new_flags_defaults():
    args = Params.parse_args([])
    assert args.data_dir == "./Datasets"
    assert args.select_on is None
    assert args.device == "auto"
    assert args.threads == 0
    assert args.emb_prune_score == "magnitude" and Build.prune_config(args, 1).emb_score == "magnitude"
    assert Build.prune_config(Params.parse_args(["--emb_prune_score=taylor"]), 1).emb_score == "taylor"


_SAMPLES = {  # published type -> (command-line text, parsed value, python type)
    "int": ("7", 7, int),
    "float": ("0.25", 0.25, float),
    "bool": ("false", False, bool),
    "str": ("abc", "abc", str),
}


def test_published_types(published_flags):
    for flag in published_flags:
        name = flag["flag"][2:]
        if flag["type"] == "list":
            value = getattr(Params.build_parser().parse_args([f"--{name}=1,2"]), name)
            assert value == [1, 2], name
            want = int if name in ("epoch_list", "hyper_contr_loosen_factor") else float
            assert all(type(v) is want for v in value), name
            continue
        text, parsed, kind = _SAMPLES[flag["type"]]
        value = getattr(Params.build_parser().parse_args([f"--{name}={text}"]), name)
        assert value == parsed and type(value) is kind, name


def test_help_lists_every_published_flag_with_default(published_flags):
    blocks = _help_blocks(Params.build_parser().format_help())
    for flag in published_flags:
        assert flag["flag"] in blocks, flag["flag"]
        entry = blocks[flag["flag"]]
        if flag["flag"] == "--gpu":
            assert "publisheddefault:2" in entry and "ignoredunlessgiven" in entry
            continue
        default = "".join(str(flag["default"]).split())
        assert f"(default:{default})" in entry, flag["flag"]
    for new in ("--data_dir", "--select_on", "--device", "--threads"):
        assert new in blocks


def test_help_runs_from_command_line():
    out = subprocess.run([sys.executable, "-c", "import Params; Params.build_parser().print_help()"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "--hyper_contr_loosen_factor" in out and "--PRUNING_END" in out


# --------------------------------------------------------------------------- booleans

@pytest.mark.parametrize("text,value", [
    ("true", True), ("True", True), ("TRUE", True), ("yes", True), ("Yes", True), ("1", True),
    ("false", False), ("False", False), ("no", False), ("NO", False), ("0", False), (" true ", True),
])
def test_bool_accepts(text, value):
    assert Params.str2bool(text) is value
    args = Params.build_parser().parse_args([f"--use_ereg={text}"])
    assert args.use_ereg is value


def test_bool_space_separated_value():
    assert Params.build_parser().parse_args(["--adj_aug", "False"]).adj_aug is False


@pytest.mark.parametrize("text", ["maybe", "", "tru", "2", "on", "none"])
def test_bool_rejects(text, capsys):
    with pytest.raises(argparse.ArgumentTypeError, match="true/false/yes/no/1/0"):
        Params.str2bool(text)
    with pytest.raises(SystemExit) as exc:
        Params.build_parser().parse_args([f"--use_ereg={text}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--use_ereg" in err and "expected a boolean" in err


# --------------------------------------------------------------------------- lists

@pytest.mark.parametrize("text", ["0,600,600", "[0, 600, 600]", " 0, 600 ,600 ", "(0,600,600)"])
def test_int_list(text):
    assert Params.int_list(text) == [0, 600, 600]
    assert Params.parse_args([f"--epoch_list={text}"]).epoch_list == [0, 600, 600]


def test_float_list():
    value = Params.parse_args(["--adj_mask_aug_list1=0.05,1e-2,1"]).adj_mask_aug_list1
    assert value == [0.05, 0.01, 1.0] and all(type(v) is float for v in value)
    assert Params.parse_args(["--tempsubsp_list=[1, 0.5]"]).tempsubsp_list == [1.0, 0.5]


def test_loosen_factor_is_int_list():
    assert Params.parse_args(["--hyper_contr_loosen_factor=0,0,0,2,3,4,4,3,1,0,0,0,0,0"]) \
        .hyper_contr_loosen_factor == [0, 0, 0, 2, 3, 4, 4, 3, 1, 0, 0, 0, 0, 0]


@pytest.mark.parametrize("flag,text", [("epoch_list", "0,6.5"), ("epoch_list", "a,b"),
                                       ("subspcreg_list", "1e-4,x"), ("epoch_list", "[]")])
def test_list_rejects(flag, text, capsys):
    with pytest.raises(SystemExit) as exc:
        Params.build_parser().parse_args([f"--{flag}={text}"])
    assert exc.value.code == 2
    assert f"--{flag}" in capsys.readouterr().err


def test_list_defaults_not_shared():
    first = Params.parse_args([])
    first.epoch_list.append(5)
    assert len(Params.parse_args([]).epoch_list) == 24


# --------------------------------------------------------------------------- validation

STAGE2 = ["--train_middle_model=True", "--distill_from_middle_model=False",
          "--distill_from_teacher_model=True"]


def test_published_stage_settings_are_valid():
    Params.parse_args(STAGE2 + ["--PRUNING_START=1", "--PRUNING_END=1"])
    Params.parse_args(["--use_adj_mask_aug=True", "--use_SM_edgeW2aug=True",
                       "--adj_mask_aug1=1.0", "--adj_mask_aug2=0.05", "--PRUNING_END=13"])
    Params.parse_args(["--epoch_tea=300", "--lr=0.0004", "--gnn_layer=8"], stage="teacher")


@pytest.mark.parametrize("argv,names", [
    (["--distill_from_teacher_model=True"],
     ["--distill_from_middle_model", "--distill_from_teacher_model"]),
    (["--distill_from_middle_model=False"],
     ["--distill_from_middle_model", "--distill_from_teacher_model"]),
    (["--train_middle_model=True"], ["--train_middle_model", "--distill_from_middle_model"]),
    (STAGE2 + ["--adj_aug=False"], ["--train_middle_model", "--adj_aug"]),
    (["--use_dynamic_epoch=True", "--epoch_list=0,600,600", "--PRUNING_END=3"],
     ["--epoch_list", "--use_dynamic_epoch", "--PRUNING_END"]),
    (["--use_dynamic_adj_mask_aug1=True", "--adj_mask_aug_list1=0.1"],
     ["--adj_mask_aug_list1", "--use_dynamic_adj_mask_aug1", "--PRUNING_END"]),
    (["--use_dynamic_adj_mask_aug2=True", "--PRUNING_END=23"],
     ["--adj_mask_aug_list2", "--use_dynamic_adj_mask_aug2", "--PRUNING_END"]),
    (["--use_dynamic_subspcreg=True", "--subspcreg_list=1e-4,1e-4"],
     ["--subspcreg_list", "--use_dynamic_subspcreg", "--PRUNING_END"]),
    (["--use_dynamic_tempsubsp=True", "--tempsubsp_list=1,1"],
     ["--tempsubsp_list", "--use_dynamic_tempsubsp", "--PRUNING_END"]),
    (["--use_dynamic_lr=True", "--lr_list=0,1e-4", "--PRUNING_END=3"],
     ["--lr_list", "--use_dynamic_lr", "--PRUNING_END"]),
    (["--use_dynamic_lr=True"], ["--use_dynamic_lr", "--lr_list"]),
    (["--lr_list=0,1e-4,-1e-4"], ["--lr_list"]),
    (["--resume=True", "--overwrite=True"], ["--resume", "--overwrite"]),
    (["--resume=True", "--run_no_adj_weights=True"], ["--resume", "--run_no_adj_weights"]),
    (["--use_dynamic_lr=True", "--lr_list=0,1e-4,0", "--PRUNING_END=2"],
     ["--lr_list", "--PRUNING_START", "--PRUNING_END"]),
    (["--lr_list=0,nan"], ["--lr_list"]),
    (["--hyper_contr_loosen_factor=0,0,3"],
     ["--hyper_contr_loosen_factor", "--use_subspcreg", "--PRUNING_END"]),
    (["--pruning_percent_adj=1.0"], ["--pruning_percent_adj"]),
    (["--pruning_percent_emb=-0.1"], ["--pruning_percent_emb"]),
    (["--mask_epoch=0"], ["--mask_epoch"]),
    (["--epoch_tea=-1"], ["--epoch_tea"]),
    (["--batch=0"], ["--batch"]),
    (["--latdim=0"], ["--latdim"]),
    (["--subspcreg_version=v4"], ["--subspcreg_version"]),
    (["--PRUNING_START=5", "--PRUNING_END=2"], ["--PRUNING_START", "--PRUNING_END"]),
    (["--distill_from_middle_model=False", "--distill_from_teacher_model=True",
      "--use_SM_edgeW2aug=True"], ["--use_SM_edgeW2aug", "--distill_from_teacher_model"]),
    (["--use_adj_mask_aug=True", "--use_tea2drop_edges=True"],
     ["--use_mTea2drop_edges", "--use_tea2drop_edges"]),
    (STAGE2 + ["--emb_prune_score=taylor"], ["--emb_prune_score", "--train_middle_model"]),
    (["--emb_prune_score=taylor", "--use_emb_random_pruning=True"],
     ["--emb_prune_score", "--use_emb_random_pruning"]),
])
def test_contradictions_raise_config_error(argv, names):
    with pytest.raises(ConfigError) as exc:
        Params.parse_args(argv)
    message = str(exc.value)
    assert "\n" not in message
    for name in names:
        assert name in message


def test_dynamic_list_long_enough_is_fine():
    args = Params.parse_args(["--use_dynamic_epoch=True", "--epoch_list=0,5,5,5", "--PRUNING_END=3"])
    assert args.epoch_list == [0, 5, 5, 5]
    Params.parse_args(["--use_subspcreg=False", "--hyper_contr_loosen_factor=0"])
    args = Params.parse_args(["--use_dynamic_lr=True", "--lr_list=0,5e-4,1e-4", "--PRUNING_END=2"])
    assert args.lr_list == [0.0, 5e-4, 1e-4]


def test_main_only_checks_skipped_for_teacher():
    Params.parse_args(["--distill_from_teacher_model=True"], stage="teacher")
    with pytest.raises(ConfigError):
        Params.parse_args(["--epoch_tea=0"], stage="teacher")
    with pytest.raises(ValueError):
        Params.parse_args([], stage="student")
    with pytest.raises(ConfigError, match="--load_model_tea"):
        Params.parse_args(["--load_his_tea=x.his"], stage="teacher")


def test_config_error_is_value_error_and_user_error():
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, UserError)
    assert issubclass(DataError, UserError) and issubclass(CheckpointError, UserError)


def test_device_cuda_unavailable(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="--device=cuda"):
        Params.parse_args(["--device=cuda"])
    assert Runtime.select_device(Build.runtime_config(Params.parse_args([]))) == torch.device("cpu")
    assert Runtime.select_device(Build.runtime_config(Params.parse_args(["--device=cpu"]))) == torch.device("cpu")


def test_device_choices(capsys):
    with pytest.raises(SystemExit):
        Params.parse_args(["--device=tpu"])
    with pytest.raises(SystemExit):
        Params.parse_args(["--select_on=train"])
    capsys.readouterr()


def test_gpu_only_overrides_when_given(no_cuda_env):
    Runtime.select_device(Build.runtime_config(Params.parse_args(["--device=cpu"])))
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    Params.parse_args(["--gpu=3", "--device=cpu"])
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"


def test_threads(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    Runtime.select_device(Build.runtime_config(Params.parse_args(["--device=cpu", "--threads=3"])))
    Runtime.select_device(Build.runtime_config(Params.parse_args(["--device=cpu"])))
    assert calls == [3]
    with pytest.raises(ConfigError, match="--threads"):
        Params.parse_args(["--threads=-1"])


def test_select_on_resolves_against_the_data(tmp_path):
    def split(*flags, has_val):
        args = Params.parse_args([f"--data_dir={tmp_path}", "--dataset=tiny", *flags])
        return Build.teacher_config(args).evaluation.split(has_val, str(Build.dataset_dir(args)))

    assert split(has_val=True) == "val"
    assert split(has_val=False) == "test"
    assert split("--select_on=test", has_val=True) == "test"
    assert split("--select_on=val", has_val=True) == "val"
    with pytest.raises(ConfigError, match="--select_on=val"):
        split("--select_on=val", has_val=False)
    assert Build.dataset_dir(Params.parse_args([f"--data_dir={tmp_path}", "--dataset=tiny"])) == tmp_path / "sparse_tiny"


# --------------------------------------------------------------------------- run_cli

def _run_cli_subprocess(*argv, body="lambda args: None"):
    code = f"import Params; Params.run_cli({body}, 'main')"
    return subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT,
                          capture_output=True, text=True)


def test_run_cli_config_error_subprocess():
    result = _run_cli_subprocess("--distill_from_teacher_model=True")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "--distill_from_teacher_model" in lines[0]


def test_run_cli_user_error_from_main(capsys):
    def main(args):
        raise DataError("train file x has no interactions\n(second line)")

    with pytest.raises(SystemExit) as exc:
        Params.run_cli(main, "main", argv=[])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: train file x has no interactions (second line)\n"


def test_run_cli_returns_and_passes_args():
    assert Params.run_cli(lambda args: args.latdim, "teacher", argv=["--latdim=8"]) == 8


def test_run_cli_ends_an_early_interrupt_in_one_line_and_does_not_catch_bugs(capsys):
    from Utils.runtime.Errors import Terminated

    for exc, code in ((KeyboardInterrupt, 130), (Terminated, 143)):
        def interrupted(args, exc=exc):
            raise exc

        with pytest.raises(SystemExit) as info:
            Params.run_cli(interrupted, "main", argv=[])
        assert info.value.code == code
        assert capsys.readouterr().err.strip() == "interrupted during start-up, before training began"
    with pytest.raises(ZeroDivisionError):
        Params.run_cli(lambda args: 1 / 0, "main", argv=[])


# --------------------------------------------------------------------------- args dump and seeding

def test_format_args_published_lines():
    lines = Params.format_args(Params.parse_args([])).splitlines()
    assert lines[0] == "mask_epoch" + "." * 67 + "600"
    assert all(len(line) == 80 for line in lines if "[" not in line and "break_point" not in line
               and "model" not in line)
    break_point = [line for line in lines if line.startswith("break_point")][0]
    assert break_point == "break_point" + Params._BREAK_POINT  # too long: no dots
    assert "esc_train_prn_run" + "." * 61 + "-1" in lines
    assert "adj_mask_aug2" + "." * 66 + "1" in lines
    assert lines[-18:] == ["data_dir" + "." * 62 + "./Datasets", "select_on" + "." * 67 + "None",
                           "device" + "." * 70 + "auto", "threads" + "." * 72 + "0",
                           "deterministic" + "." * 63 + "True", "plots" + "." * 71 + "True",
                           "resume" + "." * 69 + "False", "overwrite" + "." * 66 + "False",
                           "block_mb" + "." * 66 + "1024.0", "learn_edge_weights" + "." * 58 + "True",
                           "reg_batch" + "." * 66 + "False",
                           "patience" + "." * 71 + "0", "contrast_candidates" + "." * 60 + "0",
                           "contrast_estimator" + "." * 55 + "uniform",
                           "init_from_supervisor" + "." * 55 + "False", "emb_prune_score" + "." * 56 + "magnitude",
                           "use_dynamic_lr" + "." * 61 + "False",
                           "lr_list" + "." * 69 + "None"]


def test_format_args_matches_published_log(no_cuda_env):
    if not TEA_LOG.exists():
        pytest.skip(f"{TEA_LOG} is not available")
    published = TEA_LOG.read_text().split("\n\n")[0].splitlines()
    # the flags of the run that wrote tea.log (the published tool printed its forced gpu 2)
    args = Params.parse_args(["--epoch_tea=2", "--batch=64", "--model_save_path=/out/teacher_tiny",
                              "--his_save_path=/out/teacher_tiny", "--latdim=8", "--gnn_layer=3",
                              "--dataset=yelp", "--gpu=2", "--device=cpu"], stage="teacher")
    ours = Params.format_args(args).splitlines()
    assert ours[:len(published)] == published
    assert [line.split(".")[0] for line in ours[len(published):]] == ["data_dir", "select_on", "device",
                                                                       "threads", "deterministic", "plots",
                                                                       "resume", "overwrite",
                                                                       "block_mb", "learn_edge_weights",
                                                                       "reg_batch", "patience",
                                                                       "contrast_candidates", "contrast_estimator",
                                                                       "init_from_supervisor", "emb_prune_score",
                                                                       "use_dynamic_lr", "lr_list"]  # our additions


def test_seed_everything():
    import random

    import numpy as np

    Runtime.seed_everything(7)
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    Runtime.seed_everything(7)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


@pytest.mark.parametrize("flag, needle", [("--threads=1000", "--threads=1000 is more than"),
                                          ("--gnn_layer=1000000", "--gnn_layer=1000000 is more than 64 layers"),
                                          ("--adj_aug_layer=65", "--adj_aug_layer=65 is more than 64")])
def test_thread_and_layer_counts_are_bounded(flag, needle):
    """Issue 36, case 8: a count that could only exhaust memory or never end is a one-line error."""
    with pytest.raises(ConfigError, match=re.escape(needle)):
        Params.parse_args([flag], stage="main")
    Params.parse_args(["--gnn_layer=64", "--threads=64"], stage="main")
