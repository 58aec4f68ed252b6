"""`aepo select` / `aepo stats` with the active strategies (issue 15): deterministic, resumable byte for byte,
within budget, and clear when a human annotator's labels are pending."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from test_cli import CRASH_AFTER_TWO_CALLS, ENV, _bag_of_words_embeddings, _store_counts, aepo, read_jsonl, write_jsonl

from aepo_trainer.choices import ACTIVE_STRATEGIES

ACTIVE = ["--active_batch_size", "8", "--active_warmup_annotations", "16"]


@pytest.fixture(scope="module")
def pools(tmp_path_factory, demo_pool_rows) -> Path:
    rows = [{**row, "embeddings": _bag_of_words_embeddings(row["completions"])} for row in demo_pool_rows]
    return write_jsonl(tmp_path_factory.mktemp("active-pools") / "pools.jsonl", rows)


def select_argv(pools, out, strategy, *extra):
    return ["select", "--input", str(pools), "--output", str(out), "--selection_strategy", strategy, *ACTIVE, *extra]


@pytest.mark.parametrize("strategy", ACTIVE_STRATEGIES)
def test_each_active_strategy_is_deterministic_and_learns(tmp_path, pools, strategy, capsys):
    from aepo_trainer.cli import main

    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    # the learning mechanics alone: the safety rule off (it is checked by test_the_safety_rule_is_on_by_default)
    assert main(select_argv(pools, first, strategy, "--active_safety_margin", "none")) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert main(select_argv(pools, second, strategy, "--active_safety_margin", "none")) == 0
    assert first.read_bytes() == second.read_bytes()
    assert f"active selection ({strategy}): surrogate fitted on 96 labels" in err
    curve = read_jsonl(f"{first}.surrogate.jsonl")
    assert len(curve) == 6  # 48 prompts in batches of 8
    assert curve[0]["cold_start"] and curve[0]["pairs_evaluated"] == 0  # nothing to predict with yet
    # the first batch's 16 labels reach the warm-up: every later batch is chosen by the acquisition
    assert not any(q["cold_start"] for q in curve[1:]) and all(q["pairs_evaluated"] > 0 for q in curve[1:])
    assert [q["labels_after"] for q in curve] == [16, 32, 48, 64, 80, 96]


def test_the_safety_rule_is_on_by_default(tmp_path, pools):
    from aepo_trainer.cli import main

    out = tmp_path / "pairs.jsonl"
    assert main(select_argv(pools, out, "double_ts")) == 0
    curve = read_jsonl(f"{out}.surrogate.jsonl")
    assert [q["prompts_tested"] for q in curve] == [0, 8, 16, 24, 32, 40]  # every batch after the first is a test
    # each batch follows the acquisition exactly when the bound before it supported it
    assert [q["cold_start"] for q in curve[1:]] == [not q["follows"] for q in curve[:-1]]
    assert [q["follows"] for q in curve] == [q["safety_lower_bound"] > 0.52 for q in curve]
    cross_validated = tmp_path / "cross_validated.jsonl"
    assert main([*select_argv(pools, cross_validated, "double_ts"), "--active_safety_test", "cross_validated"]) == 0
    curve = read_jsonl(f"{cross_validated}.surrogate.jsonl")
    assert [q["prompts_tested"] for q in curve] == [8, 16, 24, 32, 40, 48]  # every labelled prompt, out of fold
    assert [q["cold_start"] for q in curve[1:]] == [not q["follows"] for q in curve[:-1]]
    assert [q["follows"] for q in curve] == [q["safety_lower_bound"] > 0.52 for q in curve]


def test_killed_active_run_resumes_byte_identical_without_paying_twice(tmp_path, pools):
    from aepo_trainer.cli import main

    reference = tmp_path / "reference.jsonl"
    assert main(select_argv(pools, reference, "delta_ucb")) == 0
    out = tmp_path / "pairs.jsonl"
    argv = select_argv(pools, out, "delta_ucb", "--annotation_batch_size", "16")
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH_AFTER_TWO_CALLS, *argv],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=180,
        cwd=REPO_ROOT,
    )
    assert crashed.returncode == 137, crashed.stderr[-2000:]
    store, run_id = f"{out}.annotations.sqlite", f"aepo-select:{out}"
    assert _store_counts(store, run_id) == (32, 48)  # two calls stored, the killed one's 16 reserved
    result = aepo(*argv)
    assert "annotations: paid 48 reused from store 32" in " ".join(result.stderr.split())
    assert _store_counts(store, run_id) == (96, 96)
    assert out.read_bytes() == reference.read_bytes()  # the surrogate replayed the stored labels batch by batch


def test_active_budget_is_never_exceeded_and_resume_completes_the_same_pairs(tmp_path, pools):
    from aepo_trainer.cli import main

    reference = tmp_path / "reference.jsonl"
    assert main(select_argv(pools, reference, "ucb_random")) == 0
    out = tmp_path / "pairs.jsonl"
    assert main(select_argv(pools, out, "ucb_random", "--annotation_budget", "41")) == 3
    store, run_id = f"{out}.annotations.sqlite", f"aepo-select:{out}"
    assert _store_counts(store, run_id) == (40, 40)
    assert read_jsonl(out) == read_jsonl(reference)[:20]
    assert main(select_argv(pools, out, "ucb_random")) == 0
    assert out.read_bytes() == reference.read_bytes()
    assert _store_counts(store, run_id) == (96, 96)


def test_active_strategy_with_pending_human_labels_stops_at_the_first_batch(tmp_path, pools, capsys):
    from aepo_trainer.cli import main

    out = tmp_path / "pairs.jsonl"
    argv = select_argv(pools, out, "double_ts", "--annotator", "human", "--max_prompts", "16")
    assert main(argv) == 4
    err = " ".join(capsys.readouterr().err.split())
    assert "learns from the labels of each batch before selecting the next" in err
    queue = Path(f"{out}.annotation_queue.jsonl")
    items = read_jsonl(queue)
    assert len(items) == 16  # only the first batch (8 prompts x k = 2); the second waits for these labels
    with open(queue.with_name(queue.stem + ".labels.jsonl"), "w") as f:
        for item in items:
            f.write(json.dumps({"id": item["id"], "score": len(item["completion"])}) + "\n")
    assert main(argv) == 4  # the second batch is selected from the first one's labels, and queued
    assert len(read_jsonl(queue)) == 32


def test_stats_simulates_active_strategies_and_plots_the_learning_curve(tmp_path, pools):
    png = tmp_path / "stats.png"
    result = aepo(
        "stats",
        "--input",
        pools,
        "--strategies",
        "random",
        "delta_ucb",
        "--num_annotations",
        "2",
        *ACTIVE,
        "--plot",
        png,
        "--json",
        tmp_path / "stats.json",
    )
    assert "delta_ucb" in result.stdout and "pairwise acc." in result.stdout
    records = json.loads((tmp_path / "stats.json").read_text())["strategies"]
    active = next(r for r in records if r["strategy"] == "delta_ucb")
    assert len(active["learning_curve"]) == 6 and 0.0 <= active["pairwise_accuracy"] <= 1.0
    assert png.stat().st_size > 10_000
