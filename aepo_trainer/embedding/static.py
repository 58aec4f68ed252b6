"""Static embeddings: one vector per vocabulary token, distilled once from a sentence-transformers model; a text's
embedding is the mean of its tokens' vectors (`embedding_backend="static"`).

Embedding is nearly the whole cost of offline selection; a transformer on CPU manages tens of texts per second. A
static table (model2vec, MinishLab; sentence-transformers' `StaticEmbedding`) turns a text into a table lookup and a
mean: hundreds of times faster, at the price of word order and context.

Distillation (`distill_static_table`), as model2vec does it:

1. every ordinary vocabulary token (not a special token, not a `[unusedN]`-style placeholder) goes through the
   sentence-transformers model once, alone between the model's special tokens (`[CLS] token [SEP]`), and its
   sentence embedding (the model's own pooling and normalisation) is the token's vector;
2. PCA to `pca_dims` (256) dimensions (centred, SVD in float64, each component's sign fixed so its largest-magnitude
   entry is positive: deterministic);
3. SIF weighting with Zipf-estimated frequencies: the token of rank r (in vocabulary order among the ordinary
   tokens; subword vocabularies are built most-frequent first) gets p(r) proportional to 1 / (r + 2), and its vector
   is scaled by a / (a + p(r)) with a = `sif_coefficient` (1e-4), so frequent tokens count less in the mean
   (Arora et al. 2017's smooth inverse frequency; model2vec's defaults). The weights are folded into the table.

Why the distillation is written here and not taken from model2vec: `model2vec[distill]` pins `transformers<5.4`,
which conflicts with this package's `transformers>=5.23`. model2vec's inference core (`StaticModel`) installs without
that pin, but its `encode` loops over texts in Python (and truncates by characters), so inference is written here
too: one batched call of the fast tokenizer (Rust) per chunk of texts, then `torch.nn.functional.embedding_bag`
(a fused segment mean over the flat ids of the distilled tokens, no `[tokens, D]` intermediate), then L2
normalisation by the caller. A text without any distilled token gets the model's embedding of the empty text (a
zero vector could not be normalised by the selection kernel).
Deterministic: the same table and texts give bit-identical embeddings.

The table is cached beside the ONNX exports (default `<HF datasets cache>/aepo_trainer/static/<key>/`: `table.npy`
[vocabulary + 1, D] float32, the model's `tokenizer.json`, `static_config.json` with the settings and SHA-256 of both
files), keyed by the model (a local directory by its files' sizes and times) and the settings; later runs load it
without loading the transformer. A folder that exists but is incomplete or does not match its checksums is refused
with an error naming it (`StaticTableError`), checked by `aepo` before any paid work; delete it to distil again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = [
    "STATIC_DEFAULTS",
    "StaticEncoder",
    "StaticSettings",
    "StaticTableError",
    "distill_static_table",
    "load_or_distill",
    "static_table_dir",
    "static_table_problem",
]

_TABLE_VERSION = "aepo-static-v2"
_TABLE, _TOKENIZER, _CONFIG = "table.npy", "tokenizer.json", "static_config.json"
#: Vocabulary entries that are placeholders, never produced from text: BERT's `[unused12]`, T5's `<extra_id_3>`.
_PLACEHOLDER = re.compile(r"^(\[unused\d+\]|<unused\d+>|<extra_id_\d+>)$")
#: Texts per tokenizer call: bounds memory (token id lists) while amortising the call.
_CHUNK_TEXTS = 4096


class StaticTableError(ValueError):
    """A cached static table that exists but is incomplete or corrupt."""


@dataclass(frozen=True)
class StaticSettings:
    """How a table is distilled. `vocab_limit` keeps only token ids below it (the others embed as zero vectors):
    for quick tests; None distils the whole vocabulary."""

    pca_dims: int | None = 256
    sif_coefficient: float | None = 1e-4
    vocab_limit: int | None = None
    batch_size: int = 512

    def tag(self) -> str:
        """Short text naming the settings that change the table (part of the cache key and embedder identity)."""
        limit = "" if self.vocab_limit is None else f",vocab{self.vocab_limit}"
        return f"pca{self.pca_dims},sif{self.sif_coefficient}{limit}"


#: The settings `embedding_backend="static"` distils with.
STATIC_DEFAULTS = StaticSettings()


def static_table_dir(model_signature: str, settings: StaticSettings | None = None, export_dir=None) -> str:
    """The cache folder of a table: `<export_dir>/static-<key>`, default `<HF datasets cache>/aepo_trainer/static/<key>`.
    `model_signature` names the weights (`embedding.backends.model_signature`); `settings` default to
    `STATIC_DEFAULTS`."""
    settings = settings or STATIC_DEFAULTS
    key = hashlib.sha256(f"{_TABLE_VERSION}|{settings.tag()}|{model_signature}".encode()).hexdigest()[:24]
    if export_dir is not None:
        return os.path.join(export_dir, f"static-{key}")
    import datasets

    return os.path.join(str(datasets.config.HF_DATASETS_CACHE), "aepo_trainer", "static", key)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ distillation
def _ordinary_token_ids(tokenizer, limit: int | None) -> np.ndarray:
    """Ids of the tokens that get a vector: not special, not a placeholder, below `limit`; in id order."""
    special = set(tokenizer.all_special_ids)
    vocab = tokenizer.get_vocab()
    size = len(tokenizer) if limit is None else min(limit, len(tokenizer))
    ids = [i for token, i in vocab.items() if i < size and i not in special and not _PLACEHOLDER.match(token)]
    return np.array(sorted(ids), dtype=np.int64)


@torch.no_grad()
def _token_vectors(st_model, module, ids: np.ndarray, batch_size: int) -> np.ndarray:
    """Sentence embedding of each token alone between the model's special tokens, [len(ids), D] float64."""
    tokenizer = module.tokenizer
    template = tokenizer("a", add_special_tokens=True)["input_ids"]  # e.g. [CLS, a, SEP]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    if len(plain) != 1 or plain[0] not in template:
        raise ValueError("embedding_backend='static': cannot find where a token goes between the special tokens")
    slot = template.index(plain[0])
    base = torch.tensor(template, dtype=torch.long)
    names = set(tokenizer.model_input_names)
    out = []
    for start in range(0, len(ids), batch_size):
        chunk = torch.from_numpy(ids[start : start + batch_size])
        input_ids = base.repeat(len(chunk), 1)
        input_ids[:, slot] = chunk
        features = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        if "token_type_ids" in names:
            features["token_type_ids"] = torch.zeros_like(input_ids)
        out.append(st_model(features)["sentence_embedding"].double().numpy())
    return np.concatenate(out)


def _pca(vectors: np.ndarray, dims: int | None, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project centred `vectors` on their top `dims` principal components (signs fixed: deterministic), and `other`
    rows with the same centre and components."""
    if dims is None:
        return vectors, other
    mean = vectors.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(vectors - mean, full_matrices=False)
    vt = vt[: min(dims, vt.shape[0])]
    vt *= np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(1)])[:, None]
    return (vectors - mean) @ vt.T, (other - mean) @ vt.T


@torch.no_grad()
def _empty_text_vector(st_model, module) -> np.ndarray:
    """The model's sentence embedding of the empty text (`[CLS] [SEP]`), [1, D] float64."""
    features = dict(module.tokenizer([""], add_special_tokens=True, return_tensors="pt"))
    features = {k: v for k, v in features.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    return st_model(features)["sentence_embedding"].double().numpy()


def _zipf_sif_weights(count: int, coefficient: float | None) -> np.ndarray:
    """a / (a + p(r)), p(r) proportional to 1 / (r + 2) for ranks r = 0..count-1 (model2vec's Zipf estimate)."""
    if coefficient is None:
        return np.ones(count)
    inverse_rank = 1.0 / np.arange(2, count + 2)
    return coefficient / (coefficient + inverse_rank / inverse_rank.sum())


def distill_static_table(st_model, target_dir: str, settings: StaticSettings | None = None) -> str:
    """Distil `st_model` (a loaded CPU `SentenceTransformer` whose first module is a text Transformer with a fast
    tokenizer) into a static table written atomically to `target_dir` (settings default to `STATIC_DEFAULTS`).
    Returns `target_dir`."""
    settings = settings or STATIC_DEFAULTS
    from .backends import transformer_module

    module = transformer_module(st_model)
    tokenizer = module.tokenizer
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ValueError("embedding_backend='static' needs a model with a fast (Rust) tokenizer")
    ids = _ordinary_token_ids(tokenizer, settings.vocab_limit)
    if len(ids) < 2:
        raise ValueError(f"embedding_backend='static': only {len(ids)} ordinary tokens to distil")
    was_training = st_model.training
    st_model.eval()
    try:
        vectors = _token_vectors(st_model, module, ids, settings.batch_size)
        empty = _empty_text_vector(st_model, module)
    finally:
        st_model.train(was_training)
    vectors, empty = _pca(vectors, settings.pca_dims, empty)
    vectors = vectors * _zipf_sif_weights(len(ids), settings.sif_coefficient)[:, None]
    # one row per vocabulary id (special / placeholder rows stay zero), then the row of a text without any distilled
    # token (the model's embedding of the empty text): such a text must not embed as a zero vector, which the
    # selection kernel cannot normalise
    table = np.zeros((len(tokenizer) + 1, vectors.shape[1]), dtype=np.float32)
    table[ids] = vectors.astype(np.float32)
    table[-1] = empty[0].astype(np.float32)

    parent = os.path.dirname(os.path.abspath(target_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".static-", dir=parent)
    try:
        np.save(os.path.join(tmp, _TABLE), table)
        tokenizer.backend_tokenizer.save(os.path.join(tmp, _TOKENIZER))
        config = {
            "version": _TABLE_VERSION,
            "model": getattr(module.auto_model, "name_or_path", None),
            "settings": asdict(settings),
            "vocabulary_size": int(table.shape[0] - 1),
            "dimension": int(table.shape[1]),
            "distilled_tokens": len(ids),
            "sha256": {name: _sha256(os.path.join(tmp, name)) for name in (_TABLE, _TOKENIZER)},
        }
        with open(os.path.join(tmp, _CONFIG), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=1)
        os.chmod(tmp, 0o755)
        try:
            os.replace(tmp, target_dir)  # atomic; fails if another process got there first: keep theirs
        except OSError:
            if not os.path.isdir(target_dir):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target_dir


# ------------------------------------------------------------------------------------------------ loading
def _read_checked(path: str):
    """(table, tokenizer, config) of the table folder `path`, or StaticTableError saying what is wrong."""

    def bad(why):
        return StaticTableError(
            f"the static embedding table at {path} is unusable: {why}. Delete the folder (`rm -r {path}`) and the "
            "next run distils it again from embedding_model"
        )

    config_path = os.path.join(path, _CONFIG)
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        expected = config["sha256"]
        shape = (int(config["vocabulary_size"]) + 1, int(config["dimension"]))
    except FileNotFoundError:
        raise bad(f"{_CONFIG} is missing") from None
    except (ValueError, KeyError, TypeError) as err:
        raise bad(f"{_CONFIG} cannot be read ({type(err).__name__}: {err})") from None
    for name in (_TABLE, _TOKENIZER):
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            raise bad(f"{name} is missing")
        if _sha256(file) != expected.get(name):
            raise bad(f"{name} does not match its SHA-256 in {_CONFIG} (truncated or modified)")
    table = np.load(os.path.join(path, _TABLE), allow_pickle=False)
    if table.shape != shape or table.dtype != np.float32 or not np.isfinite(table).all():
        raise bad(f"{_TABLE} has shape {table.shape} {table.dtype}, expected {shape} float32 and finite")
    from tokenizers import Tokenizer

    return table, Tokenizer.from_file(os.path.join(path, _TOKENIZER)), config


def static_table_problem(path: str) -> str | None:
    """Why the table folder `path` cannot be used, or None (also None when it does not exist yet: it will be
    distilled). Checked before any paid work."""
    if not os.path.exists(path):
        return None
    try:
        _read_checked(path)
    except StaticTableError as err:
        return str(err)
    return None


class StaticEncoder:
    """Embeds texts with a static table: fast-tokenizer ids (no special tokens), then the mean of their rows.

    `encode(texts, batch_size, max_length)` returns `[len(texts), D]` fp32 means over each text's distilled tokens
    (special and placeholder tokens have no vector and do not count), not normalised; a text without any distilled
    token (empty, or only unknown characters) gets the table's last row, the model's embedding of the empty text.
    `max_length` keeps each text's first `max_length` tokens (None: all)."""

    def __init__(self, path: str):
        self.path = path
        table, self.tokenizer, self.config = _read_checked(path)
        self.table = torch.from_numpy(table)
        self.distilled = table[:-1].any(1)  # [vocabulary] bool: ids with a vector
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()

    @property
    def dimension(self) -> int:
        return int(self.table.shape[1])

    def token_ids(self, texts: list[str], max_length: int | None = None) -> list[list[int]]:
        """Each text's token ids, as `encode` averages them."""
        encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        ids = [encoding.ids for encoding in encode(texts, add_special_tokens=False)]
        return ids if max_length is None else [row[:max_length] for row in ids]

    def encode(self, texts: list[str], batch_size: int | None = None, max_length: int | None = None) -> torch.Tensor:
        out = torch.empty(len(texts), self.dimension, dtype=torch.float32)
        for start in range(0, len(texts), _CHUNK_TEXTS):
            ids = self.token_ids(texts[start : start + _CHUNK_TEXTS], max_length)
            lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
            flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
            keep = self.distilled[flat]
            counts = np.bincount(np.repeat(np.arange(len(ids)), lengths)[keep], minlength=len(ids))
            offsets = np.concatenate(([0], np.cumsum(counts)[:-1]))
            means = torch.nn.functional.embedding_bag(
                torch.from_numpy(flat[keep]), self.table, torch.from_numpy(offsets), mode="mean"
            )
            means[torch.from_numpy(counts == 0)] = self.table[-1]
            out[start : start + len(ids)] = means
        return out


def load_or_distill(model_signature: str, load_model, export_dir=None, settings: StaticSettings | None = None):
    """The `StaticEncoder` of the table cached for `model_signature` and `settings` (default `STATIC_DEFAULTS`);
    distilled first (from `load_model()`, called only then) when the folder does not exist."""
    path = static_table_dir(model_signature, settings, export_dir)
    if not os.path.exists(path):
        import time

        start = time.perf_counter()
        logger.info("distilling a static embedding table (once; cached at %s)", path)
        distill_static_table(load_model(), path, settings)
        logger.info("static table distilled in %.1f s", time.perf_counter() - start)
    return StaticEncoder(path)
