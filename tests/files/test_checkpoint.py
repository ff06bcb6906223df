"""Checkpoint I/O: our atomic weights-only format and the safe importer of published .mod files."""
import argparse
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from conftest import REF
from Utils.files.Checkpoint import Checkpoint, check_compatible, load_checkpoint, save_checkpoint
from Utils.files.Published import import_published_mod
from Utils.runtime.Errors import CheckpointError

PUBLISHED = REF / "published_checkpoints"
# file stem -> (role taken by default, number of edges or None for the teacher)
PUBLISHED_FILES = {
    "teacher_tiny": ("teacher", None),
    "mid_tiny_best_global_100_100": ("middle_teacher", 3530),
    "stu_tiny_best_global_72_63": ("student", 758),
}


def published(stem, suffix=".mod"):
    path = PUBLISHED / f"{stem}{suffix}"
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return path


def sp_tensors(n_users=5, n_items=4, d=3, n_edges=7):
    g = torch.Generator().manual_seed(0)
    return {
        "uEmbeds": torch.randn(n_users, d, generator=g),
        "iEmbeds": torch.randn(n_items, d, generator=g),
        "adj_mask1_train": torch.randn(n_edges, generator=g),
        "adj_mask2_fixed": (torch.rand(n_edges, generator=g) > 0.3).float(),
        "emb_mask2_fixed": (torch.rand(n_users + n_items, d, generator=g) > 0.3).float(),
    }


# ----------------------------------------------------------------------------- our format


def test_round_trip_is_weights_only_and_plain(tmp_path):
    tensors = sp_tensors()
    tensors["uEmbeds"] = torch.nn.Parameter(tensors["uEmbeds"])  # parameters are saved as tensors
    meta = {
        "args": argparse.Namespace(lr=1e-3, data="tiny", layers=[1, 2]),
        "epoch": np.int64(7),
        "recall": np.float32(0.25),
        "flag": np.bool_(True),
        "kept": (72, 63),
        "nothing": None,
        "where": tmp_path / "x",
    }
    path = tmp_path / "new" / "dir" / "model.mod"
    save_checkpoint(path, tensors, meta)

    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "lightgnn-ckpt" and raw["version"] == 1
    assert set(raw) == {"format", "version", "tensors", "meta"}

    ckpt = load_checkpoint(path)
    assert isinstance(ckpt, Checkpoint) and ckpt.path == str(path)
    assert set(ckpt.tensors) == set(tensors)
    for name, tensor in tensors.items():
        loaded = ckpt.tensors[name]
        assert type(loaded) is torch.Tensor and not loaded.requires_grad
        assert torch.equal(loaded, tensor.detach())
    assert ckpt.meta == {
        "args": {"lr": 1e-3, "data": "tiny", "layers": [1, 2]},
        "epoch": 7,
        "recall": float(np.float32(0.25)),
        "flag": True,
        "kept": [72, 63],
        "nothing": None,
        "where": str(tmp_path / "x"),
    }
    assert type(ckpt.meta["epoch"]) is int and type(ckpt.meta["flag"]) is bool


def test_views_are_saved_compactly(tmp_path):
    big = torch.arange(10000, dtype=torch.float32)
    save_checkpoint(tmp_path / "v.mod", {"uEmbeds": big[:6].view(2, 3)}, {})
    assert os.path.getsize(tmp_path / "v.mod") < 10000
    assert torch.equal(load_checkpoint(tmp_path / "v.mod").tensors["uEmbeds"], big[:6].view(2, 3))


def test_meta_must_be_plain_data(tmp_path):
    with pytest.raises(TypeError, match="meta"):
        save_checkpoint(tmp_path / "m.mod", sp_tensors(), {"model": torch.nn.Linear(2, 2)})
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "m.mod", sp_tensors(), {1: "non-string key"})
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "m.mod", {"uEmbeds": np.zeros(3)}, {})
    assert list(tmp_path.iterdir()) == []


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "model.mod"
    first = sp_tensors()
    save_checkpoint(path, first, {"n": 1})
    save_checkpoint(path, sp_tensors(d=4), {"n": 2})  # overwriting works
    assert [p.name for p in tmp_path.iterdir()] == ["model.mod"]
    assert load_checkpoint(path).meta == {"n": 2}

    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # a partial file exists ...
        raise RuntimeError("disk on fire")  # ... when the write fails

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="disk on fire"):
        save_checkpoint(path, first, {"n": 3})
    assert [p.name for p in tmp_path.iterdir()] == ["model.mod"]
    assert load_checkpoint(path).meta == {"n": 2}


def test_unwritable_destination_is_a_checkpoint_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(CheckpointError, match="cannot write checkpoint"):
        save_checkpoint(blocker / "model.mod", sp_tensors(), {})


# ----------------------------------------------------------------------------- load errors


def test_missing_file(tmp_path):
    path = tmp_path / "nope.mod"
    with pytest.raises(CheckpointError, match="does not exist") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, I am text\n", bytes(range(256)) * 4, b"PK\x03\x04 truncated zip"],
    ids=["empty", "text", "binary", "bad-zip"],
)
def test_corrupt_files(tmp_path, content):
    path = tmp_path / "bad.mod"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


@pytest.mark.parametrize("cut", [0.5, -30])
def test_truncated_checkpoint(tmp_path, cut):
    """Cut in half, or 30 bytes short (torch then fails with a bare "[Errno 22] Invalid argument")."""
    path = tmp_path / "cut.mod"
    save_checkpoint(path, {"E": torch.randn(1000)}, {})
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut) if cut > 0 else cut])
    with pytest.raises(CheckpointError, match="corrupt") as info:
        load_checkpoint(path)
    assert "Errno" not in str(info.value)
    if cut < 0:
        assert f"cut short or damaged: reading its {len(data) - 30:,} bytes failed" in str(info.value)


def test_unknown_formats(tmp_path):
    path = tmp_path / "state_dict.pt"
    torch.save({"uEmbeds": torch.zeros(2, 2)}, path)  # a bare state_dict is not our format
    with pytest.raises(CheckpointError, match="unknown format"):
        load_checkpoint(path)
    torch.save({"format": "lightgnn-ckpt", "version": 99, "tensors": {}, "meta": {}}, path)
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(path)
    torch.save({"model": torch.zeros(3)}, path)  # loads weights-only, but is not our format
    with pytest.raises(CheckpointError, match="unknown format"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="unknown format"):
        import_published_mod(path)


def test_check_compatible(tmp_path):
    path = tmp_path / "stu.mod"
    save_checkpoint(path, sp_tensors(n_users=5, n_items=4, d=3, n_edges=7), {})
    ckpt = load_checkpoint(path)
    assert check_compatible(ckpt, 5, 4, latdim=3, n_edges=7, what="student") is ckpt
    check_compatible(ckpt, 5, 4)

    with pytest.raises(CheckpointError) as info:
        check_compatible(ckpt, 6, 4, what="student")
    message = str(info.value)
    assert str(path) in message and "student" in message
    assert "(5, 3)" in message and "(4, 3)" in message and "(6, d)" in message

    with pytest.raises(CheckpointError, match=r"\(5, 8\)"):
        check_compatible(ckpt, 5, 4, latdim=8)
    with pytest.raises(CheckpointError, match=r"adj_mask1_train has shape \(7,\), expected \(9,\)"):
        check_compatible(ckpt, 5, 4, latdim=3, n_edges=9)

    teacher = Checkpoint({"uEmbeds": torch.zeros(5, 3), "iEmbeds": torch.zeros(4, 3)}, path="t.mod")
    check_compatible(teacher, 5, 4, latdim=3)
    with pytest.raises(CheckpointError, match="not a prunable"):
        check_compatible(teacher, 5, 4, n_edges=7, what="middle_teacher")
    with pytest.raises(CheckpointError, match="has no iEmbeds"):
        check_compatible(Checkpoint({"uEmbeds": torch.zeros(5, 3)}, path="x"), 5, 4)


# ----------------------------------------------------------------------------- published .mod files


@pytest.mark.parametrize("stem", sorted(PUBLISHED_FILES))
def test_published_mod_matches_state_npz(stem):
    path = published(stem)
    expected = np.load(published(stem, ".state.npz"))
    role, n_edges = PUBLISHED_FILES[stem]

    for ckpt in (import_published_mod(path), load_checkpoint(path)):
        assert set(ckpt.tensors) == set(expected.files)
        for name in expected.files:
            got = ckpt.tensors[name]
            assert type(got) is torch.Tensor and not got.requires_grad
            assert got.dtype == torch.float32
            np.testing.assert_array_equal(got.numpy(), expected[name])
        assert ckpt.meta["source"] == "published"
        assert ckpt.meta["role"] == role
        assert ckpt.meta["model_class"] == ("LightGCN" if n_edges is None else "LightGCN_sp")
        assert ckpt.meta.get("n_edges") == n_edges
        assert ckpt.meta["gnn_layer"] == (3 if n_edges is None else 2)
        check_compatible(ckpt, 60, 40, latdim=8, n_edges=n_edges, what=role)


def test_published_wrapper_roles():
    mid = published("mid_tiny_best_global_100_100")
    stu = published("stu_tiny_best_global_72_63")
    teacher = import_published_mod(published("teacher_tiny"))

    # stage 2 wrapper: teacher (frozen supervisor) + middle_teacher (trained), student None
    assert import_published_mod(mid).meta["roles_available"] == ["middle_teacher", "teacher"]
    frozen = import_published_mod(mid, role="teacher")
    assert frozen.meta["model_class"] == "LightGCN"
    for name in ("uEmbeds", "iEmbeds"):
        assert torch.equal(frozen.tensors[name], teacher.tensors[name])
    with pytest.raises(CheckpointError, match="no student"):
        import_published_mod(mid, role="student")

    # stage 3 wrapper: student (trained) + middle_teacher (frozen supervisor), teacher None
    supervisor = import_published_mod(stu, role="middle_teacher")
    assert supervisor.meta["n_edges"] == 3530
    intermediate = import_published_mod(mid)
    for name, tensor in intermediate.tensors.items():
        assert torch.equal(supervisor.tensors[name], tensor)
    with pytest.raises(CheckpointError, match="unknown role"):
        import_published_mod(stu, role="boss")
    with pytest.raises(CheckpointError, match="has no teacher"):
        load_checkpoint(stu, role="teacher")


def test_published_mod_is_refused_by_weights_only_but_routed():
    path = published("teacher_tiny")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    assert set(load_checkpoint(path).tensors) == {"uEmbeds", "iEmbeds"}


# ----------------------------------------------------------------------------- malicious pickles


class _Evil:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _EvilEval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("kind", ["system", "eval", "bare"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.mod"
    if kind == "system":
        payload = {"model": _Evil(f"touch {marker}")}
    elif kind == "eval":
        payload = {"model": _EvilEval(marker)}
    else:
        payload = _Evil(f"touch {marker}")
    torch.save(payload, path)

    for loader in (load_checkpoint, import_published_mod):
        with pytest.raises(CheckpointError, match="refusing to load global") as info:
            loader(path)
        assert str(path) in str(info.value)
        assert not marker.exists()


def _fake_published_module(monkeypatch):
    """Install a stand-in ``Model`` module so torch.save writes published-style globals."""
    fake = types.ModuleType("Model")

    class LightGCN_sp(torch.nn.Module):
        def __init__(self, n_edges):
            super().__init__()
            self.uEmbeds = torch.nn.Parameter(torch.ones(3, 2))
            self.iEmbeds = torch.nn.Parameter(torch.ones(2, 2))
            self.adj_mask1_train = torch.nn.Parameter(torch.ones(n_edges))
            self.adj_mask2_fixed = torch.nn.Parameter(torch.ones(n_edges), requires_grad=False)
            self.emb_mask2_fixed = torch.nn.Parameter(torch.ones(5, 2), requires_grad=False)

    class Model(torch.nn.Module):
        def __init__(self, teacher, student, middle_teacher=None):
            super().__init__()
            self.teacher, self.student, self.middle_teacher = teacher, student, middle_teacher

    for cls in (LightGCN_sp, Model):
        cls.__module__, cls.__qualname__ = "Model", cls.__name__
        setattr(fake, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, "Model", fake)
    return fake


def test_synthetic_published_wrapper(tmp_path, monkeypatch):
    fake = _fake_published_module(monkeypatch)
    path = tmp_path / "synthetic.mod"
    torch.save({"model": fake.Model(None, fake.LightGCN_sp(4), fake.LightGCN_sp(9))}, path)
    monkeypatch.delitem(sys.modules, "Model")  # the importer must not need the class
    ckpt = load_checkpoint(path)
    assert ckpt.meta["role"] == "student" and ckpt.meta["n_edges"] == 4
    assert import_published_mod(path, role="middle_teacher").meta["n_edges"] == 9


def test_malicious_global_inside_published_structure(tmp_path, monkeypatch):
    """A genuine-looking published wrapper whose student smuggles a call is still refused."""
    fake = _fake_published_module(monkeypatch)
    marker = tmp_path / "pwned"
    student = fake.LightGCN_sp(4)
    student.payload = _Evil(f"touch {marker}")
    path = tmp_path / "evil_student.mod"
    torch.save({"model": fake.Model(None, student, fake.LightGCN_sp(9))}, path)
    with pytest.raises(CheckpointError, match=r"refusing to load global (posix|os)\.system"):
        load_checkpoint(path)
    assert not marker.exists()


def test_restricted_unpickler_rejects_unknown_torch_globals(tmp_path):
    path = tmp_path / "module.mod"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)  # torch.nn.modules.linear.Linear is not allowed
    with pytest.raises(CheckpointError, match="torch.nn.modules.linear.Linear"):
        import_published_mod(path)
