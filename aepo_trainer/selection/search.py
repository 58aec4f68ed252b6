"""Private search kernels behind `aepo_trainer.selection.select_subsets`.

Every function here works on one chunk of prompts at once: `M` is the `[B, N, N]` fp32 cosine-similarity matrix (rows
and columns of padding are zero), `rep` the `[B, N]` float64 representativeness of each candidate (self-similarity
excluded, divided by `N_b - 1`), `valid` the `[B, N]` mask. There is no Python loop over prompts or candidates: the
loops below run over the k greedy steps, the local-search rounds, the k-medoids iterations or blocks of combinations.

Ties always break to the lowest index: `argmax`/`argmin` return the first extremum, selections are kept sorted, and
the exhaustive search enumerates subsets in lexicographic order.

Randomness is a counter-based hash (`hash32`) of (seed, row key, counters) computed with int64 tensor operations that
never overflow, so it is the same on every device and for every batch composition.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")
POS_INF = float("inf")

# ------------------------------------------------------------------------------------------------ counter-based RNG
_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9
STREAM_RANDOM = 1  # strategy="random": one draw per candidate
STREAM_LOCAL_SEARCH = 2  # local search: one draw per (round, member position)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for int64 `x` in [0, 2**32) without int64 overflow (c is split into 16-bit halves)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """The `lowbias32` integer finaliser (C. Wellons): a bijection on 32-bit words with good avalanche."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _absorb(h: torch.Tensor, word) -> torch.Tensor:
    return _mix32(((h ^ word) + _GOLDEN) & _MASK32)


def hash32(seed: int, row_keys: torch.Tensor, *counters) -> torch.Tensor:
    """A 32-bit hash (int64 tensor in [0, 2**32)) of (seed, row_keys[b], *counters), broadcast over the counters.

    `row_keys` is an int64 tensor `[B]`; each counter is a Python int or an int64 tensor of trailing shape `T` (the
    result is then `[B, *T]`). Pure int64 arithmetic with masks (no overflow, no floating point), so CPU and CUDA
    agree bit for bit.
    """
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    keys = row_keys.to(torch.int64)
    h = torch.full_like(keys, 0x2545F491)
    h = _absorb(h, seed & _MASK32)
    h = _absorb(h, seed >> 32)
    h = _absorb(h, keys & _MASK32)
    h = _absorb(h, (keys >> 32) & _MASK32)
    for counter in counters:
        if isinstance(counter, torch.Tensor):
            if h.dim() == 1:
                h = h.reshape(-1, *([1] * counter.dim()))
            h = _absorb(h, counter.to(device=h.device, dtype=torch.int64) & _MASK32)
        else:
            h = _absorb(h, int(counter) & _MASK32)
    return h


def hash32_reference(seed: int, row_key: int, *counters: int) -> int:
    """Pure-Python twin of `hash32` for one row (used by the tests to pin the bit pattern)."""

    def mix(x):
        x ^= x >> 16
        x = (x * 0x7FEB352D) & _MASK32
        x ^= x >> 15
        x = (x * 0x846CA68B) & _MASK32
        return x ^ (x >> 16)

    def absorb(h, w):
        return mix(((h ^ w) + _GOLDEN) & _MASK32)

    seed &= 0xFFFFFFFFFFFFFFFF
    key = row_key & 0xFFFFFFFFFFFFFFFF
    h = 0x2545F491
    for word in (seed & _MASK32, seed >> 32, key & _MASK32, key >> 32, *[c & _MASK32 for c in counters]):
        h = absorb(h, word)
    return h


# ------------------------------------------------------------------------------------------------ helpers
# Performance notes (CPU, measured): boolean `masked_fill`/`where` on [B, N] are ~30x slower than adding a 0/-inf
# penalty tensor, advanced indexing `M[ar, sel]` is ~4x slower than `index_select` on the flattened matrix, and
# `max(dim).indices` is ~2x faster than `argmax` (both return the first maximum).
def penalty(valid: torch.Tensor) -> torch.Tensor:
    """float32 [B, N]: 0 where valid, -inf on padding (added to scores instead of boolean masking)."""
    return torch.zeros(valid.shape, dtype=torch.float32, device=valid.device).masked_fill_(~valid, NEG_INF)


def rows_of(M: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """M[b, idx[b, p], :] as [B, P, N] (idx [B, P]) or [B, N] (idx [B])."""
    B, N, _ = M.shape
    base = torch.arange(B, device=M.device) * N
    if idx.dim() == 1:
        return M.view(B * N, N).index_select(0, idx + base)
    return M.view(B * N, N).index_select(0, (idx + base[:, None]).flatten()).view(B, idx.shape[1], N)


def argmax_first(x: torch.Tensor) -> torch.Tensor:
    return x.max(-1).indices


# ------------------------------------------------------------------------------------------------ objective
def subset_scores(M: torch.Tensor, rep: torch.Tensor, sel: torch.Tensor, lam: float):
    """Objective terms of the subsets `sel` `[B, k]` (sorted ascending): (objective, representativeness, mean
    pairwise similarity), float64, from the same fp32 similarities as the search so that comparisons are consistent.

    Only the upper-triangle entries M_ij, i < j, are read (the exhaustive search and the k = 2 kernel read the same).
    """
    B, k = sel.shape
    N = M.shape[-1]
    if k == 2:
        pair = M.view(B, N * N).gather(1, sel[:, :1] * N + sel[:, 1:]).squeeze(1).double()
    else:
        iu = torch.triu_indices(k, k, offset=1, device=sel.device)
        pair = M.view(B, N * N).gather(1, sel[:, iu[0]] * N + sel[:, iu[1]]).double().sum(1) * (2.0 / (k * (k - 1)))
    repr_ = rep.gather(1, sel).sum(1) / k
    return repr_ - lam * pair, repr_, pair


# ------------------------------------------------------------------------------------------------ greedy
def greedy(M: torch.Tensor, rep: torch.Tensor, valid: torch.Tensor, k: int, lam: float) -> torch.Tensor:
    """Greedy forward selection with incremental gains; returns the selection `[B, k]` (sorted ascending).

    Step t adds the candidate c maximising f(S + c) over subsets of size t + 1, i.e.
    `rep_c - (2 lam / t) * sum_{s in S} M_sc` (t >= 1; the first pick is the most representative candidate).
    """
    B, N = rep.shape
    sel = torch.empty(B, k, dtype=torch.long, device=rep.device)
    pen = penalty(valid)
    gain = rep.float() + pen
    acc = torch.zeros(B, N, dtype=torch.float32, device=rep.device)
    for t in range(k):
        if t > 0:
            gain = torch.add(rep.float(), acc, alpha=-2.0 * lam / t).add_(pen)
        c = argmax_first(gain)
        sel[:, t] = c
        pen.scatter_(1, c[:, None], NEG_INF)
        if t + 1 < k:
            acc += rows_of(M, c)
    return sel.sort(1).values


def top_k(rep: torch.Tensor, valid: torch.Tensor, k: int) -> torch.Tensor:
    """The k most representative candidates (exact optimum for lambda = 0); ties to the lowest index."""
    order = (rep + penalty(valid)).sort(dim=1, descending=True, stable=True).indices
    return order[:, :k].sort(1).values


# ------------------------------------------------------------------------------------------------ local search
def _best_swap(M, rep32, pen0, sel, cur, rep, lam: float):
    """One steepest-ascent step: the best (member, non-member) exchange by incremental gain, applied where it strictly
    improves the objective (checked with `subset_scores`). Returns (sel, objective)."""
    B, k = sel.shape
    N = rep32.shape[1]
    coef = 2.0 * lam / (k - 1)
    rows = rows_of(M, sel)  # [B, k, N]: M_{p, c} for members p
    acc = rows.sum(1)  # [B, N]: sum_{s in S} M_{s, c}
    pair_p = acc.gather(1, sel) - rows.gather(2, sel[:, :, None]).squeeze(2)  # sum_{s != p} M_{s, p}
    # k * (f(S - p + c) - f(S)) = (rep_c - coef * acc_c) + coef * M_pc - (rep_p - coef * pair_p); members and padding
    # get -inf through the penalty.
    u = torch.add(rep32, acc, alpha=-coef).add_(pen0).scatter_(1, sel, NEG_INF)
    delta = torch.add(u[:, None, :], rows, alpha=coef).sub_((rep32.gather(1, sel) - coef * pair_p)[:, :, None])
    best_val, best = delta.flatten(1).max(1)
    cand = sel.scatter(1, (best // N)[:, None], (best % N)[:, None]).sort(1).values
    new = subset_scores(M, rep, cand, lam)[0]
    better = (new > cur) & (best_val > NEG_INF)
    return torch.where(better[:, None], cand, sel), torch.where(better, new, cur)


def local_search(
    M,
    rep,
    valid,
    sel,
    lam: float,
    rounds: int,
    seed: int,
    row_keys: torch.Tensor,
    polish_steps: int = 2,
    drop: int = 4,
    inserts: int = 2,
):
    """Batched iterated local search from `sel`; never returns a subset with a lower objective than its input.

    First the start is polished by k steepest-ascent swaps (`_best_swap`). Then each round, for every row at once:
      1. seeded perturbation: drop min(`drop`, k - 1) members and insert `inserts` random non-members, all drawn by
         the counter-based hash of (seed, row key, round), then complete the subset greedily with incremental gains;
      2. polish the perturbed subset with `polish_steps` steepest-ascent swaps;
      3. keep it if its objective is not worse than the incumbent's.
    The reference's move (drop one random member, re-add greedily) cannot leave a 1-swap local optimum; the random
    insertion plus polishing can.
    """
    B, k = sel.shape
    dev = rep.device
    m = min(drop, k - 1)
    q = min(inserts, m)
    rep32 = rep.float()
    pen0 = penalty(valid)
    cur = subset_scores(M, rep, sel, lam)[0]
    for _ in range(k):
        sel, cur = _best_swap(M, rep32, pen0, sel, cur, rep, lam)
    base = hash32(seed, row_keys, STREAM_LOCAL_SEARCH)  # [B]: per-row RNG state
    positions = torch.arange(k, device=dev)
    for r in range(rounds):
        # 1. perturbation: drop m members, insert q uniformly random non-members, complete greedily
        state = _absorb(base, r)
        dropped = _absorb(state[:, None], positions).sort(dim=1, stable=True).indices[:, :m]  # [B, m] positions
        allowed = torch.ones_like(valid).scatter_(1, sel, False) & valid
        cand = sel.clone()
        for i in range(q):
            draw = _absorb(state, 0xFFFFFFFF - i)  # [B] uniform in [0, 2**32)
            n_allowed = allowed.sum(1)
            rank = (draw * n_allowed) >> 32  # uniform rank among the allowed candidates
            c = argmax_first((allowed.cumsum(1) > rank[:, None]).to(torch.uint8))
            # a row without room (N_b - k < i + 1) keeps its member at that position
            c = torch.where(n_allowed > 0, c, sel.gather(1, dropped[:, i : i + 1]).squeeze(1))
            cand.scatter_(1, dropped[:, i : i + 1], c[:, None])
            allowed.scatter_(1, c[:, None], False)
        pen = pen0.scatter(1, cand, NEG_INF)
        if q < m:
            pen.scatter_(1, sel.gather(1, dropped[:, q:]), 0.0)  # the other dropped members may come back
            keep = torch.ones(B, k, dtype=torch.bool, device=dev).scatter_(1, dropped[:, q:], False)
            acc = (rows_of(M, cand) * keep[:, :, None]).sum(1)
            for step in range(q, m):
                c = argmax_first(torch.add(rep32, acc, alpha=-2.0 * lam / (k - m + step)).add_(pen))
                cand.scatter_(1, dropped[:, step : step + 1], c[:, None])
                pen.scatter_(1, c[:, None], NEG_INF)
                acc += rows_of(M, c)
        cand = cand.sort(1).values
        new = subset_scores(M, rep, cand, lam)[0]
        # 2. polish
        for _ in range(polish_steps):
            cand, new = _best_swap(M, rep32, pen0, cand, new, rep, lam)
        # 3. accept if not worse
        better = new >= cur
        sel = torch.where(better[:, None], cand, sel)
        cur = torch.where(better, new, cur)
    return sel


def canonical_copies(M, rep, valid, sel):
    """Replace members by their lowest-index exact copies (candidate j is a copy of member s when M_sj equals the
    self-similarity M_ss and rep_j equals rep_s bit for bit, which identical embeddings give). The objective is
    unchanged; this makes the lowest-index rule hold for duplicates after local search too."""
    rows = rows_of(M, sel)  # [B, k, N]
    self_sim = rows.gather(2, sel[:, :, None])
    copies = (rows == self_sim) & (rep[:, None, :] == rep.gather(1, sel)[:, :, None]) & valid[:, None, :]
    group = argmax_first(copies.to(torch.uint8))  # [B, k]: lowest copy = group id
    same = group[:, :, None] == group[:, None, :]
    rank = (same & torch.ones_like(same).tril(-1)).sum(2)  # members of the same group before this one
    new = argmax_first((copies.cumsum(2) > rank[:, :, None]).to(torch.uint8))
    return new.sort(1).values


# ------------------------------------------------------------------------------------------------ exhaustive
def exhaustive(M, rep, valid, k: int, lam: float, block: int) -> torch.Tensor:
    """Exact optimum over all C(N, k) subsets, enumerated lexicographically in blocks of `block` combinations."""
    B, N = rep.shape
    dev = rep.device
    combos = torch.combinations(torch.arange(N, device=dev), r=k)  # [C, k], lexicographic
    iu = torch.triu_indices(k, k, offset=1, device=dev)
    flatM = M.flatten(1)
    pen = penalty(valid).double()
    best_val = torch.full((B,), NEG_INF, dtype=torch.float64, device=dev)
    best_idx = torch.zeros(B, dtype=torch.long, device=dev)
    for start in range(0, combos.shape[0], block):
        cb = combos[start : start + block]  # [c, k]
        rep_s = rep[:, cb].sum(2) / k  # [B, c]
        flat = cb[:, iu[0]] * N + cb[:, iu[1]]  # [c, P]
        pair = flatM[:, flat].double().sum(2) * (2.0 / (k * (k - 1)))
        val = rep_s - lam * pair + pen[:, cb].sum(2)
        v, i = val.max(1)
        upd = v > best_val  # strict: the earlier (lexicographically smaller) subset wins ties
        best_val = torch.where(upd, v, best_val)
        best_idx = torch.where(upd, i + start, best_idx)
    return combos[best_idx]


# ------------------------------------------------------------------------------------------------ random
def random_subsets(valid: torch.Tensor, k: int, seed: int, row_keys: torch.Tensor) -> torch.Tensor:
    """k distinct valid candidates per row, uniformly at random; candidate i's draw depends only on
    (seed, row key, i), so padding and batch composition never change a row's selection."""
    B, N = valid.shape
    draws = hash32(seed, row_keys, STREAM_RANDOM, torch.arange(N, device=valid.device))  # [B, N]
    draws = draws.masked_fill(~valid, 1 << 33)
    return draws.sort(dim=1, stable=True).indices[:, :k].sort(1).values


# ------------------------------------------------------------------------------------------------ k-medoids
def kmedoids(M, rep, valid, k: int, max_iter: int = 20) -> torch.Tensor:
    """k-medoids on cosine distance 1 - M: greedy BUILD initialisation, then batched alternating (Voronoi)
    iterations, each accepted per row only if it strictly lowers the total distance to the nearest medoid."""
    B, N = rep.shape
    dev = rep.device
    ar = torch.arange(B, device=dev)
    dist = (1.0 - M).clamp_min_(0.0)
    torch.diagonal(dist, dim1=1, dim2=2).zero_()
    dist.masked_fill_(~valid[:, None, :], 0.0)  # padded points cost nothing
    invalid = ~valid
    # BUILD: the first medoid minimises the total distance; each next one maximises the cost reduction.
    total = dist.sum(2).masked_fill(invalid, POS_INF)
    sel = torch.empty(B, k, dtype=torch.long, device=dev)
    sel[:, 0] = total.argmin(1)
    taken = invalid.clone()
    taken[ar, sel[:, 0]] = True
    nearest = dist[ar, sel[:, 0]]  # [B, N]
    for t in range(1, k):
        gain = (nearest[:, None, :] - dist).clamp_min_(0.0).sum(2).masked_fill(taken, NEG_INF)
        c = gain.argmax(1)
        sel[:, t] = c
        taken[ar, c] = True
        nearest = torch.minimum(nearest, dist[ar, c])
    sel = sel.sort(1).values
    cluster_ids = torch.arange(k, device=dev)[None, :, None]

    def cost_of(s):
        return dist[ar[:, None], s].min(1).values.sum(1)

    cost = cost_of(sel)
    for _ in range(max_iter):
        d_sel = dist[ar[:, None], sel]  # [B, k, N]
        assign = d_sel.argmin(1)  # [B, N], ties to the lowest-index medoid
        same = assign[:, :, None] == assign[:, None, :]
        within = (dist * same).sum(2)  # [B, N]: distance of c to the members of its own cluster
        w = (
            within[:, None, :]
            .expand(B, k, N)
            .masked_fill((assign[:, None, :] != cluster_ids) | invalid[:, None, :], POS_INF)
        )
        best, new = w.min(2)
        new = torch.where(torch.isinf(best), sel, new).sort(1).values
        distinct = (new[:, 1:] != new[:, :-1]).all(1)
        new_cost = cost_of(new)
        better = distinct & (new_cost < cost)
        if not bool(better.any()):
            break
        sel = torch.where(better[:, None], new, sel)
        cost = torch.where(better, new_cost, cost)
    return sel
