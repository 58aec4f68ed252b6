"""Statistics of the policy-level experiment: paired differences, two-level bootstrap over seeds and prompts, and the
labels-to-parity curve. Pure NumPy; tested against hand-computed values in tests/test_policy_experiment.py.

Layout: a policy's evaluation is an array `[seeds, prompts]` of per-prompt mean gold rewards (each prompt's mean over
its samples). Held-out prompts are the same for every seed and strategy, so two strategies are compared *paired*:
the difference array `a - b` keeps the prompt and the seed fixed.
"""

from __future__ import annotations

import numpy as np

__all__ = ["bootstrap_ci", "labels_to_parity", "per_prompt_means", "resampled_means"]


def per_prompt_means(rewards) -> np.ndarray:
    """`[prompts, samples]` -> `[prompts]`: each prompt's mean reward over its samples."""
    return np.asarray(rewards, dtype=np.float64).mean(axis=1)


def resampled_means(values, seed_draws, prompt_draws) -> np.ndarray:
    """Mean of `values[seeds, prompts]` for each bootstrap replicate: replicate r takes the seeds `seed_draws[r]`
    and, within every seed, the prompts `prompt_draws[r]` (indices drawn with replacement; the same prompt draw for
    every seed, since the held-out prompts are the same set in every seed)."""
    v = np.asarray(values, dtype=np.float64)
    seed_draws = np.asarray(seed_draws)
    prompt_draws = np.asarray(prompt_draws)
    return np.array([v[np.ix_(s, p)].mean() for s, p in zip(seed_draws, prompt_draws)])


def bootstrap_ci(values, *, replicates: int = 2000, level: float = 0.95, seed: int = 0):
    """(mean, low, high): the mean of `values[seeds, prompts]` and its percentile bootstrap interval, resampling
    seeds (model init + data) and prompts (held-out sampling) with replacement — both sources of variation. With a
    single seed only prompts are resampled."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[None, :]
    rng = np.random.default_rng(seed)
    n_seeds, n_prompts = v.shape
    seed_draws = rng.integers(0, n_seeds, size=(replicates, n_seeds))
    prompt_draws = rng.integers(0, n_prompts, size=(replicates, n_prompts))
    means = resampled_means(v, seed_draws, prompt_draws)
    alpha = (1.0 - level) / 2
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(v.mean()), float(low), float(high)


def labels_to_parity(budgets, qualities, target: float) -> float | None:
    """The smallest budget at which a strategy's quality curve reaches `target` (linear interpolation between the
    measured budgets; the first measured budget if it is already there), or None if it never does.

    `budgets` ascending; `qualities[i]` is the policy quality (mean held-out gold) trained with `budgets[i]` labels.
    """
    b = [float(x) for x in budgets]
    q = [float(x) for x in qualities]
    if q and q[0] >= target:
        return b[0]
    for i in range(1, len(b)):
        if q[i] >= target:
            return b[i - 1] + (target - q[i - 1]) / (q[i] - q[i - 1]) * (b[i] - b[i - 1])
    return None
