"""modelTools.py on the three stages trained once on tiny: report, plot, export, recommend, evaluate."""
import json
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from conftest import REF, ROOT

import DataHandler as dh
import modelTools
from Utils.tools import Plots, Report
from Utils.files.Checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # end-to-end runs in subprocesses


def tool(capsys, *argv):
    """modelTools.main in this process: (exit status, stdout, stderr)."""
    rc = modelTools.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _record_line(log, path):
    """The 'Best for Global Recall' line printed for the record that wrote ``path``."""
    lines = log.splitlines()
    index = max(i for i, line in enumerate(lines) if line.strip() == f"checkpoint: {path}")
    return lines[index - 1]


def test_report_kept_percentages_equal_the_log(trained, capsys, tmp_path):
    stu_log = trained["logs"]["stu"]
    logged = re.findall(r"Sparsity: Adj:\[([\d.]+)%\] \| Emb:\[([\d.]+)%\]", stu_log)
    assert len(logged) == 3
    for path in sorted(trained["out"].glob("stu_best_w_edge_wei_*.mod")):
        rc, out, _ = tool(capsys, "report", path, "--json", tmp_path / "r.json", "--overwrite")
        assert rc == 0 and "edges" in out and "bytes, compact export" in out
        report = json.loads((tmp_path / "r.json").read_text())
        meta = load_checkpoint(path).meta
        assert report["edges"]["kept_pct"] == pytest.approx(meta["edge_kept_pct"], abs=1e-9)
        assert report["embedding_entries"]["kept_pct"] == pytest.approx(meta["emb_kept_pct"], abs=1e-9)
        pcts = (f"{report['edges']['kept_pct']:.2f}", f"{report['embedding_entries']['kept_pct']:.2f}")
        assert pcts in logged  # the run's "Sparsity:" line
        e, m = (int(v) for v in path.stem.rsplit("_", 2)[1:])
        assert (int(report["edges"]["kept_pct"]), int(report["embedding_entries"]["kept_pct"])) == (e, m)
    # the definitions, on the global best checkpoint
    ckpt = load_checkpoint(trained["stu"])
    t = ckpt.tensors
    report = Report.compression_report(t, ckpt.meta)
    kept = int((t["adj_mask2_fixed"] != 0).sum())
    nnz_e0 = int((Report.layer0(t) != 0).sum())
    assert report["edges"] == {"kept": kept, "total": 758, "kept_pct": 100 * kept / 758}
    assert report["parameters"] == {"nonzero": nnz_e0 + kept, "dense": 100 * 8 + 758,
                                    "kept_pct": 100 * (nnz_e0 + kept) / (100 * 8 + 758)}
    assert report["macs"]["propagation"] == 2 * kept * 8 and report["macs"]["propagation_dense"] == 2 * 758 * 8
    assert report["macs"]["score_one_user"] == 40 * 8
    # the end-of-run hook for Main.py: the same numbers from a model state and the run's settings
    lines = []
    hooked = Report.log_run_report(t, {"stage": "student", "model_class": "LightGCN_sp", "gnn_layer": 2},
                                   str(tmp_path / "run.json"), lines.append, title="Compression report, run 3")
    assert hooked["edges"] == report["edges"] and hooked["bytes"] == report["bytes"]
    assert lines[0].startswith("Compression report, run 3") and json.loads((tmp_path / "run.json").read_text())


def test_plots_are_two_pngs_that_pillow_opens(trained, capsys, tmp_path):
    from PIL import Image

    out = trained["out"]
    rc, text, _ = tool(capsys, "plot", out / "tea.his", out / "mid.his", out / "stu.his", "--out", tmp_path / "p")
    assert rc == 0
    paths = re.findall(r"Plot written: (\S+)", text)
    assert [os.path.basename(p) for p in paths] == ["training.png", "tradeoff.png"]
    # the end-of-stage-3 hook finds the teacher and intermediate histories through the middle checkpoint
    assert Plots.supervisor_histories(str(trained["mid"])) == [str(out / "tea.his"), str(out / "mid.his")]
    hooked = Plots.plot_after_training(str(out / "stu"), str(trained["mid"]), 20, print_line=lambda line: None)
    assert hooked == [str(out / "stu_training.png"), str(out / "stu_tradeoff.png")]
    for path in paths + hooked:
        assert os.path.getsize(path) > 10_000
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 500 and image.size[1] > 300
    # one point per pruning run, at the run's best epoch on validation (as the records choose)
    rows = Plots.load_history(str(out / "stu.his"))
    bests = Plots.run_bests(rows)
    assert [r["prn_run"] for r in bests] == [1, 2, 3]
    record = load_checkpoint(trained["stu"]).meta["record"]
    run = bests[record["prn_run"] - 1]
    assert run["metrics"] == record["metrics"] and run["epoch"] == record["epoch"]


def test_compact_export_scores_equal_the_full_checkpoint(trained, capsys, tmp_path):
    target = tmp_path / "stu.compact"
    rc, out, _ = tool(capsys, "export", trained["stu"], target)
    assert rc == 0 and "Compact export written" in out
    raw = torch.load(target, weights_only=True)  # plain tensors and data only
    assert set(raw["tensors"]) == set(Report.COMPACT_KEYS)
    compact = Report.load_compact(str(target))
    report = Report.compression_report(compact.tensors(), compact.meta)
    assert report["bytes"]["compact_export"] == compact.nbytes()

    loaded = modelTools.load_model_file(str(trained["stu"]))
    dataset = dh.load_dataset(str(trained["data"]), "tiny")
    full_u, full_i = modelTools.propagated(loaded, dataset, torch.device("cpu"))
    comp_u, comp_i = compact.embeddings()
    torch.testing.assert_close(comp_u, full_u, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(comp_i, full_i, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(comp_u @ comp_i.T, full_u @ full_i.T, rtol=1e-5, atol=1e-6)
    t = loaded.ckpt.tensors
    assert compact.edge_values.numel() == int((t["adj_mask2_fixed"] != 0).sum())
    assert compact.emb_values.numel() == int((Report.layer0(t) != 0).sum())
    torch.testing.assert_close(compact.layer0(), Report.layer0(t), rtol=0, atol=0)

    # recommend: the same top-K from the compact export and the full checkpoint, train items excluded
    users = "0,5,9,33,59"
    rc_full, full, _ = tool(capsys, "recommend", trained["stu"], "--users", users, "--topk", 20)
    rc_comp, comp, _ = tool(capsys, "recommend", target, "--users", users, "--topk", 20)
    assert rc_full == rc_comp == 0 and full == comp and len(full.splitlines()) == 5
    for line in full.splitlines():
        user, items = line.split(":")
        items = [int(i) for i in items.split()]
        seen = set(dataset.train[int(user.split()[1])].indices)
        assert len(items) == min(20, 40 - len(seen)) and not seen & set(items)


def test_recommend_prints_original_ids_from_the_id_map(trained, capsys, tmp_path):
    folder = tmp_path / "sparse_tiny"
    folder.mkdir()
    for name in ("trnMat.pkl", "valMat.pkl", "tstMat.pkl"):
        os.symlink(REF / "tiny" / name, folder / name)
    (folder / "idmap.json").write_text(json.dumps({"users": [f"u{k}" for k in range(60)],
                                                   "items": [f"item{k}" for k in range(40)]}))
    rc, plain, _ = tool(capsys, "recommend", trained["stu"], "--users", "5", "--topk", 5)
    rc2, mapped, _ = tool(capsys, "recommend", trained["stu"], "--users", "u5", "--topk", 5, "--data_dir", tmp_path)
    assert rc == rc2 == 0
    ids = plain.split(":")[1].split()
    assert mapped.strip() == "user u5 (index 5): " + " ".join(f"item{i}" for i in ids)
    rc, _, err = tool(capsys, "recommend", trained["stu"], "--users", "u99", "--data_dir", tmp_path)
    assert rc == 2 and err.startswith("error: unknown user id 'u99'")


@pytest.mark.parametrize("which", ["tea", "mid", "stu"])
def test_evaluate_full_and_compact_equal_the_training_log(trained, capsys, tmp_path, which):
    path = trained[which]
    meta = load_checkpoint(path).meta
    recorded = Report.recorded_metrics(meta)["test"]
    checked = [path]
    if which != "tea":
        assert tool(capsys, "export", path, tmp_path / "c.mod")[0] == 0
        checked.append(tmp_path / "c.mod")
    for target in checked:
        rc, out, _ = tool(capsys, "evaluate", target, "--split", "test", "--json", tmp_path / "e.json", "--overwrite")
        assert rc == 0
        result = json.loads((tmp_path / "e.json").read_text())
        assert result["Recall"] == pytest.approx(recorded["Recall"], abs=1e-12)
        assert result["NDCG"] == pytest.approx(recorded["NDCG"], abs=1e-12)
        assert f"Recall@20 = {recorded['Recall']:.5f}" in out.splitlines()[0]
    if which == "stu":  # and what the console log printed for that record
        line = _record_line(trained["logs"]["stu"], path)
        assert f"Test Recall:[{result['Recall']:.5f}] NDCG:[{result['NDCG']:.5f}]" in line


def test_published_checkpoints_infer_their_graph_and_match_the_published_log(trained, capsys):
    folder = REF / "published_checkpoints"
    if not folder.is_dir():
        pytest.skip("no published checkpoints in tests/data/reference")
    for name, log in (("stu_tiny_best_global_72_63.mod", "stu.log"), ("mid_tiny_best_global_100_100.mod", "mid.log")):
        # the published tool selects on test: its last "Best for Global" line is the file's test metrics
        logged = re.findall(r"Best for Global Recall:\[([\d.]+)\] Best NDCG:\[([\d.]+)\]",
                            (folder / log).read_text())[-1]
        rc, out, _ = tool(capsys, "evaluate", folder / name, "--dataset", "tiny", "--data_dir", trained["data"])
        assert rc == 0, out
        assert f"Recall@20 = {logged[0]}, NDCG@20 = {logged[1]}" in out


def _one_line_error(err, *needles):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_errors_are_one_line(trained, capsys, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "modelTools.py"), "evaluate", str(tmp_path / "nothing.mod")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    _one_line_error(proc.stderr, "nothing.mod", "does not exist")

    other = tmp_path / "sparse_other"  # a dataset of another shape
    other.mkdir()
    for name, diagonal in (("trnMat.pkl", 0), ("tstMat.pkl", 1)):  # (a test split outside train)
        with open(other / name, "wb") as fh:
            pickle.dump(sp.coo_matrix(np.eye(7, 5, k=diagonal, dtype=np.float32)), fh)
    for target in (trained["stu"], trained["tea"]):
        rc, _, err = tool(capsys, "recommend", target, "--users", "0", "--dataset", "other", "--data_dir", tmp_path)
        assert rc == 2
        _one_line_error(err, "does not fit")
    rc, _, err = tool(capsys, "evaluate", trained["stu"], "--dataset", "missing", "--data_dir", tmp_path)
    _one_line_error(err, "sparse_missing")
    rc, _, err = tool(capsys, "recommend", trained["stu"], "--users", "60")
    _one_line_error(err, "out of range")
    rc, _, err = tool(capsys, "plot", tmp_path / "none.his", "--out", tmp_path)
    _one_line_error(err, "none.his")
    rc, _, err = tool(capsys, "export", trained["stu"], trained["stu"])
    _one_line_error(err, "OUT must differ")
    existing = tmp_path / "taken.mod"
    existing.write_bytes(b"someone else's file")
    rc, _, err = tool(capsys, "export", trained["stu"], existing)
    _one_line_error(err, "--overwrite")
    assert existing.read_bytes() == b"someone else's file"
    assert tool(capsys, "export", trained["stu"], existing, "--overwrite")[0] == 0
    rc, _, err = tool(capsys, "recommend", trained["stu"])  # neither --users nor --all_users
    assert rc == 2
    _one_line_error(err, "--users", "--all_users")
    rc, _, err = tool(capsys, "recommend", trained["stu"], "--all_users")
    _one_line_error(err, "--out")


def test_popularity_baseline_is_evaluated_on_the_same_users(trained, capsys, tmp_path):
    rc, out, _ = tool(capsys, "evaluate", trained["stu"], "--split", "test", "--baseline", "popularity",
                      "--json", tmp_path / "p.json")
    assert rc == 0 and "popularity ranking: Recall@20 = " in out
    result = json.loads((tmp_path / "p.json").read_text())
    # brute force: rank items by train counts (torch.topk's order among ties), train items excluded, docs/method.md#evaluation
    data = dh.load_dataset(str(trained["data"]), "tiny")
    train, test = data.train.toarray() > 0, data.test.toarray() > 0
    counts = torch.from_numpy(train.sum(0).astype(np.float32))
    recalls = []
    for user in np.flatnonzero(test.any(1)):
        scores = counts.clone()
        scores[torch.from_numpy(train[user])] = float("-inf")
        top = torch.topk(scores[None], 20, dim=1).indices[0].numpy()
        recalls.append(test[user][top].sum() / test[user].sum())
    assert result["popularity"]["Recall"] == pytest.approx(np.mean(recalls), rel=1e-9)


def test_summary_has_one_line_per_stage_and_run_at_its_best_validation_epoch(trained, capsys):
    out = trained["out"]
    rc, text, _ = tool(capsys, "summary", out / "tea.his", out / "mid.his", out / "stu.his")
    assert rc == 0
    lines = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| history")]
    assert [line.split(" | ")[1] for line in lines] == ["teacher", "intermediate run 1", "student run 1",
                                                        "student run 2", "student run 3"]
    bests = Plots.run_bests(Plots.load_history(str(out / "stu.his")))
    for line, best in zip(lines[2:], bests):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[4] == str(best["epoch"])
        assert cells[5] == f"{best['metrics']['val']['Recall']:.4f}"
        assert cells[7] == f"{best['metrics']['test']['Recall']:.4f}"
        assert cells[2] == f"{best['edge_kept_pct']:.2f} %"


def test_summary_evaluates_each_run_s_best_checkpoint_at_more_cut_offs(trained, capsys):
    """--checkpoints DIR --topk 20,40: the checkpoint each run saved at its best epoch, evaluated again;
    at the training's K it gives the logged test figures, and the test-selected column is the
    highest test Recall of any epoch of the run."""
    out = trained["out"]
    rc, text, _ = tool(capsys, "summary", out / "stu.his", "--checkpoints", out, "--topk", "20,5")
    assert rc == 0
    header = [c.strip() for c in text.splitlines()[0].strip("|").split("|")]
    assert header[9:14] == ["best test Recall (any epoch)", "test Recall@20", "test NDCG@20", "test Recall@5",
                            "test NDCG@5"]
    rows = Plots.load_history(str(out / "stu.his"))
    lines = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| history")]
    for line, best in zip(lines, Plots.run_bests(rows)):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[10:12] == [cells[7], cells[8]]  # R@20 and N@20 of the checkpoint = the logged test figures
        assert float(cells[12]) <= float(cells[10])  # Recall@5 <= Recall@20
        run = [r for r in rows if r.get("prn_run") == best["prn_run"] and "metrics" in r]
        assert cells[9] == f"{max(r['metrics']['test']['Recall'] for r in run):.4f}"
    rc, _, err = tool(capsys, "summary", out / "stu.his", "--topk", "40")
    assert rc == 2 and "--topk needs --checkpoints" in err


def test_curve_lists_every_evaluated_epoch_against_the_summary_s_wall_time(trained, capsys, tmp_path):
    from PIL import Image

    out = trained["out"]
    files = [out / "tea.his", out / "mid.his", out / "stu.his"]
    rc, text, err = tool(capsys, "curve", *files, "--out", tmp_path / "c")
    assert rc == 0
    header, *lines = text.splitlines()
    columns = header.split(",")
    assert columns[:6] == ["history", "model", "epoch", "edge_kept_pct", "emb_kept_pct", "wall_min"]
    assert {"test_Recall", "test_NDCG", "val_Recall", "val_NDCG"} <= set(columns)
    rows = [dict(zip(columns, line.split(","))) for line in lines]
    evaluated = [(f.name[:-4], r) for f in files for r in Plots.load_history(str(f)) if "metrics" in r]
    assert len(rows) == len(evaluated)
    for row, (label, his) in zip(rows, evaluated):
        assert row["history"] == label and int(row["epoch"]) == his["epoch"]
        assert float(row["test_Recall"]) == pytest.approx(his["metrics"]["test"]["Recall"], abs=5e-6)
    walls = [float(r["wall_min"]) for r in rows]
    assert walls == sorted(walls) and walls[-1] > 0
    summary = tool(capsys, "summary", *files)[1].splitlines()[-1]
    total = sum(r.get("seconds", 0.0) for f in files for r in Plots.load_history(str(f))) / 60
    assert summary.rstrip(" |").endswith(f"{total:.1f} min")
    assert walls[-1] == pytest.approx(total, abs=0.006)  # the last epoch of each file is evaluated
    assert "Plot written" in err
    with Image.open(tmp_path / "c" / "curve.png") as image:
        assert image.format == "PNG" and image.size[0] > 500
