"""Smoke tests of the efficacy experiment scripts (experiments/, issue 9) on tiny synthetic slices (no MiniLM)."""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import efficacy_common as common  # noqa: E402
import efficacy_selection as sel  # noqa: E402
import efficacy_training as tr  # noqa: E402


def test_mean_ci():
    m, h = common.mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-3)
    assert math.isnan(common.mean_ci([1.0])[1])
    assert common.fmt_ci(0.5, 0.01) == "0.500 ± 0.010"


def test_char_ngram_encoder_is_normalised_and_deterministic():
    enc = common.CharNgramEncoder(dim=64)
    a = enc.encode(["12345", "12345", "98765", ""])
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0)
    assert np.array_equal(a[0], a[1])
    assert a[0] @ a[1] > a[0] @ a[2]


def test_pool_subsets_and_order_are_seeded():
    s1, s2 = sel.pool_subsets(5, 32, 8, seed=0), sel.pool_subsets(5, 32, 8, seed=0)
    assert np.array_equal(s1, s2) and s1.shape == (5, 8)
    assert all(len(set(row)) == 8 for row in s1)
    assert not np.array_equal(s1, sel.pool_subsets(5, 32, 8, seed=1))
    assert sorted(sel.prompt_order(7, 3)) == list(range(7))


def test_best_vs_worst_drops_ties():
    scores = np.array([[0.2, 0.2], [0.1, 0.9], [0.5, 0.4]])
    has, hi, lo = sel.best_vs_worst(scores, np.ones_like(scores, dtype=bool))
    assert has.tolist() == [False, True, True] and hi[1] == 0.9 and lo[2] == 0.4


def test_selection_experiment_equal_budget(tmp_path):
    rng = np.random.default_rng(0)
    P, M, D, budget = 24, 8, 16, 16
    emb = rng.standard_normal((P, M, D)).astype(np.float32)
    scores = rng.random((P, M))
    keys = np.arange(P, dtype=np.int64)
    records = sel.run_experiment(emb, scores, keys, [4, 8], [0, 1], budget, k=2, log=lambda *_: None)
    assert len(records) == 2 * 2 * len(sel.STRATEGIES)
    for r in records:
        cost = r["N"] if r["strategy"] == "west_of_n" else 2
        assert r["prompts"] == budget // cost and r["annotations"] == budget
        assert r["pairs"] <= r["prompts"] and r["chosen"] >= r["rejected"]
        if r["strategy"] == "west_of_n":
            assert r["chosen_is_pool_best"] == 1.0
    summary = sel.summarize(records)
    diffs = sel.paired_differences(records)
    assert {e["label"] for e in diffs} == {s[0] for s in sel.STRATEGIES} - {"random k"}
    meta = {
        "command": "test",
        "wall_seconds": 1.0,
        "embed": {"cache_hit": False},
        "select_seconds": 1.0,
        "data": "x",
        "data_sha256": "0" * 64,
        "prompts": P,
        "full_pool": M,
        "embedder": "random",
        "budget": budget,
        "k": 2,
        "seeds": [0, 1],
        "machine": "test",
    }
    md = sel.results_markdown(summary, diffs, meta)
    assert "West-of-N" in md and "AEPO λ=1" in md
    sel.plot(summary, tmp_path / "sel.png")
    assert (tmp_path / "sel.png").stat().st_size < 300_000


def test_digit_sort_gold_reward():
    assert tr.gold_reward("3142", "1234") == 1.0
    assert tr.gold_reward("3142", "1243") == pytest.approx(0.5)
    assert tr.gold_reward("3142", "") == 0.0
    assert tr.gold_reward("31", "1234567") == 0.0
    assert tr.levenshtein("kitten", "sitting") == 3
    rng = __import__("random").Random(0)
    assert any(tr.corrupt("1234", rng) != "1234" for _ in range(5))
    train, held = tr.prompt_sets(replace(tr.SCALES["quick"], train_prompts=50, eval_prompts=20), seed=0)
    _, held2 = tr.prompt_sets(replace(tr.SCALES["quick"], train_prompts=50, eval_prompts=20), seed=1)
    assert held == held2 and not set(train) & set(held) and len(set(train)) == 50


def test_build_pairs_at_equal_budget():
    rng = __import__("random").Random(0)
    prompts = [tr.random_prompt(rng, tr.SCALES["quick"]) for _ in range(12)]
    prompts = list(dict.fromkeys(prompts))
    pools = {p: [tr.demonstration(p, rng, 0.3) for _ in range(4)] for p in prompts}
    emb = common.CharNgramEncoder(dim=64).encode([y for p in prompts for y in pools[p]]).reshape(len(prompts), 4, -1)
    budget = 8
    for strategy, lam in [("aepo", 1.0), ("random", 0.0), ("west_of_n", 0.0), ("double_ts", 1.0)]:
        pairs, stats = tr.build_pairs(pools, prompts, emb, strategy, lam, 2, budget, seed=0)
        assert stats["annotations"] == budget
        assert stats["prompts"] == (2 if strategy == "west_of_n" else 4)
        assert stats["pairs"] + stats["ties"] == stats["prompts"] == len(pairs["prompt"]) + stats["ties"]
        for p, c, r in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"]):
            assert tr.gold_reward(p[:-1], c) > tr.gold_reward(p[:-1], r)


def test_active_strategies_learn_from_the_gold_labels_they_buy(monkeypatch):
    """The training experiment runs the package's ActiveSelector in batches: after the cold start it selects from
    the surrogate fitted on the gold labels bought so far, whenever the safety rule trusts it."""
    rng = __import__("random").Random(1)
    prompts = list(dict.fromkeys(tr.random_prompt(rng, tr.SCALES["quick"]) for _ in range(40)))[:24]
    pools = {p: [tr.demonstration(p, rng, 0.4) for _ in range(6)] for p in prompts}
    emb = common.CharNgramEncoder(dim=32).encode([y for p in prompts for y in pools[p]]).reshape(len(prompts), 6, -1)
    monkeypatch.setattr(tr, "ACTIVE_BATCH", 8)
    monkeypatch.setattr(tr, "ACTIVE_WARMUP", 8)
    from aepo_trainer.selection.active import ActiveSelector

    seen = []
    original = ActiveSelector.observe

    def spy(self, *args, **kwargs):
        seen.append(original(self, *args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(ActiveSelector, "observe", spy)
    pairs, stats = tr.build_pairs(pools, prompts, emb, "double_ts", 1.0, 2, 48, seed=0)
    assert stats["annotations"] == 48 and stats["prompts"] == 24
    # three batches of 8 prompts, k = 2 labels each (identical texts of one pool are one label)
    assert len(seen) == 3 and 8 <= seen[0].labels_after < seen[1].labels_after < seen[2].labels_after <= 48
    # the first batch warms up; after it, each batch follows the surrogate exactly when the safety rule (on by
    # default) said so after the batch before
    assert seen[0].cold_start and seen[0].follows == (seen[0].safety_lower_bound > 0.5 + 0.02)
    assert [q.cold_start for q in seen[1:]] == [not q.follows for q in seen[:-1]]


def test_training_pipeline_micro(tmp_path):
    """SFT → pools → select/pair → DPO (AEPOTrainer) → held-out evaluation, at a microscopic scale."""
    import torch

    scale = replace(
        tr.SCALES["quick"],
        hidden_size=16,
        sft_steps=3,
        sft_batch=8,
        train_prompts=12,
        pool_sizes=(2, 4),
        dpo_steps=1,
        dpo_batch=4,
        eval_prompts=6,
        eval_samples=1,
        seeds=1,
    )
    strategies = [s for s in tr.STRATEGIES if s[0] in ("AEPO λ=1", "random k", "West-of-N")]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the scripts' default: 2+ OpenMP threads can be far slower on a shared machine
    try:
        records = tr.run_seed(
            scale, 0, strategies, common.CharNgramEncoder(dim=64), torch.device("cpu"), log=lambda *_: None
        )
    finally:
        torch.set_num_threads(threads)
    assert [(r["label"], r["N"]) for r in records] == [(tr.SFT_LABEL, 0)] + [
        (s[0], n) for n in (2, 4) for s in strategies
    ]
    assert all(0.0 <= r["gold_reward"] <= 1.0 for r in records)
    won = [r for r in records if r["strategy"] == "west_of_n"]
    assert [r["prompts"] for r in won] == [12, 6] and all(r["annotations"] <= 24 for r in records[1:])
    summary = tr.summarize(records)
    meta = {
        "command": "test",
        "wall_seconds": 1.0,
        "machine": "test",
        "scale_name": "micro",
        "scale": tr.asdict(scale),
        "params": 1,
        "budget": 24,
        "seeds": [0],
        "embedder": "ngram",
        "pool_mean_reward": records[0]["pool_mean_reward"],
        "pool_exact": records[0]["pool_exact"],
    }
    assert "West-of-N" in tr.results_markdown(summary, meta)
    tr.plot(summary, records, tmp_path / "train.png", "micro")
    assert (tmp_path / "train.png").exists()


def test_within_prompt_spearman_handles_ties():
    x = np.array([[1.0, 2.0, 2.0, 4.0], [3.0, 3.0, 3.0, 3.0]])  # second row constant: skipped
    assert sel._ranks(x)[0].tolist() == [1.0, 2.5, 2.5, 4.0]
    assert sel.within_prompt_spearman(x, x + 1.0) == pytest.approx(1.0)
    assert sel.within_prompt_spearman(x[:1], -x[:1]) == pytest.approx(-1.0)
