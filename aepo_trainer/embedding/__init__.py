"""Embedding the candidates: `embedder` (`Embedder`, `embed_pools`, the cache), `backends` (ONNX/OpenVINO on CPU) and
`static` (a token table distilled from the model: `embedding_backend="static"`).

Public names are imported lazily, so `import aepo_trainer.embedding` does not import torch.
"""

from __future__ import annotations

from .._utils.lazy import lazy_getattr

_EXPORTS = {
    "DEFAULT_EMBEDDING_MODEL": "aepo_trainer.embedding.embedder",
    "Embedder": "aepo_trainer.embedding.embedder",
    "completion_text": "aepo_trainer.embedding.embedder",
    "embed_pools": "aepo_trainer.embedding.embedder",
    "stack_pool_embeddings": "aepo_trainer.embedding.embedder",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
