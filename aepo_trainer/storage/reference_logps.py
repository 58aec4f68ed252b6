"""Table `reference_logps` (owned by this module): the reference model's log-probability of each pool candidate.

`reference_logps(reference, candidate, logp, created_at)`: Σ_t log π_ref(y_t | x, y_<t) of one candidate, keyed by the
reference's identity (`trainer.reference_cache.reference_identity`: which reference, a hash of its full weights and
their dtypes, and the precision the value was computed at) and
the candidate's kept tokens (`candidate_keys`: a 16-byte digest of the prompt and completion tokens after TRL's
truncation). The reference never changes, so a value computed once holds for every later epoch, resume and restart
of any run that trains against the same reference and shares the store (`annotation_store`, default
`<output_dir>/annotations.sqlite`), even one that starts without a checkpoint. Only the main process writes (the
trainer's policy-signals state gathers the other ranks' new values to it); the main process reads and hands the values
to every rank. A value is never updated: the same key always holds the same number (INSERT OR IGNORE).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from .annotations import AnnotationStore

__all__ = ["ReferenceLogpsTable"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reference_logps (
    reference TEXT NOT NULL,
    candidate BLOB NOT NULL,
    logp REAL NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (reference, candidate)
) WITHOUT ROWID
"""


class ReferenceLogpsTable:
    """The reference log-probs kept in `store` (the table is created on first use)."""

    def __init__(self, store: AnnotationStore):
        self.store = store
        with store.transaction() as conn:
            conn.execute(_SCHEMA)

    def load(self, reference: str) -> dict[bytes, float]:
        """Every stored value of one reference, `{candidate key: log-prob}`."""
        rows = self.store.connection().execute(
            "SELECT candidate, logp FROM reference_logps WHERE reference = ?", (reference,)
        )
        return {bytes(candidate): float(logp) for candidate, logp in rows}

    def save(self, reference: str, values: Mapping[bytes, float]) -> int:
        """Store values (one transaction); keys already stored are left as they are. Returns the rows added."""
        if not values:
            return 0
        now = time.time()
        with self.store.transaction() as conn:
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO reference_logps(reference, candidate, logp, created_at) VALUES (?, ?, ?, ?)",
                [(reference, bytes(key), float(value), now) for key, value in values.items()],
            )
            return conn.total_changes - before

    def count(self, reference: str | None = None) -> int:
        """Rows stored (of one reference, or of all)."""
        conn = self.store.connection()
        if reference is None:
            return int(conn.execute("SELECT COUNT(*) FROM reference_logps").fetchone()[0])
        return int(conn.execute("SELECT COUNT(*) FROM reference_logps WHERE reference = ?", (reference,)).fetchone()[0])
