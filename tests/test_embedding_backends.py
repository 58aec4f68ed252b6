"""The CPU embedding backends (`aepo_trainer.embedding.backends`) on the real bundled all-MiniLM-L6-v2: the ONNX
export run by ONNX Runtime and OpenVINO matches the torch model, the int8 export stays close, the settings key the
cache, `max_length` truncates, and a bad or unavailable backend is refused before anything is loaded."""

from __future__ import annotations

import importlib.util
import os

import datasets
import pytest
import torch

from aepo_trainer.config import AEPOConfig
from aepo_trainer.data import validation
from aepo_trainer.embedding import Embedder, embed_pools

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

TEXTS = [
    "The cat sat on the mat.",
    "Preference optimization needs pairs of a better and a worse response to the same prompt.",
    "hello",
    "To bake bread, mix flour, water, salt and yeast, let it rise for two hours, shape it and bake at 230 C. " * 6,
    "A dog runs in the park.",
]
LONG = " ".join(["the quick brown fox jumps over the lazy dog near a river"] * 12)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("onnx_exports"))


@pytest.fixture(scope="module")
def torch_embedder(minilm_path):
    return Embedder(minilm_path, device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def reference(torch_embedder):
    return torch_embedder.encode(TEXTS)


def _embedder(minilm_path, export_dir, **kwargs):
    return Embedder(minilm_path, device="cpu", batch_size=2, export_dir=export_dir, **kwargs)


def _config(tmp_path, **kwargs):
    return AEPOConfig(output_dir=str(tmp_path), bf16=False, report_to="none", **kwargs)


def cosines(a, b):
    return (a * b).sum(-1)  # rows are unit norm


def test_onnx_matches_torch_and_export_is_cached_outside_the_model(minilm_path, export_dir, reference, monkeypatch):
    onnx = _embedder(minilm_path, export_dir, backend="onnx")
    emb = onnx.encode(TEXTS)  # batch_size 2 over mixed lengths: the length sort and the restored order are exercised
    assert emb.shape == reference.shape and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)
    assert cosines(emb, reference).min() >= 0.9999
    assert not [f for f in os.listdir(minilm_path) if f.endswith(".onnx")]  # nothing written next to the model
    assert os.path.dirname(onnx.runtime.path).startswith(export_dir)

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    again = _embedder(minilm_path, export_dir, backend="onnx").encode(TEXTS[:2])  # loads the cached file
    assert torch.allclose(again, emb[:2], atol=1e-6)


def test_openvino_matches_torch(minilm_path, export_dir, reference):
    pytest.importorskip("openvino")
    emb = _embedder(minilm_path, export_dir, backend="openvino").encode(TEXTS)
    assert cosines(emb, reference).min() >= 0.999


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_int8_export_stays_close(minilm_path, export_dir, reference, backend):
    pytest.importorskip(backend if backend == "openvino" else "onnxruntime")
    quantized = _embedder(minilm_path, export_dir, backend=backend, quantized=True)
    emb = quantized.encode(TEXTS)
    cos = cosines(emb, reference)
    assert os.path.basename(quantized.runtime.path) == "model_qint8.onnx"
    assert (
        os.path.getsize(quantized.runtime.path)
        < os.path.getsize(quantized.runtime.path[: -len("_qint8.onnx")] + ".onnx") / 3
    )
    # measured 0.980-0.995 on these texts: int8 moves the embeddings a little, never far
    assert cos.min() >= 0.97 and cos.mean() >= 0.985
    assert cos.min() < 0.9999  # really the quantized model


def test_identity_names_backend_quantization_and_max_length(minilm_path, export_dir):
    plain = _embedder(minilm_path, export_dir)
    assert plain.identity == f"sentence-transformers:{minilm_path}:normalized:fp32"  # existing torch caches stay valid
    settings = [
        {},
        {"backend": "onnx"},
        {"backend": "onnx", "quantized": True},
        {"backend": "openvino"},
        {"backend": "openvino", "quantized": True},
        {"max_length": 64},
        {"backend": "onnx", "max_length": 64},
    ]
    if importlib.util.find_spec("openvino") is None:
        settings = [s for s in settings if s.get("backend") != "openvino"]
    identities = [_embedder(minilm_path, export_dir, **s).identity for s in settings]
    assert len(set(identities)) == len(settings)
    assert identities[2].endswith(":backend=onnx:int8") and identities[-1].endswith(":backend=onnx:max_length=64")


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_max_length_truncates(minilm_path, export_dir, torch_embedder, backend):
    tokenizer = torch_embedder.model.tokenizer
    short = _embedder(minilm_path, export_dir, backend=backend, max_length=8)
    full = torch_embedder.encode([LONG])
    cut = short.encode([LONG])
    # 8 tokens = [CLS] + the first 6 word pieces + [SEP]: the embedding is that of the first 6 word pieces' text
    head = tokenizer.convert_tokens_to_string(tokenizer.tokenize(LONG)[:6])
    assert len(tokenizer(LONG)["input_ids"]) > 100
    assert cosines(cut, torch_embedder.encode([head])).item() >= 0.9999
    assert cosines(cut, full).item() < 0.95
    assert cosines(short.encode(["hello"]), torch_embedder.encode(["hello"])).item() >= 0.9999  # short texts unchanged


def test_embed_pools_cache_does_not_mix_backends(minilm_path, export_dir, demo_pool_rows, tmp_path):
    rows = [{"completions": [c[:120] for c in r["completions"][:3]]} for r in demo_pool_rows[:2]]
    ds = datasets.Dataset.from_list(rows)
    runs = {}
    for name, kwargs in [
        ("torch", {}),
        ("onnx", {"backend": "onnx"}),
        ("int8", {"backend": "onnx", "quantized": True}),
    ]:
        embedder = _embedder(minilm_path, export_dir, **kwargs)
        calls = []
        inner = embedder.encode_pools
        embedder.encode_pools = lambda pools, batch_size=None, inner=inner, calls=calls: (
            calls.append(1) or inner(pools, batch_size)
        )
        runs[name] = (embed_pools(ds, embedder=embedder, cache_dir=str(tmp_path))["embeddings"], calls)
        assert calls, f"{name}: read another backend's cache entry"
        embed_pools(ds, embedder=embedder, cache_dir=str(tmp_path))
        assert len(calls) == 1, f"{name}: its own cache entry was not reused"
    torch_emb, int8_emb = torch.tensor(runs["torch"][0]), torch.tensor(runs["int8"][0])
    assert cosines(torch.tensor(runs["onnx"][0]), torch_emb).min() >= 0.9999
    assert not torch.allclose(int8_emb, torch_emb, atol=1e-4)


def test_unknown_backend_and_bad_settings_are_refused(tmp_path, minilm_path):
    with pytest.raises(ValueError, match="embedding_backend='tensorrt' is invalid"):
        _config(tmp_path, embedding_backend="tensorrt")
    with pytest.raises(ValueError, match="embedding_quantized=True is invalid"):
        _config(tmp_path, embedding_quantized=True)  # torch has no int8 export
    with pytest.raises(ValueError, match="embedding_max_length=0 is invalid"):
        _config(tmp_path, embedding_max_length=0)
    with pytest.raises(ValueError, match="unknown embedding backend 'tensorrt'"):
        Embedder(minilm_path, backend="tensorrt")
    config = _config(tmp_path, embedding_backend="onnx", embedding_max_length=32)
    embedder = Embedder.from_config(config)
    assert (embedder.backend, embedder.quantized, embedder.max_length) == ("onnx", False, 32)


def test_missing_runtime_is_reported_before_loading(tmp_path, minilm_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    config = _config(tmp_path, embedding_backend="onnx", embedding_model=minilm_path)
    problems = validation.annotator_problems(config, need_embedder=True, check_annotator=False)
    assert [p.column for p in problems] == ["embedding_backend"]
    assert "onnxruntime" in problems[0].message and "fast-cpu" in problems[0].message
    assert validation.annotator_problems(config, need_embedder=False, check_annotator=False) == []
    with pytest.raises(ValueError, match="embedding_backend='onnx' needs the package"):
        Embedder(minilm_path, backend="onnx")


def test_config_fields_reach_the_cli_and_trainer_embedders(tmp_path, minilm_path, monkeypatch):
    """`aepo select`/`aepo stats` (`pool_embeddings`) and the trainer build their embedder from the config fields."""
    from types import SimpleNamespace

    from aepo_trainer.cli.pool_stages import pool_embeddings
    from aepo_trainer.embedding import embedder as embedding
    from aepo_trainer.trainer import AEPOTrainer

    seen = []

    def capture(dataset, completions_column="completions", embedder=None, *args, **kwargs):
        seen.append(embedder)
        raise KeyboardInterrupt  # stop before anything is embedded

    monkeypatch.setattr(embedding, "embed_pools", capture)
    config = _config(
        tmp_path,
        embedding_model=minilm_path,
        embedding_backend="onnx",
        embedding_quantized=True,
        embedding_max_length=48,
    )
    with pytest.raises(KeyboardInterrupt):
        pool_embeddings([{"completions": ["a", "b"]}], config)
    with pytest.raises(KeyboardInterrupt):
        AEPOTrainer._aepo_embed(SimpleNamespace(_aepo_embedder=None), datasets.Dataset.from_list([{"x": 1}]), config)
    assert len(seen) == 2
    for embedder in seen:
        assert (embedder.backend, embedder.quantized, embedder.max_length) == ("onnx", True, 48)
        assert embedder.identity.endswith(":backend=onnx:int8:max_length=48") and embedder._model is None
