"""Active selection (issue 15): the Bayesian linear surrogate, the batched acquisitions and `ActiveSelector`."""

from __future__ import annotations

import math
import random
import re

import pytest
import torch

from aepo_trainer.choices import ACTIVE_STRATEGIES, SELECTION_STRATEGIES
from aepo_trainer.selection import ActiveSelector, select_subsets
from aepo_trainer.selection.acquisitions import acquire
from aepo_trainer.selection.surrogate import BayesianLinearSurrogate, Posterior


def planted(prompts=200, n=4, F=5, noise=0.01, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(F, generator=g, dtype=torch.float64)
    data = []
    for p in range(prompts):
        X = torch.randn(n, F, generator=g, dtype=torch.float64)
        y = X @ w + noise * torch.randn(n, generator=g, dtype=torch.float64) + 3.0 * p  # per-prompt offset
        data += [(p, i, X[i], float(y[i])) for i in range(n)]
    return w, data


def fitted(data, **kwargs):
    s = BayesianLinearSurrogate(**kwargs)
    for item in data:
        s.add(*item)
    s.fit()
    return s


# ---------------------------------------------------------------------------------------------------- surrogate
def test_surrogate_recovers_a_planted_linear_reward_despite_prompt_offsets():
    w, data = planted()
    s = fitted(data)
    assert s.fitted.labels == 800 and s.fitted.prompts == 200 and s.fitted.single_label_prompts == 0
    assert torch.allclose(s._mean_w, w, atol=2e-3)
    # evidence maximisation finds the noise level, beta ~ 1 / 0.01^2, counting the centred residual's n - P degrees
    # of freedom (counting n, as before issue 27's fix, gives ~ 1 / (0.01^2 * 3/4): centring 4 labels costs one)
    assert 0.85e4 < s.fitted.beta < 1.15e4
    assert 4.9 < s.fitted.effective_parameters <= 5.0


def pairs_of_prompts(prompts, F, noise, seed):
    """k = 2 labels per prompt (what `aepo select` pays by default) of a planted linear reward w / sqrt(F)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(F, generator=g, dtype=torch.float64) / math.sqrt(F)
    data = []
    for p in range(prompts):
        X = torch.randn(2, F, generator=g, dtype=torch.float64)
        y = X @ w + noise * torch.randn(2, generator=g, dtype=torch.float64)
        data += [(p, i, X[i], float(y[i])) for i in range(2)]
    return data


@pytest.mark.parametrize("seed", [0, 1])
def test_noise_precision_counts_one_observation_per_pair_of_labels(seed):
    """With k = 2 the two centred rows of a prompt are mirror images: one observation. The evidence's noise precision
    must come out ~ 1 / noise^2, not ~ 2 / noise^2 (n rows counted as n observations), and in many dimensions the
    over-count let the noise shrink far further (3-4x: the fit then chases the labels)."""
    low = fitted(pairs_of_prompts(3000, 5, 0.1, seed))
    assert 0.8 < low.fitted.beta * 0.1**2 < 1.25
    high = fitted(pairs_of_prompts(300, 200, 0.5, seed))
    assert 0.6 < high.fitted.beta * 0.5**2 < 1.5


def test_fixed_prior_is_used_as_given():
    _, data = planted(prompts=20)
    s = fitted(data, prior_precision=2.0, noise_precision=3.0)
    assert (s.fitted.alpha, s.fitted.beta, s.fitted.iterations) == (2.0, 3.0, 0)


def test_fit_depends_only_on_the_set_of_labels():
    _, data = planted(prompts=50)
    shuffled = list(data)
    random.Random(1).shuffle(shuffled)
    a, b = fitted(data), fitted(shuffled)
    assert torch.equal(a._mean_w, b._mean_w) and torch.equal(a._basis, b._basis)
    assert a.fitted == b.fitted


def test_refit_after_resume_equals_uninterrupted_bitwise():
    _, data = planted(prompts=60)
    online = BayesianLinearSurrogate()
    for start in range(0, len(data), 40):  # fitted after each batch, as `aepo select` does
        for item in data[start : start + 40]:
            online.add(*item)
        online.fit()
    resumed = BayesianLinearSurrogate()  # a fresh process replays the labels from the store
    for item in reversed(data):
        resumed.add(*item)
    resumed.fit()
    assert torch.equal(online._mean_w, resumed._mean_w) and torch.equal(online._basis, resumed._basis)


def test_single_label_prompts_and_identical_embeddings_are_handled():
    s = BayesianLinearSurrogate()
    s.add(1, 0, torch.ones(3, dtype=torch.float64), 0.5)  # a prompt with one valid label: no within-prompt order
    assert s.fit().labels == 0 and not s.ready
    for i in range(3):  # identical features, different scores: no direction to learn, but a finite posterior
        s.add(2, i, torch.ones(3, dtype=torch.float64), float(i))
    fit = s.fit()
    assert fit.labels == 3 and fit.single_label_prompts == 1
    post = s.posterior(torch.ones(1, 4, 3, dtype=torch.float64), torch.ones(1, 4, dtype=torch.bool))
    assert torch.isfinite(post.mean).all() and torch.isfinite(post.whitened).all()
    assert torch.equal(post.mean, torch.zeros(1, 4, dtype=torch.float64))
    idx = acquire("delta_ucb", post, 2, 1.0, 0, torch.tensor([7]))
    assert idx.tolist() == [[0, 1]]  # all ties: the lowest indices


def test_surrogate_rejects_bad_hyper_parameters():
    with pytest.raises(ValueError, match="prior_precision"):
        BayesianLinearSurrogate(prior_precision=0.0)
    with pytest.raises(ValueError, match="noise_precision"):
        BayesianLinearSurrogate(noise_precision=float("nan"))


# ---------------------------------------------------------------------------------------------------- acquisitions
def hand_posterior():
    """mu = (0, 0.5, 1); u_0 = (0, 0), u_1 = (2, 0), u_2 = (0, 0.1): sigma_01 = 2, sigma_02 = 0.1,
    sigma_12 = sqrt(4.01) = 2.0025; sigma_i = (0, 2, 0.1)."""
    mean = torch.tensor([[0.0, 0.5, 1.0]], dtype=torch.float64)
    u = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 0.1]]], dtype=torch.float64)
    return Posterior(mean, u, torch.ones(1, 3, dtype=torch.bool))


KEY = torch.tensor([12345])


def test_delta_ucb_by_hand():
    post = hand_posterior()
    # beta = 1: mu_i - mu_j + sigma_ij is largest for (i, j) = (2, 1): 0.5 + 2.0025 (next (1, 0): 0.5 + 2 = 2.5)
    assert acquire("delta_ucb", post, 2, 1.0, 0, KEY).tolist() == [[1, 2]]
    # beta = 0: the largest predicted gap, (2, 0)
    assert acquire("delta_ucb", post, 2, 0.0, 0, KEY).tolist() == [[0, 2]]


def test_info_max_and_max_min_lcb_by_hand():
    post = hand_posterior()
    assert acquire("info_max", post, 2, 1.0, 0, KEY).tolist() == [[1, 2]]  # sigma^2_12 = 4.01 is the largest
    # beta = 0: min_j LCB(i > j) = mu_i - max_{j != i} mu_j: i = 2 (0.5), against j = 1
    assert acquire("max_min_lcb", post, 2, 0.0, 0, KEY).tolist() == [[1, 2]]
    # beta = 1: i=0: min(-0.5 - 2, -1 - 0.1) = -2.5; i=1: min(0.5 - 2, -0.5 - 2.0025) = -2.5025;
    # i=2: min(1 - 0.1, 0.5 - 2.0025) = -1.5025 -> i = 2, j = 1
    assert acquire("max_min_lcb", post, 2, 1.0, 0, KEY).tolist() == [[1, 2]]
    # beta = 0.1, candidate 1 made certain: i=2: min(1 - 0.01, 0.5 - 0.01) = 0.49 vs j=1
    post.whitened[0, 1] = torch.tensor([0.0, 0.0], dtype=torch.float64)
    assert acquire("max_min_lcb", post, 2, 0.1, 0, KEY).tolist() == [[1, 2]]


def test_ucb_random_takes_the_ucb_best_and_a_random_other():
    post = hand_posterior()  # UCB = mu + sigma = (0, 2.5, 1.1): the best is 1
    others = set()
    for key in range(40):
        idx = acquire("ucb_random", post, 2, 1.0, 0, torch.tensor([key])).tolist()[0]
        assert 1 in idx
        others.add(idx[0] if idx[1] == 1 else idx[1])
    assert others == {0, 2}
    assert acquire("ucb_random", post, 2, 0.0, 0, KEY).tolist()[0].count(2) == 1  # beta = 0: the best mean, 2


def test_thompson_without_uncertainty_is_greedy_and_reversed_takes_the_worst():
    mean = torch.tensor([[0.3, 0.9, -0.2, 0.5]], dtype=torch.float64)
    post = Posterior(mean, torch.zeros(1, 4, 2, dtype=torch.float64), torch.ones(1, 4, dtype=torch.bool))
    assert acquire("double_ts", post, 2, 1.0, 0, KEY).tolist() == [[1, 3]]
    assert acquire("double_reversed_ts", post, 2, 1.0, 0, KEY).tolist() == [[1, 2]]
    assert acquire("double_ts", post, 3, 1.0, 0, KEY).tolist() == [[0, 1, 3]]


def random_posterior(B=6, N=7, F=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(B, N, generator=g, dtype=torch.float64)
    u = 0.5 * torch.randn(B, N, F, generator=g, dtype=torch.float64)
    mask = torch.ones(B, N, dtype=torch.bool)
    if B > 3:
        mask[0, 5:] = False
        mask[3, 3:] = False
    return Posterior(mean, u, mask)


@pytest.mark.parametrize(
    "strategy", ["delta_ucb", "double_ts", "double_reversed_ts", "max_min_lcb", "info_max", "ucb_random"]
)
@pytest.mark.parametrize("k", [2, 3])
def test_acquisitions_are_distinct_valid_and_independent_of_batching(strategy, k):
    post = random_posterior()
    keys = torch.arange(100, 106)
    batch = acquire(strategy, post, k, 1.0, 7, keys)
    assert batch.shape == (6, k)
    for b in range(6):
        row = batch[b].tolist()
        assert len(set(row)) == k and all(post.mask[b, i] for i in row)
        # one prompt alone (and cut to its valid candidates) gets the same members: keyed by the prompt, not the batch
        n = int(post.mask[b].sum())
        alone = Posterior(post.mean[b : b + 1, :n], post.whitened[b : b + 1, :n], post.mask[b : b + 1, :n])
        assert acquire(strategy, alone, k, 1.0, 7, keys[b : b + 1]).tolist() == [row]


def test_thompson_draws_follow_the_seed():
    post = random_posterior(B=1, N=32, F=8)
    picks = {tuple(acquire("double_ts", post, 2, 1.0, seed, KEY).tolist()[0]) for seed in range(20)}
    assert len(picks) > 1
    assert acquire("double_ts", post, 2, 1.0, 3, KEY).tolist() == acquire("double_ts", post, 2, 1.0, 3, KEY).tolist()


def test_acquire_rejects_too_small_pools():
    post = random_posterior()
    with pytest.raises(ValueError, match="row 3 has 3 valid candidates, fewer than k=4"):
        acquire("delta_ucb", post, 4, 1.0, 0, torch.arange(6))


# ---------------------------------------------------------------------------------------------------- kernel hook
def test_select_subsets_refuses_active_strategies_and_takes_a_quality_term():
    E = torch.nn.functional.normalize(torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    with pytest.raises(ValueError, match="ActiveSelector"):
        select_subsets(E, 2, strategy="delta_ucb")
    plain = select_subsets(E, 2, diversity_weight=0.5)
    zero = select_subsets(E, 2, diversity_weight=0.5, quality=torch.zeros(2, 6))
    assert torch.equal(plain.indices, zero.indices) and torch.equal(plain.objective, zero.objective)
    q = torch.zeros(2, 6)
    q[:, 4] = q[:, 1] = 100.0  # a dominant quality term picks its two candidates, for k = 2 and via greedy k = 3
    assert select_subsets(E, 2, diversity_weight=0.5, quality=q).indices.tolist() == [[1, 4], [1, 4]]
    three = select_subsets(E, 3, diversity_weight=0.5, quality=q, search="greedy").indices.tolist()
    assert all({1, 4} <= set(row) for row in three)
    assert torch.allclose(
        select_subsets(E, 2, diversity_weight=0.5, quality=q).representativeness,
        select_subsets(E, 2, diversity_weight=0.5, quality=q).representativeness,
    )


# ---------------------------------------------------------------------------------------------------- selector
def pools(B=16, N=6, D=8, seed=0):
    """Synthetic pools whose score is planted along one embedding direction."""
    g = torch.Generator().manual_seed(seed)
    E = torch.nn.functional.normalize(torch.randn(B, N, D, generator=g), dim=-1)
    rows = [{"prompt": f"p{seed}-{b}", "completions": [f"answer {b}.{i}" for i in range(N)]} for b in range(B)]
    scores = (E[:, :, 0] * 3.0).double()
    return rows, E, scores


@pytest.mark.parametrize("strategy", ACTIVE_STRATEGIES)
def test_selector_cold_start_then_learns(strategy):
    sel = ActiveSelector(strategy, 2, warmup_annotations=20, seed=3, safety=False)  # the learning mechanics alone
    rows, E, scores = pools()
    first = sel.select(rows, E)
    random_pick = select_subsets(E, 2, strategy="random", seed=3, row_keys=torch.tensor([hash_key(r) for r in rows]))
    assert torch.equal(first.indices, random_pick.indices)  # cold start = 'random' by default
    subsets = first.tolist()
    quality = sel.observe(
        rows, E, None, None, subsets, [[float(scores[b, i]) for i in s] for b, s in enumerate(subsets)]
    )
    assert quality.cold_start and math.isnan(quality.spearman) and quality.labels_after == 32
    assert not sel.cold
    rows2, E2, scores2 = pools(seed=1)
    second = sel.select(rows2, E2)
    assert second.indices.shape == (16, 2) and (second.indices[:, 0] < second.indices[:, 1]).all()
    subsets2 = second.tolist()
    q2 = sel.observe(
        rows2, E2, None, None, subsets2, [[float(scores2[b, i]) for i in s] for b, s in enumerate(subsets2)]
    )
    assert not q2.cold_start and q2.pairs_evaluated > 0
    assert q2.pairwise_accuracy > 0.8  # a linear planted reward is learned from 16 pairs


def hash_key(row):
    from aepo_trainer.selection import prompt_key

    return prompt_key(row["prompt"])


def test_bad_labels_never_enter_the_surrogate():
    sel = ActiveSelector("delta_ucb", 2, warmup_annotations=0)
    rows, E, _ = pools(B=4)
    subsets = [[0, 1], [2, 3], [0, 5], [1, 2]]
    scores = [[None, 0.5], [float("nan"), "bad"], [float("inf"), True], None]
    q = sel.observe(rows, E, None, None, subsets, scores)
    assert q.invalid_labels == 5 and q.new_labels == 1 and len(sel.surrogate) == 1
    assert not sel.surrogate.ready  # one valid label: no within-prompt order yet
    assert sel.cold  # and selection stays on the cold-start strategy


def test_selector_is_identical_whatever_the_observation_order():
    rows, E, scores = pools(B=12)
    subsets = [[0, 1, 2]] * 6 + [[3, 4, 5]] * 6
    labels = [[float(scores[b, i]) for i in s] for b, s in enumerate(subsets)]
    a = ActiveSelector("double_ts", 2, warmup_annotations=0)
    a.observe(rows, E, None, None, subsets, labels)
    b = ActiveSelector("double_ts", 2, warmup_annotations=0)
    order = list(reversed(range(12)))
    b.observe([rows[i] for i in order], E[order], None, None, [subsets[i] for i in order], [labels[i] for i in order])
    assert torch.equal(a.surrogate._mean_w, b.surrogate._mean_w)
    rows2, E2, _ = pools(seed=5)
    assert torch.equal(a.select(rows2, E2).indices, b.select(rows2, E2).indices)


def test_selector_validates_its_settings():
    with pytest.raises(ValueError, match="not active"):
        ActiveSelector("aepo")
    with pytest.raises(ValueError, match="cold_start"):
        ActiveSelector("delta_ucb", cold_start="delta_ucb")
    with pytest.raises(ValueError, match="exploration"):
        ActiveSelector("delta_ucb", exploration=-1.0)
    assert set(ACTIVE_STRATEGIES) <= set(SELECTION_STRATEGIES)


# ---------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("active_warmup_annotations", -1, "an integer >= 0"),
        ("active_cold_start", "delta_ucb", "one of 'random', 'aepo', 'representativeness', 'kmedoids'"),
        ("active_exploration", float("inf"), "a finite number >= 0"),
        ("active_quality_weight", -1.0, "a finite number >= 0"),
        ("active_batch_size", 0, "an integer >= 1"),
        ("active_prior_precision", 0.0, "None (evidence maximisation) or a finite number > 0"),
        ("active_noise_precision", float("nan"), "None (evidence maximisation) or a finite number > 0"),
    ],
)
def test_config_validates_the_active_block(tmp_path, field, value, expected):
    from aepo_trainer import AEPOConfig

    with pytest.raises(ValueError, match=rf"AEPOConfig\.{field}=.*{re.escape(expected)}"):
        AEPOConfig(output_dir=str(tmp_path), bf16=False, report_to="none", **{field: value})


def test_config_builds_the_selector_it_describes(tmp_path):
    from aepo_trainer import AEPOConfig

    config = AEPOConfig(
        output_dir=str(tmp_path),
        bf16=False,
        report_to="none",
        selection_strategy="aepo_ucb",
        num_annotations=3,
        active_exploration=0.5,
        active_quality_weight=2.0,
        active_prior_precision=4.0,
        selection_seed=11,
    )
    assert config.uses_active_selection and config.aepo_settings()["active_quality_weight"] == 2.0
    sel = ActiveSelector.from_config(config)
    assert (sel.strategy, sel.k, sel.exploration, sel.quality_weight, sel.seed) == ("aepo_ucb", 3, 0.5, 2.0, 11)
    assert sel.surrogate.prior_precision == 4.0 and sel.surrogate.noise_precision is None
