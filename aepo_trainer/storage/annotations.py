"""`AnnotationStore`: every annotation and every budget charge, persisted in one SQLite file (WAL mode).

Three tables matter:

* `annotations(key, annotator, prompt, completion, score, valid, raw, run_id, created_at)` — one row per paid
  annotation, keyed by `make_key(annotator identity, prompt, completion)`. A key present here is never paid again, by
  any run. `score` is NULL (and `valid` 0) when the annotator returned None/NaN/inf: that result was paid for too, so
  it is kept and reused (and counted as invalid), not bought again.
* `ledger(run_id, key, status, owner, pid, host, ...)` — the budget ledger: one row per annotation *charged* to a run.
  A row is written (status `reserved`) in the same `BEGIN IMMEDIATE` transaction that checks the budget, **before**
  the annotator is called; it becomes `paid` when the score is written, or `queued` when the item waits in a human
  queue. `runs.spent` counts the rows. Because the check and the charge are one write transaction, several processes
  sharing the file and the run id never exceed the budget together; because the charge survives a crash, a retry
  re-annotates the reserved key without charging it again.
* `usage(run_id, key, model, endpoint, status, reserved_cost, cost, prompt_tokens, completion_tokens, response, ...)`
  — the money ledger of LLM API calls (`aepo_trainer.storage.usage.UsageLedger` reads and writes it): one row per
  HTTP attempt that may cost money, reserved at an upper bound before the call and settled with the server's usage
  after it; the response is kept, so a completed call is never paid twice. Added in schema version 2; a version-1
  store is upgraded in place when opened (its other tables are unchanged).

The file must live on a local disk (SQLite WAL needs shared memory: processes on one machine, e.g. `accelerate`
workers; not NFS). Connections are opened lazily per process and thread, so a store object survives `fork`.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import StorageWriteError, storage_error_of, storage_guard
from .errors import (
    STORE_FILE,
    AnnotationStoreError,
    BudgetExhausted,
    default_store_path,
    rollback_quietly,
    store_error,
)
from .records import Reservation, StoredAnnotation, pid_alive

__all__ = [
    "STORE_FILE",
    "AnnotationStore",
    "AnnotationStoreError",
    "BudgetExhausted",
    "Reservation",
    "StoredAnnotation",
    "annotated_keys",
    "check_readable",
    "connect_read_only",
    "default_store_path",
    "kept_annotations",
    "pid_alive",
    "read_meta",
    "store_error",
    "write_meta",
]

SCHEMA_VERSION = "2"
#: Versions this code upgrades in place when it opens a store (version 1 had no `usage` table: adding it is enough).
_UPGRADABLE = {"1"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS annotations (
    key TEXT PRIMARY KEY,
    annotator TEXT NOT NULL,
    prompt TEXT NOT NULL,
    completion TEXT NOT NULL,
    score REAL,
    valid INTEGER NOT NULL,
    raw TEXT,
    run_id TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger (
    run_id TEXT NOT NULL,
    key TEXT NOT NULL,
    status TEXT NOT NULL,
    owner TEXT,
    pid INTEGER,
    host TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    spent INTEGER NOT NULL DEFAULT 0,
    budget INTEGER,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS usage (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    key TEXT NOT NULL,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    status TEXT NOT NULL,
    reserved_cost REAL NOT NULL,
    cost REAL NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    response TEXT,
    error TEXT,
    owner TEXT,
    pid INTEGER,
    host TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_key ON usage (key, status);
CREATE INDEX IF NOT EXISTS usage_run ON usage (run_id, status);
"""

_HOST = socket.gethostname()


class AnnotationStore:
    """Crash-safe, multi-process annotation store and budget ledger (SQLite, WAL).

    Args:
        path: the SQLite file (created with its parent folders). Keep it on a local disk.
        timeout: seconds a writer waits for another process's write lock before failing.
        lease_seconds: a reservation held by a process on *another* host counts as abandoned after this long (same
            host: abandoned as soon as its process is gone).
    """

    def __init__(self, path: str | os.PathLike, timeout: float = 60.0, lease_seconds: float = 900.0):
        self.path = str(Path(path))
        self.timeout = float(timeout)
        self.lease_seconds = float(lease_seconds)
        self._local = threading.local()
        with storage_guard(self.path):
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.transaction() as conn:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT OR IGNORE INTO meta(name, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
                version = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()[0]
                if version in _UPGRADABLE:  # the schema above already created what is new; record the upgrade
                    conn.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", (SCHEMA_VERSION,))
                    version = SCHEMA_VERSION
        except StorageWriteError:
            self.close()
            raise
        except sqlite3.Error as error:
            self.close()
            raise store_error(self.path, error, self.timeout) from error
        if version != SCHEMA_VERSION:
            raise RuntimeError(
                f"Annotation store {self.path} has schema version {version}; this aepo-trainer reads version "
                f"{SCHEMA_VERSION}. Use a new `annotation_store` path or a matching aepo-trainer version."
            )

    # ------------------------------------------------------------------------------------------- connections

    def _conn(self) -> sqlite3.Connection:
        pid = os.getpid()
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != pid:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # a committed annotation survives a power cut, not only a kill
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            self._local.conn = conn
            self._local.pid = pid
        return conn

    def annotated(self, keys: Iterable[str]) -> set[str]:
        """The keys among `keys` that have an annotation (read-only)."""
        return annotated_keys(self._conn(), list(keys))

    def annotator_counts(self, family: str) -> dict[str, int]:
        """`{annotator identity: annotations}` of the identities that start with `family` (read-only)."""
        rows = self._conn().execute(
            "SELECT annotator, COUNT(*) FROM annotations WHERE substr(annotator, 1, ?) = ? GROUP BY annotator",
            (len(family), family),
        )
        return {name: int(n) for name, n in rows}

    def connection(self) -> sqlite3.Connection:
        """This process's and thread's connection, for readers of other tables of the same file (the labelling
        page keeps its answers next to the annotations: `aepo_trainer.storage.label_book`)."""
        return self._conn()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """`BEGIN IMMEDIATE` … `COMMIT` (rolled back on error): one writer at a time across processes.

        A write the disk refuses (full, read-only, no permission) raises `aepo_trainer.errors.StorageWriteError`
        naming the store and how many annotations it keeps; the transaction is rolled back, so nothing of it counts.
        """
        with storage_guard(self.path, kept=lambda: kept_annotations(self.path)):
            try:
                conn = self._conn()
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as error:
                raise storage_error_of(error, self.path) or store_error(self.path, error, self.timeout) from error
            try:
                yield conn
            except BaseException:
                rollback_quietly(conn)  # SQLite may have rolled back already (a full disk does): no second error
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error:
                rollback_quietly(conn)
                raise

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            conn.close()
        self._local.conn = None

    def __getstate__(self):
        return {"path": self.path, "timeout": self.timeout, "lease_seconds": self.lease_seconds}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"AnnotationStore({self.path!r})"

    # ------------------------------------------------------------------------------------------- reading

    def get(self, keys: Iterable[str]) -> dict[str, StoredAnnotation]:
        """The stored annotations among `keys` (missing keys are absent from the result)."""
        return _fetch(self._conn(), list(dict.fromkeys(keys)))

    def __contains__(self, key: str) -> bool:
        return self._conn().execute("SELECT 1 FROM annotations WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM annotations").fetchone()[0]

    def records(self, annotator: str | None = None) -> Iterator[StoredAnnotation]:
        """Every stored annotation (optionally of one annotator identity), oldest first."""
        sql = f"SELECT {_COLUMNS} FROM annotations"
        args: tuple = ()
        if annotator is not None:
            sql += " WHERE annotator = ?"
            args = (annotator,)
        for row in self._conn().execute(sql + " ORDER BY rowid", args):
            yield _record(row)

    def spent(self, run_id: str = "default") -> int:
        """Annotations charged to `run_id` so far (reserved, queued or paid)."""
        row = self._conn().execute("SELECT spent FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return int(row[0]) if row else 0

    def ledger_summary(self, run_id: str = "default") -> dict[str, int]:
        """Charged annotations of `run_id` by status: `{"paid": .., "reserved": .., "queued": ..}`."""
        rows = (
            self._conn()
            .execute("SELECT status, COUNT(*) FROM ledger WHERE run_id = ? GROUP BY status", (run_id,))
            .fetchall()
        )
        summary = {"paid": 0, "reserved": 0, "queued": 0}
        summary.update({status: int(n) for status, n in rows})
        return summary

    # ------------------------------------------------------------------------------------------- ledger

    def reserve(self, run_id: str, groups: list[list[str]], budget: int | None, owner: str) -> list[Reservation]:
        """Decide, atomically for all `groups` (one per prompt, in order), what is cached, charged or skipped.

        Each group is all-or-nothing: its new charges are written only if they all fit in `budget` (None =
        unlimited). Keys already charged to this run whose score is missing (left by a crashed or failed call) are
        *recovered*: re-annotated by the caller without a new charge. Keys reserved by another live process make the
        group wait.
        """
        now = time.time()
        pid = os.getpid()
        decisions: list[Reservation] = []
        with self.transaction() as conn:
            spent = _spent(conn, run_id)
            claimed: set[str] = set()  # keys charged or recovered earlier in this same call
            for keys in groups:
                keys = list(dict.fromkeys(keys))
                cached = _fetch(conn, keys)
                missing = [k for k in keys if k not in cached]
                ledger = _ledger(conn, run_id, [k for k in missing if k not in claimed])
                new, recover, wait = [], [], False
                for k in missing:
                    if k in claimed:
                        continue
                    row = ledger.get(k)
                    if row is None:
                        new.append(k)
                    elif self._held_by_other(row, owner, now):
                        wait = True
                        break
                    else:
                        recover.append(k)
                if wait:
                    decisions.append(Reservation("wait", cached=cached))
                    continue
                if budget is not None and spent + len(new) > budget:
                    decisions.append(Reservation("skip", cached=cached, cost=len(new)))
                    continue
                conn.executemany(
                    "INSERT INTO ledger(run_id, key, status, owner, pid, host, created_at, updated_at) "
                    "VALUES (?, ?, 'reserved', ?, ?, ?, ?, ?)",
                    [(run_id, k, owner, pid, _HOST, now, now) for k in new],
                )
                conn.executemany(
                    "UPDATE ledger SET status = 'reserved', owner = ?, pid = ?, host = ?, updated_at = ? "
                    "WHERE run_id = ? AND key = ?",
                    [(owner, pid, _HOST, now, run_id, k) for k in recover],
                )
                spent += len(new)
                claimed.update(new)
                claimed.update(recover)
                decisions.append(Reservation("ok", cached=cached, charged=new, recovered=recover, cost=len(new)))
            conn.execute(
                "INSERT INTO runs(run_id, spent, budget, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(run_id) DO UPDATE SET spent = excluded.spent, budget = excluded.budget, "
                "updated_at = excluded.updated_at",
                (run_id, spent, budget, now),
            )
        return decisions

    def write(self, run_id: str, rows: list[tuple]) -> None:
        """Persist annotations and mark their charges paid, in one transaction.

        `rows`: `(key, annotator, prompt_json, completion_json, score | None, valid, raw)`. A key already stored keeps
        its first score (first writer wins).
        """
        if not rows:
            return
        now = time.time()
        with self.transaction() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO annotations(key, annotator, prompt, completion, score, valid, raw, run_id, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(*row, run_id, now) for row in rows],
            )
            conn.executemany(
                "UPDATE ledger SET status = 'paid', owner = NULL, updated_at = ? WHERE run_id = ? AND key = ?",
                [(now, run_id, row[0]) for row in rows],
            )

    def release(self, run_id: str, keys: Iterable[str], owner: str, status: str = "reserved") -> None:
        """Give up the caller's unfinished reservations (they stay charged; anyone may recover them for free)."""
        keys = list(keys)
        if not keys:
            return
        now = time.time()
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE ledger SET status = ?, owner = NULL, updated_at = ? "
                "WHERE run_id = ? AND key = ? AND owner = ? AND status != 'paid'",
                [(status, now, run_id, k, owner) for k in keys],
            )

    def _held_by_other(self, row: tuple, owner: str, now: float) -> bool:
        status, row_owner, row_pid, row_host, updated_at = row
        if status != "reserved" or row_owner is None or row_owner == owner:
            return False
        if row_host == _HOST:
            if row_pid == os.getpid():  # an earlier call of this process that did not finish: ours to recover
                return False
            return pid_alive(row_pid)
        return now - updated_at < self.lease_seconds


# ----------------------------------------------------------------------------------------------- helpers

_COLUMNS = "key, annotator, prompt, completion, score, valid, raw, run_id, created_at"
_CHUNK = 500  # SQLite's host-parameter limit is >= 999


def read_meta(conn: sqlite3.Connection, name: str) -> str | None:
    """The value of row `name` of the store's `meta` table (None when absent)."""
    row = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    return None if row is None else row[0]


def write_meta(conn: sqlite3.Connection, name: str, value: str) -> None:
    """Set row `name` of the `meta` table (inside the caller's transaction): how another owner of the file (the
    labelling page's settings) keeps a setting next to the schema version."""
    conn.execute(
        "INSERT INTO meta(name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
        (name, value),
    )


def connect_read_only(path: str | os.PathLike, timeout: float = 5.0) -> sqlite3.Connection:
    """A read-only connection to the store at `path` that leaves no file behind.

    A plain read-only connection (`mode=ro`) to a WAL database creates its `-wal` and `-shm` side files and, being
    read-only, cannot remove them: a dry run or a preflight check would leave them next to the store. When neither
    side file exists, no connection has the database open and all its content is in the main file, so it is opened
    `immutable` (no side files, no locks); otherwise `mode=ro`, which joins the side files already there."""
    resolved = Path(path).resolve()
    side_files = any(os.path.exists(f"{resolved}{suffix}") for suffix in ("-wal", "-shm"))
    options = "mode=ro" if side_files else "mode=ro&immutable=1"
    return sqlite3.connect(f"file:{resolved}?{options}", uri=True, timeout=timeout)


def check_readable(path: str, timeout: float = 5.0) -> AnnotationStoreError | None:
    """Open the store at `path` read-only and read its schema version: the error a run would meet, or None. Writes
    nothing (the preflight's check of an existing store)."""
    try:
        conn = connect_read_only(path, timeout)
        try:
            read_meta(conn, "schema_version")
        finally:
            conn.close()
    except sqlite3.Error as error:
        return store_error(path, error, timeout)
    return None


def annotated_keys(conn: sqlite3.Connection, keys: list[str]) -> set[str]:
    """The keys among `keys` present in `annotations`, read on `conn` (inside another owner's transaction too)."""
    found: set[str] = set()
    for i in range(0, len(keys), _CHUNK):
        chunk = keys[i : i + _CHUNK]
        sql = f"SELECT key FROM annotations WHERE key IN ({','.join('?' * len(chunk))})"
        found.update(k for (k,) in conn.execute(sql, chunk))
    return found


def _record(row) -> StoredAnnotation:
    key, annotator, prompt, completion, score, valid, raw, run_id, created_at = row
    return StoredAnnotation(
        key,
        annotator,
        json.loads(prompt),
        json.loads(completion),
        None if score is None else float(score),
        bool(valid),
        raw,
        run_id,
        created_at,
    )


def _fetch(conn: sqlite3.Connection, keys: list[str]) -> dict[str, StoredAnnotation]:
    out: dict[str, StoredAnnotation] = {}
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(f"SELECT {_COLUMNS} FROM annotations WHERE key IN ({marks})", chunk):
            out[row[0]] = _record(row)
    return out


def _ledger(conn: sqlite3.Connection, run_id: str, keys: list[str]) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        sql = f"SELECT key, status, owner, pid, host, updated_at FROM ledger WHERE run_id = ? AND key IN ({marks})"
        for key, *rest in conn.execute(sql, [run_id, *chunk]):
            out[key] = tuple(rest)
    return out


def _spent(conn: sqlite3.Connection, run_id: str) -> int:
    row = conn.execute("SELECT spent FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    return int(row[0]) if row else 0


def kept_annotations(path: str | os.PathLike) -> dict[str, str]:
    """What a refused write leaves safe in the store at `path`: its committed annotations, counted read-only (for
    `aepo_trainer.errors.StorageWriteError.kept`; empty when there is no store yet)."""
    if not os.path.exists(path):
        return {}
    conn = connect_read_only(path, timeout=1)
    try:
        stored = conn.execute("SELECT COUNT(*) FROM annotations").fetchone()[0]
    finally:
        conn.close()
    return {"annotations": f"{stored} paid annotation(s) committed in {os.fspath(path)}"}
