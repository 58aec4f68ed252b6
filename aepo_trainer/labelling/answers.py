"""A posted answer, checked against what was shown, turned into one stored row per candidate.

Kept apart from the routes so the rule "what a labeller may post, and what it is worth" lives in one place:

* `skip` — "cannot judge": no score (counts as an answer, not in the mean);
* `tie` (when `LabellingSettings.allow_tie`) — all equally good: every candidate gets the middle of the scale
  (`(scale_min + scale_max) / 2` for scores, `(k-1)/2` Borda points otherwise), so the item pairs nothing;
* `all_bad` (when `allow_all_bad`) — every candidate gets the bottom of the scale (`scale_min`, or 0 points);
* otherwise the question's own answer: `scores`, `ranking` (Borda points) or `best`/`worst`.

Every row's `raw` keeps what was shown: `position` (0 = first shown), `shown` (how many), `seconds` (from the task
first shown to the answer) and, when enabled, the labeller's `rationale`.
"""

from __future__ import annotations

import math

from ..storage.label_book import LabellingSettings
from .agreement import best_worst_points, borda_points

__all__ = ["AnswerError", "validated_answer"]


class AnswerError(ValueError):
    """A posted answer that does not fit the task shown: the message names the field."""


def validated_answer(
    body: dict, open_keys: list[str], settings: LabellingSettings, max_rationale_chars: int
) -> dict[str, tuple[float | None, dict]]:
    """`{key: (score, raw)}` for the candidates `open_keys` (in the order shown), or `AnswerError`. The keys must be
    exactly the task's open items: a forged key, a key of another task or one already answered changes nothing."""
    rationale = body.get("rationale")
    extra: dict = {}
    if rationale is not None and rationale != "":
        if not settings.rationale:
            raise AnswerError("this page asks for no rationale ('rationale' must be left out)")
        if not isinstance(rationale, str):
            raise AnswerError("'rationale' must be text")
        if len(rationale) > max_rationale_chars:
            raise AnswerError(f"'rationale' is longer than {max_rationale_chars} characters")
        extra["rationale"] = rationale.strip()
    shown = {key: {"position": i, "shown": len(open_keys), **extra} for i, key in enumerate(open_keys)}
    k = len(open_keys)
    points_question = settings.question != "score"
    for flag, allowed, value in (
        ("tie", settings.allow_tie, (k - 1) / 2 if points_question else (settings.scale_min + settings.scale_max) / 2),
        ("all_bad", settings.allow_all_bad, 0.0 if points_question else float(settings.scale_min)),
    ):
        if body.get(flag) is True:
            if not allowed:
                raise AnswerError(f"'{flag}' is not offered on this page")
            return {key: (float(value), {flag: True, **shown[key]}) for key in open_keys}
    if body.get("skip") is True:
        return {key: (None, {"skip": True, **shown[key]}) for key in open_keys}
    if settings.question == "score":
        scores = body.get("scores")
        if not isinstance(scores, dict) or set(scores) != set(open_keys):
            raise AnswerError("'scores' must give one score for each candidate shown, by key")
        rows = {}
        for key in open_keys:
            value = scores[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise AnswerError(f"the score of candidate {key[:12]} is not a number")
            if not settings.scale_min <= value <= settings.scale_max:
                raise AnswerError(
                    f"the score of candidate {key[:12]} is outside {settings.scale_min}..{settings.scale_max}"
                )
            rows[key] = (float(value), {"score": value, **shown[key]})
        return rows
    if settings.question == "ranking":
        ranking = body.get("ranking")
        if not isinstance(ranking, list) or sorted(map(str, ranking)) != sorted(open_keys):
            raise AnswerError("'ranking' must list every candidate shown exactly once, best first")
        points = borda_points([str(key) for key in ranking])
        return {key: (points[key], {"rank": ranking.index(key), "of": k, **shown[key]}) for key in open_keys}
    best, worst = body.get("best"), body.get("worst")
    if best not in open_keys or worst not in open_keys or (best == worst and k > 1):
        raise AnswerError("'best' and 'worst' must be two different candidates shown")
    points = best_worst_points(open_keys, best, worst)
    return {
        key: (points[key], {"best": key == best, "worst": key == worst, "of": k, **shown[key]}) for key in open_keys
    }
