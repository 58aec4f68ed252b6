"""`StageCheckpoint`: the append-only SQLite file that makes every Safer-Instruct stage resumable and cached.

One row per finished unit of work: `(stage, key) -> output JSON`, with the usage (tokens, USD) that unit cost. The
key is a hash of everything that determines the output (the input row, the model identity, the template, the sampling
settings), so

* a rerun of the same stage with the same settings serves finished rows from the file and calls no model for them;
* a killed run loses at most the batch in flight: every batch is committed (WAL, `synchronous=FULL`) before the next
  one starts;
* changed settings give new keys, so stale outputs are never served for a different configuration.

`StageCheckpoint(path, read_only=True)` never creates or writes anything (the `--dry-run` of the CLI uses it).
The per-prompt *annotation* ledger of AEPO (`aepo_trainer.annotation.AnnotationStore`) stores scores; this file stores
generated texts and verdicts, which is why it is a separate, smaller schema.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from ..errors import storage_guard
from .generators import Usage

__all__ = ["StageCheckpoint"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    stage TEXT NOT NULL,
    key TEXT NOT NULL,
    output TEXT NOT NULL,
    calls REAL NOT NULL DEFAULT 0,
    prompt_tokens REAL NOT NULL DEFAULT 0,
    completion_tokens REAL NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    PRIMARY KEY (stage, key)
)
"""
_CHUNK = 500


class StageCheckpoint:
    """Finished outputs of the pipeline's stages, keyed by content hash (see the module docstring).

    Args:
        path: the SQLite file (created with its folders), or ":memory:" for a throwaway checkpoint.
        read_only: open an existing file read-only; a missing file reads as empty. Nothing is ever written.
    """

    def __init__(self, path: str | os.PathLike = ":memory:", read_only: bool = False):
        self.path = str(path)
        self.read_only = read_only
        self._conn: sqlite3.Connection | None = None
        if read_only:
            if self.path != ":memory:" and Path(self.path).exists():
                self._conn = sqlite3.connect(f"file:{Path(self.path).resolve()}?mode=ro", uri=True)
            return
        with storage_guard(self.path, kept=self.kept):  # a full disk or a read-only place: StorageWriteError
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=60)
            if self.path != ":memory:":
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute(_SCHEMA)

    def __repr__(self) -> str:
        return f"StageCheckpoint({self.path!r}{', read_only=True' if self.read_only else ''})"

    def get(self, stage: str, keys: Iterable[str]) -> dict[str, object]:
        """The finished outputs among `keys` of `stage` (missing keys are absent)."""
        out: dict[str, object] = {}
        if self._conn is None:
            return out
        keys = list(dict.fromkeys(keys))
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT key, output FROM results WHERE stage = ? AND key IN ({marks})"
            for key, output in self._conn.execute(sql, [stage, *chunk]):
                out[key] = json.loads(output)
        return out

    def put(self, stage: str, items: list[tuple[str, object]], usage: Usage | None = None) -> None:
        """Persist finished outputs of one batch in one transaction; `usage` (the batch's) is shared out evenly."""
        if self.read_only:
            raise RuntimeError(f"{self!r} is read-only")
        if not items:
            return
        share = [0.0] * 4
        if usage is not None:
            share = [
                usage.calls / len(items),
                usage.prompt_tokens / len(items),
                usage.completion_tokens / len(items),
                usage.cost_usd / len(items),
            ]
        now = time.time()
        with storage_guard(self.path, kept=self.kept):  # refused (full disk): rolled back, the batch is redone
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany(
                    "INSERT OR IGNORE INTO results(stage, key, output, calls, prompt_tokens, completion_tokens, "
                    "cost_usd, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(stage, key, json.dumps(output, ensure_ascii=False), *share, now) for key, output in items],
                )
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # SQLite may have rolled back already (a full disk does)
                    self._conn.execute("ROLLBACK")
                raise

    def kept(self) -> dict[str, str]:
        """What a refused write leaves safe: the finished rows of every stage (for `StorageWriteError.kept`)."""
        if self._conn is None:
            return {}
        rows = self._conn.execute("SELECT stage, COUNT(*) FROM results GROUP BY stage ORDER BY stage").fetchall()
        stages = ", ".join(f"{count} {stage}" for stage, count in rows) or "0"
        return {"checkpoint": f"finished rows ({stages}) in {self.path}"}

    def usage(self, stage: str) -> Usage:
        """What the finished rows of `stage` cost in total, over every run that contributed to this file."""
        if self._conn is None:
            return Usage()
        row = self._conn.execute(
            "SELECT COUNT(*), SUM(calls), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_usd) FROM results "
            "WHERE stage = ?",
            (stage,),
        ).fetchone()
        count, calls, prompt_tokens, completion_tokens, cost = row
        return Usage(
            calls=round(calls or 0),
            prompts=int(count or 0),
            prompt_tokens=round(prompt_tokens or 0),
            completion_tokens=round(completion_tokens or 0),
            cost_usd=float(cost or 0.0),
        )

    def count(self, stage: str) -> int:
        if self._conn is None:
            return 0
        return self._conn.execute("SELECT COUNT(*) FROM results WHERE stage = ?", (stage,)).fetchone()[0]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
