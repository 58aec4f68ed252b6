"""Fused, batched AEPO subset selection: pick k of each prompt's N candidates on the device.

For every prompt b with valid pool `Y_b` (`N_b` candidates) and cosine similarities `M` of the L2-normalised
embeddings, a subset S of size k maximises (self-similarity excluded)

    f(S) = 1/(k (N_b - 1)) sum_{i in S} sum_{j != i, j valid} M_ij  -  lambda / (k (k - 1)) sum_{i != j in S} M_ij
           `------------------ representativeness ------------------'           `--- mean similarity inside S ---'

`select_subsets` runs one similarity GEMM per chunk of prompts and then solves all prompts of the chunk at once:
k = 2 exactly (one argmax over all pairs), k > 2 by greedy forward selection with incremental gains followed by
seeded swap local search (in `selection/search.py`), or exhaustively when C(N_b, k) is small. See
docs/selection.md for the user guide.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from . import search as _search

__all__ = ["SEARCHES", "STRATEGIES", "SelectionResult", "select_subsets"]

from ..choices import ACTIVE_STRATEGIES, POLICY_STRATEGIES
from ..choices import SELECTION_SEARCHES as SEARCHES
from ..choices import SELECTION_STRATEGIES as STRATEGIES

DEFAULT_EXHAUSTIVE_LIMIT = 5000  # "auto" enumerates every subset of a prompt when C(N_b, k) <= this
MAX_EXHAUSTIVE = 2_000_000  # search="exhaustive" refuses more subsets than this
DEFAULT_MAX_CHUNK_BYTES = 256 * 2**20  # temporary memory per chunk of prompts
NORM_TOLERANCE = 1e-5  # |‖x‖² - 1| <= this: the row counts as unit-norm (fp32 GEMM rounding is ~1e-6)
KMEDOIDS_MAX_ITER = 20


@dataclass
class SelectionResult:
    """What `select_subsets` returns, all on the device of the embeddings.

    indices:            LongTensor [B, k], sorted ascending in each row (for "west_of_n": [B, N_max], valid indices
                        first, ascending, then -1 padding).
    objective:          float32 [B], f(S) (= representativeness - lambda * (1 - diversity)).
    representativeness: float32 [B], mean over i in S of the mean similarity of i to the other valid candidates.
    diversity:          float32 [B], 1 - mean pairwise cosine similarity inside S.
    valid:              BoolTensor like `indices`, True for real entries (all True except for "west_of_n").
    """

    indices: torch.Tensor
    objective: torch.Tensor
    representativeness: torch.Tensor
    diversity: torch.Tensor
    valid: torch.Tensor

    def __len__(self) -> int:
        return self.indices.shape[0]

    def tolist(self) -> list[list[int]]:
        """The selected candidate indices of each row as Python lists (padding dropped)."""
        idx, ok = self.indices.cpu().tolist(), self.valid.cpu().tolist()
        return [[i for i, v in zip(row, vrow) if v] for row, vrow in zip(idx, ok)]

    def to(self, device) -> SelectionResult:
        return SelectionResult(
            *(getattr(self, f).to(device) for f in ("indices", "objective", "representativeness", "diversity", "valid"))
        )


@torch.no_grad()
def select_subsets(
    embeddings: torch.Tensor,
    k: int,
    diversity_weight: float = 1.0,
    mask: torch.Tensor | None = None,
    strategy: str = "aepo",
    seed: int = 0,
    *,
    row_keys=None,
    search: str = "auto",
    local_search_rounds: int = 20,
    exhaustive_limit: int = DEFAULT_EXHAUSTIVE_LIMIT,
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
    compile: bool | None = None,
    quality: torch.Tensor | None = None,
) -> SelectionResult:
    """Select k candidates per prompt from a batch of candidate pools.

    Args:
        embeddings: float tensor [B, N, D] (fp32, bf16, fp16 or fp64) on any device; rows are L2-normalised inside
            and similarities are accumulated in fp32.
        k: subset size (>= 2, <= every row's valid pool size). Ignored by "west_of_n".
        diversity_weight: lambda >= 0, the weight of the diversity term (forced to 0 by "representativeness").
        mask: optional bool tensor [B, N]; False marks padding of ragged pools.
        strategy: "aepo", "random", "west_of_n" (the whole valid pool), "representativeness" (lambda = 0) or
            "kmedoids" (k-medoids coreset on cosine distance).
        seed: seed of the counter-based RNG (local search, "random").
        row_keys: optional int64 [B] per-prompt keys for the RNG (default `arange(B)`), e.g. from `prompt_key`.
        search: k > 2 search for "aepo": "greedy" (greedy + seeded swap local search), "exhaustive" (all C(N_b, k)
            subsets) or "auto" (per prompt: exhaustive when C(N_b, k) <= `exhaustive_limit`, else greedy). k = 2 is
            always exact (one argmax over all pairs), and so is lambda = 0 (top-k by representativeness).
        local_search_rounds: rounds of swap local search after the greedy pass.
        exhaustive_limit: largest C(N_b, k) that "auto" solves exhaustively.
        max_chunk_bytes: bound on the temporary memory; prompts are processed in chunks that fit in it.
        compile: fuse the k = 2 pair kernel with `torch.compile` (None: the `AEPO_SELECTION_COMPILE` environment
            variable, default off); any compilation failure falls back to eager.
        quality: optional float [B, N] per-candidate term q_i added to the objective as (1/k) sum_{i in S} q_i (the
            active `aepo_ucb` strategy passes gamma * UCB_i); `objective` then includes it, `representativeness` does
            not. Only for "aepo" and "representativeness".

    Returns:
        `SelectionResult`; `indices` are sorted ascending within each row.
    """
    E, mask, keys, counts, lam, k = _validate(
        embeddings,
        k,
        diversity_weight,
        mask,
        strategy,
        seed,
        row_keys,
        search,
        local_search_rounds,
        exhaustive_limit,
        max_chunk_bytes,
    )
    B, N, D = E.shape
    if quality is not None:
        if strategy not in ("aepo", "representativeness"):
            _fail(f"quality is only supported by the 'aepo' and 'representativeness' strategies, not {strategy!r}")
        if not isinstance(quality, torch.Tensor) or tuple(quality.shape) != (B, N):
            _fail(f"quality must be a tensor of shape [B, N] = {[B, N]}, got {getattr(quality, 'shape', quality)}")
        if not bool(torch.isfinite(quality[mask.to(quality.device)]).all()):
            _fail("quality has non-finite values on valid candidates")
        quality = quality.masked_fill(~mask.to(quality.device), 0.0)  # padding never reaches the searches' argmax
    dev = E.device
    west = strategy == "west_of_n"
    if B == 0:
        width = N if west else k
        return SelectionResult(
            torch.empty(0, width, dtype=torch.long, device=dev),
            *(torch.empty(0, device=dev) for _ in range(3)),
            torch.empty(0, width, dtype=torch.bool, device=dev),
        )

    method = _method(strategy, k, lam, search, max(counts), exhaustive_limit)
    use_compile = _want_compile(compile)
    rows = _chunk_rows(method, N, D, k, max_chunk_bytes)
    parts = []
    for start in range(0, B, rows):
        stop = min(B, start + rows)
        msk, cnt = mask[start:stop], counts[start:stop]
        padded = min(cnt) < N
        M, rep = _similarities(E[start:stop], msk, cnt, start, padded)
        rep_obj = rep if quality is None else rep + quality[start:stop].to(device=dev, dtype=rep.dtype)
        if west:
            idx, ok, obj, repr_, pair = _west_of_n(M, rep, msk, cnt, lam)
        else:
            chunk_keys = None
            if method in ("random", "greedy", "auto"):
                chunk_keys = keys[start:stop] if keys is not None else torch.arange(start, stop, device=dev)
            idx = _select(
                method,
                M,
                rep_obj,
                msk,
                cnt,
                padded,
                k,
                lam,
                seed,
                chunk_keys,
                local_search_rounds,
                exhaustive_limit,
                max_chunk_bytes,
                use_compile,
            )
            obj, repr_, pair = _search.subset_scores(M, rep, idx, lam)
            if quality is not None:
                obj = obj + (rep_obj - rep).gather(1, idx).sum(1) / k
            ok = None
        parts.append((idx, obj.float(), repr_.float(), (1.0 - pair).float(), ok))
        del M, rep
    if len(parts) == 1:
        idx, obj, repr_, div, ok = parts[0]
    else:
        idx, obj, repr_, div = (torch.cat([p[i] for p in parts]) for i in range(4))
        ok = torch.cat([p[4] for p in parts]) if west else None
    if ok is None:
        ok = torch.ones(idx.shape, dtype=torch.bool, device=dev)
    return SelectionResult(idx, obj, repr_, div, ok)


# ------------------------------------------------------------------------------------------------ validation
def _fail(message: str):
    raise ValueError(f"select_subsets: {message}")


def _validate(embeddings, k, lam, mask, strategy, seed, row_keys, search, rounds, exhaustive_limit, max_chunk_bytes):
    if not isinstance(embeddings, torch.Tensor):
        _fail(f"embeddings must be a torch.Tensor of shape [B, N, D], got {type(embeddings).__name__}")
    if embeddings.dim() != 3:
        _fail(f"embeddings must have shape [B, N, D], got {list(embeddings.shape)}")
    if not embeddings.is_floating_point():
        _fail(f"embeddings must be a floating-point tensor (fp32, bf16, fp16), got {embeddings.dtype}")
    B, N, D = embeddings.shape
    if D == 0:
        _fail("embeddings have dimension D=0")
    if strategy in ACTIVE_STRATEGIES:
        _fail(
            f"strategy {strategy!r} learns from paid labels and needs a reward surrogate; select with "
            "`aepo_trainer.selection.ActiveSelector` (PoolReducer and `aepo select` do so automatically)"
        )
    if strategy in POLICY_STRATEGIES:
        _fail(
            f"strategy {strategy!r} ranks candidates by the policy's implicit reward; select with "
            "`aepo_trainer.selection.implicit_reward.select_implicit_reward_gap` (`AEPOTrainer` does so automatically)"
        )
    if strategy not in STRATEGIES:
        _fail(f"unknown strategy {strategy!r}; expected one of {', '.join(map(repr, STRATEGIES))}")
    if search not in SEARCHES:
        _fail(f"unknown search {search!r}; expected one of {', '.join(map(repr, SEARCHES))}")
    west = strategy == "west_of_n"
    if not west and (isinstance(k, bool) or not isinstance(k, int)):
        _fail(f"k must be an int, got {k!r}")
    if not west and k < 2:
        _fail(f"k={k} but at least 2 candidates must be selected per prompt")
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
        _fail(f"diversity_weight must be a finite number >= 0, got {lam!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        _fail(f"seed must be an int, got {seed!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        _fail(f"local_search_rounds must be an int >= 0, got {rounds!r}")
    if isinstance(exhaustive_limit, bool) or not isinstance(exhaustive_limit, int) or exhaustive_limit < 0:
        _fail(f"exhaustive_limit must be an int >= 0, got {exhaustive_limit!r}")
    if isinstance(max_chunk_bytes, bool) or not isinstance(max_chunk_bytes, int) or max_chunk_bytes <= 0:
        _fail(f"max_chunk_bytes must be a positive int, got {max_chunk_bytes!r}")
    dev = embeddings.device

    if mask is None:
        mask = torch.ones(B, N, dtype=torch.bool, device=dev)
        counts = [N] * B
    else:
        if not isinstance(mask, torch.Tensor):
            _fail(f"mask must be a bool tensor of shape [B, N] = {[B, N]}, got {type(mask).__name__}")
        if tuple(mask.shape) != (B, N):
            _fail(f"mask has shape {list(mask.shape)} but embeddings are [B, N, D] = {[B, N, D]}")
        if mask.dtype != torch.bool:
            if mask.is_floating_point() or mask.is_complex():
                _fail(f"mask must be a bool tensor (False = padding), got {mask.dtype}")
            mask = mask != 0
        mask = mask.to(dev)
        counts = mask.sum(1).tolist()

    if row_keys is None:
        keys = None  # arange(B), built per chunk when needed
    else:
        keys = torch.as_tensor(row_keys, device=dev) if not isinstance(row_keys, torch.Tensor) else row_keys.to(dev)
        if keys.is_floating_point() or keys.dtype == torch.bool or tuple(keys.shape) != (B,):
            _fail(f"row_keys must be an integer tensor of shape [B] = [{B}], got {keys.dtype} {list(keys.shape)}")
        keys = keys.to(torch.int64)

    need = 2 if west else k
    if B and min(counts) < need:  # name the first offending row
        b, n = next((b, n) for b, n in enumerate(counts) if n < need)
        if n == 0:
            _fail(f"row {b} has no valid candidates (all padding)")
        if west:
            _fail(f"row {b} has {n} valid candidate(s); 'west_of_n' needs at least 2")
        _fail(f"row {b} has {n} valid candidate(s) but k={k}")
    lam = 0.0 if strategy == "representativeness" else float(lam)
    return embeddings, mask, keys, counts, lam, (0 if west else k)


# ------------------------------------------------------------------------------------------------ similarities
def _check_and_rescale(M, sq, msk, offset: int, padded: bool):
    """Raise on NaN/inf/all-zero embeddings (naming the row and candidate), else L2-normalise in place the rows of
    `M` whose squared norm is not within NORM_TOLERANCE of 1."""
    bad = ((sq > 0) & (sq < float("inf"))).logical_not_()  # NaN, inf or 0 (padding rows are 0)
    off = (sq - 1.0).abs_() > NORM_TOLERANCE
    if padded:
        bad &= msk
        off &= msk
    if bool(bad.any()):
        b, i = (int(v) for v in bad.nonzero()[0])
        problem = (
            "has an all-zero embedding, which cannot be L2-normalised"
            if float(sq[b, i]) == 0.0
            else "has a non-finite embedding (NaN or inf, or too large to square in fp32)"
        )
        _fail(f"row {offset + b} candidate {i} {problem}")
    w = torch.where(off, sq.rsqrt(), 1.0)
    M.mul_(w[:, :, None] * w[:, None, :])  # symmetric scaling keeps M exactly symmetric


def _similarities(X, msk, counts: list[int], offset: int, padded: bool):
    """fp32 cosine similarities `M` [b, N, N] (padding rows/columns 0) and float64 representativeness [b, N]
    (self-similarity excluded, divided by N_b - 1; 0 on padding)."""
    X = X.to(torch.float32)
    if padded:
        X = X.masked_fill(~msk[:, :, None], 0.0)
    if X.device.type == "cuda":
        # CUDA may run fp32 GEMMs in TF32 (a process-wide setting that selection must not change): compute in fp64,
        # then round, so GPU similarities are at least as exact as the CPU's fp32 ones. The GEMM is B x N x N x D.
        M = torch.bmm(X.double(), X.double().transpose(1, 2)).float()
    else:
        M = torch.bmm(X, X.transpose(1, 2))
    sq = torch.diagonal(M, dim1=1, dim2=2)  # squared norms (a view: read before any rescaling)
    # fast path, one device sync: every valid squared norm finite and within NORM_TOLERANCE of 1 (NaN fails it)
    lo, hi = torch.aminmax(torch.where(msk, sq, 1.0) if padded else sq)
    lo, hi = torch.stack((lo, hi)).tolist()
    if not (lo >= 1.0 - NORM_TOLERANCE and hi <= 1.0 + NORM_TOLERANCE):
        _check_and_rescale(M, sq, msk, offset, padded)
    # fp32 accumulation (30x faster than a float64 upcast on CPU); padding rows are 0
    rep = (M.sum(2) - torch.diagonal(M, dim1=1, dim2=2)).double()
    if padded:
        rep.mul_(torch.tensor([1.0 / max(n - 1, 1) for n in counts], dtype=torch.float64, device=M.device)[:, None])
    else:
        rep.mul_(1.0 / max(M.shape[-1] - 1, 1))
    return M, rep


# ------------------------------------------------------------------------------------------------ dispatch
def _method(strategy: str, k: int, lam: float, search: str, n_largest: int, exhaustive_limit: int) -> str:
    if strategy in ("random", "west_of_n", "kmedoids"):
        return strategy
    if lam == 0.0:
        return "topk"  # exact: the objective is a sum of per-candidate terms
    if k == 2:
        return "pair"
    if search == "exhaustive":
        n_subsets = math.comb(n_largest, k)
        if n_subsets > MAX_EXHAUSTIVE:
            _fail(
                f"search='exhaustive' would enumerate C({n_largest}, {k}) = {n_subsets} subsets per prompt "
                f"(limit {MAX_EXHAUSTIVE}); use search='greedy' or 'auto'"
            )
        return "exhaustive"
    if search == "auto" and exhaustive_limit > 0:
        return "auto"  # decided per row: exhaustive where C(N_b, k) <= exhaustive_limit
    return "greedy"


def _chunk_rows(method: str, N: int, D: int, k: int, max_chunk_bytes: int) -> int:
    """Prompts per chunk so that the chunk's temporaries stay under `max_chunk_bytes` (at least one prompt)."""
    n2 = 4 * N * N
    per_row = 4 * N * D + 64 * N + {"kmedoids": 7 * n2, "pair": 3 * n2}.get(method, 2 * n2)
    if method in ("greedy", "auto", "kmedoids"):
        per_row += 64 * k * N
    return max(1, max_chunk_bytes // per_row)


def _select(
    method, M, rep, msk, counts, padded, k, lam, seed, keys, rounds, exhaustive_limit, max_chunk_bytes, use_compile
):
    if method == "topk":
        return _search.top_k(rep, msk, k)
    if method == "pair":
        return _pair(M, rep, msk if padded else None, lam, use_compile)
    if method == "random":
        return _search.random_subsets(msk, k, seed, keys)
    if method == "kmedoids":
        return _search.canonical_copies(M, rep, msk, _search.kmedoids(M, rep, msk, k, KMEDOIDS_MAX_ITER))
    if method == "exhaustive":
        return _exhaustive(M, rep, msk, counts, None, k, lam, max_chunk_bytes)
    small = None
    if method == "auto":  # per row, so that a prompt's search does not depend on the other prompts of the batch
        small = [math.comb(n, k) <= exhaustive_limit for n in counts]
        if all(small):
            return _exhaustive(M, rep, msk, counts, None, k, lam, max_chunk_bytes)
    sel = _search.greedy(M, rep, msk, k, lam)
    if rounds > 0:
        sel = _search.canonical_copies(M, rep, msk, _search.local_search(M, rep, msk, sel, lam, rounds, seed, keys))
    if small is not None and any(small):
        rows = torch.tensor([b for b, s in enumerate(small) if s], device=M.device)
        sel[rows] = _exhaustive(M, rep, msk, counts, rows, k, lam, max_chunk_bytes)
    return sel


def _exhaustive(M, rep, msk, counts, rows, k, lam, max_chunk_bytes):
    """Exhaustive search on the rows `rows` (None: all), with each row's valid candidates moved to the front so that
    only C(max N_b, k) subsets are enumerated; returns indices into the original pools."""
    if rows is None:
        rows = torch.arange(M.shape[0], device=M.device)
    n_cut = max(counts[b] for b in rows.tolist())
    N = msk.shape[1]
    ar = torch.arange(N, device=M.device)
    order = torch.where(msk[rows], ar, ar + N).sort(1).indices[:, :n_cut]  # valid positions first, ascending
    Mc = M[rows[:, None, None], order[:, :, None], order[:, None, :]]
    valid_c = ar[None, :n_cut] < torch.as_tensor([counts[b] for b in rows.tolist()], device=M.device)[:, None]
    per_combo = rows.numel() * (k + k * (k - 1) // 2) * 8 * 4
    rep_c = rep[rows].gather(1, order)
    sel_c = _search.exhaustive(Mc, rep_c, valid_c, k, lam, block=max(1, max_chunk_bytes // (2 * per_combo)))
    # copies tie exactly only up to the summation order, hence the explicit canonicalisation (`order` is increasing,
    # so the lowest compacted index is the lowest original index)
    return order.gather(1, _search.canonical_copies(Mc, rep_c, valid_c, sel_c))


def _west_of_n(M, rep, msk, counts: list[int], lam):
    b, N = msk.shape
    ar = torch.arange(N, device=msk.device)
    counts = torch.tensor(counts, device=msk.device)
    order = torch.where(msk, ar, ar + N).sort(1).values
    ok = ar[None, :] < counts[:, None]
    idx = order.masked_fill(~ok, -1)
    mean_sim = rep.sum(1) / counts.double()  # = mean pairwise similarity of the whole valid pool
    return idx, ok, (1.0 - lam) * mean_sim, mean_sim, mean_sim


# ------------------------------------------------------------------------------------------------ k = 2: pair kernel
def _pair_scores_argmax(M: torch.Tensor, h: torch.Tensor, lam: float) -> torch.Tensor:
    """argmax over i != j of h_i + h_j - lam * M_ij (flattened index); h is -inf on padding."""
    F = h[:, :, None] + h[:, None, :]
    if lam != 0.0:
        F.sub_(M, alpha=lam)
    torch.diagonal(F, dim1=1, dim2=2).fill_(float("-inf"))
    return F.flatten(1).max(1).indices  # first maximum; `max` is ~2x faster than `argmax` on CPU


def _pair_scores_argmax_fused(M: torch.Tensor, h: torch.Tensor, lam: float) -> torch.Tensor:
    """The same scores written for `torch.compile` (one fused pass)."""
    n = M.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=M.device)
    F = (h[:, :, None] + h[:, None, :] - lam * M).masked_fill(eye, float("-inf"))
    return F.flatten(1).argmax(1)


_compiled_pair = None  # None: not built yet; False: compilation failed once, eager from then on


def _want_compile(flag: bool | None) -> bool:
    if flag is None:
        flag = os.environ.get("AEPO_SELECTION_COMPILE", "0").strip().lower() in ("1", "true", "yes", "on")
    return bool(flag)


def _pair(M, rep, msk, lam: float, use_compile: bool) -> torch.Tensor:
    """Exact k = 2: f({i, j}) = (rep_i + rep_j) / 2 - lam * M_ij, maximised over all pairs by one argmax."""
    global _compiled_pair
    N = M.shape[-1]
    h = (0.5 * rep).float()
    if msk is not None:
        h.masked_fill_(~msk, float("-inf"))
    flat = None
    if use_compile and _compiled_pair is not False:
        try:
            if _compiled_pair is None:
                _compiled_pair = torch.compile(_pair_scores_argmax_fused, dynamic=True)
            flat = _compiled_pair(M, h, lam)
        except Exception:
            _compiled_pair = False
    if flat is None:
        flat = _pair_scores_argmax(M, h, lam)
    i, j = flat // N, flat % N
    return torch.stack((torch.minimum(i, j), torch.maximum(i, j)), 1)
