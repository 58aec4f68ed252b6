"""experiments/surrogate_noise_count.py (issue 27): the "before the fix" surrogate really is the old count, and a run
on planted pools measures what it says."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import surrogate_noise_count as snc  # noqa: E402


def planted_pairs(prompts=2000, F=5, noise=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(F, generator=g, dtype=torch.float64)
    for p in range(prompts):
        X = torch.randn(2, F, generator=g, dtype=torch.float64)
        y = X @ w + noise * torch.randn(2, generator=g, dtype=torch.float64)
        for i in range(2):
            yield p, i, X[i], float(y[i])


def test_the_two_counts_differ_by_the_mirror_rows_of_k_2():
    """With k = 2 the package's noise precision is ~ 1 / noise^2; the count before the fix, ~ 2 / noise^2."""
    fits = {}
    for count in snc.COUNTS:
        surrogate = snc.surrogate_for(count)
        for item in planted_pairs():
            surrogate.add(*item)
        fits[count] = surrogate.fit()
    assert 0.85 < fits["n - P (package)"].beta * 0.1**2 < 1.15
    assert 1.7 < fits["n (before the fix)"].beta * 0.1**2 < 2.3
    assert all(fit.labels == 4000 for fit in fits.values())  # the same labels, only the count differs


def test_a_run_on_planted_pools_tests_every_batch_after_the_first():
    rng = np.random.default_rng(0)
    P, N, D = 96, 6, 8
    embeddings = rng.normal(size=(P, N, D)).astype(np.float32)
    direction = rng.normal(size=D)
    unit = embeddings / np.linalg.norm(embeddings, axis=-1, keepdims=True)
    scores = unit @ direction  # the reward is linear in the normalised embedding: learnable
    texts = [["x" * 10] * N for _ in range(P)]  # equal lengths: the log-length feature carries nothing
    out = snc.run(embeddings, scores, texts, prompts=P, seed=0, count=snc.COUNTS[0], batch=32)
    assert [r[0] for r in out] == [1, 2]  # batch 0 only fits
    accuracy, gain, gamma, beta = out[-1][1:]
    assert accuracy > 0.8 and gain > 0 and 0 < gamma <= D + 1 and math.isfinite(beta)
