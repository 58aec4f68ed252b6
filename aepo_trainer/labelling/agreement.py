"""From answers to scores, and how much labellers agree.

**Scores.** The pairing step needs one number per candidate. A `score` answer is that number. A `ranking` of k
candidates becomes Borda points: the candidate ranked r-th (r = 0 for the best) gets k-1-r points, so the best of k
gets k-1 and the worst 0. A `best_worst` choice is the ranking with only its ends known: best k-1, worst 0, every
other candidate (k-1)/2 (the mean of the ranks it could have). With several labellers the item's score is the **mean**
of their scores (for rankings: the Borda count divided by the number of labellers, i.e. on the same 0..k-1 scale
whatever the number of labellers). "Skip / cannot judge" answers count as answers (the item is not asked again) but
not in the mean; an item everybody skipped has no score and is stored as invalid (never paired).

**Agreement.** Krippendorff's alpha (the PyPI `krippendorff` package): labellers x items, missing where a labeller did
not answer (or skipped), at the interval level for scores and the ordinal level for Borda points. 1 is perfect
agreement, 0 is what chance gives, below 0 is systematic disagreement. Per labeller, so a team sees *who* disagrees:
the mean absolute difference between the labeller's score and the mean of the others' on the items they share, and
alpha with that labeller left out (if it rises well above the overall alpha, that labeller is the outlier).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["aggregate", "agreement", "best_worst_points", "borda_points"]


def aggregate(scores: Sequence[float | None]) -> float | None:
    """The item's score: the mean of the non-skip scores (None when every labeller skipped)."""
    values = [float(s) for s in scores if s is not None]
    return sum(values) / len(values) if values else None


def borda_points(ranking: Sequence[str]) -> dict[str, float]:
    """`{key: points}` of a best-first ranking of k keys: k-1 for the first, ..., 0 for the last."""
    k = len(ranking)
    return {key: float(k - 1 - r) for r, key in enumerate(ranking)}


def best_worst_points(keys: Sequence[str], best: str, worst: str) -> dict[str, float]:
    """`{key: points}` of a best/worst choice among `keys`: k-1, 0, and (k-1)/2 for the candidates in between."""
    k = len(keys)
    points = dict.fromkeys(keys, (k - 1) / 2)
    points[best], points[worst] = float(k - 1), 0.0
    return points


def agreement(answers: Mapping[str, Mapping[str, float | None]], level: str = "interval") -> dict:
    """Inter-annotator agreement over `answers` = `{item key: {labeller: score | None}}`.

    Returns `{"alpha": overall alpha | None, "items": items answered by >= 2 labellers, "labellers": {name:
    {"items": n, "shared": items shared with someone, "mean_abs_diff": ..., "alpha_without": ...}}}`. A value is None
    where it is undefined (fewer than two labellers on any item, or no variation at all).
    """
    labellers = sorted({name for per_item in answers.values() for name in per_item})
    items = [key for key, per_item in answers.items() if sum(v is not None for v in per_item.values()) >= 2]
    out = {"alpha": _alpha(answers, items, labellers, level), "items": len(items), "labellers": {}}
    for name in labellers:
        own = [key for key, per_item in answers.items() if per_item.get(name) is not None]
        diffs = []
        for key in own:
            others = [v for other, v in answers[key].items() if other != name and v is not None]
            if others:
                diffs.append(abs(answers[key][name] - sum(others) / len(others)))
        rest = [other for other in labellers if other != name]
        out["labellers"][name] = {
            "items": sum(name in per_item for per_item in answers.values()),
            "shared": len(diffs),
            "mean_abs_diff": sum(diffs) / len(diffs) if diffs else None,
            "alpha_without": _alpha(answers, items, rest, level) if len(rest) >= 2 else None,
        }
    return out


def _alpha(answers, items, labellers, level) -> float | None:
    if len(labellers) < 2 or not items:
        return None
    import krippendorff
    import numpy as np

    matrix = np.full((len(labellers), len(items)), np.nan)
    for j, key in enumerate(items):
        for i, name in enumerate(labellers):
            value = answers[key].get(name)
            if value is not None:
                matrix[i, j] = value
    pairable = (~np.isnan(matrix)).sum(axis=0) >= 2
    values = matrix[:, pairable]
    if values.size == 0 or len(np.unique(values[~np.isnan(values)])) < 2:
        return None  # no pairable item, or one value only: alpha is undefined
    alpha = float(krippendorff.alpha(reliability_data=values, level_of_measurement=level))
    return alpha if math.isfinite(alpha) else None
