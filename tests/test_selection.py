"""Tests of the fused AEPO selection kernel (`aepo_trainer.selection`)."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math

import pytest
import torch

from aepo_trainer.selection import SEARCHES, STRATEGIES, SelectionResult, prompt_key, search, select_subsets

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def clustered_pools(B, N, D=8, seed=0, clusters=3, noise=1.2):
    """Pools with a few clusters: hard enough that greedy is often not optimal."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(B, clusters, D, generator=g)
    assign = torch.randint(0, clusters, (B, N), generator=g)
    return centers.gather(1, assign[..., None].expand(B, N, D)) + noise * torch.randn(B, N, D, generator=g)


def objective_fp64(E, S, valid_idx, lam):
    """f(S) of METHODS.md in float64 from raw embeddings (self-similarity excluded)."""
    E = torch.nn.functional.normalize(E.double(), dim=-1)
    M = E @ E.T
    k, n = len(S), len(valid_idx)
    rep = sum(float(M[i, j]) for i in S for j in valid_idx if j != i) / (k * (n - 1))
    pair = sum(float(M[i, j]) for i in S for j in S if i != j) / (k * (k - 1))
    return rep - lam * pair, rep, 1.0 - pair


def brute_force(E, mask, k, lam):
    """Per row: (best objective, lexicographically first optimal subset, second-best objective)."""
    out = []
    for b in range(E.shape[0]):
        idx = [i for i in range(E.shape[1]) if mask is None or bool(mask[b, i])]
        scored = sorted(
            ((objective_fp64(E[b], S, idx, lam)[0], S) for S in itertools.combinations(idx, k)), key=lambda t: -t[0]
        )
        out.append((scored[0][0], scored[0][1], scored[1][0] if len(scored) > 1 else -math.inf))
    return out


# ------------------------------------------------------------------------------------------------ exactness
@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0, 2.0])
def test_k2_equals_brute_force(lam):
    E = torch.randn(24, 9, 16, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(24, 9, dtype=torch.bool)
    mask[::3, 6:] = False  # ragged rows
    res = select_subsets(E, 2, lam, mask=mask)
    for b, (best, S, second) in enumerate(brute_force(E, mask, 2, lam)):
        got = tuple(res.indices[b].tolist())
        obj, rep, div = objective_fp64(E[b], got, [i for i in range(9) if mask[b, i]], lam)
        assert obj == pytest.approx(best, abs=1e-6)
        assert float(res.objective[b]) == pytest.approx(obj, abs=1e-5)
        assert float(res.representativeness[b]) == pytest.approx(rep, abs=1e-5)
        assert float(res.diversity[b]) == pytest.approx(div, abs=1e-5)
        if best - second > 1e-5:
            assert got == S


def test_exhaustive_equals_brute_force():
    E = clustered_pools(12, 9, seed=2)
    for k in (3, 4):
        res = select_subsets(E, k, 1.0, search="exhaustive")
        for b, (best, S, second) in enumerate(brute_force(E, None, k, 1.0)):
            assert float(res.objective[b]) == pytest.approx(best, abs=1e-5)
            if best - second > 1e-5:
                assert tuple(res.indices[b].tolist()) == S


@pytest.mark.parametrize("N, k, lam, seeds, rate", [(12, 4, 1.0, (10, 11), 0.95), (14, 4, 0.5, (20,), 0.9)])
def test_greedy_local_search_never_below_greedy_and_matches_exhaustive_rate(N, k, lam, seeds, rate):
    # Measured on these pools (100 per seed): greedy alone reaches the exhaustive optimum on 2-5% of them; greedy +
    # 20 rounds of local search on 100% (N=12, k=4, lambda=1) and 97-98% (N=14, k=4, lambda=0.5).
    hits = total = 0
    for seed in seeds:
        E = clustered_pools(100, N, seed=seed)
        plain = select_subsets(E, k, lam, search="greedy", local_search_rounds=0)
        ls = select_subsets(E, k, lam, search="greedy")
        ex = select_subsets(E, k, lam, search="exhaustive")
        assert bool((ls.objective >= plain.objective).all())
        assert bool((ex.objective >= ls.objective - 1e-6).all())
        hits += int((ls.objective >= ex.objective - 1e-6).sum())
        total += E.shape[0]
    assert hits / total >= rate


def test_auto_search_uses_exhaustive_for_small_pools():
    E = clustered_pools(30, 10, seed=3)
    auto = select_subsets(E, 4, 1.0)  # C(10, 4) = 210 <= exhaustive_limit
    ex = select_subsets(E, 4, 1.0, search="exhaustive")
    assert torch.equal(auto.indices, ex.indices)
    greedy_forced = select_subsets(E, 4, 1.0, exhaustive_limit=0, local_search_rounds=0)
    assert torch.equal(greedy_forced.indices, select_subsets(E, 4, 1.0, search="greedy", local_search_rounds=0).indices)


def test_reported_terms_are_consistent():
    E = clustered_pools(20, 30, D=16, seed=4)
    for k, lam in ((2, 1.0), (5, 0.7)):
        r = select_subsets(E, k, lam)
        assert torch.allclose(r.objective, r.representativeness - lam * (1 - r.diversity), atol=1e-6)
        for b in (0, 7):
            obj, rep, div = objective_fp64(E[b], r.indices[b].tolist(), list(range(30)), lam)
            assert float(r.objective[b]) == pytest.approx(obj, abs=1e-5)
            assert float(r.diversity[b]) == pytest.approx(div, abs=1e-5)


# ------------------------------------------------------------------------------------------------ shapes, masks, order
def test_result_shape_order_and_dtypes():
    E = torch.randn(5, 20, 8)
    r = select_subsets(E, 4, 1.0)
    assert isinstance(r, SelectionResult) and len(r) == 5
    assert r.indices.shape == (5, 4) and r.indices.dtype == torch.long
    assert r.valid.shape == (5, 4) and bool(r.valid.all())
    assert r.objective.shape == r.representativeness.shape == r.diversity.shape == (5,)
    assert bool((r.indices[:, 1:] > r.indices[:, :-1]).all())  # sorted ascending, distinct
    assert r.tolist() == r.indices.tolist()


@pytest.mark.parametrize("strategy", ["aepo", "random", "kmedoids", "representativeness"])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_ragged_rows_match_unpadded_rows(strategy, k):
    """Padding never gets selected and a row's selection is the same as when it is alone and unpadded."""
    g = torch.Generator().manual_seed(5)
    E = torch.randn(6, 24, 16, generator=g)
    sizes = [24, 5, 17, 9, 24, 12]
    mask = torch.arange(24)[None, :] < torch.tensor(sizes)[:, None]
    E[~mask] = float("nan")  # padding content must be ignored
    keys = torch.tensor([prompt_key(f"prompt {i}") for i in range(6)])
    batch = select_subsets(E, k, 1.0, mask=mask, strategy=strategy, row_keys=keys, exhaustive_limit=0)
    for b, n in enumerate(sizes):
        alone = select_subsets(
            E[b : b + 1, :n], k, 1.0, strategy=strategy, row_keys=keys[b : b + 1], exhaustive_limit=0
        )
        assert batch.indices[b].tolist() == alone.indices[0].tolist()
        assert float(batch.objective[b]) == pytest.approx(float(alone.objective[0]), abs=1e-6)
        assert int(batch.indices[b].max()) < n


def test_arbitrary_mask_positions():
    E = torch.randn(3, 10, 8)
    mask = torch.tensor([[i % 2 == 0 for i in range(10)]] * 3)
    r = select_subsets(E, 3, 1.0, mask=mask, search="greedy")
    assert bool(mask.gather(1, r.indices).all())


def test_determinism_and_seed():
    E = clustered_pools(40, 40, D=16, seed=6)
    a = select_subsets(E, 4, 1.0, exhaustive_limit=0, seed=3)
    b = select_subsets(E, 4, 1.0, exhaustive_limit=0, seed=3)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.objective, b.objective)
    r1 = select_subsets(E, 4, strategy="random", seed=1)
    r2 = select_subsets(E, 4, strategy="random", seed=2)
    assert not torch.equal(r1.indices, r2.indices)
    assert torch.equal(r1.indices, select_subsets(E, 4, strategy="random", seed=1).indices)


def test_row_keys_make_selection_batch_invariant():
    E = clustered_pools(16, 30, D=16, seed=7)
    keys = torch.tensor([prompt_key(f"p{i}") for i in range(16)])
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    for strategy in ("aepo", "random"):
        full = select_subsets(E, 4, 1.0, strategy=strategy, row_keys=keys, exhaustive_limit=0)
        shuffled = select_subsets(E[perm], 4, 1.0, strategy=strategy, row_keys=keys[perm], exhaustive_limit=0)
        assert torch.equal(full.indices[perm], shuffled.indices)


def test_chunking_gives_identical_results():
    E = clustered_pools(9, 20, D=8, seed=8)
    for k in (2, 4):
        one = select_subsets(E, k, 1.0, exhaustive_limit=0)
        many = select_subsets(E, k, 1.0, exhaustive_limit=0, max_chunk_bytes=1)  # one prompt per chunk
        assert torch.equal(one.indices, many.indices)
        assert torch.equal(one.objective, many.objective)


def test_large_pool_n1024():
    E = torch.randn(3, 1024, 32, generator=torch.Generator().manual_seed(9))
    mask = torch.ones(3, 1024, dtype=torch.bool)
    mask[1, 700:] = False
    for k in (2, 4):
        r = select_subsets(E, k, 1.0, mask=mask, max_chunk_bytes=16 * 2**20)
        assert r.indices.shape == (3, k) and int(r.indices[1].max()) < 700


# ------------------------------------------------------------------------------------------------ dtypes and devices
def test_fp32_bf16_fp16_agreement():
    E = torch.nn.functional.normalize(torch.randn(64, 32, 64, generator=torch.Generator().manual_seed(10)), dim=-1)
    ref = select_subsets(E, 2, 1.0)
    for dtype in (torch.bfloat16, torch.float16):
        low = select_subsets(E.to(dtype), 2, 1.0)
        agree = (low.indices == ref.indices).all(1).float().mean().item()
        assert agree >= 0.8
        # the low-precision choice is near-optimal under the fp32 objective
        rescored = torch.tensor(
            [objective_fp64(E[b], low.indices[b].tolist(), list(range(32)), 1.0)[0] for b in range(64)]
        )
        assert float((ref.objective.double() - rescored).max()) < 0.02
        assert torch.allclose(low.objective, ref.objective, atol=0.02)


def test_scale_invariance_unnormalised_input():
    E = clustered_pools(10, 16, D=8, seed=11)
    scaled = E * torch.rand(10, 16, 1) * 50 + 0.0
    a = select_subsets(E, 3, 1.0, search="exhaustive")
    b = select_subsets(scaled, 3, 1.0, search="exhaustive")
    assert torch.equal(a.indices, b.indices)
    assert torch.allclose(a.objective, b.objective, atol=1e-5)


@cuda_only
@pytest.mark.parametrize("strategy", ["aepo", "random", "kmedoids", "west_of_n"])
def test_cpu_gpu_parity(strategy):
    E = clustered_pools(64, 48, D=32, seed=12)
    keys = torch.tensor([prompt_key(str(i)) for i in range(64)])
    for k in (2, 4):
        cpu = select_subsets(E, k, 1.0, strategy=strategy, row_keys=keys, exhaustive_limit=0)
        gpu = select_subsets(E.cuda(), k, 1.0, strategy=strategy, row_keys=keys.cuda(), exhaustive_limit=0)
        assert gpu.indices.is_cuda
        assert torch.equal(cpu.indices, gpu.indices.cpu())
        assert torch.allclose(cpu.objective, gpu.objective.cpu(), atol=1e-5)


# ------------------------------------------------------------------------------------------------ strategies
def test_representativeness_is_top_k_and_lambda_zero():
    E = clustered_pools(20, 15, seed=13)
    r = select_subsets(E, 4, 1.0, strategy="representativeness")
    assert torch.equal(r.indices, select_subsets(E, 4, 0.0).indices)
    assert torch.allclose(r.objective, r.representativeness)
    for b in range(5):
        En = torch.nn.functional.normalize(E[b].double(), dim=-1)
        M = En @ En.T
        rep = (M.sum(1) - M.diagonal()) / 14
        assert sorted(r.indices[b].tolist()) == sorted(rep.argsort(descending=True)[:4].tolist())


def test_random_strategy_is_uniform_and_valid():
    E = torch.randn(2000, 6, 4)
    mask = torch.ones(2000, 6, dtype=torch.bool)
    mask[:, 5] = False
    r = select_subsets(E, 2, strategy="random", mask=mask)
    assert int(r.indices.max()) < 5 and bool((r.indices[:, 0] < r.indices[:, 1]).all())
    counts = torch.bincount(r.indices.flatten(), minlength=6).float()
    assert counts[5] == 0
    assert torch.allclose(counts[:5] / counts[:5].sum(), torch.full((5,), 0.2), atol=0.03)


def test_west_of_n_returns_whole_pool():
    E = torch.randn(3, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 1, 0], [0, 0, 1, 1, 0, 0]], dtype=torch.bool)
    r = select_subsets(E, 2, 0.5, mask=mask, strategy="west_of_n")
    assert r.indices.tolist() == [[0, 1, 2, 3, 4, 5], [0, 2, 4, -1, -1, -1], [2, 3, -1, -1, -1, -1]]
    assert r.valid.tolist() == (r.indices >= 0).tolist()
    assert r.tolist() == [[0, 1, 2, 3, 4, 5], [0, 2, 4], [2, 3]]
    for b in range(3):
        idx = r.tolist()[b]
        obj, rep, div = objective_fp64(E[b], idx, idx, 0.5)
        assert float(r.objective[b]) == pytest.approx(obj, abs=1e-5)
        assert float(r.representativeness[b]) == pytest.approx(rep, abs=1e-5)
        assert float(r.diversity[b]) == pytest.approx(div, abs=1e-5)


def test_kmedoids_is_deterministic_and_beats_random_on_coverage():
    E = clustered_pools(50, 30, D=8, seed=14, clusters=4, noise=0.3)
    km = select_subsets(E, 4, strategy="kmedoids")
    assert torch.equal(km.indices, select_subsets(E, 4, strategy="kmedoids").indices)
    assert bool((km.indices[:, 1:] > km.indices[:, :-1]).all())

    def coverage_cost(indices):
        En = torch.nn.functional.normalize(E, dim=-1)
        M = En @ En.transpose(1, 2)
        d = 1 - M.gather(1, indices[:, :, None].expand(-1, -1, 30))
        return d.min(1).values.sum(1)

    rnd = select_subsets(E, 4, strategy="random")
    assert float(coverage_cost(km.indices).mean()) < float(coverage_cost(rnd.indices).mean())


def test_exact_duplicates_resolve_to_lowest_index():
    """Duplicates are legal candidates with identical scores: lambda > 0 penalises taking two copies, and whenever
    copies are selected they are the lowest-index ones (also after the randomised local search)."""
    g = torch.Generator().manual_seed(15)
    E = torch.randn(16, 10, 8, generator=g)
    E[:, 2] = E[:, 7] = E[:, 9] = E.mean(1)  # three copies of the most representative candidate
    group = [2, 7, 9]
    seen = 0
    cases = [(2, lam, "auto", "aepo") for lam in (0.0, 0.3, 1.0)]
    cases += [(k, lam, s, "aepo") for k in (3, 4) for lam in (0.0, 0.3) for s in ("exhaustive", "greedy")]
    cases += [(k, 1.0, "auto", "kmedoids") for k in (2, 4)]
    for k, lam, search_, strategy in cases:
        r = select_subsets(E, k, lam, search=search_, strategy=strategy, exhaustive_limit=0)
        for row in r.indices.tolist():
            chosen = [i for i in row if i in group]
            assert chosen == group[: len(chosen)], (k, lam, search_, strategy, row)
            seen += len(chosen)
    assert seen > 30


def test_name_lists_have_one_source():
    """Config, kernel, pairing, CLI and losses read their name lists from `aepo_trainer.choices` (no copies)."""
    from aepo_trainer import choices
    from aepo_trainer.cli import stats
    from aepo_trainer.config import AEPOConfig
    from aepo_trainer.reduction import pairing
    from aepo_trainer.selection import kernel
    from aepo_trainer.trainer import losses

    assert kernel.STRATEGIES is choices.SELECTION_STRATEGIES is STRATEGIES and SEARCHES is choices.SELECTION_SEARCHES
    assert pairing.PAIRING_RULES is choices.PAIRING_RULES and losses.RPO_LOSS_TYPES is choices.RPO_LOSS_TYPES
    assert stats.STRATEGIES is choices.SELECTION_STRATEGIES
    fields = {f.name: f for f in dataclasses.fields(AEPOConfig)}
    assert fields["selection_strategy"].metadata["choices"] == list(choices.SELECTION_STRATEGIES)
    assert fields["annotator"].metadata["choices"] == list(choices.ANNOTATORS)
    assert fields["pairing_rule"].metadata["choices"] == list(choices.PAIRING_RULES)


# ------------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(k=1), "k=1 but at least 2"),
        (dict(k=2.0), "k must be an int"),
        (dict(k=2, strategy="best"), "unknown strategy 'best'"),
        (dict(k=2, search="beam"), "unknown search 'beam'"),
        (dict(k=2, diversity_weight=-1.0), "diversity_weight must be a finite number >= 0"),
        (dict(k=2, diversity_weight=float("nan")), "diversity_weight"),
        (dict(k=2, local_search_rounds=-1), "local_search_rounds"),
        (dict(k=2, mask=torch.ones(4, 5, dtype=torch.bool)), "mask has shape [4, 5]"),
        (dict(k=2, mask=torch.ones(4, 6)), "mask must be a bool tensor"),
        (dict(k=2, row_keys=torch.arange(3)), "row_keys must be an integer tensor of shape [B] = [4]"),
        (dict(k=20, search="exhaustive"), "row 0 has 6 valid candidate(s) but k=20"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match="select_subsets: .*" + _re(message)):
        select_subsets(torch.randn(4, 6, 8), **kwargs)


def _re(text):
    import re

    return re.escape(text)


def test_bad_embeddings():
    with pytest.raises(ValueError, match=r"shape \[B, N, D\]"):
        select_subsets(torch.randn(6, 8), 2)
    with pytest.raises(ValueError, match="floating-point"):
        select_subsets(torch.ones(2, 6, 8, dtype=torch.long), 2)
    E = torch.randn(5, 6, 8)
    E[3, 4, 0] = float("nan")
    with pytest.raises(ValueError, match="row 3 candidate 4 has a non-finite embedding"):
        select_subsets(E, 2)
    E = torch.randn(5, 6, 8)
    E[2, 1, 5] = float("inf")
    with pytest.raises(ValueError, match="row 2 candidate 1 has a non-finite embedding"):
        select_subsets(E, 2, max_chunk_bytes=1)  # the row index is global across chunks
    E = torch.randn(5, 6, 8)
    E[4, 0] = 0.0
    with pytest.raises(ValueError, match="row 4 candidate 0 has an all-zero embedding"):
        select_subsets(E, 2)


def test_bad_masks():
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[3, 1:] = False
    with pytest.raises(ValueError, match=r"row 3 has 1 valid candidate\(s\) but k=2"):
        select_subsets(torch.randn(4, 6, 8), 2, mask=mask)
    mask[3] = False
    with pytest.raises(ValueError, match=r"row 3 has no valid candidates \(all padding\)"):
        select_subsets(torch.randn(4, 6, 8), 2, mask=mask)
    with pytest.raises(ValueError, match="west_of_n"):
        select_subsets(
            torch.randn(4, 6, 8), 2, mask=torch.tensor([[1, 0, 0, 0, 0, 0]] * 4).bool(), strategy="west_of_n"
        )


def test_exhaustive_refuses_huge_enumeration():
    with pytest.raises(ValueError, match="search='exhaustive' would enumerate"):
        select_subsets(torch.randn(1, 200, 4), 6, search="exhaustive")


def test_empty_batch():
    r = select_subsets(torch.randn(0, 5, 8), 2)
    assert r.indices.shape == (0, 2) and r.objective.shape == (0,)


# ------------------------------------------------------------------------------------------------ RNG
def test_hash_matches_pure_python_and_is_int64_safe():
    keys = torch.tensor([0, 1, -1, 2**63 - 1, -(2**63), prompt_key("hello")])
    got = search.hash32(123456789012345, keys, 2, 7, torch.arange(3))
    for b, key in enumerate(keys.tolist()):
        for p in range(3):
            assert int(got[b, p]) == search.hash32_reference(123456789012345, key, 2, 7, p)
    assert int(got.min()) >= 0 and int(got.max()) < 2**32


def test_prompt_key():
    k = prompt_key("What is AEPO?")
    assert k == prompt_key("What is AEPO?") and 0 <= k < 2**63
    assert k != prompt_key("What is AEPO")
    # sha256 of the canonical JSON '""' (hand-computed), first 8 bytes, top bit cleared
    assert prompt_key("") == int.from_bytes(hashlib.sha256(b'""').digest()[:8], "big") & (2**63 - 1)
    messages = [{"role": "user", "content": "hi"}]
    assert prompt_key(messages) == prompt_key([{"content": "hi", "role": "user"}])  # key order does not matter


# ------------------------------------------------------------------------------------------------ runtime knobs
def test_selection_leaves_global_torch_state_alone_and_compile_falls_back(monkeypatch):
    from aepo_trainer.selection import kernel as selection

    def forbidden(*args, **kwargs):
        raise AssertionError("selection changed a process-wide torch setting")

    E = clustered_pools(8, 20, D=8, seed=16)
    with monkeypatch.context() as m:
        for name in ("set_num_threads", "set_float32_matmul_precision", "set_num_interop_threads"):
            m.setattr(torch, name, forbidden)
        eager = select_subsets(E, 2, 1.0)
        select_subsets(E, 4, 1.0, exhaustive_limit=0)
        select_subsets(E, 4, 1.0, strategy="kmedoids")

    def broken_compile(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(selection, "_compiled_pair", None)
    assert torch.equal(select_subsets(E, 2, 1.0, compile=True).indices, eager.indices)
    assert selection._compiled_pair is False  # eager from then on
