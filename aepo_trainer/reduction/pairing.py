"""Annotated subsets → preference pairs.

`make_pairs(scores, rule)` turns each prompt's scores (the annotated, selected candidates, in subset order) into
(chosen, rejected) pairs of positions inside that score list:

* `best_vs_worst` (the AEPO paper's default, "West-of-N on the selected k"): the best against the worst. Ties for
  best or worst go to the lowest position. A row whose scores are all equal gives no pair (`ties_dropped` + 1).
* `all_pairs`: each unordered pair once, oriented by score, kept when the gap exceeds `margin`. Pairs with a gap
  <= margin (equal scores included) are counted in `ties_dropped`; `margin_dropped` is the part of them whose scores
  differ.
* `best_vs_random`: the best against a candidate drawn uniformly among the strictly worse ones, with a generator
  seeded by `(seed, row_keys[row])` — the same prompt gets the same pair whatever batch it lands in.

`rankings` holds every row's valid positions sorted best → worst (ties by position), for reward-aware losses over
k > 2 responses.

Bad input is never turned into a pair silently: a `None` row (a prompt skipped for budget) produces nothing and is not
a tie; a `None`/NaN/inf score is dropped from its row and counted in `invalid_dropped` (logged), and the row is paired
on its remaining valid scores; a non-numeric score (a string, a bool) raises `TypeError`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..choices import PAIRING_RULES

logger = logging.getLogger(__name__)

__all__ = ["PAIRING_RULES", "Pair", "PairingResult", "make_pairs"]


@dataclass(frozen=True)
class Pair:
    """One preference pair: `chosen`/`rejected` are positions in row `row`'s score list (the selected subset)."""

    row: int
    chosen: int
    rejected: int
    chosen_score: float
    rejected_score: float

    @property
    def gap(self) -> float:
        return self.chosen_score - self.rejected_score


@dataclass
class PairingResult:
    """Pairs plus an account of everything that did not become a pair.

    Attributes:
        pairs: the preference pairs, by row, then by the chosen and rejected candidates' ranks.
        ties_dropped: would-be pairs dropped because both scores are equal (one per all-equal row for
            `best_vs_worst`/`best_vs_random`) or, for `all_pairs`, one per pair whose gap is <= `margin`.
        invalid_dropped: scores dropped because they were None/NaN/inf (in rows that were not skipped).
        rankings: one list per row: its valid positions, best first (empty for skipped rows).
        margin_dropped: the `all_pairs` ties whose scores differ (0 < gap <= `margin`); included in `ties_dropped`.
        skipped_rows: rows given as None (not annotated, e.g. budget exhausted).
    """

    pairs: list[Pair] = field(default_factory=list)
    ties_dropped: int = 0
    invalid_dropped: int = 0
    rankings: list[list[int]] | None = None
    margin_dropped: int = 0
    skipped_rows: int = 0

    def as_dict(self) -> dict[str, int]:
        """Counts for logging (`pairs`, `ties_dropped`, `invalid_dropped`, `margin_dropped`, `skipped_rows`)."""
        return {
            "pairs": len(self.pairs),
            "ties_dropped": self.ties_dropped,
            "invalid_dropped": self.invalid_dropped,
            "margin_dropped": self.margin_dropped,
            "skipped_rows": self.skipped_rows,
        }


def make_pairs(
    scores: Sequence[Sequence[float | None] | None],
    rule: str = "best_vs_worst",
    margin: float = 0.0,
    seed: int = 0,
    row_keys: Sequence[Any] | None = None,
) -> PairingResult:
    """Preference pairs from per-prompt scores (see the module docstring for the rules).

    Args:
        scores: one entry per prompt: its scores in subset order, or None for a prompt that was not annotated.
        rule: "best_vs_worst", "all_pairs" or "best_vs_random".
        margin: minimum score gap of an `all_pairs` pair (pairs with a gap <= margin are dropped).
        seed, row_keys: seed the per-row generator of `best_vs_random`; `row_keys` (one stable key per row, e.g. a
            prompt hash) makes the draw independent of the batch; defaults to the row index.
    """
    if rule not in PAIRING_RULES:
        raise ValueError(f"Unknown pairing rule {rule!r}: expected one of {', '.join(map(repr, PAIRING_RULES))}.")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}.")
    if hasattr(row_keys, "tolist"):
        row_keys = row_keys.tolist()
    if row_keys is not None and len(row_keys) != len(scores):
        raise ValueError(f"row_keys has {len(row_keys)} entries for {len(scores)} rows of scores.")
    result = PairingResult(rankings=[])
    for r, row in enumerate(scores):
        if row is None:
            result.skipped_rows += 1
            result.rankings.append([])
            continue
        valid = _valid_scores(row, r)
        result.invalid_dropped += len(row) - len(valid)
        ranking = [p for p, _ in sorted(valid.items(), key=lambda item: (-item[1], item[0]))]
        result.rankings.append(ranking)
        if len(valid) < 2:
            continue
        if rule == "all_pairs":
            _all_pairs(result, r, ranking, valid, margin)
            continue
        best = ranking[0]
        worst_score = min(valid.values())
        if valid[best] == worst_score:
            result.ties_dropped += 1
            continue
        if rule == "best_vs_worst":
            rejected = min(p for p, s in valid.items() if s == worst_score)
        else:
            worse = sorted(p for p, s in valid.items() if s < valid[best])
            key = r if row_keys is None else row_keys[r]
            rejected = worse[_row_rng(seed, key).randrange(len(worse))]
        result.pairs.append(Pair(r, best, rejected, valid[best], valid[rejected]))
    if result.invalid_dropped:
        logger.warning(
            "make_pairs: dropped %d invalid score(s) (None/NaN/inf); they were not paired.", result.invalid_dropped
        )
    return result


def _valid_scores(row, r: int) -> dict[int, float]:
    if isinstance(row, (str, bytes)) or (not isinstance(row, Sequence) and not hasattr(row, "tolist")):
        raise TypeError(f"scores[{r}] must be a list of scores or None, got {type(row).__name__}.")
    if hasattr(row, "tolist"):
        row = row.tolist()
    valid = {}
    for p, value in enumerate(row):
        if value is None:
            continue
        if isinstance(value, (str, bytes, bool)):
            raise TypeError(f"scores[{r}][{p}] = {value!r} is not a number.")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"scores[{r}][{p}] = {value!r} is not a number.") from None
        if math.isfinite(number):
            valid[p] = number
    return valid


def _all_pairs(result: PairingResult, r: int, ranking: list[int], valid: dict[int, float], margin: float) -> None:
    for a in range(len(ranking)):
        for b in range(a + 1, len(ranking)):
            hi, lo = ranking[a], ranking[b]
            gap = valid[hi] - valid[lo]
            if gap <= margin:  # a gap within the margin counts as a tie
                result.ties_dropped += 1
                result.margin_dropped += gap > 0
            else:
                result.pairs.append(Pair(r, hi, lo, valid[hi], valid[lo]))


def _row_rng(seed: int, key: Any) -> random.Random:
    if hasattr(key, "item"):  # numpy / torch scalars: the same key whatever its container
        key = key.item()
    digest = hashlib.sha256(f"aepo-pairing|{int(seed)}|{key!r}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))
