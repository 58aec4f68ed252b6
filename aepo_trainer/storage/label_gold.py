"""Table `label_gold_answers` (owned by this module): labellers' answers to the labelling page's honeypot tasks.

`label_gold_answers(gold_id, labeller, correct, raw, created_at)`: one row per gold task and labeller; `correct` is
1/0, NULL for a skip. Kept apart from `label_answers`: a gold answer must never reach a run's labels. The tasks and the
rule of what is correct live in `aepo_trainer.labelling.gold`.
"""

from __future__ import annotations

import json
import time

from .annotations import AnnotationStore

__all__ = ["GoldAnswers", "gold_accuracy"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS label_gold_answers (
    gold_id TEXT NOT NULL,
    labeller TEXT NOT NULL,
    correct INTEGER,
    raw TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (gold_id, labeller)
)
"""


class GoldAnswers:
    """The gold answers in `store` (the table is created on first use)."""

    def __init__(self, store: AnnotationStore):
        self.store = store
        with store.transaction() as conn:
            conn.execute(_SCHEMA)

    def answered(self, labeller: str) -> set[str]:
        """The gold task ids `labeller` answered."""
        rows = self.store.connection().execute("SELECT gold_id FROM label_gold_answers WHERE labeller = ?", (labeller,))
        return {gold_id for (gold_id,) in rows}

    def record(self, gold_id: str, labeller: str, correct: bool | None, raw: dict) -> None:
        """Store one answer (a second answer to the same task by the same labeller changes nothing)."""
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO label_gold_answers(gold_id, labeller, correct, raw, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    gold_id,
                    labeller,
                    None if correct is None else int(correct),
                    json.dumps(raw, sort_keys=True),
                    time.time(),
                ),
            )


def gold_accuracy(store: AnnotationStore) -> dict[str, dict]:
    """`{labeller: {"gold_answered": n, "gold_correct": m, "gold_accuracy": m / n | None}}` (skips not counted)."""
    conn = store.connection()
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'label_gold_answers'").fetchone()
    if exists is None:
        return {}
    rows = conn.execute(
        "SELECT labeller, COUNT(correct), SUM(correct) FROM label_gold_answers GROUP BY labeller ORDER BY labeller"
    )
    return {
        name: {"gold_answered": int(n), "gold_correct": int(m or 0), "gold_accuracy": (m or 0) / n if n else None}
        for name, n, m in rows
    }
