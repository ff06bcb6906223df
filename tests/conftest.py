"""Shared fixtures: the golden vectors in tests/data/reference, and ../shared/datasets (the Yelp
split) for the few tests that need it; those skip cleanly when it is absent."""
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import pytest

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT / "tests" / "data" / "reference"  # numbers computed by the published tool (tests/data/README.md)
YELP = ROOT.parent / "shared" / "datasets"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def ref():
    """Return a loader for tests/data/reference/<name>.npz, skipping when it is absent."""
    if not REF.is_dir():
        pytest.skip("tests/data/reference is not available")

    def load(name):
        path = REF / name
        if not path.exists():
            pytest.skip(f"{path} is not available")
        return np.load(path)

    return load


@pytest.fixture
def tiny_dir():
    """Directory holding the tiny reference split (trnMat/valMat/tstMat.pkl)."""
    path = REF / "tiny"
    if not path.is_dir():
        pytest.skip("tests/data/reference/tiny is not available")
    return path


def tiny_data_dir(tmp_path, tiny_dir):
    """``tmp_path/Datasets`` holding the tiny reference split as sparse_tiny (a link, nothing copied)."""
    data = tmp_path / "Datasets"
    data.mkdir(exist_ok=True)
    if not (data / "sparse_tiny").exists():
        os.symlink(tiny_dir, data / "sparse_tiny")
    return data


@pytest.fixture
def tiny_data(tmp_path, tiny_dir):
    """A --data_dir holding the tiny reference split (:func:`tiny_data_dir`)."""
    return tiny_data_dir(tmp_path, tiny_dir)


# The three stages on the tiny split, as the CLI tests run them (later flags override earlier ones)
TINY_TEACHER = ["--dataset=tiny", "--batch=64", "--latdim=8", "--gnn_layer=3", "--epoch_tea=3"]
TINY_MID = ["--dataset=tiny", "--batch=64", "--latdim=8", "--gnn_layer=2", "--mask_epoch=2", "--topRange=500",
            "--train_middle_model=True", "--distill_from_middle_model=False", "--distill_from_teacher_model=True",
            "--PRUNING_START=1", "--PRUNING_END=1"]
TINY_STU = ["--dataset=tiny", "--batch=64", "--latdim=8", "--gnn_layer=2", "--mask_epoch=3", "--topRange=500",
            "--distill_from_middle_model=True", "--PRUNING_START=1", "--PRUNING_END=3",
            "--pruning_percent_adj=0.15", "--pruning_percent_emb=0.2", "--use_adj_mask_aug=True",
            "--use_SM_edgeW2aug=True", "--adj_mask_aug1=0.05", "--adj_mask_aug2=1.0"]


def run_script(script, *flags, check=True):
    """Run an entry point of the project in a subprocess; raise with its output when it fails."""
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, flags)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def run_here(script, *flags, check=True):
    """:func:`run_script` in this process: the same entry point (``main`` under its CLI wrapper),
    stdout/stderr captured, the exit status returned, without starting an interpreter and
    importing torch again (about 2 s a call). For commands that stop early (a refusal) or do
    little (a model tool); an exception that is not an exit propagates, so a traceback fails the
    test. Torch's thread count and deterministic mode are restored afterwards."""
    import contextlib
    import importlib
    import io

    import Params

    module = importlib.import_module(script[:-len(".py")])
    argv = [str(flag) for flag in flags]
    entry = {"pretrainTeacher.py": lambda: Params.run_cli(module.main, stage="teacher", argv=argv),
             "Main.py": lambda: Params.run_cli(module.main, stage="main", argv=argv)}.get(script,
                                                                                           lambda: module.main(argv))
    out, err = io.StringIO(), io.StringIO()
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = entry() or 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    proc = subprocess.CompletedProcess([script, *argv], code, out.getvalue(), err.getvalue())
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def train_tiny_supervisors(folder, data_dir):
    """Train the tiny teacher (``folder/tea.mod``) and the intermediate model distilled from it;
    return the intermediate model's global-best checkpoint (stage 3's --middle_teacher_model)."""
    teacher, middle = Path(folder) / "tea", Path(folder) / "mid"
    run_script("pretrainTeacher.py", *TINY_TEACHER, f"--data_dir={data_dir}", f"--model_save_path={teacher}",
               f"--his_save_path={teacher}")
    run_script("Main.py", *TINY_MID, f"--data_dir={data_dir}", f"--teacher_model={teacher}.mod",
               f"--model_save_path={middle}", f"--his_save_path={middle}")
    return f"{middle}_best_global_100_100.mod"


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """A --data_dir holding the quick start's demo dataset (3,000 users x 2,000 items), generated:
    large enough for torch's CPU kernels to split their work across threads."""
    root = tmp_path_factory.mktemp("demo_data")
    run_script("prepareData.py", "--format=synthetic", "--name=demo", f"--data_dir={root}")
    return root


def tiny_root_with_supervisors(tmp_path_factory, name):
    """A --data_dir holding the tiny split (linked) in which the tiny teacher (``tea.*``) and the
    intermediate model distilled from it (``mid*``) were trained (:func:`train_tiny_supervisors`)."""
    root = tmp_path_factory.mktemp(name)
    os.symlink(REF / "tiny", root / "sparse_tiny")
    train_tiny_supervisors(root, root)
    return root


def kd_parts(cfg, inputs, *, sample=None, generator=None, subspace_pairs=None, group=None):
    """``Utils.objective.Losses.kd_objective`` on a dict of named tensors, as the stage calls it: the
    trainee's outputs and tables (``stu_*``, ``emb_mask``), the supervisor's (``sup_*``), the
    batch (``ancs``/``poss``/``negs``) and the prediction-level KD's triples (``rand_*``)."""
    from Utils.objective import Losses as L
    from Utils.runtime.Parallel import SOLO

    group = group or SOLO
    trainee = L.Trainee(inputs["stu_users"], inputs["stu_items"], inputs["stu_u_embeds"], inputs["stu_i_embeds"],
                        inputs["stu_edge_weight"], inputs.get("emb_mask"))
    sup = L.Supervisor(inputs["sup_users"], inputs["sup_items"], inputs["sup_high_users"], inputs["sup_high_items"])
    n_nodes = (inputs["stu_users"].shape[0], inputs["stu_items"].shape[0])
    batch = L.draw_batch(cfg, (inputs["ancs"], inputs["poss"], inputs["negs"]),
                         (inputs["rand_users"], inputs["rand_items1"], inputs["rand_items2"]), n_nodes, generator,
                         group, sample)
    return L.kd_objective(cfg, trainee, sup, batch, group.lead, subspace_pairs)


# ----------------------------------------------------------------------------- trained once for the model tools
TOOLS_TEACHER = [*TINY_TEACHER, "--epoch_tea=2"]
TOOLS_MID = [*TINY_MID, "--mask_epoch=1"]
TOOLS_STUDENT = [*TINY_STU, "--mask_epoch=2"]


def _run(script, *flags):
    return run_script(script, *flags).stdout


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """The three stages on tiny, trained once per test session for the model tools' and the
    Python API's tests: paths of the data, checkpoints, histories and logs."""
    tiny = REF / "tiny"
    if not tiny.is_dir():
        pytest.skip("tests/data/reference/tiny is not available")
    root = tmp_path_factory.mktemp("tools")
    data = root / "Datasets"
    data.mkdir()
    os.symlink(tiny, data / "sparse_tiny")
    out = root / "out"
    common = [f"--data_dir={data}"]
    logs = {"tea": _run("pretrainTeacher.py", *TOOLS_TEACHER, *common, f"--model_save_path={out}/tea",
                        f"--his_save_path={out}/tea")}
    logs["mid"] = _run("Main.py", *TOOLS_MID, *common, f"--teacher_model={out}/tea.mod",
                       f"--model_save_path={out}/mid", f"--his_save_path={out}/mid")
    mid = out / "mid_best_global_100_100.mod"
    logs["stu"] = _run("Main.py", *TOOLS_STUDENT, *common, f"--middle_teacher_model={mid}",
                       f"--model_save_path={out}/stu", f"--his_save_path={out}/stu")
    best = re.findall(r"checkpoint: (\S+)", logs["stu"].split("Best results for now")[-1])[0]  # the global record
    return {"data": data, "out": out, "logs": logs, "tea": out / "tea.mod", "mid": mid, "stu": Path(best)}


# ----------------------------------------------------------------------------- helpers several test folders use
def _write_split(folder, train, test=None, val=None):
    folder.mkdir(parents=True, exist_ok=True)
    for name, mat in (("trnMat.pkl", train), ("tstMat.pkl", test if test is not None else train),
                      ("valMat.pkl", val)):
        if mat is not None:
            with open(folder / name, "wb") as fh:
                pickle.dump(mat, fh)


def _one_error_line(proc, *needles):
    """The process ended with status 2 and one ``error:`` line holding every needle; that line."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _history(path):
    path.write_text('{"stage": "teacher", "epoch": 0, "metrics": {"test": {"Recall": 0.1, "NDCG": 0.05}}}\n'
                    '{"stage": "teacher", "epoch": 1, "metrics": {"test": {"Recall": 0.2, "NDCG": 0.1}}}\n')
    return path


def _batch_inputs(seed=0, n_users=37, n_items=29, d=8):
    g = torch.Generator().manual_seed(seed)
    leaf = lambda *shape: torch.randn(*shape, generator=g).requires_grad_()  # noqa: E731
    mask = (torch.rand(n_users + n_items, d, generator=g) < 0.7).float()
    mask[:6] = mask[n_users:n_users + 6]  # some identical user/item masks: positives across tables
    return dict(
        stu_users=leaf(n_users, d), stu_items=leaf(n_items, d), stu_u_embeds=leaf(n_users, d),
        stu_i_embeds=leaf(n_items, d), stu_edge_weight=leaf(50),
        sup_users=torch.randn(n_users, d, generator=g), sup_items=torch.randn(n_items, d, generator=g),
        sup_high_users=torch.randn(n_users, d, generator=g), sup_high_items=torch.randn(n_items, d, generator=g),
        ancs=torch.randint(0, n_users, (40,), generator=g), poss=torch.randint(0, n_items, (40,), generator=g),
        negs=torch.randint(0, n_items, (40,), generator=g), rand_users=torch.randint(0, n_users, (300,), generator=g),
        rand_items1=torch.randint(0, n_items, (300,), generator=g),
        rand_items2=torch.randint(0, n_items, (300,), generator=g), emb_mask=mask)


def assert_same_objective(parts, grads, ref_parts, ref_grads, rtol=1e-5, atol=1e-7):
    """Every loss part and every gradient equal to the reference's up to float rounding."""
    for name in ref_parts:
        torch.testing.assert_close(parts[name], ref_parts[name], rtol=rtol, atol=atol)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=rtol, atol=atol)
