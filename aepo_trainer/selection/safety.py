"""The safety rule of the active strategies: follow the surrogate only as far as it has SHOWN skill on unseen labels.

The skill measured is within-prompt pairwise accuracy: for a prompt with paid labels, the share of its pairs with
different paid scores that the surrogate's posterior mean orders correctly (a predicted tie counts one half); with
k = 2 that is 1 or 0 per prompt, with k > 2 every pair of the prompt counts, and the prompt is still ONE unit (its
pairs share candidates, so they are not independent). Over the n prompts tested, with mean accuracy p_hat, the
one-sided Wilson score lower confidence bound

    LCB = (p_hat + z^2 / 2n - z sqrt(p_hat (1 - p_hat) / n + z^2 / 4n^2)) / (1 + z^2 / n),   z = Phi^-1(confidence)

decides the next selection: the acquisition is followed only while LCB > 0.5 + margin, otherwise the cold-start
strategy (`active_cold_start`, random k by default) selects. Each prompt's share is in [0, 1], whose variance is at
most a Bernoulli's with the same mean, so the Wilson bound of a proportion stays conservative for fractional shares.

Which prompts test what (`test`, `choices.SAFETY_TESTS`):

* `cross_validated`: the CURRENT surrogate's skill, estimated by K-fold cross-validation over ALL
  labelled prompts. Prompts are the units, assigned to a fold by a hash of their key (so the folds are a function
  of the key alone); each fold's prompts are predicted by a surrogate of the same kind and settings fitted on the
  other folds' labels. n = every labelled prompt with a testable pair, and p_hat is the skill of a fit on (K-1)/K of
  today's labels: slightly pessimistic for the fit that selects, but not stale. It is a pure function of the label
  set (the folds by key, each fit by label set), so every rank computes the same decision, and a checkpoint needs to
  store nothing: restoring the labels restores the rule. Computed lazily, once per new label set.
* `prequential` (the default): every batch's fresh labels test the surrogate before it is refitted on them
  (`ActiveSelector.observe`), each prompt once (the first test wins). n grows by one per prompt, but the early tests
  came from a surrogate fitted on very few labels, so the record keeps understating a surrogate that has since
  learned: measured on the AlpacaEval pools (N = 32, k = 2, batches of 32) it trusted the surrogate only after ~10 of
  12.5 batches (docs/efficacy.md). The entries are exchanged between ranks and stored in checkpoints (`export` /
  `merge`); they are kept under either test (the learning curve logs them).

Which is better was measured, not assumed (`experiments/efficacy_generalise.py`, docs/efficacy.md): the cross-validated
test trusts a learning surrogate much sooner (AlpacaEval pools of all 32 models, MiniLM, k = 2, B = 800: safe DTS
+0.171 vs random instead of +0.025), but the tested pairs are a mixture of random pairs and the acquisition's own,
and the acquisition's pairs are harder to order (DTS pairs two candidates the surrogate rates high), so its accuracy
falls once it follows and the rule flips back and forth; on the tuning pools (half A of the models, both embedders) it
did worse than the prequential test on average, and on held-out half B (MiniLM, package defaults) it kept less of the
gain (+0.017 vs +0.151), so the prequential test stays the default.

Why it bounds the loss against random: while the rule falls back, the selection IS random k (same draws, same
distribution), so the only batches that can lose to random are those selected while the bound was above chance. A
surrogate whose posterior mean orders pairs better than chance tends to pick a better "best" than a random candidate
(the robust chosen side, `acquisitions.py`; not a theorem: accuracy is measured on pairs, the gain on the best), so
following loses mainly when the bound is wrong: for a fixed n that happens with probability <= 1 - confidence under
the binomial model. Both tests only approximate that
model: the rule looks again after every batch (a sequential test without alpha spending), prequential tests come from
different fits, and cross-validated ones share training data between folds (the variance of a K-fold estimate is
not exactly binomial; Bengio & Grandvalet 2004). The margin and the measured leave-models-out results
(docs/efficacy.md: on the 16 weakest models' pools, where the features carry almost no signal, the rule kept every
safe strategy at random's level) are the empirical side of the guarantee. The cost where the surrogate does carry
signal: the prompts spent at random while the bound accumulates — for true accuracy a, about
z^2 a (1 - a) / (a - 0.5 - margin)^2 tested prompts (~60 at a = 0.6, ~20 at a = 0.7 with z = 1.645); the
cross-validated test reaches them with today's fit, the prequential one with a mixture of every past fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..choices import SAFETY_TESTS

__all__ = ["SafetyRecord", "SafetyState", "cross_validated_shares", "pair_share", "wilson_lower_bound"]

STREAM_FOLDS = 14  # the hash stream of the fold assignment (search.hash32; 11-13 are the ensemble's)
DEFAULT_FOLDS = 5


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


def pair_share(predicted, paid) -> float | None:
    """The share of the pairs with different paid scores that `predicted` orders like `paid` (a predicted tie counts
    one half); None when no pair differs."""
    correct, pairs = 0.0, 0
    for p in range(len(paid)):
        for q in range(p + 1, len(paid)):
            if paid[p] == paid[q]:
                continue
            pairs += 1
            d = (predicted[p] - predicted[q]) * (paid[p] - paid[q])
            correct += 1.0 if d > 0 else (0.5 if d == 0 else 0.0)
    return correct / pairs if pairs else None


def fold_of(prompt_keys: list[int], folds: int) -> list[int]:
    """The cross-validation fold of each prompt: a hash of its key alone (the same on every rank and after a resume)."""
    from .search import hash32

    if not prompt_keys:
        return []
    h = hash32(0, torch.tensor(prompt_keys, dtype=torch.int64), STREAM_FOLDS)
    return (h % folds).tolist()


def cross_validated_shares(surrogate, folds: int = DEFAULT_FOLDS) -> dict[int, float]:
    """{prompt key: out-of-fold pairwise share} over every labelled prompt with a testable pair: each fold's prompts
    are predicted by `surrogate.restricted(other folds' prompts)`, refitted (same kind, same settings). A fold whose
    complement has no usable labels predicts ties (share 0.5 each): no skill shown."""
    groups = surrogate.grouped()  # [(prompt key, features [m, F], scores [m])], sorted by key
    testable = [(pk, x, y) for pk, x, y in groups if len(y) >= 2 and bool((y != y[0]).any())]
    if not testable:
        return {}
    all_keys = [pk for pk, _, _ in groups]
    fold = dict(zip(all_keys, fold_of(all_keys, folds)))
    shares: dict[int, float] = {}
    for f in range(folds):
        held = [(pk, x, y) for pk, x, y in testable if fold[pk] == f]
        if not held:
            continue
        model = surrogate.restricted(pk for pk in all_keys if fold[pk] != f)
        model.fit()
        width = max(len(y) for _, _, y in held)
        X = torch.zeros(len(held), width, held[0][1].shape[1], dtype=torch.float64)
        mask = torch.zeros(len(held), width, dtype=torch.bool)
        for r, (_, x, y) in enumerate(held):
            X[r, : len(y)], mask[r, : len(y)] = x, True
        mean = model.posterior(X, mask).mean if model.ready else torch.zeros(len(held), width, dtype=torch.float64)
        for r, (pk, _, y) in enumerate(held):
            share = pair_share(mean[r, : len(y)].tolist(), y.tolist())
            if share is not None:
                shares[pk] = share
    return shares


@dataclass(frozen=True)
class SafetyState:
    """What the rule knows now (logged as `aepo/active_*`)."""

    prompts_tested: int  # prompts whose labels tested the surrogate out of sample (out of fold, or before the refit)
    accuracy: float  # mean within-prompt pairwise accuracy over them (NaN with none)
    lower_bound: float  # its one-sided Wilson lower confidence bound
    threshold: float  # 0.5 + margin
    follows: bool  # the acquisition selects the next batch (else the cold-start strategy)


class SafetyRecord:
    """The out-of-sample record of a surrogate and the decision it supports.

    Args:
        enabled: False follows the surrogate as soon as it is fitted (the pre-safety behaviour).
        margin: the bound must exceed 0.5 + margin.
        confidence: of the one-sided lower bound (0.95: z = 1.645).
        test: 'cross_validated' (of the attached surrogate's current label set) or 'prequential' (the recorded tests).
        folds: K of the cross-validation (>= 2).
    """

    def __init__(
        self,
        enabled: bool = True,
        margin: float = 0.02,
        confidence: float = 0.95,
        test: str = "prequential",
        folds: int = DEFAULT_FOLDS,
    ):
        if not (isinstance(margin, (int, float)) and 0 <= margin < 0.5):
            raise ValueError(f"margin must be a number in [0, 0.5), got {margin!r}")
        if not (isinstance(confidence, (int, float)) and 0.5 <= confidence < 1):
            raise ValueError(f"confidence must be a number in [0.5, 1), got {confidence!r}")
        if test not in SAFETY_TESTS:
            raise ValueError(f"test {test!r}: expected one of {', '.join(SAFETY_TESTS)}")
        if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
            raise ValueError(f"folds must be an integer >= 2, got {folds!r}")
        self.enabled, self.margin, self.confidence = bool(enabled), float(margin), float(confidence)
        self.test, self.folds = test, folds
        self._tests: dict[int, float] = {}  # prompt key -> share of its fresh pairs ordered correctly (prequential)
        self._surrogate = None  # the surrogate the cross-validated test refits (`attach`)
        self._cv: tuple[frozenset, dict[int, float]] | None = None  # (label keys it was computed on, shares)

    def attach(self, surrogate) -> None:
        """The surrogate whose label set the cross-validated test reads (`ActiveSelector` attaches its own)."""
        self._surrogate, self._cv = surrogate, None

    def record(self, prompt_key: int, accuracy: float) -> bool:
        """Keep one prompt's prequential out-of-sample accuracy (the first one recorded for the key wins)."""
        key = int(prompt_key)
        if key in self._tests or not math.isfinite(accuracy):
            return False
        self._tests[key] = float(accuracy)
        return True

    def shares(self) -> dict[int, float]:
        """{prompt key: accuracy} the decision is based on (cross-validated: recomputed when the label set changed)."""
        if self.test == "prequential" or self._surrogate is None:
            return self._tests if self.test == "prequential" else {}
        labels = frozenset(self._surrogate.keys())
        if self._cv is None or self._cv[0] != labels:
            self._cv = (labels, cross_validated_shares(self._surrogate, self.folds))
        return self._cv[1]

    def state(self) -> SafetyState:
        shares = self.shares()
        keys = sorted(shares)  # a sum in key order: the same float on every rank
        n = len(keys)
        total = math.fsum(shares[k] for k in keys)
        lower = wilson_lower_bound(total, n, self.confidence)
        threshold = 0.5 + self.margin
        return SafetyState(n, total / n if n else math.nan, lower, threshold, (not self.enabled) or lower > threshold)

    @property
    def follows(self) -> bool:
        return self.state().follows

    def export(self, keys=None) -> list[tuple[int, float]]:
        """Prequential (prompt key, accuracy) entries, sorted (all, or those of `keys`)."""
        chosen = sorted(self._tests) if keys is None else sorted(k for k in keys if k in self._tests)
        return [(k, self._tests[k]) for k in chosen]

    def merge(self, items) -> int:
        return sum(self.record(int(k), float(v)) for k, v in items)

    def keys(self) -> set[int]:
        return set(self._tests)
