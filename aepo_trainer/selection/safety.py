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
  came from a surrogate fitted on very few labels, so the record understates a surrogate that learns late (with the
  surrogate's noise count corrected, issue 27, the early fits are skilled where the features carry the reward: on the
  AlpacaEval pools, N = 32, k = 2, batches of 32, it follows from the third batch). The entries are exchanged between ranks and stored in checkpoints (`export` /
  `merge`); they are kept under every test (the learning curve logs them).
* `prequential_recent`: the same tests, but only those of the `window` most recently tested prompts (ordered by the
  batch their labels arrived in, then by prompt key): n = min(window, prompts tested). The tests of an early, weak
  fit leave the window as newer ones arrive, so the bound follows the recent fits — the ones that select — instead of
  the mean over every fit since the start. Each entry carries its batch number, `next_batch()` = one past the newest
  recorded (a function of the record, not of a per-rank counter, so a resumed run and every rank number alike);
  exported and merged with its entry, and a key tested twice keeps the smaller (batch, accuracy) whatever the merge
  order, so the record, the window and the decision are functions of the set of entries.

Which is better was measured, not assumed (`experiments/efficacy_generalise.py`, docs/efficacy.md): on the tuning
pools (half A of the models, 400 prompts, mean Δ chosen of the five learners) the prequential test scored highest with
MiniLM, by a hair (+0.293 against +0.291 for the ensemble and +0.283 for the Bayesian linear surrogate
cross-validated, +0.282 with the recent window of 128) and tied the cross-validated
one with the n-gram embedder (+0.325 each, +0.310 recent), so it stays the default. The cross-validated test's known
weakness: its tested pairs mix random pairs with the acquisition's own, which are harder to order (DTS pairs two
candidates the surrogate rates high), so its accuracy sags once it follows. (Before the noise count was corrected the
surrogate was weak early and the tests differed a lot: the prequential rule trusted it after ~10 of 12.5 batches on
the 32-model pools, the cross-validated one after 4.)

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

The recent window keeps that argument: the fallback is still random k, and the bound is still a one-sided Wilson bound
over out-of-sample tests, now of the last `window` prompts' tests — made by the fits of the last few batches, i.e. by
(nearly) the surrogate that is selecting, which is what the guarantee is about; the prequential bound over every test
concerns an average of every fit since the start and stays conservative long after the surrogate has learned. Its
costs: n never exceeds the window, so the bound is looser (following needs an observed accuracy above 0.623 with
window 64, 0.593 with 128, against 0.562 over 400 tested prompts); every batch is a look at a largely new sample, so a
no-signal surrogate passes the bound now and then by chance (the looks of the full record are strongly correlated, the
window's much less); and while it follows, the window fills with the acquisition's own harder pairs (each tested once,
before the refit). Compute: one partial sort of the record per decision (`heapq.nlargest`), ~5 ms at 10,000 tested
prompts against ~0.6 ms for the full record (side by side, 2 shared cores). Measured (docs/efficacy.md): on half A's
tuning pools it did not beat the full record (above); the default window, 128, is half A's pick (over 64). No
hysteresis: nothing measured called for it.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import torch

from ..choices import SAFETY_TESTS

__all__ = ["SafetyRecord", "SafetyState", "cross_validated_shares", "pair_share", "wilson_lower_bound"]

STREAM_FOLDS = 14  # the hash stream of the fold assignment (search.hash32; 11-13 are the ensemble's)
DEFAULT_FOLDS = 5
DEFAULT_WINDOW = 128  # AEPOConfig.active_safety_window


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
        test: one of `choices.SAFETY_TESTS`: 'prequential' (every recorded test), 'prequential_recent' (the recorded
            tests of the `window` most recent prompts) or 'cross_validated' (of the attached surrogate's label set).
        folds: K of the cross-validation (>= 2).
        window: with test 'prequential_recent', how many of the most recently tested prompts the bound reads (>= 1).
    """

    def __init__(
        self,
        enabled: bool = True,
        margin: float = 0.02,
        confidence: float = 0.95,
        test: str = "prequential",
        folds: int = DEFAULT_FOLDS,
        window: int = DEFAULT_WINDOW,
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
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ValueError(f"window must be an integer >= 1, got {window!r}")
        self.test, self.folds, self.window = test, folds, window
        # prompt key -> (batch its labels arrived in, share of its fresh pairs ordered correctly): the prequential tests
        self._tests: dict[int, tuple[int, float]] = {}
        self._surrogate = None  # the surrogate the cross-validated test refits (`attach`)
        self._cv: tuple[frozenset, dict[int, float]] | None = None  # (label keys it was computed on, shares)

    def attach(self, surrogate) -> None:
        """The surrogate whose label set the cross-validated test reads (`ActiveSelector` attaches its own)."""
        self._surrogate, self._cv = surrogate, None

    def next_batch(self) -> int:
        """The batch number the next tests get: one past the newest recorded (a function of the record, so every rank
        and a resumed run number alike)."""
        return 1 + max((batch for batch, _ in self._tests.values()), default=-1)

    def record(self, prompt_key: int, accuracy: float, batch: int | None = None) -> bool:
        """Keep one prompt's prequential out-of-sample accuracy, tested in `batch` (None: `next_batch()`). A prompt
        is tested once: of two entries for one key the smaller (batch, accuracy) wins whatever order they arrive in
        (the first test, and the same pick on every rank). True when the key is new."""
        key = int(prompt_key)
        if not math.isfinite(accuracy):
            return False
        entry = (self.next_batch() if batch is None else int(batch), float(accuracy))
        known = self._tests.get(key)
        if known is None or entry < known:
            self._tests[key] = entry
        return known is None

    def shares(self) -> dict[int, float]:
        """{prompt key: accuracy} the decision is based on: every prequential test, the `window` most recent ones
        (by batch, then prompt key), or the cross-validated shares (recomputed when the label set changed)."""
        if self.test == "prequential":
            return {key: share for key, (_, share) in self._tests.items()}
        if self.test == "prequential_recent":
            recent = heapq.nlargest(self.window, self._tests, key=lambda key: (self._tests[key][0], key))
            return {key: self._tests[key][1] for key in recent}
        if self._surrogate is None:
            return {}
        labels = frozenset(self._surrogate.keys())
        if self._cv is None or self._cv[0] != labels:
            self._cv = (labels, cross_validated_shares(self._surrogate, self.folds))
        return self._cv[1]

    def state(self) -> SafetyState:
        shares = self.shares()
        n = len(shares)
        total = math.fsum(shares.values())  # exactly rounded: the same float in any order, on every rank
        lower = wilson_lower_bound(total, n, self.confidence)
        threshold = 0.5 + self.margin
        return SafetyState(n, total / n if n else math.nan, lower, threshold, (not self.enabled) or lower > threshold)

    @property
    def follows(self) -> bool:
        return self.state().follows

    def export(self, keys=None) -> list[tuple[int, float, int]]:
        """Prequential (prompt key, accuracy, batch) entries, sorted by key (all, or those of `keys`)."""
        chosen = sorted(self._tests) if keys is None else sorted(k for k in keys if k in self._tests)
        return [(k, self._tests[k][1], self._tests[k][0]) for k in chosen]

    def merge(self, items) -> int:
        """Record what `export` wrote (another rank's, a checkpoint's); an older checkpoint's (key, accuracy) pairs
        count as batch 0 (the oldest). The record is then a function of the set of entries: any merge order gives it."""
        return sum(self.record(int(item[0]), float(item[1]), int(item[2]) if len(item) > 2 else 0) for item in items)

    def keys(self) -> set[int]:
        return set(self._tests)
