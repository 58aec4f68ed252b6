"""Smoke test of experiments/efficacy_active.py (issue 15) on the bundled demo pools with the n-gram embedder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from conftest import DEMO_POOLS

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import efficacy_active as act  # noqa: E402


def test_per_prompt_metrics_and_paired_bootstrap_by_hand():
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.2, 0.8]])
    chosen, gap = act.per_prompt(scores, np.array([[0, 2], [1, 2]]))
    assert np.allclose(chosen, [0.5, 0.8]) and np.allclose(gap, [0.4, 0.6])
    same = act.summarize("x", chosen, gap, 4, 2, ref=(chosen, gap))
    assert same["d_chosen"] == 0.0 and same["d_chosen_ci"] == (0.0, 0.0) and same["gap_ratio"] == 1.0


def test_experiment_runs_end_to_end_on_demo_pools(tmp_path):
    act.main(
        [
            "--data",
            str(DEMO_POOLS),
            "--out",
            str(tmp_path),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--embedder",
            "ngram",
            "--sets",
            "all:8",
            "weak:4",
            "--budgets",
            "32",
            "64",
            "--active-batch-size",
            "8",
            "--tag",
            "t",
        ]
    )
    data = json.loads((tmp_path / "active_t.json").read_text())
    labels = {r["label"] for r in data["results"]}
    assert {"random k", "AEPO λ=0.5", "West-of-N", "MaxMinLCB", "DeltaUCB", "AEPO+UCB λ=0.5"} <= labels
    for r in data["results"]:
        assert r["chosen_ci"][0] <= r["chosen"] <= r["chosen_ci"][1]
        assert r["prompts"] == (r["budget"] // (r["N"] if r["label"] == "West-of-N" else 2))
        assert ("d_chosen" in r) == (r["label"] not in ("random k", "West-of-N"))
    curve = data["curves"]["all:8 MaxMinLCB"]
    assert [q["labels_after"] for q in curve] == [16, 32, 48, 64] and curve[0]["cold_start"]
    assert (tmp_path / "active_t.md").exists() and (tmp_path / "active_t.png").stat().st_size > 10_000
    summary = act.summary_table(data["results"], budget=64)
    assert "| all N=8 | MaxMinLCB |" in summary and "| weak N=4 | random k |" in summary
    assert "MaxMinLCB" not in act.summary_table(data["results"], budget=800)  # a budget that was not run
