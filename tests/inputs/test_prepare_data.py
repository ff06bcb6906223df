"""prepareData.py: every input format, k-core, splits, errors with file:line, atomic output, speed, demo data."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.sparse as sp

import DataHandler as dh
from Utils.data import Convert
from Utils.data.Convert import Options, kcore, prepare, synthetic
from Utils.runtime.Errors import ConfigError, DataError
from conftest import ROOT


def run(tmp_path, **kw):
    """prepare() into tmp_path/D, silently, replacing a dataset of the same name unless
    overwrite=False; returns (Result, loaded Dataset, idmap)."""
    opts = Options(data_dir=str(tmp_path / "D"), **{"overwrite": True, **kw})
    result = prepare(opts, log=lambda *_: None)
    data = dh.load_dataset(str(tmp_path / "D"), kw["name"])
    with open(os.path.join(result.directory, "idmap.json")) as fh:
        idmap = json.load(fh)
    return result, data, idmap


def pairs(mat, idmap):
    """Set of (original user, original item) of a split."""
    coo = sp.coo_matrix(mat)
    return {(idmap["users"][u], idmap["items"][i]) for u, i in zip(coo.row, coo.col)}


def cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "prepareData.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def write(path, text):
    path.write_text(text)
    return str(path)


def assert_splits_sane(data):
    """Disjoint splits, binary float32 COO pickles, every user with a train interaction."""
    for name in ("trnMat.pkl", "valMat.pkl", "tstMat.pkl"):
        with open(os.path.join(data.directory, name), "rb") as fh:
            raw = __import__("pickle").load(fh)
        assert isinstance(raw, sp.coo_matrix) and raw.dtype == np.float32 and (raw.data == 1.0).all()
    total = data.train + data.val + data.test
    assert total.max() == 1.0, "splits overlap"
    assert (np.diff(data.train.indptr) > 0).all(), "a user without train interactions"


# ----------------------------------------------------------------------------- formats
def test_lightgcn_keeps_given_split_and_carves_validation(tmp_path):
    rng = np.random.default_rng(1)
    train_lines, test_lines, given_train, given_test = [], [], set(), set()
    for u in range(30):
        items = rng.choice(40, size=14, replace=False)
        train_lines.append(" ".join(map(str, [u, *items[:10]])))
        test_lines.append(" ".join(map(str, [u, *items[10:]])))
        given_train |= {(str(u), str(i)) for i in items[:10]}
        given_test |= {(str(u), str(i)) for i in items[10:]}
    train = write(tmp_path / "train.txt", "\n".join(train_lines) + "\n")
    test = write(tmp_path / "test.txt", "\n".join(test_lines) + "\n\n")
    result, data, idmap = run(tmp_path, format="lightgcn", input=train, test=test, name="lg", kcore=0)
    assert (data.n_users, data.n_items) == (30, len({i for _, i in given_train | given_test}))
    assert idmap["users"] == [str(u) for u in range(30)]  # integer ids keep their order
    assert pairs(data.test, idmap) == given_test
    val = pairs(data.val, idmap)
    assert len(val) == round(0.05 * 420) and val <= given_train
    assert pairs(data.train, idmap) | val == given_train
    assert_splits_sane(data)


def test_a_given_test_split_is_never_filtered_by_the_k_core(tmp_path):
    """Issue 36, case 5: with the default 3-core, a test file whose items are rare (or seen only
    in test) kept its interactions nowhere; now the core is that of train and test is kept."""
    train_lines = [f"{u} " + " ".join(str((u + j) % 12) for j in range(6)) for u in range(12)]
    test_lines = [f"{u} {100 + u} {(u + 7) % 12}" for u in range(12)]  # an item only in test, one in train
    test_lines[0] = "0 100 0"  # (0, 0) is also in train: dropped from test, with a note
    train = write(tmp_path / "train.txt", "\n".join(train_lines) + "\n")
    test = write(tmp_path / "test.txt", "\n".join(test_lines) + "\n")
    result, data, idmap = run(tmp_path, format="lightgcn", input=train, test=test, name="g", kcore=3)
    given = {(line.split()[0], item) for line in test_lines for item in line.split()[1:]} - {("0", "0")}
    assert pairs(data.test, idmap) == given and data.test.nnz == 23
    assert any("1 of the 24 given test interactions are also in train" in note for note in result.notes)
    assert any("12 items appear only in test" in note for note in result.notes)
    assert ("3-core of train (0 rounds)", 95) in result.steps  # 72 train + 23 test interactions
    with pytest.raises(DataError, match="the test split would be empty"):
        run(tmp_path, format="lightgcn", input=train, test=train, name="g2", kcore=3)


@pytest.mark.parametrize("compress", ["gzip", "bz2", "lzma"])
def test_compressed_input_is_read_through(tmp_path, compress):
    """Issue 36, case 9: a gzip (bzip2, xz) file was refused as "not UTF-8"; it is read whatever its name."""
    import importlib

    text = "".join(f"{u}\t{(u * 7 + j) % 30}\t5\n" for u in range(20) for j in range(6))
    plain = write(tmp_path / "plain.csv", text)
    packed = tmp_path / "packed.csv"
    packed.write_bytes(importlib.import_module(compress).compress(text.encode()))
    _, want, _ = run(tmp_path, format="csv", input=plain, name="p", kcore=0)
    _, got, _ = run(tmp_path, format="csv", input=str(packed), name="z", kcore=0)
    assert (got.train != want.train).nnz == 0 and (got.test != want.test).nnz == 0
    packed.write_bytes(packed.read_bytes()[:20])
    with pytest.raises(DataError, match="cannot be decompressed"):
        run(tmp_path, format="csv", input=str(packed), name="z2", kcore=0)


def test_recbole_fields_found_by_name_in_any_order(tmp_path):
    header = "item_id:token\tgenre:token_seq\trating:float\tuser_id:token\ttimestamp:float\n"
    rows, expected = [], set()
    rng = np.random.default_rng(2)
    for u in range(25):
        for i in rng.choice(30, size=8, replace=False):
            rating = int(rng.integers(1, 6))
            rows.append(f"m{i}\tDrama Comedy\t{rating}.0\tu{u}\t{800000000 + len(rows)}\n")
            if rating >= 3:
                expected.add((f"u{u}", f"m{i}"))
    path = write(tmp_path / "ml.inter", header + "".join(rows))
    result, data, idmap = run(tmp_path, format="recbole", input=path, name="rb", kcore=0, min_rating=3)
    got = pairs(data.train, idmap) | pairs(data.val, idmap) | pairs(data.test, idmap)
    assert got == expected
    assert result.n_interactions == len(expected) and ("rating >= 3", len(expected)) in result.steps
    assert_splits_sane(data)


@pytest.mark.parametrize("name,text,kw", [
    ("with_header.csv", "userId,movieId,rating,timestamp\n{rows}", {}),
    ("no_header.tsv", "{rows}", {}),
    ("semicolon.csv", "who;what;when\n{rows}", {"user_col": "who", "item_col": "what", "time_col": "when",
                                                 "rating_col": "none"}),
    ("spaces.txt", "{rows}", {"sep": "space", "user_col": "0", "item_col": "1", "rating_col": "none",
                              "time_col": "none"}),
    ("quoted.csv", '"user","item"\n{rows}', {}),
])
def test_csv_variants(tmp_path, name, text, kw):
    sep = {"no_header.tsv": "\t", "semicolon.csv": ";", "spaces.txt": "   "}.get(name, ",")
    rng = np.random.default_rng(3)
    rows, expected = [], set()
    for u in range(20):
        for i in rng.choice(25, size=6, replace=False):
            fields = [f"user {u}" if name == "quoted.csv" else str(u), str(i)]
            if name in ("with_header.csv", "no_header.tsv"):
                fields += ["4.5", str(1000 + len(rows))]
            elif name == "semicolon.csv":
                fields += [str(1000 + len(rows))]
            if name == "quoted.csv":
                fields = [f'"{f}"' for f in fields]
            rows.append(sep.join(fields) + ("\r\n" if name == "with_header.csv" else "\n"))
            expected.add((f"user {u}" if name == "quoted.csv" else str(u), str(i)))
    path = write(tmp_path / name, text.format(rows="".join(rows)))
    split = "random" if name in ("spaces.txt", "quoted.csv") else "time"
    _, data, idmap = run(tmp_path, format="csv", input=path, name="c", kcore=0, split=split, **kw)
    assert pairs(data.train, idmap) | pairs(data.val, idmap) | pairs(data.test, idmap) == expected
    assert_splits_sane(data)


def test_cli_prints_statistics_table(tmp_path):
    path = write(tmp_path / "x.inter", "user_id:token\titem_id:token\n" +
                 "".join(f"{u}\t{i}\n" for u in range(10) for i in range(u % 3, u % 3 + 8)))
    proc = cli("--input", path, "--format", "recbole", "--name", "t", "--data_dir", str(tmp_path / "D"))
    assert proc.returncode == 0, proc.stderr
    for word in ("users", "items", "interactions", "train", "val", "test", "density"):
        assert word in proc.stdout
    assert sorted(os.listdir(tmp_path / "D" / "sparse_t")) == ["idmap.json", "stats.json", "trnMat.pkl",
                                                                "tstMat.pkl", "valMat.pkl"]


# ----------------------------------------------------------------------------- filters and splits
def test_kcore_is_iterated_until_stable():
    # k=2: dropping user D starves item z, which starves user C, which leaves only A,B x x,y
    edges = [("A", "x"), ("A", "y"), ("B", "x"), ("B", "y"), ("C", "y"), ("C", "z"), ("D", "z")]
    uid = {"A": 0, "B": 1, "C": 2, "D": 3}
    iid = {"x": 0, "y": 1, "z": 2}
    users = np.array([uid[u] for u, _ in edges])
    items = np.array([iid[i] for _, i in edges])
    keep, rounds = kcore(users, items, 2, 4, 3)
    assert [e for e, k in zip(edges, keep) if k] == edges[:4]
    assert rounds == 3
    assert kcore(users, items, 0, 4, 3)[0].all()


def test_kcore_through_the_pipeline(tmp_path):
    lines = ["user_id:token\titem_id:token"]
    for u in range(6):  # a 3-core block: users 0..5 x items 0..3
        lines += [f"{u}\t{i}" for i in range(4)]
    lines += ["6\t0", "6\t1", "6\t9", "7\t9", "8\t9", "7\t8"]  # user 6 has 3, but item 9 has 3 users of whom 7, 8
    path = write(tmp_path / "k.inter", "\n".join(lines) + "\n")  # have < 3 -> 7, 8 go, then 9, then 6
    result, data, idmap = run(tmp_path, format="recbole", input=path, name="k", kcore=3)
    assert idmap["users"] == [str(u) for u in range(6)] and idmap["items"] == ["0", "1", "2", "3"]
    assert result.n_interactions == 24
    result, data, idmap = run(tmp_path, format="recbole", input=path, name="k", kcore=0)
    assert result.n_interactions == 30 and data.n_users == 9


def test_random_split_sizes_and_seed(tmp_path):
    r1, d1, _ = run(tmp_path, format="synthetic", name="s", n_users=400, n_items=300, n_groups=5, seed=7)
    n = r1.n_interactions
    assert r1.counts == {"test": round(0.25 * n), "val": round(0.05 * n),
                         "train": n - round(0.25 * n) - round(0.05 * n)}
    assert_splits_sane(d1)
    r2, d2, _ = run(tmp_path, format="synthetic", name="s2", n_users=400, n_items=300, n_groups=5, seed=7,
                    val_ratio=0.1, test_ratio=0.2, kcore=0)
    m = r2.n_interactions
    assert (r2.counts["val"], r2.counts["test"]) == (round(0.1 * m), round(0.2 * m))


def test_time_split_orders_by_timestamp(tmp_path):
    rng = np.random.default_rng(4)
    rows = []
    for u in range(200):
        k = int(rng.integers(3, 40))
        for i, t in zip(rng.choice(300, size=k, replace=False), rng.permutation(k)):
            rows.append(f"{u}\t{i}\t{10_000 + 7 * t}\n")
    rows = [rows[j] for j in rng.permutation(len(rows))]  # file order is not time order
    path = write(tmp_path / "t.inter", "user_id:token\titem_id:token\ttimestamp:float\n" + "".join(rows))
    result, data, idmap = run(tmp_path, format="recbole", input=path, name="t", kcore=0, split="time")
    n = result.n_interactions
    for part, share in (("train", 0.70), ("val", 0.05), ("test", 0.25)):
        assert abs(result.counts[part] / n - share) < 0.02, (part, result.counts)
    time_of = {(u, i): int(t) for u, i, t in (r.split() for r in rows)}
    for u in range(data.n_users):
        spans = []
        for mat in (data.train, data.val, data.test):
            items = mat.indices[mat.indptr[u]:mat.indptr[u + 1]]
            spans.append([time_of[(idmap["users"][u], idmap["items"][i])] for i in items])
        assert spans[0], f"user {u} has no train interaction"
        flat = [t for s in spans if s for t in (min(s), max(s))]
        assert flat == sorted(flat), f"user {u}: splits not in time order"


def test_min_rating_without_ratings_is_noted_and_bad_options_fail(tmp_path):
    path = write(tmp_path / "a.txt", "".join(f"{u} " + " ".join(map(str, range(u % 4, u % 4 + 6))) + "\n"
                                             for u in range(12)))
    result, _, _ = run(tmp_path, format="lightgcn", input=path, name="a", min_rating=4)
    assert any("--min_rating" in note for note in result.notes)
    with pytest.raises(ConfigError, match="--split time"):
        prepare(Options(format="lightgcn", input=path, test=path, name="a", split="time"), log=lambda *_: None)
    with pytest.raises(ConfigError, match="--val_ratio"):
        prepare(Options(format="lightgcn", input=path, name="a", val_ratio=0.5, test_ratio=0.5), log=lambda *_: None)
    with pytest.raises(DataError, match="timestamp"):
        prepare(Options(format="lightgcn", input=path, name="a", split="time", data_dir=str(tmp_path)),
                log=lambda *_: None)


# ----------------------------------------------------------------------------- failures
MALFORMED = [
    ("recbole", "bad.inter", "user_id:token\titem_id:token\trating:float\n1\t2\t3\n1\t3\n", "bad.inter:3"),
    ("recbole", "bad.inter", "user_id:token\titem_id:token\trating:float\n1\t2\t3\n\n1\t3\tfive\n", "bad.inter:4"),
    ("recbole", "bad.inter", "user_id:token\titem_id:token\n1\t2\n \t3\n", "bad.inter:3"),
    ("csv", "bad.csv", "user,item,rating,timestamp\n1,2,3,100\n1,3,4,later\n", "bad.csv:3"),
    ("csv", "bad.csv", "1,2\n1,3\n2,4,5\n", "bad.csv:3"),
    ("csv", "bad.csv", "user,item\n1,2\n,3\n", "bad.csv:3"),
    ("lightgcn", "bad.txt", "0 1 2\n1 2 x3\n", "bad.txt:2"),
    ("recbole", "bad.inter", "user\titem\n1\t2\n", "bad.inter:1"),
]


@pytest.mark.parametrize("fmt,fname,text,where", MALFORMED)
def test_malformed_input_names_file_and_line_and_writes_nothing(tmp_path, fmt, fname, text, where):
    data_dir = tmp_path / "D"
    path = write(tmp_path / fname, text)
    with pytest.raises(DataError, match=where):
        prepare(Options(format=fmt, input=path, name="bad", data_dir=str(data_dir)), log=lambda *_: None)
    assert not data_dir.exists()


def test_cli_error_is_one_line_and_old_dataset_survives(tmp_path):
    data_dir = tmp_path / "D"
    good = write(tmp_path / "g.inter", "user_id:token\titem_id:token\n" +
                 "".join(f"{u}\t{i}\n" for u in range(8) for i in range(6)))
    assert cli("--input", good, "--format", "recbole", "--name", "x", "--data_dir", str(data_dir)).returncode == 0
    before = {f: (data_dir / "sparse_x" / f).read_bytes() for f in os.listdir(data_dir / "sparse_x")}
    bad = write(tmp_path / "b.inter", "user_id:token\titem_id:token\trating:float\n1\t2\t3\n1\t2\t3\t4\n")
    proc = cli("--input", bad, "--format", "recbole", "--name", "x", "--data_dir", str(data_dir), "--overwrite")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and "b.inter:3" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert os.listdir(data_dir) == ["sparse_x"]  # no temporary directory left behind
    assert {f: (data_dir / "sparse_x" / f).read_bytes() for f in os.listdir(data_dir / "sparse_x")} == before
    proc = cli("--input", good, "--format", "recbole", "--name", "x", "--data_dir", str(data_dir))  # no --overwrite
    assert proc.returncode == 2 and "--overwrite" in proc.stderr and proc.stderr.count("\n") == 1


def test_existing_dataset_is_replaced_whole_and_only_when_asked(tmp_path):
    r1, d1, _ = run(tmp_path, format="synthetic", name="s", n_users=300, n_items=200, n_groups=4, seed=1)
    before = (tmp_path / "D" / "sparse_s" / "trnMat.pkl").read_bytes()
    with pytest.raises(DataError, match="--overwrite"):
        run(tmp_path, format="synthetic", name="s", n_users=200, n_items=100, n_groups=4, seed=2, overwrite=False)
    assert (tmp_path / "D" / "sparse_s" / "trnMat.pkl").read_bytes() == before
    r2, d2, _ = run(tmp_path, format="synthetic", name="s", n_users=200, n_items=100, n_groups=4, seed=2,
                    val_ratio=0.0)
    assert r2.replaced and d2.n_users == 200 and d2.val is None  # no stale valMat.pkl from the first run
    assert os.listdir(tmp_path / "D") == ["sparse_s"]


def test_write_failure_leaves_no_partial_output(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Convert.json, "dump", broken)
    with pytest.raises(DataError, match="No space left"):
        run(tmp_path, format="synthetic", name="s", n_users=100, n_items=80, n_groups=2)
    assert os.listdir(tmp_path / "D") == []


# ----------------------------------------------------------------------------- speed
def test_recbole_movielens_100k_size_converts_under_10s(tmp_path):
    rng = np.random.default_rng(5)
    n_users, n_items, n = 943, 1682, 100_000
    popularity = 1.0 / (np.arange(n_items) + 10.0)
    flat = rng.choice(n_users * n_items, size=n, replace=False,
                      p=np.tile(popularity / popularity.sum() / n_users, n_users))
    users, items = flat // n_items + 1, flat % n_items + 1
    ratings = rng.integers(1, 6, size=n)
    times = rng.integers(874_724_710, 893_286_638, size=n)
    body = "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in zip(users.tolist(), items.tolist(), ratings.tolist(),
                                                                 times.tolist()))
    path = write(tmp_path / "ml-100k.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + body)
    start = time.perf_counter()
    proc = cli("--input", path, "--format", "recbole", "--name", "ml", "--data_dir", str(tmp_path / "D"),
               "--split", "time")
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    print(f"\nrecbole 100,000 lines -> pickles: {seconds:.2f} s (whole CLI process)")
    assert seconds < 10.0
    data = dh.load_dataset(str(tmp_path / "D"), "ml")
    assert data.train.nnz + data.val.nnz + data.test.nnz > 95_000


# ----------------------------------------------------------------------------- demo data
def test_synthetic_demo_is_deterministic_and_grouped(tmp_path):
    r1, d1, idmap = run(tmp_path, format="synthetic", name="demo")
    r2, d2, _ = run(tmp_path, format="synthetic", name="demo2")
    r3, d3, _ = run(tmp_path, format="synthetic", name="demo3", seed=1)
    assert 2000 <= d1.n_users <= 5000 and 1000 <= d1.n_items <= 5000 and 15 <= r1.n_interactions / d1.n_users <= 25
    for a, b in ((d1.train, d2.train), (d1.val, d2.val), (d1.test, d2.test)):
        assert (a != b).nnz == 0
    assert (d1.train != d3.train).nnz > 0
    # users' test items mostly belong to their own latent group
    _, truth = synthetic(Options(format="synthetic", name="demo"))
    user_group = truth.user_group[np.array(idmap["users"], dtype=int)]
    item_group = truth.item_group[np.array(idmap["items"], dtype=int)]
    test = sp.coo_matrix(d1.test)
    assert (user_group[test.row] == item_group[test.col]).mean() > 0.6
    # a model that finds the groups (here: the groups' train popularity) clearly beats popularity
    train = d1.train
    popularity = np.asarray(train.sum(axis=0)).ravel()
    groups = np.zeros((truth.user_group.max() + 1, d1.n_items))
    tr = sp.coo_matrix(train)
    np.add.at(groups, (user_group[tr.row], tr.col), 1.0)

    def recall(scores):
        scores = scores - 1e8 * train.toarray()
        top = np.argsort(-scores, axis=1)[:, :20]
        hits = np.take_along_axis(d1.test.toarray(), top, axis=1).sum(1)
        n_test = np.diff(d1.test.indptr)
        return float((hits[n_test > 0] / n_test[n_test > 0]).mean())

    pop = recall(np.tile(popularity, (d1.n_users, 1)))
    grouped = recall(groups[user_group] + 1e-3 * popularity)
    assert grouped > 2 * pop, (grouped, pop)
