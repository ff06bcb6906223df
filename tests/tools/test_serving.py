"""Serving a trained model: every metric against a hand-computed case, evaluate at several K,
per-user files, exported embeddings, every user's top-K, and the Python API (lightgnn.py)."""
import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from conftest import ROOT

import DataHandler as dh
import lightgnn
import modelTools
from Utils.runtime.Errors import ConfigError
from Utils.training.Metrics import ALL_METRICS, Evaluator, parse_ks, parse_metrics


# ----------------------------------------------------------------------------- metrics by hand
def _hand_case():
    """Two users, five items ranked 0 > 1 > 2 > 3 > 4 for both (one-dimensional embeddings).
    Train: user 0 saw item 4, user 1 item 0 (excluded from their rankings); test: user 0 {1, 3},
    user 1 {2}. So user 0 ranks [0, 1, 2, 3], user 1 [1, 2, 3, 4]."""
    train = sp.csr_matrix(([1.0, 1.0], ([0, 1], [4, 0])), shape=(2, 5))
    test = sp.csr_matrix(([1.0, 1.0, 1.0], ([0, 0, 1], [1, 3, 2])), shape=(2, 5))
    users = torch.ones(2, 1)
    items = torch.tensor([[5.0], [4.0], [3.0], [2.0], [1.0]])
    return train, test, users, items


def test_every_metric_equals_the_hand_computed_value():
    train, test, users, items = _hand_case()
    summary, rows = Evaluator(train, test, 2, 1, "cpu").evaluate_many(users, items, (2, 3), ALL_METRICS,
                                                                        per_user=True)
    g = 1 / math.log2(3)  # the discount of rank 1 (0-based)
    expected = {
        # K = 2: user 0 gets [0, 1] (hit at rank 1 of 2 test items), user 1 [1, 2] (hit at rank 1 of 1)
        "Recall@2": (1 / 2 + 1) / 2, "NDCG@2": (g / (1 + g) + g / 1) / 2, "Precision@2": 1 / 2, "Hit@2": 1.0,
        "MRR@2": 1 / 2, "MAP@2": ((1 / 2) / 2 + (1 / 2) / 1) / 2,
        # lists [0, 1] and [1, 2]: items 0, 1, 2 of 5; counts sorted 0, 0, 1, 1, 2
        "Coverage@2": 3 / 5, "Gini@2": (0 * -4 + 0 * -2 + 1 * 0 + 1 * 2 + 2 * 4) / (5 * 4),
        "AvgPop@2": ((1 + 0) / 2 + (0 + 0) / 2) / 2,  # train popularity: item 0 and item 4 once
        # K = 3: [0, 1, 2] and [1, 2, 3], still one hit each at rank 1
        "Recall@3": (1 / 2 + 1) / 2, "NDCG@3": (g / (1 + g) + g) / 2, "Precision@3": 1 / 3, "Hit@3": 1.0,
        "MRR@3": 1 / 2, "MAP@3": ((1 / 2) / 2 + (1 / 2) / 1) / 2,
        "Coverage@3": 4 / 5, "Gini@3": (0 * -4 + 1 * -2 + 1 * 0 + 2 * 2 + 2 * 4) / (5 * 6),
        "AvgPop@3": (1 / 3 + 0) / 2,
    }
    assert summary.keys() == expected.keys()
    for name, value in expected.items():
        assert summary[name] == pytest.approx(value, abs=1e-12), name
    assert rows["user"].tolist() == [0, 1] and rows["n_truth"].tolist() == [2, 1]
    assert rows["Recall@2"].tolist() == [0.5, 1.0] and rows["MAP@2"].tolist() == [0.25, 0.5]


def test_more_metrics_at_one_k_leave_recall_and_ndcg_as_the_training_evaluator_gives_them():
    rng = np.random.default_rng(3)
    train = sp.csr_matrix((rng.random((40, 30)) < 0.2).astype(np.float32))
    test = sp.csr_matrix(((rng.random((40, 30)) < 0.1) & (train.toarray() == 0)).astype(np.float32))
    users, items = torch.randn(40, 4), torch.randn(30, 4)
    for k in (1, 5, 30):
        evaluator = Evaluator(train, test, k, 7, "cpu")
        one = evaluator.evaluate(users, items)
        many, _ = evaluator.evaluate_many(users, items, (k,), ALL_METRICS)
        assert many[f"Recall@{k}"] == one["Recall"] and many[f"NDCG@{k}"] == one["NDCG"]
    full, _ = evaluator.evaluate_many(users, items, (30,), ("Recall", "Hit", "Coverage"))
    assert full["Recall@30"] == pytest.approx(1.0) and full["Hit@30"] == 1.0  # every unseen item listed


def test_metric_and_cut_off_lists_are_checked():
    assert parse_metrics("recall,ndcg,hit") == ("Recall", "NDCG", "Hit")
    assert parse_metrics("all") == ALL_METRICS
    assert parse_ks("40,10,20") == (10, 20, 40)
    for bad in ("recal", ""):
        with pytest.raises(ConfigError, match="Recall, NDCG"):
            parse_metrics(bad)
    for bad in ("0,20", "x", ""):
        with pytest.raises(ConfigError, match="positive integers"):
            parse_ks(bad)
    with pytest.raises(ConfigError, match="above the number of items"):
        parse_ks("10,41", 40)


# ----------------------------------------------------------------------------- the model tools
def tool(capsys, *argv):
    rc = modelTools.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.slow
def test_evaluate_at_several_k_prints_a_table_with_the_logged_k(trained, capsys, tmp_path):
    rc, one, _ = tool(capsys, "evaluate", trained["tea"], "--split", "test")
    logged = re.search(r"Recall@20 = ([\d.]+), NDCG@20 = ([\d.]+)", one).groups()
    rc, out, _ = tool(capsys, "evaluate", trained["tea"], "--split", "test", "--ks", "20,40",
                      "--metrics", "all", "--per_user", tmp_path / "u.csv", "--json", tmp_path / "e.json")
    assert rc == 0
    lines = out.splitlines()
    assert lines[1].split() == ["metric", "@20", "@40"]
    table = {line.split()[0]: line.split()[1:] for line in lines[2:2 + len(ALL_METRICS)]}
    assert list(table) == list(ALL_METRICS)
    assert table["Recall"][0] == logged[0] and table["NDCG"][0] == logged[1]
    result = json.loads((tmp_path / "e.json").read_text())["metrics"]
    with open(tmp_path / "u.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == int(re.search(r"test: (\d+) users", out).group(1))
    for name in ("Recall@20", "NDCG@40", "MAP@40", "MRR@20", "Hit@40", "Precision@20"):
        assert np.mean([float(r[name]) for r in rows]) == pytest.approx(result[name], rel=1e-12)
    rc, _, err = tool(capsys, "evaluate", trained["tea"], "--per_user", tmp_path / "u.csv")
    assert rc == 2 and "--overwrite" in err


@pytest.mark.slow
def test_exported_embeddings_reproduce_evaluate_and_recommend_all_users_equals_recommend(trained, capsys, tmp_path):
    stu = trained["stu"]
    rc, out, _ = tool(capsys, "export", stu, tmp_path / "emb", "--embeddings")
    assert rc == 0 and "Embeddings written" in out
    users = np.load(tmp_path / "emb" / "user_embeddings.npy")
    items = np.load(tmp_path / "emb" / "item_embeddings.npy")
    ids = json.loads((tmp_path / "emb" / "ids.json").read_text())
    assert users.dtype == np.float32 and users.shape[0] == len(ids["users"]) == 60 and items.shape[0] == 40
    data = dh.load_dataset(str(trained["data"]), "tiny")
    recall = Evaluator(data.train, data.test, 20, 64, "cpu").evaluate(torch.from_numpy(users),
                                                                      torch.from_numpy(items))["Recall"]
    rc, out, _ = tool(capsys, "evaluate", stu, "--split", "test")
    assert f"Recall@20 = {recall:.5f}," in out

    rc, out, _ = tool(capsys, "recommend", stu, "--all_users", "--out", tmp_path / "all.tsv", "--batch", "7",
                      "--topk", "5", "--scores")
    assert rc == 0 and "of 60 users" in out
    lines = (tmp_path / "all.tsv").read_text().splitlines()
    assert lines[0] == "user\titems\tscores" and len(lines) == 61
    rc, printed, _ = tool(capsys, "recommend", stu, "--users", "0,13,59", "--topk", "5")
    for user, line in zip((0, 13, 59), printed.splitlines()):
        listed = line.split(": ")[1].split()
        assert lines[1 + user].split("\t")[:2] == [str(user), ",".join(listed)]
    rc, _, err = tool(capsys, "export", stu, tmp_path / "emb", "--embeddings")
    assert rc == 2 and "--overwrite" in err


# ----------------------------------------------------------------------------- the Python API
@pytest.mark.slow
def test_api_equals_the_model_tools(trained, capsys, tmp_path):
    stu = trained["stu"]
    model = lightgnn.load(stu)
    users, items = model.embeddings()
    assert users.shape == (60, 8) and items.shape == (40, 8)
    rc, printed, _ = tool(capsys, "recommend", stu, "--users", "0,13,59", "--topk", "10")
    expected = [[int(i) for i in line.split(": ")[1].split()] for line in printed.splitlines()]
    assert model.recommend([0, 13, 59], k=10) == expected
    expected_scores = [[float(users[13] @ items[2]), float(users[13] @ items[7])]]
    assert model.score([13], [2, 7]).tolist()[0] == pytest.approx(expected_scores[0], rel=1e-5)
    unseen = model.recommend([0], k=40, exclude_seen=False)[0]
    assert sorted(unseen) == list(range(40))  # every item, train items included
    rc, out, _ = tool(capsys, "evaluate", stu, "--split", "test", "--ks", "10,20", "--metrics", "recall,ndcg,map",
                      "--json", tmp_path / "e.json")
    assert model.evaluate("test", ks=(10, 20), metrics=("Recall", "NDCG", "MAP")) == \
        json.loads((tmp_path / "e.json").read_text())["metrics"]
    with pytest.raises(ConfigError, match="out of range"):
        model.recommend([60])


@pytest.mark.slow
def test_api_names_users_and_items_by_their_original_ids(trained, tmp_path):
    data = tmp_path / "Datasets" / "sparse_tiny"
    shutil.copytree(trained["data"] / "sparse_tiny", data)
    idmap = {"users": [f"u{k}" for k in range(60)], "items": [f"i{k}" for k in range(40)]}
    (data / "idmap.json").write_text(json.dumps(idmap))
    model = lightgnn.load(trained["stu"], data_dir=str(tmp_path / "Datasets"))
    by_index = lightgnn.load(trained["stu"]).recommend([3, 9], k=5)
    assert model.recommend(["u3", "u9"], k=5) == [[f"i{i}" for i in row] for row in by_index]
    assert model.recommend([3, 9], k=5, by_index=True) == by_index
    with pytest.raises(ConfigError, match="unknown user id 3 "):
        model.recommend([3])


@pytest.mark.slow
def test_readme_python_snippet_runs_as_written_from_another_folder(trained, capsys, tmp_path):
    """The README's snippet, unchanged, in a fresh process whose working folder is not the project:
    the project is a copy of its Python sources (what ``pip install -e .`` puts on the path) whose
    outModels/demo holds the quick start's compact student (here the tiny one)."""
    text = (ROOT / "README.md").read_text()
    snippet = re.search(r"## Python API.*?```python\n(.*?)```", text, flags=re.S).group(1)
    assert len(snippet.strip().splitlines()) <= 10
    project = tmp_path / "project"
    shutil.copytree(ROOT / "Utils", project / "Utils", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("lightgnn.py", "Model.py", "DataHandler.py", "Params.py"):
        shutil.copy(ROOT / name, project / name)
    target = re.search(r'"(outModels/demo/[^"]+)"', snippet).group(1)
    os.makedirs(project / os.path.dirname(target))
    assert tool(capsys, "export", trained["stu"], project / target)[0] == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, "-c", snippet], cwd=elsewhere, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(project)})
    assert proc.returncode == 0, proc.stderr
    assert "Recall@20" in proc.stdout


@pytest.mark.slow
def test_a_relative_data_dir_recorded_at_training_is_found_from_another_folder(trained, tmp_path, monkeypatch):
    """Trained with --data_dir=./Datasets in the project folder, loaded from elsewhere: the
    checkpoint's recorded absolute dataset folder is used."""
    saved = torch.load(trained["stu"], weights_only=True)
    saved["meta"]["flags"]["data_dir"] = saved["meta"]["data_dir"] = "./Datasets"
    torch.save(saved, tmp_path / "moved.mod")
    assert modelTools.main(["export", str(tmp_path / "moved.mod"), str(tmp_path / "compact.mod"),
                            "--data_dir", str(trained["data"])]) == 0
    monkeypatch.chdir(tmp_path)
    expected = lightgnn.load(trained["stu"]).evaluate("test")
    for name in ("moved.mod", "compact.mod"):
        model = lightgnn.load(tmp_path / name)
        assert model.dataset.directory == str(trained["data"] / "sparse_tiny")
        assert model.evaluate("test") == pytest.approx(expected, abs=1e-9)


# ----------------------------------------------------------------------------- what a model costs in use
@pytest.mark.slow
def test_bench_inference_measures_every_model_and_relates_them(trained, capsys, tmp_path):
    assert tool(capsys, "export", trained["stu"], tmp_path / "c.mod")[0] == 0
    models = [f"student_best={trained['stu']}", f"student_compact={tmp_path / 'c.mod'}"]
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_inference.py"), *models, "--repeats", "1",
                           "--threads", "1", "--recall", "--relative_to", "student_best",
                           "--plot", str(tmp_path / "fig3.png"), "--fig4", str(tmp_path / "fig4.png")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    full, compact = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    data = dh.load_dataset(str(trained["data"]), "tiny")
    logged = Evaluator(data.train, data.test, 20, 64, "cpu").evaluate(*lightgnn.load(trained["stu"]).embeddings())
    assert full["test_recall"] == pytest.approx(logged["Recall"], abs=1e-12)
    assert compact["test_recall"] == pytest.approx(full["test_recall"], abs=1e-6)  # the same model
    assert compact["macs_propagation"] < full["macs_propagation"]  # surviving edges only
    assert compact["bytes_model"] == full["bytes_model"] < full["bytes_dense"]  # what pruning kept, either way
    assert full["gnn_layer"] == 2 and full["edges_kept_pct"] < 100
    for line in (full, compact):
        assert line["all_users_s"] >= line["propagation_s"] > 0 and line["one_user_ms"] > 0
        assert line["peak_rss_mb"] >= line["data_rss_mb"] > 0
    assert "| student_compact |" in proc.stdout and (tmp_path / "fig3.png").stat().st_size > 0
    assert (tmp_path / "fig4.png").stat().st_size > 0
    saved = tmp_path / "lines.jsonl"  # earlier measurements, drawn again without measuring
    saved.write_text(json.dumps(dict(full, label="earlier")) + "\n")
    again = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_inference.py"), "--lines", str(saved),
                            "--relative_to", "earlier", "--fig4", str(tmp_path / "again.png")],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "| earlier | 100.0 |" in again.stdout and (tmp_path / "again.png").stat().st_size > 0
