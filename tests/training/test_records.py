"""The records of stages 2-3 (global best, best, "2nd best" with its gap) as the stage updates them."""
import pytest

from Utils.training.Distill import PruningRun, make_records


def _evaluate(run, records, value, epoch):
    """One evaluation of a learned-edge pruning run, as DistillStage.keep sees it."""
    results = {"test": {"Recall": value, "NDCG": value / 2}}
    return run.update(records, value, results, epoch)


def _run(index, edge_pct):
    return PruningRun(index, learn_edges=True, n_epochs=3, edge_pct=edge_pct, emb_pct=100.0)


def test_global_best_and_2nd_best_with_gap_across_pruning_runs():
    records = make_records((0.1, 0.99))
    assert records["w2"].reference is records["w"] and records["w2"].gap == 0.1
    run1 = _run(1, 100.0)
    assert [r.suffix for r in _evaluate(run1, records, 0.50, 0)] == ["best_global", "best_w_edge_wei",
                                                                             "2nd_best_w_edge_wei"]
    assert len(_evaluate(run1, records, 0.60, 1)) == 3
    # not a new best of its run: no record moves, even one the gap would admit
    assert _evaluate(run1, records, 0.58, 2) is None
    assert records["w2"].epoch == 1

    run2 = _run(2, 95.0)  # a sparser model, 95 % of the edges
    improved = _evaluate(run2, records, 0.55, 0)  # >= (1 - 0.1) * 0.60: the 2nd best takes it
    assert [r.suffix for r in improved] == ["2nd_best_w_edge_wei"]
    assert (records["w2"].value, records["w2"].prn_run, records["w2"].edge_pct) == (0.55, 2, 95.0)
    assert (records["w"].value, records["w"].prn_run) == (0.60, 1)
    assert records["global"].value == 0.60

    run3 = _run(3, 90.0)
    assert _evaluate(run3, records, 0.53, 0) == []  # below 0.54: the 2nd best stays at run 2
    assert records["w2"].prn_run == 2
    improved = _evaluate(run3, records, 0.61, 1)  # a new best raises the bar for the 2nd best too
    assert [r.suffix for r in improved] == ["best_global", "best_w_edge_wei", "2nd_best_w_edge_wei"]


def test_gap_zero_makes_the_2nd_best_the_latest_of_the_best_values():
    records = make_records((0.0, 0.99))
    run1, run2 = _run(1, 100.0), _run(2, 95.0)
    _evaluate(run1, records, 0.5, 0)
    assert _evaluate(run2, records, 0.5, 0) == [records["global"], records["w"], records["w2"]]
    assert _evaluate(_run(3, 90.0), records, 0.49, 0) == []
    assert records["w2"].edge_pct == 95.0


@pytest.mark.parametrize("value,accepted", [(0.009, False), (0.011, True)])
def test_published_gap_admits_one_percent_of_the_best(value, accepted):
    records = make_records((0.99, 0.99))  # --train_2nd_best_gap=0.99, published
    _evaluate(_run(1, 100.0), records, 1.0, 0)
    assert (_evaluate(_run(2, 95.0), records, value, 0) == [records["w2"]]) is accepted
