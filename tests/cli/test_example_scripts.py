"""The published example scripts: valid bash, and every flag they pass is accepted by the parser."""
import re
import shutil
import subprocess

import pytest

import Params
from Utils.config import Build
from conftest import REF, ROOT

SCRIPTS = sorted((ROOT / "example_scripts").glob("example_train_*.sh"))


def _flags(path):
    return re.findall(r"^\s+(--\w+=[^\s\\]+)", path.read_text(), flags=re.M)


def test_there_are_nine_published_examples():
    assert len(SCRIPTS) == 9


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_example_script_parses_and_its_flags_are_valid(path):
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    stage = "teacher" if "teacher_model" in path.stem else "main"
    flags = [f.replace('"$TEACHER"', "t.mod").replace('"$MIDDLE"', "m.mod") for f in _flags(path)]
    args = Params.parse_args(flags, stage=stage)
    assert args.dataset in path.stem


def test_examples_carry_the_published_flags():
    published = REF / "published_examples.md"
    if not published.exists():
        pytest.skip("no tests/data/reference")
    blocks = dict(re.findall(r"## (example_\w+)\n\n```\n(.*?)\n```", published.read_text(), re.S))
    for name, flags in blocks.items():
        ours = _flags(ROOT / "example_scripts" / f"{name}.sh")
        for flag in flags.replace("'", "").split():
            assert flag in ours, (name, flag)


def test_quickstart_parses_and_its_flags_are_valid():
    """example_scripts/quickstart.sh: valid bash, three stages, every flag accepted by its entry point."""
    path = ROOT / "example_scripts" / "quickstart.sh"
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    text = path.read_text().replace("\\\n", " ")
    common = re.search(r'^COMMON="(.*)"$', text, flags=re.M).group(1)
    stages = re.findall(r"^\$LAUNCH (pretrainTeacher|Main)\.py (.*?)\|", text, flags=re.M)
    assert [script for script, _ in stages] == ["pretrainTeacher", "Main", "Main"]
    for script, rest in stages:
        argv = rest.replace("$COMMON", common).replace("$DATA_DIR", "D").replace("$OUT", "o").split()
        args = Params.parse_args(argv, stage="teacher" if script == "pretrainTeacher" else "main")
        assert args.dataset == "demo"


@pytest.mark.parametrize("name", ["yelp_short_pipeline.sh", "yelp_reproduce.sh"])
def test_pipeline_rejects_an_unknown_start_stage(name):
    script = ROOT / "example_scripts" / name
    proc = subprocess.run(["bash", str(script)], env={"FROM": "middle", "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "FROM must be teacher, intermediate or student" in proc.stderr


def test_reproduce_flags_are_valid_on_top_of_the_published_examples():
    """Each stage of yelp_reproduce.sh: the published example's flags plus the script's own."""
    text = (ROOT / "example_scripts" / "yelp_reproduce.sh").read_text()
    for stage, example, entry in (("teacher", "teacher_model_yelp", "teacher"),
                                  ("intermediate", "intermediate_model_lightgnn_yelp", "main"),
                                  ("student", "final_student_lightgnn_yelp", "main")):
        command = re.search(rf"^\s*timed {stage} bash .*?(?<!\\)\n", text, flags=re.M | re.S).group(0)
        if stage == "student":  # its flags are shared with yelp_ablation.sh
            assert '"${YELP_STUDENT_FLAGS[@]}"' in command
            command = (ROOT / "example_scripts" / "yelp_student_schedule.sh").read_text() + command
        extra = re.findall(r"(--\w+=[^\s\\]+)", command)
        assert extra, stage
        base = [f.replace('"$TEACHER"', "t.mod").replace('"$MIDDLE"', "m.mod")
                for f in _flags(ROOT / "example_scripts" / f"example_train_{example}.sh")]
        args = Params.parse_args(base + extra, stage=entry)
        if stage != "teacher":
            assert args.contrast_candidates > 0 and args.patience > 0
        if stage == "intermediate":  # trained from Xavier at 1e-3: from the teacher's embeddings it stalls
            assert not args.init_from_supervisor and args.lr == 1e-3
        if stage == "student":  # no subspace term in runs 9-12, where empty rows make it a clique
            assert args.init_from_supervisor and args.hyper_contr_end_prn_run == 8
            assert args.adj_mask_aug1 == 0.1  # beta1: the edge score leans on the student's own weights
    assert "--PRUNING_END=12" in command  # the paper's whole mild schedule


def test_gowalla_lightgcn_script_runs_the_teacher_with_lightgcn_s_recipe():
    path = ROOT / "example_scripts" / "gowalla_lightgcn_reproduce.sh"
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    flags = [f.replace('"${EPOCHS:-1000}"', "1000") for f in _flags(path)]
    cfg = Build.teacher_config(Params.parse_args(flags, stage="teacher"))
    assert (cfg.data.dataset, cfg.data.latdim, cfg.data.gnn_layer, cfg.loop.batch, cfg.loop.seed) == (
        "gowalla_lightgcn", 64, 3, 2048, 2020)
    assert (cfg.epochs, cfg.lr, cfg.reg, cfg.reg_batch, cfg.loop.tst_every) == (1000, 1e-3, 1e-4, True, 10)


def test_gowalla_compress_flags_are_valid_on_top_of_the_published_examples():
    """gowalla_lightgcn_compress.sh: both stages on LightGCN's split, on the same sampled Ĉ, to the paper's point."""
    path = ROOT / "example_scripts" / "gowalla_lightgcn_compress.sh"
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    text = path.read_text()
    both = re.search(r"^BOTH=\((.*)\)$", text, flags=re.M).group(1).split()
    parsed = {}
    for stage, example in (("intermediate", "intermediate_model_lightgnn_gowalla"),
                           ("student", "final_student_lightgnn_gowalla")):
        command = re.search(rf"^\s*timed {stage} bash .*?(?<!\\)\n", text, flags=re.M | re.S).group(0)
        assert '"${BOTH[@]}"' in command, stage
        base = [f.replace('"$TEACHER"', "t.mod").replace('"$MIDDLE"', "m.mod")
                for f in _flags(ROOT / "example_scripts" / f"example_train_{example}.sh")]
        parsed[stage] = Params.parse_args(base + both + re.findall(r"(--\w+=[^\s\\]+)", command), stage="main")
    mid, stu = parsed["intermediate"], parsed["student"]
    assert mid.train_middle_model and stu.distill_from_middle_model
    for args in (mid, stu):
        assert args.dataset == "gowalla_lightgcn" and args.contrast_candidates == 2048
    assert Build.closure_config(vars(mid)) == Build.closure_config(vars(stu))  # the student loads that Ĉ
    assert (stu.PRUNING_END, stu.pruning_percent_adj, stu.pruning_percent_emb) == (6, 0.15, 0.2)
    assert (stu.use_SM_edgeW2aug, stu.adj_mask_aug2, stu.emb_prune_score) == (True, 1.0, "magnitude")  # published


def test_gowalla_compress_rejects_an_unknown_start_stage():
    script = ROOT / "example_scripts" / "gowalla_lightgcn_compress.sh"
    proc = subprocess.run(["bash", str(script)], env={"FROM": "teacher", "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "FROM must be intermediate or student" in proc.stderr


ABLATION = ("lightgnn", "no_bialn", "no_intkd", "no_impd", "bnedge", "rand_edge", "rand_emb", "rand_both")


def _ablation_command(tmp_path, variant):
    """The Main.py flags yelp_ablation.sh VARIANT runs (a copy of example_scripts/ run with LAUNCH=echo)."""
    shutil.copytree(ROOT / "example_scripts", tmp_path / "example_scripts", dirs_exist_ok=True)
    proc = subprocess.run(["bash", str(tmp_path / "example_scripts" / "yelp_ablation.sh"), variant],
                          env={"LAUNCH": "echo", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    argv = proc.stdout.splitlines()[0].split()
    assert argv[0] == "Main.py"
    return Params.parse_args(argv[1:], stage="main")


def test_ablation_variants_are_the_reproduce_student_stage_with_one_component_changed(tmp_path):
    base = _ablation_command(tmp_path, "lightgnn")
    reproduce = re.search(r"^\s*timed student bash .*$", (ROOT / "example_scripts" / "yelp_reproduce.sh").read_text(),
                          flags=re.M).group(0)
    assert '"${YELP_STUDENT_FLAGS[@]}"' in reproduce  # the same schedule as the script
    assert (base.PRUNING_END, base.contrast_candidates, base.patience, base.hyper_contr_end_prn_run) == (12, 2048, 4, 8)
    assert base.distill_from_middle_model and base.use_SM_edgeW2aug and base.learn_edge_weights
    assert base.adj_mask_aug1 == 1.0  # the ablation keeps the published beta1 it was measured with
    changed = {}
    for variant in ABLATION[1:]:
        args = _ablation_command(tmp_path, variant)
        changed[variant] = {k: v for k, v in vars(args).items() if vars(base)[k] != v}
        assert args.model_save_path.startswith(f"./outModels/yelp/ablation_{variant}/")
    assert changed["no_bialn"] == {"softreg": 0.0, "cdreg": 0.0, **_paths(changed["no_bialn"])}
    assert changed["no_intkd"]["distill_from_teacher_model"] and not changed["no_intkd"]["distill_from_middle_model"]
    assert changed["no_intkd"]["use_tea2drop_edges"] and not changed["no_intkd"]["use_SM_edgeW2aug"]
    assert changed["no_impd"] == {"use_adj_mask_aug": False, "use_SM_edgeW2aug": False, **_paths(changed["no_impd"])}
    assert changed["bnedge"] == {"learn_edge_weights": False, **_paths(changed["bnedge"])}
    assert changed["rand_edge"] == {"use_adj_random_pruning": True, **_paths(changed["rand_edge"])}
    assert changed["rand_emb"] == {"use_emb_random_pruning": True, **_paths(changed["rand_emb"])}
    assert changed["rand_both"] == {"use_adj_random_pruning": True, "use_emb_random_pruning": True,
                                    **_paths(changed["rand_both"])}


def _paths(changed):
    return {k: v for k, v in changed.items() if k in ("model_save_path", "his_save_path", "teacher_model")}


def test_ablation_rejects_an_unknown_variant(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "example_scripts" / "yelp_ablation.sh"), "nokd"],
                          env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert proc.returncode == 2 and "VARIANT must be lightgnn" in proc.stderr


def test_dense_baselines_are_the_teacher_recipe_at_the_student_s_depth(tmp_path):
    shutil.copytree(ROOT / "example_scripts", tmp_path / "example_scripts", dirs_exist_ok=True)
    proc = subprocess.run(["bash", str(tmp_path / "example_scripts" / "yelp_dense_baselines.sh"), "8", "--threads=1", "32"],
                          env={"LAUNCH": "echo", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    commands = [line.split() for line in proc.stdout.splitlines() if line.startswith("pretrainTeacher.py")]
    assert len(commands) == 2
    for dim, argv in zip((8, 32), commands):
        args = Params.parse_args(argv[1:], stage="teacher")
        assert (args.latdim, args.gnn_layer, args.lr, args.epoch_tea, args.patience) == (dim, 2, 4e-4, 300, 4)
        assert args.threads == 1  # flags go to every run, whatever their place among the DIMs
        assert args.model_save_path.startswith(f"./outModels/yelp/dense_d{dim}/")
    bad = subprocess.run(["bash", str(tmp_path / "example_scripts" / "yelp_dense_baselines.sh"), "8x"],
                         env={"LAUNCH": "echo", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert bad.returncode == 2 and "DIM must be a positive integer" in bad.stderr


def test_a_rerun_appends_to_the_console_log_after_a_dated_line(tmp_path):
    """Issue 36, case 6: run_stage's log keeps every run (a refused rerun, a RESUME=1 sitting)."""
    shutil.copytree(ROOT / "example_scripts", tmp_path / "example_scripts", dirs_exist_ok=True)
    script = tmp_path / "example_scripts" / "example_train_teacher_model_yelp.sh"
    for extra in ("--epoch_tea=1", "--epoch_tea=2"):
        proc = subprocess.run(["bash", str(script), extra], env={"LAUNCH": "echo", "PATH": "/usr/bin:/bin"},
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    log = (tmp_path / "logs" / "tea_yelp_example3_log").read_text()
    separators = re.findall(r"^===== \d{4}-\d\d-\d\d \d\d:\d\d:\d\d: pretrainTeacher\.py .*=====$", log, flags=re.M)
    assert len(separators) == 2
    assert "--epoch_tea=1" in log.split(separators[1])[0] and "--epoch_tea=2" in log.split(separators[1])[1]
    quickstart = (ROOT / "example_scripts" / "quickstart.sh").read_text()
    assert re.findall(r"\| tee (-a )?logs/", quickstart) == ["-a "] * 5  # every console log appended to
