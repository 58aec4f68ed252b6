"""Pairing rules: best_vs_worst, all_pairs, best_vs_random; ties, margins, invalid scores, rankings."""

from __future__ import annotations

import math

import pytest

from aepo_trainer.reduction.pairing import Pair, PairingResult, make_pairs


def test_best_vs_worst_basic_and_rankings():
    res = make_pairs([[0.1, 0.9, 0.5], [3.0, -1.0]])
    assert res.pairs == [Pair(0, 1, 0, 0.9, 0.1), Pair(1, 0, 1, 3.0, -1.0)]
    assert res.rankings == [[1, 2, 0], [0, 1]]
    assert (res.ties_dropped, res.invalid_dropped, res.margin_dropped, res.skipped_rows) == (0, 0, 0, 0)


def test_best_vs_worst_ties_break_to_lowest_position():
    res = make_pairs([[1.0, 2.0, 2.0, 0.0, 0.0]])
    assert res.pairs == [Pair(0, 1, 3, 2.0, 0.0)]
    assert res.rankings == [[1, 2, 0, 3, 4]]  # best first, ties by position


def test_all_equal_rows_are_dropped_and_counted():
    res = make_pairs([[0.5, 0.5], [1.0, 1.0, 1.0], [0.0, 1.0]], rule="best_vs_worst")
    assert [p.row for p in res.pairs] == [2]
    assert res.ties_dropped == 2
    res = make_pairs([[0.5, 0.5], [1.0, 1.0, 1.0]], rule="best_vs_random")
    assert res.pairs == [] and res.ties_dropped == 2


def test_skipped_rows_produce_nothing_and_are_not_ties():
    res = make_pairs([None, [1.0, 0.0], None])
    assert res.pairs == [Pair(1, 0, 1, 1.0, 0.0)]
    assert res.ties_dropped == 0 and res.skipped_rows == 2
    assert res.rankings == [[], [0, 1], []]


def test_invalid_scores_are_dropped_counted_and_never_paired(caplog):
    res = make_pairs([[float("nan"), 0.2, 0.8], [None, 1.0], [math.inf, -math.inf], [0.3, None, 0.1, float("nan")]])
    assert res.pairs == [Pair(0, 2, 1, 0.8, 0.2), Pair(3, 0, 2, 0.3, 0.1)]
    assert res.invalid_dropped == 1 + 1 + 2 + 2
    assert res.ties_dropped == 0
    assert res.rankings == [[2, 1], [1], [], [0, 2]]
    for pair in res.pairs:
        assert math.isfinite(pair.chosen_score) and math.isfinite(pair.rejected_score)
    assert "invalid" in caplog.text


def test_non_numeric_scores_raise():
    with pytest.raises(TypeError, match=r"scores\[0\]\[1\]"):
        make_pairs([[0.1, "high"]])
    with pytest.raises(TypeError, match="not a number"):
        make_pairs([[True, 0.0]])
    with pytest.raises(TypeError):
        make_pairs(["0.1 0.2"])


def test_all_pairs_each_unordered_pair_once_oriented_by_score():
    res = make_pairs([[0.0, 3.0, 1.0, 2.0]], rule="all_pairs")
    got = {(p.chosen, p.rejected) for p in res.pairs}
    assert got == {(1, 3), (1, 2), (1, 0), (3, 2), (3, 0), (2, 0)}
    assert len(res.pairs) == 6
    assert all(p.chosen_score > p.rejected_score for p in res.pairs)
    assert res.pairs[0] == Pair(0, 1, 3, 3.0, 2.0)  # ordered by the chosen's then the rejected's rank


def test_all_pairs_margin_and_ties():
    res = make_pairs([[0.0, 0.5, 0.5, 2.0]], rule="all_pairs", margin=0.5)
    got = {(p.chosen, p.rejected) for p in res.pairs}
    assert got == {(3, 0), (3, 1), (3, 2)}  # gaps 2.0, 1.5, 1.5 > 0.5
    assert res.ties_dropped == 3  # (1, 2) equal, plus (1, 0) and (2, 0): gap 0.5 is not > margin
    assert res.margin_dropped == 2  # the two of them with different scores
    assert res.as_dict()["pairs"] == 3


def test_margin_applies_to_all_pairs_only():
    assert len(make_pairs([[0.0, 0.1]], rule="best_vs_worst", margin=1.0).pairs) == 1


def test_best_vs_random_draws_among_strictly_worse_and_is_reproducible():
    scores = [[5.0, 1.0, 2.0, 3.0, 5.0, 0.0]] * 50
    keys = [f"prompt-{i}" for i in range(50)]
    res = make_pairs(scores, rule="best_vs_random", seed=3, row_keys=keys)
    assert all(p.chosen == 0 for p in res.pairs)  # ties for best → lowest position
    rejected = [p.rejected for p in res.pairs]
    assert set(rejected) == {1, 2, 3, 5}  # never the tied best (position 4)
    again = make_pairs(scores, rule="best_vs_random", seed=3, row_keys=keys)
    assert again.pairs == res.pairs
    other_seed = make_pairs(scores, rule="best_vs_random", seed=4, row_keys=keys)
    assert [p.rejected for p in other_seed.pairs] != rejected


def test_best_vs_random_does_not_depend_on_batch_composition():
    rows = {f"k{i}": [float(i % 3), 9.0, 1.0, 0.5, 2.0] for i in range(12)}
    full = make_pairs(list(rows.values()), rule="best_vs_random", seed=0, row_keys=list(rows))
    by_key = {list(rows)[p.row]: p.rejected for p in full.pairs}
    sub_keys = ["k7", "k2", "k11"]
    sub = make_pairs([rows[k] for k in sub_keys], rule="best_vs_random", seed=0, row_keys=sub_keys)
    assert [p.rejected for p in sub.pairs] == [by_key[k] for k in sub_keys]


def test_row_keys_accept_tensors_and_numpy():
    torch = pytest.importorskip("torch")
    import numpy as np

    scores = [[1.0, 0.0, 0.5, 0.2]] * 3
    a = make_pairs(scores, rule="best_vs_random", row_keys=torch.tensor([10, 11, 12]))
    b = make_pairs(scores, rule="best_vs_random", row_keys=np.array([10, 11, 12]))
    c = make_pairs(scores, rule="best_vs_random", row_keys=[10, 11, 12])
    assert a.pairs == b.pairs == c.pairs


def test_bad_arguments():
    with pytest.raises(ValueError, match="Unknown pairing rule"):
        make_pairs([[1.0, 0.0]], rule="worst_vs_best")
    with pytest.raises(ValueError, match="margin"):
        make_pairs([[1.0, 0.0]], margin=-1)
    with pytest.raises(ValueError, match="row_keys"):
        make_pairs([[1.0, 0.0]], row_keys=[1, 2])


def test_single_candidate_rows_give_nothing():
    res = make_pairs([[1.0], []])
    assert isinstance(res, PairingResult)
    assert res.pairs == [] and res.ties_dropped == 0 and res.rankings == [[0], []]
