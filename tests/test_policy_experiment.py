"""The policy-level experiment (experiments/policy_training.py, issue 28): task plugins and their errors, the
statistics against hand-computed values, and a `--quick` run end to end through `AEPOTrainer`."""

from __future__ import annotations

import json
import random
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import policy_stats as stats  # noqa: E402
import tasks  # noqa: E402


# ---------------------------------------------------------------------------------------------------- plugins
def test_builtin_tasks_load_and_score_as_documented():
    sort = tasks.load_task("tasks:DigitSort")
    add = tasks.load_task("tasks:Addition")
    assert isinstance(sort, tasks.Task) and isinstance(add, tasks.Task)
    assert sort.gold_reward("52819", "12589") == 1.0
    assert sort.gold_reward("52819", "1258") == pytest.approx(0.8)  # one deletion out of 5
    assert sort.length_controlled_reward("52819", "125899999") == 1.0  # extra characters are not counted
    # numeric partial credit: 84 and 58 are both one character from 85, but 84 is much closer as a number
    assert add.gold_reward("37+48", "85") == 1.0
    assert add.gold_reward("37+48", "84") == pytest.approx(1 - 1 / 47.5)
    assert add.gold_reward("37+48", "58") == pytest.approx(1 - 27 / 47.5)
    assert add.gold_reward("37+48", "8+5") == 0.0 and add.gold_reward("37+48", "") == 0.0
    assert add.length_controlled_reward("37+48", "851") == 1.0
    rng = random.Random(0)
    demos = [add.demonstration("37+48", rng, 0.3) for _ in range(200)]
    assert 0.2 < np.mean([d == "85" for d in demos]) < 0.4  # quality = share of correct demonstrations


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def write_plugin(folder: Path, name: str, body: str) -> None:
    (folder / f"{name}.py").write_text(textwrap.dedent(body), encoding="utf-8")


def test_a_third_task_loads_from_any_module(plugin_dir):
    write_plugin(
        plugin_dir,
        "mytasks_ok",
        """
        class Reverse:
            name, alphabet, prompt_suffix, max_completion_chars = "reverse", "abc=", "=", 8
            def prompt(self, rng):
                return "".join(rng.choice("abc") for _ in range(4))
            def demonstration(self, prompt, rng, quality):
                return prompt[::-1] if rng.random() < quality else prompt
            def gold_reward(self, prompt, completion):
                return float(completion == prompt[::-1])
            def length_controlled_reward(self, prompt, completion):
                return self.gold_reward(prompt, completion[: len(prompt)])
        """,
    )
    task = tasks.load_task("mytasks_ok:Reverse")
    assert task.name == "reverse" and task.gold_reward("abca", "acba") == 1.0


@pytest.mark.parametrize(
    "spec, body, message",
    [
        ("no_colon_here", None, "expected 'package.module:Name'"),
        ("mytasks_missing_module:X", None, "cannot import module 'mytasks_missing_module'"),
        ("mytasks_a:Nope", "class Other: pass\n", "has no attribute 'Nope'"),
        ("mytasks_b:T", "class T:\n    name = 't'\n", "missing alphabet, prompt_suffix, max_completion_chars, prompt"),
        ("mytasks_c:T", "raise RuntimeError('boom at import')\n", "RuntimeError: boom at import"),
    ],
)
def test_a_broken_plugin_fails_with_a_clear_message(plugin_dir, spec, body, message):
    if body is not None:
        write_plugin(plugin_dir, spec.split(":")[0], body)
    with pytest.raises(tasks.TaskError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tasks.load_task(spec)


def test_a_plugin_whose_rewards_break_the_protocol_is_refused(plugin_dir):
    write_plugin(
        plugin_dir,
        "mytasks_bad_reward",
        """
        from tasks import DigitSort
        class TooHigh(DigitSort):
            def gold_reward(self, prompt, completion):
                return 2.0
        class Foreign(DigitSort):
            def demonstration(self, prompt, rng, quality):
                return "xyz"
        """,
    )
    with pytest.raises(tasks.TaskError, match=r"rewards must be floats in \[0, 1\]"):
        tasks.load_task("mytasks_bad_reward:TooHigh")
    with pytest.raises(tasks.TaskError, match="outside the alphabet"):
        tasks.load_task("mytasks_bad_reward:Foreign")


# ---------------------------------------------------------------------------------------------------- statistics
def test_statistics_against_hand_computed_values():
    assert stats.per_prompt_means([[1.0, 0.0], [0.5, 0.5], [1.0, 1.0]]).tolist() == [0.5, 0.5, 1.0]
    values = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # [seeds, prompts]
    # replicate 0: seeds (0, 0), prompts (2, 2, 1) -> mean of 3, 3, 2 twice = 8/3
    # replicate 1: seeds (1, 0), prompts (0, 1, 2) -> mean of all six = 3.5
    # replicate 2: seeds (1, 1), prompts (0, 0, 0) -> 4
    got = stats.resampled_means(values, [[0, 0], [1, 0], [1, 1]], [[2, 2, 1], [0, 1, 2], [0, 0, 0]])
    assert got == pytest.approx([8 / 3, 3.5, 4.0])
    mean, low, high = stats.bootstrap_ci(np.full((3, 5), 0.25))
    assert (mean, low, high) == (0.25, 0.25, 0.25)  # no variation: the interval is the point
    mean, low, high = stats.bootstrap_ci(values, replicates=4000, seed=1)
    assert mean == 3.5 and 1.0 <= low < 3.5 < high <= 6.0
    # labels to parity: 0.6 at 128 and 0.8 at 256 reach 0.7 half-way: 128 + 0.5 x 128 = 192
    assert stats.labels_to_parity([64, 128, 256], [0.5, 0.6, 0.8], 0.7) == pytest.approx(192.0)
    assert stats.labels_to_parity([64, 128], [0.75, 0.8], 0.7) == 64.0  # already there at the smallest budget
    assert stats.labels_to_parity([64, 128], [0.5, 0.6], 0.7) is None  # never


# ---------------------------------------------------------------------------------------------------- end to end
def test_quick_run_end_to_end_through_the_trainer(tmp_path):
    import policy_training as exp

    argv = ["--quick", "--task", "tasks:Addition", "--out", str(tmp_path), "--train-prompts", "16"]
    argv += ["--strategies", "random k", "random k, prompts: D-optimal", "on-policy random k", "--budget-shares", "0.5"]
    exp.main(argv)
    data = json.loads((tmp_path / "policy_quick.json").read_text())
    runs = [r for r in data["records"] if r["label"] != "SFT"]
    assert {(r["label"], r["budget"]) for r in runs} == {
        ("random k", 16),
        ("random k, prompts: D-optimal", 16),
        ("on-policy random k", 16),
    }
    longest = exp.load_task("tasks:Addition").max_completion_chars
    for r in runs:
        assert r["labels"] <= r["budget"] and r["labels"] == r["labels_spent"]  # the annotator's count = the ledger's
        assert len(r["gold"]) == 16  # one mean per held-out prompt
        assert 16 * 2 <= r["eval_generated_tokens"] <= 16 * 2 * (longest + 1)  # 2 samples per held-out prompt
        # compute of the step: the trainer's own count of on-policy tokens (offline pools are sampled once, outside)
        if r["data"] == "on-policy":
            pools = r["pools_generated"]
            assert pools >= 8 and pools * 4 <= r["generated_tokens"] <= pools * 4 * (longest + 1)  # N = 4, EOS incl.
        else:
            assert r["generated_tokens"] == 0
    selected = next(r for r in runs if r["label"] == "random k, prompts: D-optimal")
    assert selected["prompts_unselected"] > 0 and selected["labels"] == 2 * selected["prompts_covered"]
    assert "Labels to parity" in (tmp_path / "policy_quick.md").read_text()


def test_distinct_prompts_skip_the_seen_ones_and_stop_after_bounded_draws():
    from tasks import distinct_prompts

    draws = iter(["a", "b", "a", "c", "b", "d"])
    seen = {"c"}
    assert distinct_prompts(lambda: next(draws), 2, seen) == ["a", "b"] and seen == {"a", "b", "c"}
    # one distinct prompt exists: 3 asked for, the draws stop after 3 x 2 attempts instead of looping forever
    assert distinct_prompts(lambda: "x", 3, set(), attempts_per_prompt=2) == ["x"]
