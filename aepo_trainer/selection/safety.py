"""The safety rule of the active strategies: follow the surrogate only as far as it has SHOWN skill on unseen labels.

Every batch's fresh labels test the surrogate before it is refitted on them (`ActiveSelector.observe`). For each
prompt so tested, the rule keeps the share of its within-prompt pairs (different paid scores) that the surrogate's
posterior mean ordered correctly (a predicted tie counts one half): with k = 2 that is 1 or 0 per prompt. Over the
n prompts tested so far, with mean accuracy p_hat, the one-sided Wilson score lower confidence bound

    LCB = (p_hat + z^2 / 2n - z sqrt(p_hat (1 - p_hat) / n + z^2 / 4n^2)) / (1 + z^2 / n),   z = Phi^-1(confidence)

decides the next selection: the acquisition is followed only while LCB > 0.5 + margin, otherwise the cold-start
strategy (`active_cold_start`, random k by default) selects. Prompts are the unit (not pairs), so with k > 2 the
correlated pairs of one prompt count once and the bound stays conservative (each prompt's share is in [0, 1], whose
variance is at most a Bernoulli's).

Why it bounds the loss against random: while the rule falls back, the selection IS random k (same draws, same
distribution), so the only batches that can lose to random are those selected while the bound was above chance; the
bound fails (the surrogate's true out-of-sample accuracy is <= 0.5 + margin although LCB says more) with probability
<= 1 - confidence at any fixed time, and a surrogate that orders pairs better than chance picks a better "best" than
a random candidate in expectation. The cost where the surrogate does carry signal: the prompts spent at random while
the bound accumulates (for true accuracy a, about z^2 a (1 - a) / (a - 0.5 - margin)^2 tested prompts; ~60 prompts
at a = 0.6, ~20 at a = 0.7 with z = 1.645).

The record is keyed by prompt (the first test of a prompt is kept; a label already learned is never tested again), so
it is a function of the set of (prompt, test) entries: ranks of a multi-process run exchange their entries with their
labels and hold identical records, and a checkpoint stores them (`export` / `merge`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["SafetyRecord", "SafetyState", "wilson_lower_bound"]


def wilson_lower_bound(successes: float, trials: int, confidence: float) -> float:
    """One-sided Wilson score lower bound of a proportion (successes may be fractional); 0 with no trials."""
    if trials <= 0:
        return 0.0
    from scipy.stats import norm

    z = float(norm.ppf(confidence))
    n = float(trials)
    p = min(max(successes / n, 0.0), 1.0)
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


@dataclass(frozen=True)
class SafetyState:
    """What the rule knows now (logged as `aepo/active_*`)."""

    prompts_tested: int  # prompts whose fresh labels tested the surrogate out of sample
    accuracy: float  # mean within-prompt pairwise accuracy over them (NaN with none)
    lower_bound: float  # its one-sided Wilson lower confidence bound
    threshold: float  # 0.5 + margin
    follows: bool  # the acquisition selects the next batch (else the cold-start strategy)


class SafetyRecord:
    """The running out-of-sample record of a surrogate and the decision it supports.

    Args:
        enabled: False follows the surrogate as soon as it is fitted (the pre-safety behaviour).
        margin: the bound must exceed 0.5 + margin.
        confidence: of the one-sided lower bound (0.95: z = 1.645).
    """

    def __init__(self, enabled: bool = True, margin: float = 0.02, confidence: float = 0.95):
        if not (isinstance(margin, (int, float)) and 0 <= margin < 0.5):
            raise ValueError(f"margin must be a number in [0, 0.5), got {margin!r}")
        if not (isinstance(confidence, (int, float)) and 0.5 <= confidence < 1):
            raise ValueError(f"confidence must be a number in [0.5, 1), got {confidence!r}")
        self.enabled, self.margin, self.confidence = bool(enabled), float(margin), float(confidence)
        self._tests: dict[int, float] = {}  # prompt key -> share of its fresh pairs ordered correctly

    def record(self, prompt_key: int, accuracy: float) -> bool:
        """Keep one prompt's out-of-sample accuracy (the first one recorded for the key wins)."""
        key = int(prompt_key)
        if key in self._tests or not math.isfinite(accuracy):
            return False
        self._tests[key] = float(accuracy)
        return True

    def state(self) -> SafetyState:
        keys = sorted(self._tests)  # a sum in key order: the same float on every rank
        n = len(keys)
        total = math.fsum(self._tests[k] for k in keys)
        lower = wilson_lower_bound(total, n, self.confidence)
        threshold = 0.5 + self.margin
        return SafetyState(n, total / n if n else math.nan, lower, threshold, (not self.enabled) or lower > threshold)

    @property
    def follows(self) -> bool:
        return self.state().follows

    def export(self, keys=None) -> list[tuple[int, float]]:
        """(prompt key, accuracy) entries, sorted (all, or those of `keys`)."""
        chosen = sorted(self._tests) if keys is None else sorted(k for k in keys if k in self._tests)
        return [(k, self._tests[k]) for k in chosen]

    def merge(self, items) -> int:
        return sum(self.record(int(k), float(v)) for k, v in items)

    def keys(self) -> set[int]:
        return set(self._tests)
