"""`CandidateStore`: the pools an on-policy run generated, in SQLite, written before they are annotated.

Why: an on-policy run samples its pools from the policy inside the training step. If it is killed after paying for a
step's labels but before the checkpoint, the resumed run repeats that step; regenerating would give other texts (on
another GPU, another vLLM version, or simply another batch layout), whose labels are not in the annotation store: the
same step would be paid twice. With the pools stored first, the repeated step reads the same candidates back, the
annotation store recognises every label, and nothing is generated or paid again.

A pool's key hashes the run, the sampling settings (`SamplingSettings.fingerprint`), the generation round and the
prompt; the stored record keeps the texts, the token ids (the prompt's as fed to the model and each completion's as
sampled: what the step trains on), the seed and the settings, readable with any SQLite client.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time

from .._utils.hashing import canonical_json
from .local import GeneratedPool

__all__ = ["CandidateStore", "pool_key"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pools (
    key TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    settings TEXT NOT NULL,
    prompt TEXT NOT NULL,
    completions TEXT NOT NULL,
    completion_ids TEXT,
    seed INTEGER,
    created REAL NOT NULL,
    prompt_ids TEXT
)
"""


def pool_key(run_id: str, settings_fingerprint: str, round_: int, prompt) -> str:
    """The store key of one prompt's pool in one generation round of one run, under one set of sampling settings."""
    text = canonical_json([str(run_id), settings_fingerprint, int(round_), prompt])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class CandidateStore:
    """SQLite table of generated pools (WAL mode; one connection per process)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)) or ".", exist_ok=True)
        self._conn = None
        self._pid = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            self._conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(_SCHEMA)
            columns = {row[1] for row in self._conn.execute("PRAGMA table_info(pools)")}
            if "prompt_ids" not in columns:  # a store written before the prompt's token ids were kept
                self._conn.execute("ALTER TABLE pools ADD COLUMN prompt_ids TEXT")
            self._pid = os.getpid()
        return self._conn

    def get(self, keys: list[str]) -> dict[str, GeneratedPool]:
        """The stored pools among `keys`."""
        found = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            rows = self.conn.execute(
                f"SELECT key, prompt, completions, completion_ids, seed, prompt_ids FROM pools WHERE key IN "
                f"({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            for key, prompt, completions, completion_ids, seed, prompt_ids in rows:
                ids = None if completion_ids is None else json.loads(completion_ids)
                found[key] = GeneratedPool(
                    prompt=json.loads(prompt),
                    completions=json.loads(completions),
                    prompt_ids=None if prompt_ids is None else json.loads(prompt_ids),
                    completion_ids=ids,
                    seed=seed,
                    num_tokens=sum(len(c) for c in ids) if ids else 0,
                )
        return found

    def put(self, run_id: str, round_: int, settings: str, records: dict[str, GeneratedPool]) -> None:
        """Store pools (one transaction; an existing key is kept: the first generation of a pool is the pool)."""
        now = time.time()
        rows = [
            (
                key,
                str(run_id),
                int(round_),
                settings,
                canonical_json(pool.prompt),
                canonical_json(pool.completions),
                None if pool.completion_ids is None else json.dumps(pool.completion_ids),
                pool.seed,
                now,
                None if pool.prompt_ids is None else json.dumps(list(pool.prompt_ids)),
            )
            for key, pool in records.items()
        ]
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany(
                "INSERT OR IGNORE INTO pools (key, run_id, round, settings, prompt, completions, completion_ids, seed, "
                "created, prompt_ids) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def __len__(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM pools").fetchone()[0])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
