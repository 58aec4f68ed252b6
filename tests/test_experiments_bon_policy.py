"""experiments/bon_policy.py: the Bradley-Terry reward model against a planted preference, and a smoke run on the
bundled demo pools (n-gram embedder) whose held-out prompts were never labelled."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from conftest import DEMO_POOLS

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import bon_policy  # noqa: E402


def test_bradley_terry_recovers_a_planted_preference_direction():
    rng = np.random.default_rng(0)
    w_true = rng.normal(size=6)
    D = rng.normal(size=(3000, 6))
    flip = rng.random(3000) > 1 / (1 + np.exp(-(D @ w_true)))  # the "rejected" one won: swap the pair
    D[flip] *= -1
    w = bon_policy.fit_bradley_terry(D, penalty=1e-3)
    cosine = w @ w_true / (np.linalg.norm(w) * np.linalg.norm(w_true))
    assert cosine > 0.99 and 0.8 < np.linalg.norm(w) / np.linalg.norm(w_true) < 1.25
    w_cv, penalty = bon_policy.reward_model(D, seed=0)
    assert penalty in bon_policy.PENALTIES and w_cv @ w_true > 0


def test_the_pairs_put_the_better_scored_candidate_first_and_drop_ties():
    sc = np.array([[0.1, 0.9, 0.5, 0.5], [0.3, 0.3, 0.3, 0.3]])
    pairs, valid = bon_policy.purchased_pairs("random", {}, None, sc, None, None, seed=0)
    chosen, rejected = sc[[0, 1], pairs[:, 0]], sc[[0, 1], pairs[:, 1]]
    assert (chosen >= rejected).all() and list(valid) == [bool(chosen[0] > rejected[0]), False]


def test_experiment_runs_end_to_end_on_demo_pools(tmp_path):
    bon_policy.main(["--data", str(DEMO_POOLS), "--out", str(tmp_path), "--cache-dir", str(tmp_path / "cache"),
                     "--embedder", "ngram", "--budget", "32", "--seeds", "2", "--tag", "t"])  # fmt: skip
    data = json.loads((tmp_path / "bon_policy_t.json").read_text())
    rows = len(DEMO_POOLS.read_text().splitlines())
    for name, result in data["results"].items():
        assert len(result["seeds"]) == 2
        for seed_run in result["seeds"]:
            assert set(seed_run) == {label for label, _, _ in bon_policy.STRATEGIES}
            assert all(len(gold) == rows - 16 for gold in seed_run.values())  # every held-out prompt answered once
    summary = (tmp_path / "bon_policy_t_summary.md").read_text()
    assert "| half B | double_ts (safe) |" in summary and summary in (tmp_path / "bon_policy_t.md").read_text()


def test_a_budget_that_leaves_no_held_out_prompt_is_refused(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit):
        bon_policy.main(["--data", str(DEMO_POOLS), "--out", str(tmp_path), "--budget", "96"])  # 48 prompts x 2
    assert "none would be left to answer held out" in capsys.readouterr().err
