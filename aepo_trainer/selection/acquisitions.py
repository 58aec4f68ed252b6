"""Batched acquisition functions: which k of each pool to annotate, given the surrogate's posterior.

Every function takes a `Posterior` (mean mu [B, N], whitened coordinates u [B, N, F] with Cov(f_i, f_j) = u_i . u_j)
and works on all prompts of the batch at once: no Python loop over prompts or candidates (the loops run over the k
members). With beta the exploration weight and sigma_ij the posterior standard deviation of f_i - f_j:

* `delta_ucb` — DeltaUCB (ActiveUltraFeedback, Melo et al. 2026): the ordered pair maximising the optimistic gap
  UCB(f_i - f_j) = mu_i - mu_j + beta sigma_ij. (The reference code bounds each candidate separately,
  UCB_i - LCB_j = mu_i - mu_j + beta (sigma_i + sigma_j); sigma_ij <= sigma_i + sigma_j is the bound of the
  difference itself, which is what one preference label informs.)
* `double_ts` — double Thompson sampling (Wu & Liu 2016): draw f ~ posterior, i = argmax f; draw again,
  j = argmax over j != i.
* `double_reversed_ts` — DRTS: i = argmax of one draw, j = argmin over j != i of another (best vs worst).
* `max_min_lcb` — MaxMinLCB (Pásztor et al. 2024): i = argmax_i min_{j != i} LCB(i > j), j the minimiser, with
  LCB(i > j) = mu_i - mu_j - beta sigma_ij.
* `info_max` — the pair with the largest posterior variance sigma^2_ij of the score difference (pure exploration;
  the reference code takes the two largest marginal sigma_i).
* `ucb_random` — the UCB-best candidate (argmax mu_i + beta sigma_i) plus a uniformly random other.

Robust chosen side (`robust_best=True`; the default: `AEPOConfig.active_optimistic_best=False`): the member meant to be the
BEST of the pair is the argmax of the posterior mean, never of an optimistic score or a posterior draw, and only the
other member keeps the strategy's optimism: `delta_ucb` takes j = argmax_j (mu_i - mu_j + beta sigma_ij) for that i,
`ucb_random` the random other, the Thompson strategies their draw for the second member. Optimism on the chosen side
buys atypical candidates (high sigma), which in pools of weak models are mostly bad answers; on the rejected side it
costs little (a bad rejected answer still makes an informative pair). `max_min_lcb` is already pessimistic on its
first member and `info_max` has no chosen side: both are unchanged.

k > 2 by greedy extension: the Thompson strategies take the argmax of one more draw per member; `ucb_random` adds
more random others; the others add the candidate c maximising min_{s in S} a(c, s), with a(c, s) = |mu_c - mu_s| +
beta sigma_cs (DeltaUCB, MaxMinLCB) or sigma^2_cs (InfoMax): every new member forms an informative pair with each
member already chosen. Ties break to the lowest index. Random draws come from the counter-based hash of
`selection/search.py`, keyed by (seed, prompt key, stream, counters), so they do not depend on batching or device.
"""

from __future__ import annotations

import math

import torch

from .search import hash32
from .surrogate import Posterior

__all__ = ["ACQUISITIONS", "acquire", "thompson_draws"]

# hash streams of the active strategies (search.py uses 1 and 2)
STREAM_THOMPSON = 3  # one standard normal per (draw, half, feature coordinate)
STREAM_RANDOM_OTHER = 4  # one uniform per candidate: the order of the random others of `ucb_random`

NEG_INF = float("-inf")
POS_INF = float("inf")
_TWO_POW_32 = float(2**32)


def _uniform(seed: int, keys: torch.Tensor, *counters) -> torch.Tensor:
    """Uniform in (0, 1), float64, from the counter-based hash."""
    return (hash32(seed, keys, *counters).double() + 0.5) / _TWO_POW_32


def thompson_draws(post: Posterior, seed: int, keys: torch.Tensor, draw: int) -> torch.Tensor:
    """[B, N] one posterior draw f = mu + u . z, z ~ N(0, I) by Box-Muller on the hash (prompt-keyed, reproducible)."""
    F = post.whitened.shape[-1]
    coords = torch.arange(F, device=keys.device)
    u1 = _uniform(seed, keys, STREAM_THOMPSON, draw, 0, coords)
    u2 = _uniform(seed, keys, STREAM_THOMPSON, draw, 1, coords)
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)  # [B, F]
    z = z.to(post.whitened.device)
    return post.mean + torch.bmm(post.whitened, z[:, :, None]).squeeze(-1)


def _pair_mask(mask: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
    return mask[:, :, None] & mask[:, None, :] & ~eye


def _argmax_pair(score: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(i, j) of the first maximum of `score` [B, N, N] over valid i != j."""
    N = score.shape[1]
    flat = score.masked_fill(~_pair_mask(mask), NEG_INF).flatten(1).max(1).indices
    return flat // N, flat % N


def _excluding(x: torch.Tensor, taken: torch.Tensor, fill: float) -> torch.Tensor:
    return x.masked_fill(taken, fill)


def _greedy_extend(first: torch.Tensor, second: torch.Tensor, affinity: torch.Tensor, mask: torch.Tensor, k: int):
    """Members beyond the pair: each maximises its smallest affinity to the members already chosen."""
    B, N = mask.shape
    sel = [first, second]
    taken = ~mask
    taken = taken.scatter(1, first[:, None], True).scatter(1, second[:, None], True)
    ar = torch.arange(B, device=mask.device)
    worst = torch.minimum(affinity[ar, first], affinity[ar, second])  # [B, N]
    for _ in range(2, k):
        c = _excluding(worst, taken, NEG_INF).max(1).indices
        sel.append(c)
        taken = taken.scatter(1, c[:, None], True)
        worst = torch.minimum(worst, affinity[ar, c])
    return torch.stack(sel, 1)


def _best_by_mean(post) -> torch.Tensor:
    """[B] the first argmax of the posterior mean over valid candidates (the robust chosen-side pick)."""
    return post.mean.masked_fill(~post.mask, NEG_INF).max(1).indices


def _delta_ucb(post, k, beta, seed, keys, robust=False):
    mu, sd = post.mean, post.pair_std()
    gap = mu[:, :, None] - mu[:, None, :] + beta * sd
    if robust:
        i = _best_by_mean(post)
        row = gap.gather(1, i[:, None, None].expand(-1, 1, gap.shape[2])).squeeze(1)  # [B, N]: gap(i, j)
        taken = (~post.mask).scatter(1, i[:, None], True)
        j = _excluding(row, taken, NEG_INF).max(1).indices
    else:
        i, j = _argmax_pair(gap, post.mask)
    affinity = (mu[:, :, None] - mu[:, None, :]).abs() + beta * sd
    return _greedy_extend(i, j, affinity, post.mask, k)


def _max_min_lcb(post, k, beta, seed, keys, robust=False):
    mu, sd, mask = post.mean, post.pair_std(), post.mask
    lcb = (mu[:, :, None] - mu[:, None, :] - beta * sd).masked_fill(~_pair_mask(mask), POS_INF)
    worst, j_of = lcb.min(2)  # [B, N]: min over j != i, and its first minimiser
    i = worst.masked_fill(~mask, NEG_INF).max(1).indices
    j = j_of.gather(1, i[:, None]).squeeze(1)
    affinity = (mu[:, :, None] - mu[:, None, :]).abs() + beta * sd
    return _greedy_extend(i, j, affinity, mask, k)


def _info_max(post, k, beta, seed, keys, robust=False):
    var = post.pair_std().pow(2)
    i, j = _argmax_pair(var, post.mask)
    return _greedy_extend(i, j, var, post.mask, k)


def _thompson(post, k, beta, seed, keys, reversed_second: bool, robust: bool = False):
    taken = ~post.mask
    sel = []
    for t in range(k):
        f = post.mean if (t == 0 and robust) else thompson_draws(post, seed, keys, t)
        if t == 1 and reversed_second:
            c = _excluding(f, taken, POS_INF).min(1).indices
        else:
            c = _excluding(f, taken, NEG_INF).max(1).indices
        sel.append(c)
        taken = taken.scatter(1, c[:, None], True)
    return torch.stack(sel, 1)


def _double_ts(post, k, beta, seed, keys, robust=False):
    return _thompson(post, k, beta, seed, keys, reversed_second=False, robust=robust)


def _double_reversed_ts(post, k, beta, seed, keys, robust=False):
    return _thompson(post, k, beta, seed, keys, reversed_second=True, robust=robust)


def _ucb_random(post, k, beta, seed, keys, robust=False):
    mask = post.mask
    optimism = 0.0 if robust else beta
    best = (post.mean + optimism * post.std).masked_fill(~mask, NEG_INF).max(1).indices
    N = mask.shape[1]
    draws = hash32(seed, keys, STREAM_RANDOM_OTHER, torch.arange(N, device=keys.device)).to(mask.device)
    draws = draws.masked_fill(~mask, 1 << 33).scatter(1, best[:, None], 1 << 34)  # padding and the best: last
    others = draws.sort(dim=1, stable=True).indices[:, : k - 1]
    return torch.cat([best[:, None], others], 1)


#: name -> batched acquisition (post, k, beta, seed, keys, robust) -> [B, k] indices (unsorted: first = the "best"
#: pick; `robust` takes it by the posterior mean, see the module docstring).
ACQUISITIONS = {
    "delta_ucb": _delta_ucb,
    "double_ts": _double_ts,
    "double_reversed_ts": _double_reversed_ts,
    "max_min_lcb": _max_min_lcb,
    "info_max": _info_max,
    "ucb_random": _ucb_random,
}


@torch.no_grad()
def acquire(
    strategy: str, post: Posterior, k: int, beta: float, seed: int, keys: torch.Tensor, robust_best: bool = False
) -> torch.Tensor:
    """[B, k] selected indices (sorted ascending) of `strategy` under `post`; every row needs >= k valid candidates.
    `robust_best` picks the chosen-side member by the posterior mean (module docstring)."""
    if strategy not in ACQUISITIONS:
        raise ValueError(f"unknown acquisition {strategy!r}; expected one of {', '.join(map(repr, ACQUISITIONS))}")
    counts = post.mask.sum(1)
    if bool((counts < k).any()):
        row = int((counts < k).nonzero()[0, 0])
        raise ValueError(f"row {row} has {int(counts[row])} valid candidates, fewer than k={k}")
    keys = keys.to(torch.int64).cpu()
    return ACQUISITIONS[strategy](post, k, float(beta), int(seed), keys, bool(robust_best)).sort(1).values
