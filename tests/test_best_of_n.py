"""Self-rejection at inference: best-of-n returns the judge's tournament winner with its confidence."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from aepo_trainer.annotation import PairwiseJudgeAnnotator, RewardFunctionAnnotator
from aepo_trainer.generation import GeneratedPool
from aepo_trainer.self_judge.best_of_n import best_of_n, pick_best

BEATS = {("rock", "scissors"), ("scissors", "paper"), ("paper", "rock")}


class RockPaperScissors(PairwiseJudgeAnnotator):
    """A deterministic, non-transitive judge: rock > scissors > paper > rock, everything > "pass". So the winner depends
    on the tournament's bracket, not on a ranking: a best-of-n that did not run the tournament would pick another."""

    def _choice_probs(self, texts):
        out = []
        for t in texts:
            a = t.split("[Assistant A]\n")[1].split("\n\n[Assistant B]")[0]
            b = t.split("[Assistant B]\n")[1].split("\n\nPlease choose")[0]
            wins = (a, b) in BEATS or (b == "pass" and a != "pass")
            out.append(0.9 if wins else 0.1)
        return out


class FixedPools:
    """A generator that returns given pools (any backend works: only `generate(prompts, seeds)` is used)."""

    def __init__(self, pools):
        self.pools, self.seeds = pools, []

    def generate(self, prompts, seeds, model=None):
        self.seeds.extend(seeds)
        return [GeneratedPool(prompt=p, completions=self.pools[p]) for p in prompts]


def _judge():
    return RockPaperScissors("unused", tokenizer=SimpleNamespace(chat_template=None, pad_token_id=0), name="rps")


def test_best_of_n_returns_the_tournament_winner():
    # bracket: rock v paper -> paper; scissors v pass -> scissors; final paper v scissors -> scissors
    pools = {"q1": ["rock", "paper", "scissors", "pass"], "q2": ["pass", "paper"], "q3": ["rock", "paper", "scissors"]}
    generator = FixedPools(pools)
    results = best_of_n(["q1", "q2", "q3"], generator, _judge(), seed=5)
    # q3: rock v paper -> paper, scissors has a bye; final paper v scissors -> scissors (although rock beats it)
    assert [r.best for r in results] == ["scissors", "paper", "scissors"]
    assert [r.index for r in results] == [2, 1, 2]
    # debiased confidence of the final: (0.9 + 1 - 0.1) / 2 = 0.9
    assert [r.confidence for r in results] == pytest.approx([0.9, 0.9, 0.9])
    assert len(set(generator.seeds)) == 3  # one seed per prompt


def test_scorer_judge_picks_the_highest_score_with_bradley_terry_confidence():
    judge = RewardFunctionAnnotator(lambda prompts, completions, **kw: [float(len(c)) for c in completions])
    result = pick_best(judge, "q", ["aa", "aaaa", "a"])
    assert (result.index, result.best) == (1, "aaaa")
    assert result.confidence == pytest.approx(1 / (1 + math.exp(-2.0)))
    single = pick_best(judge, "q", ["only"])
    assert single.index == 0 and single.confidence is None


def test_aepo_best_of_n_self_rejection(tmp_path, tiny_model_path):
    from aepo_trainer.cli import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "id": i}) + "\n" for i, p in enumerate(["Hi", "Two plus"])))
    out = tmp_path / "best.jsonl"
    flags = ["--model", tiny_model_path, "--input", str(prompts), "--output", str(out)]
    assert main(["best-of-n", *flags, "--num_completions", "3", "--max_new_tokens", "4", "--seed", "1"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1]
    judge = PairwiseJudgeAnnotator(tiny_model_path, device="cpu")
    for row in rows:
        assert len(row["completions"]) == 3 and row["best"] == row["completions"][row["best_index"]]
        # the winner is the tournament champion of the model judging its own samples
        expected = pick_best(judge, row["prompt"], row["completions"])
        assert row["best_index"] == expected.index
        assert row["judge_scores"] == pytest.approx(expected.scores, abs=1e-5)
        assert 0.5 <= row["confidence"] <= 1.0
