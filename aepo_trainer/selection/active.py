"""`ActiveSelector`: selection that learns from every paid label (the active strategies of `choices.ACTIVE_STRATEGIES`).

It holds a `BayesianLinearSurrogate` and alternates two calls:

* `select(rows, embeddings, mask, row_keys)` picks k candidates per prompt: with the cold-start strategy (an
  embedding-only `select_subsets` strategy, `random` by default) until the surrogate has `warmup_annotations` valid
  labels, then with the acquisition (`selection/acquisitions.py`) on the surrogate's posterior — or, for `aepo_ucb`,
  with the AEPO objective plus a quality term: f(S) = representativeness + lambda * diversity + gamma * mean UCB.
* `observe(rows, embeddings, mask, row_keys, subsets, scores)` first measures how well the CURRENT surrogate ranks
  the new labels (Spearman and within-prompt pairwise accuracy: the learning curve users see), then adds the valid
  labels and refits. Invalid labels (None, NaN, infinities, non-numbers) are counted and never enter the model.

The safety rule (`selection/safety.py`, on by default): the acquisition selects only while the lower confidence
bound of the surrogate's out-of-sample within-prompt pairwise accuracy exceeds 0.5 + margin — by default the record
of each batch's labels tested before the refit (prequential), or (`safety_test='cross_validated'`) the current fit's
K-fold cross-validated accuracy over every labelled prompt; otherwise the cold-start strategy (random k by default)
selects, exactly as during warm-up. The "best" member of each pair is taken by the posterior mean (`robust_best`,
`acquisitions.py`).

Determinism: the surrogate's fit depends only on the set of labels (see `surrogate.py`) and every random choice is
keyed by (seed, prompt key), so replaying the same labels in the same batches — a resumed `aepo select` reads them
back from the annotation store — reproduces the same selections bit for bit, and ranks that observe the same
(gathered) labels hold identical surrogates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ..choices import ACTIVE_STRATEGIES, ACTIVE_SURROGATES, COLD_START_STRATEGIES
from .acquisitions import acquire
from .kernel import SelectionResult, select_subsets
from .keys import prompt_key
from .safety import SafetyRecord
from .surrogate import FEATURES, BayesianLinearSurrogate, FeatureFn, features_for, pool_features

__all__ = ["ActiveSelector", "BatchQuality", "valid_score"]


def valid_score(value) -> float | None:
    """`value` as a finite float, or None for None/NaN/inf/bool/non-numeric (those never enter the surrogate)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass
class BatchQuality:
    """How one batch of new labels was predicted by the surrogate BEFORE it saw them, and what it learned after.

    spearman: rank correlation of predicted vs paid scores (both centred per prompt) over the batch's valid labels.
    pairwise_accuracy: share of within-prompt pairs with different paid scores that the prediction orders correctly
        (a predicted tie counts one half). NaN while the surrogate is unfitted.
    """

    batch: int
    labels_before: int
    labels_after: int
    new_labels: int
    invalid_labels: int
    pairs_evaluated: int
    spearman: float
    pairwise_accuracy: float
    cold_start: bool  # the batch was selected by the cold-start strategy (warm-up or the safety rule's fallback)
    fit_seconds: float
    select_seconds: float
    alpha: float
    beta: float
    prompts_tested: int = 0  # the safety record after this batch: prompts tested out of sample so far
    safety_accuracy: float = math.nan  # their mean within-prompt pairwise accuracy
    safety_lower_bound: float = 0.0  # its lower confidence bound
    follows: bool = False  # the next batch follows the acquisition (bound above 0.5 + margin, surrogate fitted)

    def to_dict(self) -> dict:
        return asdict(self)


class ActiveSelector:
    """Stateful active selection: a surrogate fitted on the paid labels plus an acquisition.

    Args:
        strategy: one of `choices.ACTIVE_STRATEGIES`.
        k: candidates selected per prompt (>= 2).
        exploration: beta of UCB/LCB (mu +- beta sigma); 1.0 by default.
        quality_weight: gamma of `aepo_ucb` (UCB measured in standard deviations of the centred training scores).
        diversity_weight: lambda of `aepo_ucb` and of the 'aepo' cold start.
        warmup_annotations: valid labels needed before the acquisition replaces the cold-start strategy.
        cold_start: the strategy used before that (one of `choices.COLD_START_STRATEGIES`).
        seed: of every random choice (Thompson draws, random others, the cold start).
        completions_column: where the feature functions find the texts (log length).
        features: the feature functions (`surrogate.FEATURES` by default; append to extend).
        prior_precision / noise_precision: the surrogate's alpha and beta (None: evidence maximisation).
        search / local_search_rounds: for 'aepo' cold start and `aepo_ucb` with k > 2.
        surrogate: one of `choices.ACTIVE_SURROGATES` ('bayesian_linear', or 'ensemble' of `ensemble_heads` heads).
        safety / safety_margin / safety_confidence: the safety rule (`selection/safety.py`); safety=False follows
            the acquisition as soon as the surrogate is fitted.
        safety_test / safety_folds: how the rule tests the surrogate (`choices.SAFETY_TESTS`): 'prequential' (the
            default) or K-fold cross-validation of the current fit over every labelled prompt (K = 5).
        robust_best: take the chosen-side member by the posterior mean (`acquisitions.py`).
    """

    def __init__(
        self,
        strategy: str,
        k: int = 2,
        *,
        exploration: float = 1.0,
        quality_weight: float = 1.0,
        diversity_weight: float = 1.0,
        warmup_annotations: int = 64,
        cold_start: str = "random",
        seed: int = 0,
        completions_column: str = "completions",
        features: Sequence[FeatureFn] = FEATURES,
        prior_precision: float | None = None,
        noise_precision: float | None = None,
        search: str = "auto",
        local_search_rounds: int = 20,
        surrogate: str = "bayesian_linear",
        ensemble_heads: int = 10,
        safety: bool = True,
        safety_margin: float = 0.02,
        safety_confidence: float = 0.95,
        robust_best: bool = True,
        safety_test: str = "prequential",
        safety_folds: int = 5,
    ):
        if strategy not in ACTIVE_STRATEGIES:
            raise ValueError(f"strategy {strategy!r} is not active; expected one of {', '.join(ACTIVE_STRATEGIES)}")
        if cold_start not in COLD_START_STRATEGIES:
            raise ValueError(f"cold_start {cold_start!r}: expected one of {', '.join(COLD_START_STRATEGIES)}")
        if not isinstance(k, int) or k < 2:
            raise ValueError(f"k must be an integer >= 2, got {k!r}")
        for name, value in (
            ("exploration", exploration),
            ("quality_weight", quality_weight),
            ("diversity_weight", diversity_weight),
        ):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not isinstance(warmup_annotations, int) or warmup_annotations < 0:
            raise ValueError(f"warmup_annotations must be an integer >= 0, got {warmup_annotations!r}")
        self.strategy, self.k = strategy, k
        self.exploration, self.quality_weight, self.diversity_weight = exploration, quality_weight, diversity_weight
        self.warmup_annotations, self.cold_start, self.seed = warmup_annotations, cold_start, int(seed)
        self.completions_column = completions_column
        self.features = tuple(features)
        self.search, self.local_search_rounds = search, local_search_rounds
        if surrogate not in ACTIVE_SURROGATES:
            raise ValueError(f"surrogate {surrogate!r}: expected one of {', '.join(ACTIVE_SURROGATES)}")
        if surrogate == "ensemble":
            from .ensemble import EnsembleSurrogate

            self.surrogate = EnsembleSurrogate(prior_precision, noise_precision, heads=ensemble_heads, seed=self.seed)
        else:
            self.surrogate = BayesianLinearSurrogate(prior_precision, noise_precision)
        self.safety = SafetyRecord(safety, safety_margin, safety_confidence, safety_test, safety_folds)
        self.safety.attach(self.surrogate)
        self.robust_best = bool(robust_best)
        self.history: list[BatchQuality] = []
        self.invalid_labels = 0
        self.nonfinite_features = 0  # labels whose features were NaN/inf (never learned)
        self.nonfinite_candidates = 0  # candidates whose features were NaN/inf at selection (given zero features)
        self._last_select = (False, 0.0)  # (cold start?, seconds) of the last `select`

    @classmethod
    def from_config(cls, config, features: Sequence[FeatureFn] | None = None) -> ActiveSelector:
        """The selector an `AEPOConfig` describes (its `active_*` fields): the default features, plus the policy's
        implicit reward with `active_implicit_reward_feature` and the policy's hidden state with `active_policy_features`
        (the trainer then passes them to `select`/`observe`)."""
        if features is None:
            features = features_for(config)
        return cls(
            config.selection_strategy,
            config.num_annotations,
            exploration=config.active_exploration,
            quality_weight=config.active_quality_weight,
            diversity_weight=config.diversity_weight,
            warmup_annotations=config.active_warmup_annotations,
            cold_start=config.active_cold_start,
            seed=config.effective_selection_seed,
            completions_column=config.completions_column,
            features=features,
            prior_precision=config.active_prior_precision,
            noise_precision=config.active_noise_precision,
            search=config.selection_search,
            local_search_rounds=config.local_search_rounds,
            surrogate=config.active_surrogate,
            ensemble_heads=config.active_ensemble_heads,
            safety=config.active_safety_margin is not None,
            safety_margin=config.active_safety_margin if config.active_safety_margin is not None else 0.0,
            safety_confidence=config.active_safety_confidence,
            robust_best=not config.active_optimistic_best,
            safety_test=config.active_safety_test,
        )

    # --------------------------------------------------------------------------------------------------- select
    @property
    def warming_up(self) -> bool:
        """True until the surrogate has `warmup_annotations` labels and a usable fit."""
        return len(self.surrogate) < self.warmup_annotations or not self.surrogate.ready

    @property
    def cold(self) -> bool:
        """True while selection uses the cold-start strategy: warming up, or the safety rule does not trust the
        surrogate (its out-of-sample accuracy bound is not above 0.5 + margin)."""
        return self.warming_up or not self.safety.follows

    def _keys(self, rows, row_keys, device) -> torch.Tensor:
        if row_keys is None:
            row_keys = [prompt_key(row["prompt"]) for row in rows]
        return torch.as_tensor(row_keys, dtype=torch.int64, device=device)

    @property
    def needed_signals(self) -> tuple[str, ...]:
        """The policy signals its features read (`("implicit_rewards",)` with the implicit-reward feature)."""
        return tuple(dict.fromkeys(name for f in self.features for name in getattr(f, "signals", ())))

    @torch.no_grad()
    def select(
        self,
        rows: list[dict],
        embeddings: torch.Tensor,
        mask: torch.Tensor | None = None,
        row_keys=None,
        signals: dict | None = None,
    ):
        """A `SelectionResult` with k indices per row (sorted ascending), like `select_subsets`. `signals`: the
        per-candidate policy signals the features read (see `surrogate.pool_features`)."""
        started = time.perf_counter()
        dev = embeddings.device
        if mask is None:
            mask = torch.ones(embeddings.shape[:2], dtype=torch.bool, device=dev)
        mask = mask.to(dev)
        keys = self._keys(rows, row_keys, dev)
        cold = self.cold
        common = dict(mask=mask, seed=self.seed, row_keys=keys, search=self.search)
        if cold:
            result = select_subsets(
                embeddings,
                self.k,
                diversity_weight=self.diversity_weight,
                strategy=self.cold_start,
                local_search_rounds=self.local_search_rounds,
                **common,
            )
        else:
            features = pool_features(rows, embeddings, mask, self.completions_column, self.features, signals)
            finite = torch.isfinite(features).all(-1)
            if not bool(finite[mask].all()):  # reported; such a candidate gets no information (zero features)
                self.nonfinite_candidates += int((~finite & mask).sum())
                features = torch.where(finite[..., None], features, torch.zeros_like(features))
            post = self.surrogate.posterior(features, mask)
            if self.strategy == "aepo_ucb":
                optimism = 0.0 if self.robust_best else self.exploration
                ucb = (post.mean + optimism * post.std) / self.surrogate.target_scale
                result = select_subsets(
                    embeddings,
                    self.k,
                    diversity_weight=self.diversity_weight,
                    strategy="aepo",
                    local_search_rounds=self.local_search_rounds,
                    quality=(self.quality_weight * ucb).float(),
                    **common,
                )
            else:
                idx = acquire(self.strategy, post, self.k, self.exploration, self.seed, keys, self.robust_best).to(dev)
                result = describe_selection(embeddings, mask, idx)
        self._last_select = (cold, time.perf_counter() - started)
        return result

    def export(self, known_labels: set | None = None) -> dict:
        """What a checkpoint stores and what ranks exchange: `{"labels": [...], "tests": [...]}` — the surrogate's
        labels (`BayesianLinearSurrogate.export`; those not in `known_labels` when given) and the safety record's
        entries of the same prompts."""
        keys = None if known_labels is None else self.surrogate.keys() - set(known_labels)
        labels = self.surrogate.export(keys)
        prompts = None if keys is None else {pk for pk, _ in keys}
        return {"labels": labels, "tests": self.safety.export(prompts)}

    def absorb(self, items) -> int:
        """Learn what `export` wrote (another rank's, or a checkpoint's; a bare list of labels is an older
        checkpoint's) and refit. The fit depends only on the set of labels and the record on the set of tests, so
        ranks that absorb each other's hold identical surrogates and make identical decisions."""
        if isinstance(items, dict):
            self.safety.merge(tuple(t) for t in items.get("tests", ()))
            items = items.get("labels", ())
        added = self.surrogate.merge(tuple(item) for item in items)
        if added or not self.surrogate.ready:
            self.surrogate.fit()
        return added

    # --------------------------------------------------------------------------------------------------- resume
    def mark(self) -> tuple:
        """Where learning stands now (label keys, tested prompts, learning-curve points, counters): `lessons_since`
        reads it."""
        return (
            self.surrogate.keys(),
            self.safety.keys(),
            len(self.history),
            self.invalid_labels,
            self.nonfinite_features,
        )

    def lessons_since(self, mark: tuple) -> dict:
        """What was learned since `mark`, as JSON: the labels added (with their features: an exact float64 round
        trip), the safety record's new tests, the learning-curve points and the counters. `aepo select` keeps it with
        each finished chunk."""
        keys, tested, points, invalid, nonfinite = mark
        return {
            "labels": self.surrogate.export(self.surrogate.keys() - keys),
            "tests": self.safety.export(self.safety.keys() - tested),
            "history": [q.to_dict() for q in self.history[points:]],
            "invalid_labels": self.invalid_labels - invalid,
            "nonfinite_features": self.nonfinite_features - nonfinite,
        }

    def relearn(self, lessons: list[dict]) -> None:
        """Learn again what `lessons_since` recorded, in one fit. The fit depends only on the set of labels and the
        safety record on the set of tests, so the selector ends where batch-by-batch learning ended, and the next
        selection is the one an uninterrupted run makes."""
        self.absorb(
            {
                "labels": [item for lesson in lessons for item in lesson["labels"]],
                "tests": [item for lesson in lessons for item in lesson.get("tests", ())],
            }
        )
        for lesson in lessons:
            self.history.extend(BatchQuality(**q) for q in lesson["history"])
            self.invalid_labels += lesson["invalid_labels"]
            self.nonfinite_features += lesson.get("nonfinite_features", 0)

    # --------------------------------------------------------------------------------------------------- observe
    @torch.no_grad()
    def observe(
        self,
        rows: list[dict],
        embeddings: torch.Tensor,
        mask: torch.Tensor | None,
        row_keys,
        subsets: list[list[int]],
        scores: list,
        signals: dict | None = None,
    ) -> BatchQuality:
        """Score the current surrogate on this batch's labels, then learn them (valid ones only) and refit.

        `subsets[b]` are the annotated pool indices of row b and `scores[b]` their labels (None for a skipped row);
        `signals` are the policy signals of the batch as `select` got them (the features stored with the labels).
        """
        dev = embeddings.device
        if mask is None:
            mask = torch.ones(embeddings.shape[:2], dtype=torch.bool, device=dev)
        keys = self._keys(rows, row_keys, dev).tolist()
        features = pool_features(rows, embeddings, mask.to(dev), self.completions_column, self.features, signals).cpu()
        finite = torch.isfinite(features).all(-1)  # [B, N]
        labelled, invalid = [], 0  # (row, index, score)
        for b, (subset, row_scores) in enumerate(zip(subsets, scores)):
            if row_scores is None:
                continue
            for index, value in zip(subset, row_scores):
                score = valid_score(value)
                if score is None:
                    invalid += 1
                elif not bool(finite[b, int(index)]):
                    self.nonfinite_features += 1  # paid, paired as usual, but never taught to the surrogate
                else:
                    labelled.append((b, int(index), score))
        self.invalid_labels += invalid
        completion_keys = [prompt_key(rows[b][self.completions_column][index]) for b, index, _ in labelled]
        known = self.surrogate.keys()
        fresh = [item for item, ck in zip(labelled, completion_keys) if (keys[item[0]], ck) not in known]
        spearman, accuracy, pairs, per_row = self._quality(features, fresh)
        if self.surrogate.ready:  # the safety record: tested before the refit, on labels the surrogate never saw
            for b, share in per_row.items():
                self.safety.record(keys[b], share)
        before = len(self.surrogate)
        for (b, index, score), ck in zip(labelled, completion_keys):
            self.surrogate.add(keys[b], ck, features[b, index], score)
        t = time.perf_counter()
        fit = self.surrogate.fit() if len(self.surrogate) != before or not self.surrogate.ready else None
        fitted = self.surrogate.fitted
        safety = self.safety.state()
        quality = BatchQuality(
            batch=len(self.history),
            labels_before=before,
            labels_after=len(self.surrogate),
            new_labels=len(self.surrogate) - before,
            invalid_labels=invalid,
            pairs_evaluated=pairs,
            spearman=spearman,
            pairwise_accuracy=accuracy,
            cold_start=self._last_select[0],
            fit_seconds=time.perf_counter() - t if fit is not None else 0.0,
            select_seconds=self._last_select[1],
            alpha=fitted.alpha if fitted else math.nan,
            beta=fitted.beta if fitted else math.nan,
            prompts_tested=safety.prompts_tested,
            safety_accuracy=safety.accuracy,
            safety_lower_bound=safety.lower_bound,
            follows=not self.cold,
        )
        self.history.append(quality)
        return quality

    def _quality(self, features: torch.Tensor, labelled) -> tuple[float, float, int, dict[int, float]]:
        """(Spearman, pairwise accuracy, pairs, {row: its share of pairs ordered correctly}) of the current
        surrogate on `labelled`, within-prompt centred."""
        if not self.surrogate.ready or not labelled:
            return math.nan, math.nan, 0, {}
        by_row: dict[int, list[tuple[int, float]]] = {}
        for b, index, score in labelled:
            by_row.setdefault(b, []).append((index, score))
        predicted, paid, per_row = [], [], {}
        correct, pairs = 0.0, 0
        for b, items in by_row.items():
            if len(items) < 2:
                continue
            x = torch.stack([features[b, i] for i, _ in items])
            mu = self.surrogate.posterior(x[None], torch.ones(1, len(items), dtype=torch.bool)).mean[0].tolist()
            y = [s for _, s in items]
            mu_mean, y_mean = sum(mu) / len(mu), sum(y) / len(y)
            predicted += [m - mu_mean for m in mu]
            paid += [s - y_mean for s in y]
            row_correct, row_pairs = 0.0, 0
            for p in range(len(items)):
                for q in range(p + 1, len(items)):
                    if y[p] == y[q]:
                        continue
                    row_pairs += 1
                    d = (mu[p] - mu[q]) * (y[p] - y[q])
                    row_correct += 1.0 if d > 0 else (0.5 if d == 0 else 0.0)
            if row_pairs:
                per_row[b] = row_correct / row_pairs
            correct += row_correct
            pairs += row_pairs
        spearman = math.nan
        if len(paid) >= 3:
            from scipy.stats import spearmanr

            value = spearmanr(predicted, paid).statistic
            spearman = float(value) if value is not None and math.isfinite(value) else math.nan
        return spearman, (correct / pairs if pairs else math.nan), pairs, per_row


def describe_selection(embeddings: torch.Tensor, mask: torch.Tensor, idx: torch.Tensor) -> SelectionResult:
    """A `SelectionResult` for subsets chosen by an acquisition: representativeness and diversity of the subset as
    `select_subsets` reports them (objective = representativeness - (1 - diversity), i.e. lambda = 1)."""
    e = embeddings.float()
    e = e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    e = e * mask[..., None]
    M = torch.bmm(e, e.transpose(1, 2))
    counts = mask.sum(1, keepdim=True).clamp_min(2).float()
    rep = (M.sum(2) - M.diagonal(dim1=1, dim2=2)) / (counts - 1)
    k = idx.shape[1]
    sub = M.gather(1, idx[:, :, None].expand(-1, -1, M.shape[2])).gather(2, idx[:, None, :].expand(-1, k, -1))
    pair_mean = (sub.sum((1, 2)) - sub.diagonal(dim1=1, dim2=2).sum(1)) / (k * (k - 1))
    repr_ = rep.gather(1, idx).mean(1)
    return SelectionResult(idx, repr_ - pair_mean, repr_, 1.0 - pair_mean, torch.ones_like(idx, dtype=torch.bool))
