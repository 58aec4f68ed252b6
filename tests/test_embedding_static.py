"""The static embedding backend (`aepo_trainer.embedding.static`) on the real bundled all-MiniLM-L6-v2, distilled on
a restricted vocabulary (token ids < 2200: the word pieces of single characters and the ~200 most frequent words) so
each distillation takes seconds: deterministic and cached, the embeddings equal an independent mean of token
vectors, the table rows are the model's own embeddings of each token scaled by the Zipf/SIF weight, the cache keys
change with the backend, and a broken table is refused before anything is paid."""

from __future__ import annotations

import json
import os
import shutil

import datasets
import numpy as np
import pytest
import torch

from aepo_trainer.config import AEPOConfig
from aepo_trainer.data import validation
from aepo_trainer.embedding import Embedder, embed_pools
from aepo_trainer.embedding import static as embedding_static
from aepo_trainer.embedding.static import (
    StaticEncoder,
    StaticSettings,
    StaticTableError,
    distill_static_table,
    static_table_dir,
    static_table_problem,
)

SMALL = StaticSettings(vocab_limit=2200)
TEXTS = [
    "The man was in the house of his father, and he said it was not there.",
    "she had been at the city for a time.",
    "The man was in the house of his father, and he said it was not there.",  # a duplicate: encoded once
    "",  # no token: the model's embedding of the empty text
    "zebra quantum",  # word pieces outside the restricted vocabulary only: the same
    "It was the first time, and it was also the last time: 1, 2, 3!",
]


@pytest.fixture(autouse=True)
def small_defaults(monkeypatch):
    """The backend's defaults, restricted to the small vocabulary (what `Embedder(backend='static')` distils)."""
    monkeypatch.setattr(embedding_static, "STATIC_DEFAULTS", SMALL)


@pytest.fixture(scope="module")
def st_model(minilm_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_path, device="cpu")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, minilm_path, st_model):
    """An export folder holding the table `Embedder(minilm_path, backend='static')` uses (distilled once here)."""
    folder = str(tmp_path_factory.mktemp("static_exports"))
    source = Embedder(minilm_path, backend="static").static_source
    distill_static_table(st_model, static_table_dir(source, SMALL, folder), SMALL)
    return folder


def _embedder(minilm_path, export_dir, **kwargs):
    return Embedder(minilm_path, backend="static", export_dir=export_dir, **kwargs)


def test_distillation_is_deterministic_and_the_second_run_loads(minilm_path, st_model, export_dir, tmp_path):
    embedder = _embedder(minilm_path, export_dir)
    embedder._load = lambda: pytest.fail("the transformer was loaded although the table is cached")
    emb = embedder.encode(TEXTS)
    assert embedder._model is None
    table_dir = embedder.runtime.path
    assert os.path.dirname(table_dir) == export_dir and not os.listdir(minilm_path).count("table.npy")

    again = distill_static_table(st_model, str(tmp_path / "again"), SMALL)  # a fresh distillation: same bytes
    for name in ("table.npy", "tokenizer.json"):
        with open(os.path.join(table_dir, name), "rb") as a, open(os.path.join(again, name), "rb") as b:
            assert a.read() == b.read(), name
    assert torch.equal(Embedder(minilm_path, backend="static", export_dir=export_dir).encode(TEXTS), emb)

    config = json.loads(open(os.path.join(table_dir, "static_config.json")).read())
    assert config["dimension"] == 256 and config["vocabulary_size"] == 30522
    assert config["settings"]["vocab_limit"] == 2200 and 1000 < config["distilled_tokens"] < 1300


def test_missing_table_is_distilled_once_through_the_embedder(minilm_path, tmp_path):
    loads = []
    embedder = _embedder(minilm_path, str(tmp_path))
    real = embedder._load
    embedder._load = lambda: loads.append(1) or real()
    first = embedder.encode(TEXTS[:2])
    assert len(loads) == 1 and os.listdir(tmp_path) == [os.path.basename(embedder.runtime.path)]
    second = _embedder(minilm_path, str(tmp_path))
    second._load = lambda: pytest.fail("distilled twice")
    assert torch.equal(second.encode(TEXTS[:2]), first)


def test_embeddings_equal_an_independent_mean_of_token_vectors(minilm_path, export_dir):
    from transformers import AutoTokenizer

    embedder = _embedder(minilm_path, export_dir)
    emb = embedder.encode(TEXTS)
    table = np.load(os.path.join(embedder.runtime.path, "table.npy")).astype(np.float64)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    for i, text in enumerate(TEXTS):
        ids = [t for t in tokenizer(text, add_special_tokens=False)["input_ids"] if table[t].any()]  # distilled only
        mean = table[ids].mean(0) if ids else table[-1]
        np.testing.assert_allclose(emb[i].numpy(), mean / np.linalg.norm(mean), atol=1e-6, err_msg=text)
    assert emb.shape == (len(TEXTS), 256) and emb.dtype == torch.float32
    assert torch.equal(emb[3], emb[4]) and emb[3].norm() > 0.99  # nothing distilled: the empty text's vector
    assert abs(float(emb[0] @ emb[1])) < 0.99  # different texts, different vectors

    short = _embedder(minilm_path, export_dir, max_length=4).encode([TEXTS[0]])  # the first 4 word pieces only
    head = tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"][:4]
    expected = table[head].mean(0)
    np.testing.assert_allclose(short[0].numpy(), expected / np.linalg.norm(expected), atol=1e-6)


def test_table_rows_are_the_models_token_embeddings_with_zipf_sif_weights(minilm_path, st_model, tmp_path):
    settings = StaticSettings(pca_dims=None, sif_coefficient=1e-3, vocab_limit=2200)
    table = np.load(os.path.join(distill_static_table(st_model, str(tmp_path / "raw"), settings), "table.npy"))
    tokenizer = st_model.tokenizer
    ordinary = [  # the ranks: vocabulary order, without special tokens and [unusedN] placeholders
        i
        for i in range(2200)
        if i not in tokenizer.all_special_ids and not tokenizer.convert_ids_to_tokens(i).startswith("[unused")
    ]
    inverse_rank = 1.0 / np.arange(2, len(ordinary) + 2)
    probability = inverse_rank / inverse_rank.sum()
    for word in ("the", "house", "!"):
        token = tokenizer.convert_tokens_to_ids(word)
        weight = 1e-3 / (1e-3 + probability[ordinary.index(token)])
        reference = st_model.encode([word], convert_to_numpy=True)[0]  # "[CLS] word [SEP]", mean pooled, normalised
        np.testing.assert_allclose(table[token], weight * reference, atol=1e-5, err_msg=word)
    assert not table[tokenizer.convert_tokens_to_ids("[unused5]")].any() and not table[tokenizer.cls_token_id].any()
    assert not table[5000].any()  # beyond the vocabulary limit
    np.testing.assert_allclose(table[-1], st_model.encode([""])[0], atol=1e-5)  # the empty text's row: unweighted


def test_cache_keys_change_with_the_backend(minilm_path, export_dir, demo_pool_rows, tmp_path):
    torch_embedder = Embedder(minilm_path, device="cpu")
    static = _embedder(minilm_path, export_dir)
    assert static.identity == torch_embedder.identity + ":backend=static(pca256,sif0.0001,vocab2200)"
    assert _embedder(minilm_path, export_dir, max_length=64).identity.endswith(":max_length=64")
    ds = datasets.Dataset.from_list(
        [{"completions": [c[:80] for c in r["completions"][:3]]} for r in demo_pool_rows[:2]]
    )
    first = embed_pools(ds, embedder=static, cache_dir=str(tmp_path))
    torch_rows = embed_pools(ds, embedder=torch_embedder, cache_dir=str(tmp_path))["embeddings"]
    assert np.asarray(first["embeddings"][0]).shape == (3, 256) and np.asarray(torch_rows[0]).shape == (3, 384)
    again = _embedder(minilm_path, export_dir)
    again.encode_pools = lambda *a, **k: pytest.fail("the static cache entry was not reused")
    assert embed_pools(ds, embedder=again, cache_dir=str(tmp_path))["embeddings"] == first["embeddings"]


@pytest.mark.parametrize("damage", ["truncate", "delete_table", "bad_config"])
def test_a_broken_table_is_refused_naming_the_folder(minilm_path, export_dir, tmp_path, damage):
    source = _embedder(minilm_path, export_dir).runtime.path
    broken = str(tmp_path / "broken")
    shutil.copytree(source, broken)
    if damage == "truncate":
        with open(os.path.join(broken, "table.npy"), "r+b") as f:
            f.truncate(os.path.getsize(f.name) // 2)
    elif damage == "delete_table":
        os.remove(os.path.join(broken, "table.npy"))
    else:
        with open(os.path.join(broken, "static_config.json"), "w") as f:
            f.write("{not json")
    with pytest.raises(StaticTableError, match=f"static embedding table at {broken} is unusable"):
        StaticEncoder(broken)
    assert "rm -r" in static_table_problem(broken)
    assert static_table_problem(str(tmp_path / "absent")) is None  # not there yet: it will be distilled
    assert static_table_problem(source) is None


def test_aepo_select_refuses_a_corrupt_table_before_reading_or_paying(
    minilm_path, export_dir, demo_pool_rows, tmp_path, monkeypatch, capsys
):
    from aepo_trainer.cli import main

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    table = static_table_dir(Embedder(minilm_path, backend="static").static_source)
    shutil.copytree(_embedder(minilm_path, export_dir).runtime.path, table)
    with open(os.path.join(table, "table.npy"), "r+b") as f:
        f.seek(os.path.getsize(f.name) - 64)  # the last row: rows 1-998 are zeros already
        f.write(b"\x7f" * 64)
    pools = tmp_path / "pools.jsonl"
    pools.write_text("".join(json.dumps(row) + "\n" for row in demo_pool_rows[:4]))
    out = tmp_path / "pairs.jsonl"
    args = ["select", "--input", str(pools), "--output", str(out), "--embedding_backend", "static"]
    assert main([*args, "--embedding_model", minilm_path, "--annotator", "dataset_scores"]) == 2
    err = capsys.readouterr().err
    assert "embedding_backend" in err and f"static embedding table at {table} is unusable" in err
    assert "does not match its SHA-256" in err
    assert not out.exists() and not os.path.exists(f"{out}.annotations.sqlite")


def test_static_backend_settings_are_checked(tmp_path, minilm_path):
    config = AEPOConfig(output_dir=str(tmp_path), bf16=False, report_to="none", embedding_backend="static")
    assert Embedder.from_config(config).backend == "static"
    with pytest.raises(ValueError, match="embedding_quantized=True is invalid"):
        AEPOConfig(output_dir=str(tmp_path), report_to="none", embedding_backend="static", embedding_quantized=True)
    with pytest.raises(ValueError, match="embedding_quantized=True needs embedding_backend 'onnx' or 'openvino'"):
        Embedder(minilm_path, backend="static", quantized=True)
    config = AEPOConfig(
        output_dir=str(tmp_path), bf16=False, report_to="none", embedding_backend="static", embedding_model=minilm_path
    )
    assert validation.annotator_problems(config, need_embedder=True, check_annotator=False) == []
