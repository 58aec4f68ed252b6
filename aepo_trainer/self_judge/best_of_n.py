"""Self-rejection at inference (SELF-JUDGE): sample N responses, let a judge pick the best, return it with its
confidence.

Any generator (`TransformersGenerator`, `VLLMGenerator`, ...) and any annotator work:

* a pairwise judge (`PairwiseJudgeAnnotator`, relative scores) runs its single-elimination tournament (N − 1 matches,
  each judged in both orders); the winner is the champion and the confidence is the debiased probability with which
  it won the final (`pref(champion ≻ runner-up)`, in [0.5, 1]);
* an absolute scorer (a reward model, a reward function) scores the N responses; the winner has the highest score
  and the confidence is the Bradley–Terry probability that it beats the runner-up, σ(r_best − r_second).

With the policy as its own judge (a JSFT-trained model, `aepo jsft`) this is the paper's self-rejection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..generation.local import prompt_seed

__all__ = ["BestOfN", "best_of_n", "pick_best"]


@dataclass
class BestOfN:
    """The judged pool of one prompt.

    Attributes:
        prompt: the prompt.
        completions: the N sampled responses.
        scores: the judge's score of each (tournament scores for a pairwise judge; None = invalid).
        index: position of the winner in `completions` (None when no response has a valid score).
        best: the winning response.
        confidence: the judge's confidence that the winner beats the runner-up (see the module docstring).
    """

    prompt: Any
    completions: list
    scores: list
    index: int | None
    best: Any = None
    confidence: float | None = None
    extra: dict = field(default_factory=dict)


def pick_best(judge, prompt, completions: list, row: dict | None = None, scores: list | None = None) -> BestOfN:
    """Judge one prompt's responses with `judge` (any annotator) and return the winner with its confidence.
    `scores`: the judge's scores obtained already (e.g. through an `AnnotationService`, which stores and meters
    them); `judge` is then only asked whether its scores are relative (a tournament's)."""
    from ..annotation.base import AnnotationRequest, is_valid_score

    if scores is None:
        (scores,) = judge.score([AnnotationRequest(prompt, list(completions), row=row or {})])
    valid = [i for i, s in enumerate(scores) if is_valid_score(s)]
    if not valid:
        return BestOfN(prompt, list(completions), list(scores), None)
    # ties: the earliest response wins, as in the judge's own tournament
    index = max(valid, key=lambda i: (float(scores[i]), -i))
    confidence = None
    if len(valid) >= 2:
        if getattr(judge, "relative", False):
            k = len(completions)
            rounds = 0 if k == 2 else math.ceil(math.log2(k))  # a champion survives every round (wins or byes)
            confidence = float(scores[index]) - rounds
        else:
            second = max(float(scores[i]) for i in valid if i != index)
            confidence = 1.0 / (1.0 + math.exp(-(float(scores[index]) - second)))
    return BestOfN(prompt, list(completions), list(scores), index, completions[index], confidence)


def best_of_n(prompts: list, generator, judge, *, seed: int = 0, rows: list[dict] | None = None) -> list[BestOfN]:
    """Sample `generator.settings.num_generations` responses per prompt (seeded per prompt), judge them, pick the best.

    Args:
        prompts: strings or chat conversations.
        generator: any backend of `aepo_trainer.generation` (`generate(prompts, seeds) -> list[GeneratedPool]`).
        judge: any annotator (pairwise judge: tournament; scorer: highest score).
        seed: the run seed (each prompt's samples depend only on it and the prompt).
        rows: the prompts' dataset rows (columns passed to reward functions), optional.
    """
    pools = generator.generate(list(prompts), [prompt_seed(seed, p) for p in prompts])
    rows = rows or [{} for _ in prompts]
    return [pick_best(judge, pool.prompt, pool.completions, row) for pool, row in zip(pools, rows)]
