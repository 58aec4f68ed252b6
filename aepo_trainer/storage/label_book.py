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
* `label_reviews(key, reviewer, decision, score, created_at)` — a reviewer's verdict on a finished item: `accept`
  (the labellers' aggregate stands) or `override` (the reviewer's `score` replaces it). With
  `LabellingSettings.require_review`, only reviewed items are final.
* `meta('labelling', JSON)` — the question, the score range and `labels_per_item` the page runs with, so a run reading
  the answers aggregates them exactly as the page announced.
"""

from __future__ import annotations

import json
import os
import statistics
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from aepo_trainer.choices import LABEL_QUESTIONS
from aepo_trainer.storage.annotations import AnnotationStore, annotated_keys, read_meta, write_meta

from ..labelling.agreement import aggregate

__all__ = [
    "Answer",
    "LabelBook",
    "LabelConflict",
    "LabellingSettings",
    "Review",
    "final_labels",
    "labeller_counts",
    "read_answers",
    "read_final_labels",
    "read_reviews",
]

REVIEW_DECISIONS = ("accept", "override")

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
CREATE TABLE IF NOT EXISTS label_reviews (
    key TEXT PRIMARY KEY,
    reviewer TEXT NOT NULL,
    decision TEXT NOT NULL,
    score REAL,
    created_at REAL NOT NULL
);
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
        allow_tie: offer "all equally good": every candidate gets the middle of the scale (points: (k-1)/2).
        allow_all_bad: offer "all bad": every candidate gets the bottom of the scale (points: 0).
        rationale: offer a free-text field whose text is stored with the answer (`raw["rationale"]`).
        require_review: an item is final only once a reviewer accepted or overrode it (`LabelBook.review`).
        shuffle_seed: candidates are shown in an order drawn per labeller and per prompt from this seed (stored
            with each answer as `raw["position"]`, so position effects can be measured); None: queue order.
    """

    question: str = "score"
    scale_min: int = 1
    scale_max: int = 10
    labels_per_item: int = 1
    allow_tie: bool = False
    allow_all_bad: bool = False
    rationale: bool = False
    require_review: bool = False
    shuffle_seed: int | None = 0

    def __post_init__(self):
        if self.question not in LABEL_QUESTIONS:
            raise ValueError(f"question={self.question!r} is invalid: expected one of {', '.join(LABEL_QUESTIONS)}.")
        for name in ("allow_tie", "allow_all_bad", "rationale", "require_review"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}.")
        seed = self.shuffle_seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"shuffle_seed must be an integer or None, got {seed!r}.")
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


@dataclass(frozen=True)
class Review:
    """A reviewer's verdict on one item: `accept` the labellers' aggregate, or `override` it with `score`."""

    key: str
    reviewer: str
    decision: str
    score: float | None
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
            write_meta(conn, "labelling", json.dumps(asdict(settings)))

    # ------------------------------------------------------------------------------------------- reading

    def answers(self, keys: Iterable[str] | None = None) -> dict[str, list[Answer]]:
        """`{key: [Answer, ...]}` (oldest first), for `keys` or for every answered item."""
        return _answers(self.store.connection(), None if keys is None else list(dict.fromkeys(keys)))

    def by_labeller(self) -> dict[str, dict]:
        """`{labeller: {"answered": n, "skipped": m, "median_seconds_per_item": s}}`: counts and pace only, never the
        answers themselves (`labeller_counts`)."""
        return labeller_counts(self.store)

    def final_scores(self, settings: LabellingSettings | None = None) -> dict[str, float | None]:
        """`{key: aggregate}` of the finished items (None: all said "skip"); a reviewer's override replaces the
        aggregate, and with `require_review` only reviewed items are finished."""
        settings = settings or self.settings() or LabellingSettings()
        return final_labels(self.answers(), settings, self.reviews())

    def submissions(self, labeller: str) -> int:
        """How many submissions (clicks on Submit/Skip) of `labeller` are stored."""
        row = self.store.connection().execute(
            "SELECT COUNT(DISTINCT submission) FROM label_answers WHERE labeller = ?", (labeller,)
        )
        return int(row.fetchone()[0])

    def reviews(self) -> dict[str, Review]:
        """`{key: Review}` of every reviewed item."""
        return _reviews(self.store.connection())

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

    def review(self, reviewer: str, key: str, decision: str, score: float | None = None) -> Review:
        """Record a reviewer's verdict on an answered item not yet read by a run (a later verdict replaces an earlier
        one). Raises `LabelConflict` (nothing written) when the item has no answer or a run already read it."""
        if decision not in REVIEW_DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(REVIEW_DECISIONS)}, got {decision!r}")
        if (decision == "override") != (score is not None):
            raise ValueError("an override needs a score; an accept takes none")
        now = time.time()
        with self.store.transaction() as conn:
            if annotated_keys(conn, [key]):
                raise LabelConflict("this item was already read by a run: it is final")
            if not _existing(conn, "SELECT key FROM label_answers WHERE key IN ({})", [key]):
                raise LabelConflict("this item has no answer to review")
            conn.execute(
                "INSERT INTO label_reviews(key, reviewer, decision, score, created_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET reviewer = excluded.reviewer, decision = excluded.decision, "
                "score = excluded.score, created_at = excluded.created_at",
                (key, reviewer, decision, score, now),
            )
        return Review(key, reviewer, decision, score, now)

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
            conn.executemany("DELETE FROM label_reviews WHERE key = ?", [(k,) for k in keys])
        return keys


def read_final_labels(store: AnnotationStore | str | os.PathLike) -> dict[str, float | None]:
    """The finished aggregates of the labelling page in `store` (`{}` when no page ever ran), without writing.

    What `HumanQueueAnnotator` reads besides its labels file.
    """
    store = store if isinstance(store, AnnotationStore) else AnnotationStore(store)
    found = read_answers(store)
    return {} if found is None else final_labels(found[1], found[0], read_reviews(store))


def read_reviews(store: AnnotationStore | str | os.PathLike) -> dict[str, Review]:
    """`{key: Review}` of every reviewed item in `store` (`{}` when none), without writing."""
    store = store if isinstance(store, AnnotationStore) else AnnotationStore(store)
    return _reviews(store.connection())


def labeller_counts(store: AnnotationStore | str | os.PathLike) -> dict[str, dict]:
    """`{labeller: {"answered": n, "skipped": m, "median_seconds_per_item": s}}` of the page's answers in `store`.

    Seconds per item: a submission's time from the prompt shown to the answer, divided by its items (None for answers
    given before the page recorded times)."""
    store = store if isinstance(store, AnnotationStore) else AnnotationStore(store)
    conn = store.connection()
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'label_answers'").fetchone() is None:
        return {}
    out: dict[str, dict] = {}
    per_submission: dict[tuple[str, str], list] = {}
    rows = conn.execute("SELECT labeller, score, raw, submission FROM label_answers ORDER BY labeller")
    for labeller, score, raw, submission in rows:
        counts = out.setdefault(labeller, {"answered": 0, "skipped": 0, "median_seconds_per_item": None})
        counts["answered"] += 1
        counts["skipped"] += score is None
        per_submission.setdefault((labeller, submission), []).append(json.loads(raw).get("seconds"))
    paces: dict[str, list[float]] = {}
    for (labeller, _), seconds in per_submission.items():
        if seconds[0] is not None:
            paces.setdefault(labeller, []).append(float(seconds[0]) / len(seconds))
    for labeller, values in paces.items():
        out[labeller]["median_seconds_per_item"] = statistics.median(values)
    return out


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
    value = read_meta(conn, "labelling")
    return None if value is None else LabellingSettings(**json.loads(value))


def final_labels(
    answers: dict[str, list[Answer]], settings: LabellingSettings, reviews: dict[str, Review] | None = None
) -> dict[str, float | None]:
    """`{key: score}` of the finished items (the one aggregation rule): the mean of the labellers' scores once an
    item has `settings.labels_per_item` answers, or a reviewer's override; with `settings.require_review` only the
    reviewed items."""
    reviews = reviews or {}
    out = {}
    for key, rows in answers.items():
        review = reviews.get(key)
        if review is not None and review.decision == "override":
            out[key] = review.score
        elif len(rows) >= settings.labels_per_item and (review is not None or not settings.require_review):
            out[key] = aggregate([a.score for a in rows])
    return out


def _reviews(conn) -> dict[str, Review]:
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'label_reviews'").fetchone() is None:
        return {}
    rows = conn.execute("SELECT key, reviewer, decision, score, created_at FROM label_reviews")
    return {key: Review(key, reviewer, decision, score, at) for key, reviewer, decision, score, at in rows}


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
