"""The annotator protocol, the request type, the errors, and the helpers every annotator shares.

An *annotation* is one score for one (prompt, completion) pair: the unit of the budget. Annotators receive only the
completions that selection kept (`AnnotationRequest.completions`), never the whole pool.

Nothing here imports torch: the store, the service and the light annotators stay importable in a fraction of a second
(the kill/resume subprocess tests and the CLI rely on it).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .._utils.hashing import canonical_json
from ..storage.annotations import BudgetExhausted

__all__ = [
    "PENDING",
    "AnnotationError",
    "AnnotationRequest",
    "AnnotationsPending",
    "Annotator",
    "BudgetExhausted",
    "canonical_json",
    "is_valid_score",
    "make_key",
    "subset_context",
    "to_text",
]


@dataclass
class AnnotationRequest:
    """The selected candidates of one prompt, to be scored.

    Attributes:
        prompt: a string, or a list of chat messages (`[{"role": ..., "content": ...}, ...]`).
        completions: the *selected* completions (strings or lists of chat messages), in subset order.
        indices: their positions in the prompt's full pool (defaults to `0..len(completions)-1`).
        row: the dataset row's other columns (e.g. the full `scores` list read by `DatasetScoresAnnotator`, or the
            extra columns passed to reward functions).
    """

    prompt: Any
    completions: list
    indices: list[int] | None = None
    row: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.completions, (str, bytes)) or not isinstance(self.completions, Sequence):
            raise TypeError(
                f"AnnotationRequest.completions must be a list of completions, got {type(self.completions).__name__}."
            )
        self.completions = list(self.completions)
        if self.indices is None:
            self.indices = list(range(len(self.completions)))
        else:
            self.indices = [int(i) for i in self.indices]
        if len(self.indices) != len(self.completions):
            raise ValueError(
                f"AnnotationRequest has {len(self.completions)} completions but {len(self.indices)} indices; "
                "`indices` gives the pool position of each selected completion."
            )
        if self.row is None:
            self.row = {}


class Annotator:
    """Protocol (and optional base class) of an annotator.

    Any object with these two members works; subclassing only provides the defaults of the optional attributes.

    * `identity` — a stable string that names the annotator *and every setting that changes its scores*
      (e.g. `"dataset_scores:scores"`, `"reward_model:OpenAssistant/reward-model-deberta-v3-large-v2"`). It is part
      of every store key: two annotators with the same identity share cached annotations.
    * `score(requests)` — one list of scores per request, with one score per completion of that request
      (`float`, or `None` for "no score": counted as invalid and never paired).

    Optional attributes read by `AnnotationService`:

    * `relative` (default False) — the scores of a subset depend on each other (pairwise judges): the annotator is
      always given whole subsets, and store keys also hash the subset, so a completion judged against other rivals is
      annotated again. The budget is still charged per completion scored.
    * `single_call` (default False) — give the annotator every item of an `annotate` call at once (the human queue
      writes one queue file per call instead of one per batch).
    """

    identity: str = "annotator"
    relative: bool = False
    single_call: bool = False

    def score(self, requests: list[AnnotationRequest]) -> list[list[float | None]]:  # pragma: no cover - protocol
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(identity={self.identity!r})"


class AnnotationError(ValueError):
    """An annotator or its input is wrong (wrong number of scores, missing dataset score, bad label file...)."""


class _PendingType:
    """Marker for "no label yet" inside `AnnotationsPending.partial_scores` (distinct from `None` = invalid)."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "PENDING"

    def __reduce__(self):
        return (_PendingType, ())


PENDING = _PendingType()


class AnnotationsPending(RuntimeError):
    """Some requested items are waiting for labels from people (or another external system).

    Raised by `HumanQueueAnnotator.score` with `partial_scores` (same shape as the requests; `PENDING` where no label
    exists yet). `AnnotationService` first saves every label that did arrive, then re-raises an `AnnotationsPending`
    that counts all waiting items. Rerun the same command once the labels file is filled in: nothing is queued or
    paid twice.
    """

    def __init__(
        self,
        message: str,
        *,
        pending: int = 0,
        partial_scores: list[list] | None = None,
        queue_path: str | None = None,
        labels_path: str | None = None,
    ):
        super().__init__(message)
        self.pending = pending
        self.partial_scores = partial_scores
        self.queue_path = queue_path
        self.labels_path = labels_path

    def __reduce__(self):  # keep the keyword fields when sent between processes (the trainer's main-process ledger)
        return _rebuild_pending, (str(self), self.pending, self.queue_path, self.labels_path)


def _rebuild_pending(message, pending, queue_path, labels_path) -> AnnotationsPending:
    return AnnotationsPending(message, pending=pending, queue_path=queue_path, labels_path=labels_path)


def make_key(identity: str, prompt: Any, completion: Any, context: str | None = None) -> str:
    """Store key: sha256 over (annotator identity, canonical JSON of prompt, canonical JSON of completion).

    `context` (the subset digest of a relative annotator, see `subset_context`) is appended when given.
    """
    parts = [str(identity), canonical_json(prompt), canonical_json(completion)]
    if context is not None:
        parts.append(context)
    return hashlib.sha256(canonical_json(parts).encode("utf-8")).hexdigest()


def subset_context(completions: Sequence[Any]) -> str:
    """Digest of a whole selected subset, in order (keys of relative annotators depend on the rivals)."""
    return hashlib.sha256(canonical_json(list(completions)).encode("utf-8")).hexdigest()


def is_valid_score(value: Any) -> bool:
    """True for a finite real number (bools are rejected: a `True` score is almost always a bug)."""
    if value is None or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def to_text(x: Any) -> str:
    """A prompt or completion as plain text (chat messages become `role: content` lines)."""
    if isinstance(x, str):
        return x
    if isinstance(x, dict):
        return _content_text(x.get("content", ""))
    if isinstance(x, Sequence):
        lines = []
        for m in x:
            if isinstance(m, dict):
                lines.append(f"{m.get('role', 'user')}: {_content_text(m.get('content', ''))}")
            else:
                lines.append(str(m))
        return "\n".join(lines)
    return str(x)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal content blocks: keep the text parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def as_messages(x: Any, role: str) -> list[dict]:
    """A prompt (role='user') or completion (role='assistant') as a list of chat messages."""
    if isinstance(x, str):
        return [{"role": role, "content": x}]
    if isinstance(x, dict):
        return [x]
    return list(x)


def describe(x: Any, limit: int = 60) -> str:
    """Short printable preview of a prompt for error messages."""
    text = to_text(x).replace("\n", " ")
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
