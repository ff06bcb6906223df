"""The command lines end to end: help, one-line errors, the three stages chained on tiny, determinism."""
import json
import pickle
import re

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from conftest import REF, TINY_MID, TINY_STU, TINY_TEACHER, YELP, run_script, train_tiny_supervisors

pytestmark = pytest.mark.slow  # end-to-end runs in subprocesses


def run(script, *flags, check=True):
    return run_script(script, *flags, check=check)


@pytest.fixture
def data_dir(tiny_data):
    return tiny_data


@pytest.mark.parametrize("script", ["Main.py", "pretrainTeacher.py"])
def test_help_lists_every_published_flag_with_its_default(script):
    flags = json.loads((REF / "published_flags.json").read_text()) if REF.is_dir() else pytest.skip("no tests/data/reference")
    help_text = run(script, "--help").stdout
    entries = {}  # flag -> its description, joined over the wrapped lines
    for block in re.split(r"\n(?=  -)", help_text[help_text.index("options:"):]):
        entries[block.split()[0]] = " ".join(block.split())
    for flag in flags:
        name, default = flag["flag"], flag["default"]
        assert name in entries, name
        expected = "published default: 2" if name == "--gpu" else f"(default: {default})"
        assert expected in entries[name], (name, expected, entries[name])


def _assert_one_line_error(proc, *needles):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_missing_dataset_is_one_line_error(tmp_path):
    proc = run("pretrainTeacher.py", "--dataset=nowhere", f"--data_dir={tmp_path}", check=False)
    _assert_one_line_error(proc, "sparse_nowhere")


def test_shape_mismatch_is_one_line_error(tmp_path):
    folder = tmp_path / "sparse_bad"
    folder.mkdir()
    for name, shape in (("trnMat.pkl", (5, 4)), ("tstMat.pkl", (5, 3))):
        with open(folder / name, "wb") as fh:
            pickle.dump(sp.coo_matrix(np.eye(*shape, dtype=np.float32)), fh)
    proc = run("pretrainTeacher.py", "--dataset=bad", f"--data_dir={tmp_path}", check=False)
    _assert_one_line_error(proc, "tstMat.pkl", "trnMat.pkl")


def test_contradictory_flags_are_one_line_error():
    proc = run("Main.py", "--distill_from_middle_model=True", "--distill_from_teacher_model=True", check=False)
    _assert_one_line_error(proc, "--distill_from_middle_model", "--distill_from_teacher_model")


def _strip_volatile(text):
    text = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ", "", text, flags=re.M)
    text = re.sub(r"^Peak memory: .*", "Peak memory", text, flags=re.M)
    text = re.sub(r"^Progress: .*\n", "", text, flags=re.M)  # on a slow machine a run may last 30 s
    return re.sub(r"Time: .*", "Time", text)


def test_three_stages_chain_through_their_own_checkpoints(tmp_path, data_dir):
    out = tmp_path / "out"
    tea = run("pretrainTeacher.py", *TINY_TEACHER, f"--data_dir={data_dir}", f"--model_save_path={out}/tea",
              f"--his_save_path={out}/tea")
    assert "Epoch 0/3, Train: Loss = " in tea.stdout and "Epoch 0/3, Test: Recall = " in tea.stdout
    peak = re.search(r"^Peak memory: RSS ([\d.]+) (MiB|GiB)$", tea.stdout, flags=re.M)  # the command's last line
    assert peak and float(peak.group(1)) > 0 and tea.stdout.rstrip().endswith(peak.group(0))
    ckpt = torch.load(out / "tea.mod", weights_only=True)
    assert ckpt["meta"]["stage"] == "teacher" and ckpt["tensors"]["uEmbeds"].shape == (60, 8)

    run("Main.py", *TINY_MID, f"--data_dir={data_dir}", f"--teacher_model={out}/tea.mod",
        f"--model_save_path={out}/mid", f"--his_save_path={out}/mid")
    mid = out / "mid_best_global_100_100.mod"
    assert torch.load(mid, weights_only=True)["tensors"]["adj_mask1_train"].numel() == 3530

    stu = run("Main.py", *TINY_STU, f"--data_dir={data_dir}", f"--middle_teacher_model={mid}",
              f"--model_save_path={out}/stu", f"--his_save_path={out}/stu").stdout
    sparsity = re.findall(r"Sparsity: Adj:\[([\d.]+)%\] \| Emb:\[([\d.]+)%\]", stu)
    assert sparsity == [("100.00", "100.00"), ("84.96", "79.88"), ("72.16", "63.88")]  # published stu.log
    for suffix in ("best_global", "best_w_edge_wei", "2nd_best_w_edge_wei"):
        paths = sorted(out.glob(f"stu_{suffix}_*.mod"))
        assert paths, suffix
        for path in paths:
            state = torch.load(path, weights_only=True)
            e, m = (int(v) for v in path.stem.rsplit("_", 2)[1:])
            mask = state["tensors"]["adj_mask2_fixed"]
            assert int(100 * float((mask != 0).float().mean())) == e
            assert int(100 * float((state["tensors"]["emb_mask2_fixed"] != 0).float().mean())) == m
    assert "Best results for now" in stu
    assert "\r" not in stu  # progress lines go to a terminal only, never into a piped (tee'd) log

    # a break point restarts from a saved student with its masks; run 4's training is skipped; frozen copies train
    resumed = run("Main.py", *TINY_STU, f"--data_dir={data_dir}", f"--middle_teacher_model={mid}",
                  "--train_stu_from_break_point=True", f"--break_point={out}/stu_best_global_72_63.mod",
                  "--PRUNING_START=3", "--PRUNING_END=4", "--esc_train_prn_run=4", "--run_no_adj_weights=True",
                  "--fix_epoch=1", "--mask_epoch=1", f"--model_save_path={out}/bp", f"--his_save_path={out}/bp").stdout
    sparsity = re.findall(r"Sparsity: Adj:\[([\d.]+)%\] \| Emb:\[([\d.]+)%\]", resumed)
    # frozen copy before run 3, run 3, then the frozen copy after run 3 trains on the pruned state run 4 starts
    # from; run 4 is not trained but still pruned, and the last frozen copy trains on that state
    assert sparsity == [("72.16", "63.88")] * 2 + [("61.21", "51.00")] * 2 + [("51.98", "40.75")]
    assert "Skipping the training of pruning run 4" in resumed
    assert re.search(r"^Best without Edge Weights,  Recall:\[0\.[1-9]", resumed.split("Best results for now")[-1],
                     flags=re.M)
    assert sorted(out.glob("bp_best_wo_edge_wei_*.mod"))

    # determinism: the same flags and seed give the same log (timestamps and timings aside)
    again = run("Main.py", *TINY_STU, f"--data_dir={data_dir}", f"--middle_teacher_model={mid}",
                f"--model_save_path={out}/stu2", f"--his_save_path={out}/stu2").stdout
    assert _strip_volatile(again).replace("stu2", "stu") == _strip_volatile(stu)


def test_published_intermediate_checkpoint_drives_stage3(tmp_path, data_dir):
    mid = REF / "published_checkpoints" / "mid_tiny_best_global_100_100.mod"
    if not mid.exists():
        pytest.skip("no published checkpoint")
    out = tmp_path / "out"
    proc = run("Main.py", *TINY_STU, "--PRUNING_END=2", f"--data_dir={data_dir}",
               f"--middle_teacher_model={mid}", f"--model_save_path={out}/stu", f"--his_save_path={out}/stu")
    assert "Sparsity: Adj:[84.96%]" in proc.stdout


@pytest.mark.skipif(not (YELP / "sparse_yelp").is_dir(), reason="../shared/datasets/sparse_yelp is not available")
def test_yelp_teacher_first_epoch_matches_published_recall(tmp_path):
    """The published tool logged Recall@20 0.0525 after its first Yelp epoch (test selection)."""
    proc = run("pretrainTeacher.py", "--dataset=yelp", f"--data_dir={YELP}", "--epoch_tea=1", "--lr=4e-4",
               "--reg=1.5e-6", "--latdim=64", "--gnn_layer=8", "--select_on=test",
               f"--model_save_path={tmp_path}/t", f"--his_save_path={tmp_path}/t")
    recall = float(re.search(r"Epoch 0/1, Test: Recall = ([\d.]+)", proc.stdout).group(1))
    assert abs(recall - 0.0525) <= 0.1 * 0.0525
    assert torch.load(tmp_path / "t.mod", weights_only=True)["meta"]["n_users"] == 42712


def test_teacher_resumes_from_checkpoint_and_history(tmp_path, data_dir):
    out = tmp_path / "out"
    flags = [*TINY_TEACHER[:-1], f"--data_dir={data_dir}", f"--model_save_path={out}/tea", f"--his_save_path={out}/tea"]
    run("pretrainTeacher.py", *flags, "--epoch_tea=2")
    assert len((out / "tea.his").read_text().splitlines()) == 2
    resumed = run("pretrainTeacher.py", *flags, "--epoch_tea=4", f"--load_model_tea={out}/tea.mod",
                  f"--load_his_tea={out}/tea").stdout
    assert "resuming at epoch 2" in resumed and "Epoch 2/4, Train" in resumed and "Epoch 0/4, Train" not in resumed
    rows = [json.loads(line) for line in (out / "tea.his").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [0, 1, 2, 3]


def test_checkpoint_for_another_dataset_shape_is_refused(tmp_path, data_dir):
    bad = tmp_path / "other.mod"
    from Utils.files.Checkpoint import save_checkpoint
    save_checkpoint(bad, {"uEmbeds": torch.zeros(7, 8), "iEmbeds": torch.zeros(40, 8)}, {"gnn_layer": 3})
    proc = run("Main.py", *TINY_MID, f"--data_dir={data_dir}", f"--teacher_model={bad}",
               f"--model_save_path={tmp_path}/m", f"--his_save_path={tmp_path}/m", check=False)
    _assert_one_line_error(proc, str(bad))


def _early_stop(stdout):
    """(stop epoch, best epoch) of each 'Early stop after epoch E/N ... at epoch B' line."""
    return [(int(m.group(1)), int(m.group(2)))
            for m in re.finditer(r"Early stop after epoch (\d+)/\d+: .* at epoch (\d+)\)", stdout)]


def test_teacher_patience_stops_and_keeps_the_best_epoch(tmp_path, data_dir):
    """--patience=2 on the tiny teacher: it stops two evaluations after its best epoch B, and
    its checkpoint is bit-identical to the one of a run told to train B + 1 epochs."""
    from Utils.files.Checkpoint import load_checkpoint

    common = [*TINY_TEACHER, f"--data_dir={data_dir}", "--plots=False"]
    early = run("pretrainTeacher.py", *common, "--epoch_tea=40", "--patience=2",
                f"--model_save_path={tmp_path}/early", f"--his_save_path={tmp_path}/early")
    [(stop, best)] = _early_stop(early.stdout)
    assert stop == best + 2 < 39
    cut = run("pretrainTeacher.py", *common, f"--epoch_tea={best + 1}",
              f"--model_save_path={tmp_path}/cut", f"--his_save_path={tmp_path}/cut")
    assert not _early_stop(cut.stdout)
    a, b = load_checkpoint(tmp_path / "early.mod"), load_checkpoint(tmp_path / "cut.mod")
    assert a.meta["epoch"] == b.meta["epoch"] == best
    for key in ("uEmbeds", "iEmbeds"):
        assert torch.equal(a.tensors[key], b.tensors[key])


def test_student_patience_carries_the_best_state_to_the_next_run(tmp_path, data_dir):
    """Stage 3 with --patience: the pruning run that stops early carries the state of its best
    epoch, so the next run starts exactly as after a run told to end at the stop epoch."""
    mid = train_tiny_supervisors(tmp_path, data_dir)
    common = [*TINY_STU, f"--data_dir={data_dir}", f"--middle_teacher_model={mid}",
              "--PRUNING_END=2", "--plots=False", "--lr=0.01"]
    early = run("Main.py", *common, "--mask_epoch=30", "--patience=1",
                f"--model_save_path={tmp_path}/early", f"--his_save_path={tmp_path}/early")
    stops = _early_stop(early.stdout)
    assert stops and stops[0][0] == stops[0][1] + 1
    # run 1 of the cut run trains the same epochs 0..stop (same seed) with no early stop
    cut = run("Main.py", *common, f"--epoch_list={[0, stops[0][0] + 1, 1]}".replace(" ", ""),
              "--use_dynamic_epoch=True", f"--model_save_path={tmp_path}/cut", f"--his_save_path={tmp_path}/cut")

    def first_eval_of_run2(stdout):
        return re.search(r"Pruning Run PRN:\[2\].*?Epoch:\[0/\d+\], (Recall:\[[\d.]+\] NDCG:\[[\d.]+\])",
                         stdout).group(1)

    assert first_eval_of_run2(early.stdout) == first_eval_of_run2(cut.stdout)
