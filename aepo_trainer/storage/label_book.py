"""`LabelBook`: every answer people give on the labelling page, committed in the annotation store's own SQLite file.

Why in the store file: an answer is a human annotation in waiting. Keeping it next to `annotations` and `ledger` means
one file to back up, one `BEGIN IMMEDIATE` lock for every writer, and no way for the page and a run to disagree about
what is labelled. The answers do *not* go into `annotations` directly: that table is final (a key keeps its first
score), and a label must stay correctable (undo) until a run has read it. The run reads the finished aggregates
through `HumanQueueAnnotator` (exactly like a labels file) and writes them to `annotations` with the usual
`AnnotationService` path, which marks the items' `queued` ledger charges `paid` — never charged twice.

Tables (created by the page, additive: the store's schema version does not change):

* `label_answers(key, labeller, score, raw, submission, question, created_at)` — one row per (item key, labeller).
  `score` is what the page turned the answer into (the 1–10 score itself, or the Borda points of a ranking); NULL is
  "skip / cannot judge". `submission` groups the rows one click on "Submit" wrote (the unit of undo).
* `meta('labelling', JSON)` — the question, the score range and `labels_per_item` the page runs with, so a run reading
  the answers aggregates them exactly as the page announced.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from aepo_trainer.choices import LABEL_QUESTIONS
from aepo_trainer.storage.annotations import AnnotationStore, annotated_keys

from ..labelling.agreement import aggregate

__all__ = [
    "Answer",
    "LabelBook",
    "LabelConflict",
    "LabellingSettings",
    "final_labels",
    "read_answers",
    "read_final_labels",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS label_answers (
    key TEXT NOT NULL,
    labeller TEXT NOT NULL,
    score REAL,
    raw TEXT NOT NULL,
    submission TEXT NOT NULL,
    question TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (key, labeller)
);
CREATE INDEX IF NOT EXISTS label_answers_by_labeller ON label_answers (labeller, created_at);
"""

_CHUNK = 500


class LabelConflict(ValueError):
    """A submission that no longer applies (item already read by a run, answered, or complete): nothing was written."""


@dataclass(frozen=True)
class LabellingSettings:
    """What the page asks and how answers become one score per item.

    Attributes:
        question: `score` (a number per candidate in `[scale_min, scale_max]`), `ranking` (order all candidates,
            best first; candidate at rank r of k gets k-1-r Borda points) or `best_worst` (pick the best and the
            worst: k-1 and 0 points, the others (k-1)/2).
        scale_min, scale_max: the score range of `question='score'` (integers; the slider's ends).
        labels_per_item: how many different labellers answer each item before it is final.
    """

    question: str = "score"
    scale_min: int = 1
    scale_max: int = 10
    labels_per_item: int = 1

    def __post_init__(self):
        if self.question not in LABEL_QUESTIONS:
            raise ValueError(f"question={self.question!r} is invalid: expected one of {', '.join(LABEL_QUESTIONS)}.")
        for name in ("scale_min", "scale_max", "labels_per_item"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}.")
        if self.scale_max <= self.scale_min:
            raise ValueError(f"scale_max ({self.scale_max}) must be larger than scale_min ({self.scale_min}).")
        if self.labels_per_item < 1:
            raise ValueError(f"labels_per_item must be >= 1, got {self.labels_per_item}.")


@dataclass(frozen=True)
class Answer:
    """One labeller's answer for one item. `score` None = "skip / cannot judge"."""

    key: str
    labeller: str
    score: float | None
    raw: dict
    submission: str
    created_at: float


class LabelBook:
    """The labelling page's answers, in the annotation store file.

    Args:
        store: the `AnnotationStore` (or its path) the run uses.
    """

    def __init__(self, store: AnnotationStore | str | os.PathLike):
        self.store = store if isinstance(store, AnnotationStore) else AnnotationStore(store)
        with self.store.transaction() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)

    # ------------------------------------------------------------------------------------------- settings

    def settings(self) -> LabellingSettings | None:
        """The settings the page last ran with (None if no page ever ran on this store)."""
        return _read_settings(self.store.connection())

    def configure(self, settings: LabellingSettings) -> None:
        """Record the page's settings. A different question or score range than the one existing answers were given
        with is refused: mixing 1–10 scores with Borda points would make every aggregate meaningless."""
        with self.store.transaction() as conn:
            old = _read_settings(conn)
            answered = conn.execute("SELECT COUNT(*) FROM label_answers").fetchone()[0]
            if (
                old is not None
                and answered
                and (old.question, old.scale_min, old.scale_max)
                != (
                    settings.question,
                    settings.scale_min,
                    settings.scale_max,
                )
            ):
                raise ValueError(
                    f"{self.store.path} already holds {answered} answer(s) given with --question {old.question} "
                    f"--scale_min {old.scale_min} --scale_max {old.scale_max}; start the page with the same settings "
                    "(only --labels_per_item may change)."
                )
            conn.execute(
                "INSERT INTO meta(name, value) VALUES ('labelling', ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (json.dumps(asdict(settings)),),
            )

    # ------------------------------------------------------------------------------------------- reading

    def answers(self, keys: Iterable[str] | None = None) -> dict[str, list[Answer]]:
        """`{key: [Answer, ...]}` (oldest first), for `keys` or for every answered item."""
        return _answers(self.store.connection(), None if keys is None else list(dict.fromkeys(keys)))

    def by_labeller(self) -> dict[str, dict[str, int]]:
        """`{labeller: {"answered": n, "skipped": m}}`: counts only, never the answers themselves."""
        rows = self.store.connection().execute(
            "SELECT labeller, COUNT(*), SUM(score IS NULL) FROM label_answers GROUP BY labeller ORDER BY labeller"
        )
        return {name: {"answered": int(n), "skipped": int(skipped or 0)} for name, n, skipped in rows}

    def final_scores(self, settings: LabellingSettings | None = None) -> dict[str, float | None]:
        """`{key: aggregate}` for every item with at least `labels_per_item` answers (None: all said "skip")."""
        return final_labels(self.answers(), settings or self.settings() or LabellingSettings())

    def last_submission(self, labeller: str) -> list[Answer]:
        """The rows of `labeller`'s most recent submission (empty if none)."""
        conn = self.store.connection()
        row = conn.execute(
            "SELECT submission FROM label_answers WHERE labeller = ? ORDER BY created_at DESC, rowid DESC LIMIT 1",
            (labeller,),
        ).fetchone()
        if row is None:
            return []
        rows = conn.execute(
            "SELECT key, labeller, score, raw, submission, created_at FROM label_answers WHERE submission = ? "
            "ORDER BY rowid",
            (row[0],),
        )
        return [_answer(r) for r in rows]

    # ------------------------------------------------------------------------------------------- writing

    def submit(self, labeller: str, scores: dict[str, tuple[float | None, dict]], labels_per_item: int) -> str:
        """Commit one labeller's answers for one task (`{key: (score | None, raw)}`), all or nothing.

        Re-checked inside the write lock, whoever else writes to the store: every key must still be unread by any run
        (not in `annotations`), not yet answered by `labeller`, and have fewer than `labels_per_item` answers.
        Returns the submission id. Raises `LabelConflict` (nothing written) otherwise.
        """
        if not scores:
            raise LabelConflict("nothing to submit")
        submission, now = uuid.uuid4().hex, time.time()
        settings = self.settings() or LabellingSettings()
        keys = list(scores)
        with self.store.transaction() as conn:
            read = annotated_keys(conn, keys)
            if read:
                raise LabelConflict(f"{len(read)} item(s) of this task were already read by a run")
            mine = _existing(conn, "SELECT key FROM label_answers WHERE labeller = ? AND key IN ({})", keys, labeller)
            if mine:
                raise LabelConflict(f"you already answered {len(mine)} item(s) of this task")
            counts = _counts(conn, keys)
            full = [k for k in keys if counts.get(k, 0) >= labels_per_item]
            if full:
                raise LabelConflict(f"{len(full)} item(s) of this task already have {labels_per_item} answer(s)")
            conn.executemany(
                "INSERT INTO label_answers(key, labeller, score, raw, submission, question, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (k, labeller, score, json.dumps(raw, sort_keys=True), submission, settings.question, now)
                    for k, (score, raw) in scores.items()
                ],
            )
        return submission

    def undo(self, labeller: str) -> list[str]:
        """Delete `labeller`'s last submission if no run has read any of its items yet; returns its keys.

        Raises `LabelConflict` when there is nothing to undo or a run already read the labels (stored annotations
        are final: correct them with a new store key, never in place).
        """
        with self.store.transaction() as conn:
            row = conn.execute(
                "SELECT submission FROM label_answers WHERE labeller = ? ORDER BY created_at DESC, rowid DESC LIMIT 1",
                (labeller,),
            ).fetchone()
            if row is None:
                raise LabelConflict("nothing to undo")
            keys = [k for (k,) in conn.execute("SELECT key FROM label_answers WHERE submission = ?", (row[0],))]
            if annotated_keys(conn, keys):
                raise LabelConflict("the last answer was already read by a run: it is final")
            conn.execute("DELETE FROM label_answers WHERE submission = ?", (row[0],))
        return keys


def read_final_labels(store: AnnotationStore | str | os.PathLike) -> dict[str, float | None]:
    """The finished aggregates of the labelling page in `store` (`{}` when no page ever ran), without writing.

    What `HumanQueueAnnotator` reads besides its labels file.
    """
    found = read_answers(store)
    return {} if found is None else final_labels(found[1], found[0])


def read_answers(
    store: AnnotationStore | str | os.PathLike,
) -> tuple[LabellingSettings, dict[str, list[Answer]]] | None:
    """The page's settings and every answer (`{key: [Answer, ...]}`, oldest first) in `store`, without writing; None
    when no labelling page ever ran on it."""
    store = store if isinstance(store, AnnotationStore) else AnnotationStore(store)
    conn = store.connection()
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'label_answers'").fetchone() is None:
        return None
    return _read_settings(conn) or LabellingSettings(), _answers(conn, None)


# ----------------------------------------------------------------------------------------------- helpers


def _read_settings(conn) -> LabellingSettings | None:
    row = conn.execute("SELECT value FROM meta WHERE name = 'labelling'").fetchone()
    return None if row is None else LabellingSettings(**json.loads(row[0]))


def final_labels(answers: dict[str, list[Answer]], settings: LabellingSettings) -> dict[str, float | None]:
    """`{key: aggregate}` of the items with at least `settings.labels_per_item` answers (the one aggregation rule)."""
    return {
        key: aggregate([a.score for a in rows])
        for key, rows in answers.items()
        if len(rows) >= settings.labels_per_item
    }


def _answer(row) -> Answer:
    key, labeller, score, raw, submission, created_at = row
    return Answer(key, labeller, None if score is None else float(score), json.loads(raw), submission, created_at)


def _answers(conn, keys: list[str] | None) -> dict[str, list[Answer]]:
    sql = "SELECT key, labeller, score, raw, submission, created_at FROM label_answers"
    out: dict[str, list[Answer]] = {}
    if keys is None:
        batches = [(sql + " ORDER BY created_at, rowid", ())]
    else:
        batches = [
            (sql + f" WHERE key IN ({','.join('?' * len(chunk))}) ORDER BY created_at, rowid", chunk)
            for chunk in (keys[i : i + _CHUNK] for i in range(0, len(keys), _CHUNK))
        ]
    for statement, args in batches:
        for row in conn.execute(statement, args):
            answer = _answer(row)
            out.setdefault(answer.key, []).append(answer)
    return out


def _existing(conn, sql: str, keys: list[str], *prefix) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(keys), _CHUNK):
        chunk = keys[i : i + _CHUNK]
        found.update(k for (k,) in conn.execute(sql.format(",".join("?" * len(chunk))), [*prefix, *chunk]))
    return found


def _counts(conn, keys: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in range(0, len(keys), _CHUNK):
        chunk = keys[i : i + _CHUNK]
        sql = f"SELECT key, COUNT(*) FROM label_answers WHERE key IN ({','.join('?' * len(chunk))}) GROUP BY key"
        out.update({k: int(n) for k, n in conn.execute(sql, chunk)})
    return out
