"""bench/bench_peers.py times the same model three ways: with the same layer-0 embeddings,
PyTorch Geometric's LightGCN (both ways the bench calls it) scores user-item pairs exactly as
this tool's teacher does. Skipped where torch_geometric (a bench-only dependency) is absent."""
import argparse
import importlib.util
import pathlib
import sys

import pytest
import torch

import DataHandler as dh

pytest.importorskip("torch_geometric")
ROOT = pathlib.Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_peers", ROOT / "bench" / "bench_peers.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return module


@pytest.mark.parametrize("impl", ["pyg_prenorm", "pyg_example"])
def test_pyg_lightgcn_scores_pairs_as_our_teacher_does(tiny_data, impl):
    bench = _bench()
    data = dh.load_dataset(str(tiny_data), "tiny")
    opts = argparse.Namespace(latdim=8, layers=3, reg=0.0)
    torch.manual_seed(0)
    ours, _ = bench.build("ours", data, opts, torch.device("cpu"))
    peer, _ = bench.build(impl, data, opts, torch.device("cpu"))
    with torch.no_grad():
        peer.embedding.weight.copy_(ours.layer0())
        graph = dh.Graph.from_scipy(dh.propagation_matrix(data.train))
        users, items = ours(graph)
        u = torch.arange(data.n_users).repeat_interleave(3)
        i = torch.randint(0, data.n_items, (u.numel(),), generator=torch.Generator().manual_seed(1))
        expected = (users[u] * items[i]).sum(-1)
        edges = bench.normalised_csr(data.train) if impl == "pyg_prenorm" else bench.edge_list(data.train)
        got = peer(edges, torch.stack([u, i + data.n_users]))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_the_bench_rejects_an_unknown_implementation(capsys):
    bench = _bench()
    argv, sys.argv = sys.argv, ["bench_peers.py", "--impls", "ours,dgl"]
    try:
        with pytest.raises(SystemExit):
            bench.main()
    finally:
        sys.argv = argv
    assert "--impls takes ours, pyg_prenorm, pyg_example" in capsys.readouterr().err


def test_rounds_summary_gives_medians_and_the_median_per_round_ratio():
    bench = _bench()
    line = bench.rounds_summary({"bench": "peers"}, {"ours": [2.0, 4.0, 3.0], "pyg_prenorm": [10.0, 12.0, 15.0]})
    assert line["rounds"] == 3
    assert line["median_train_epoch_s"] == {"ours": 3.0, "pyg_prenorm": 12.0}
    assert line["times_ours"] == {"pyg_prenorm": 5.0}  # median of 5.0, 3.0, 5.0, not 12 / 3
