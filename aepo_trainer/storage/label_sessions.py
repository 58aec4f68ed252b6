"""Sign-in sessions of the labelling page: a random id per sign-in, kept server-side with an expiry.

Why server-side: a session that is only a signature (the page's first design: an HMAC under the token) is the same
value at every sign-in, never expires and cannot be taken back — `/logout` could only ask the browser to forget it.
Here each sign-in draws a fresh 256-bit id (`secrets.token_urlsafe`); the store keeps only its SHA-256 digest (a copy
of the store file signs nobody in), the labeller and the expiry. `/logout` deletes the row, and a labeller removed from
the token file loses every session at the next request (`LabelSessions.revoke`). Sessions live in the run's store
file (table `label_sessions`, owned by this module), so a restart of the page keeps everybody signed in.
"""

from __future__ import annotations

import hashlib
import secrets
import time

from .annotations import AnnotationStore

__all__ = ["LabelSessions"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS label_sessions (
    digest TEXT PRIMARY KEY,
    labeller TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
)
"""


class LabelSessions:
    """The page's open sessions in `store`; each lasts `lifetime_seconds` from sign-in."""

    def __init__(self, store: AnnotationStore, lifetime_seconds: float):
        self.store = store
        self.lifetime_seconds = float(lifetime_seconds)
        with store.transaction() as conn:
            conn.execute(_SCHEMA)
            conn.execute("DELETE FROM label_sessions WHERE expires_at < ?", (time.time(),))

    def open(self, labeller: str) -> str:
        """A new session id for `labeller` (the cookie value)."""
        session = secrets.token_urlsafe(32)
        now = time.time()
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO label_sessions(digest, labeller, created_at, expires_at) VALUES (?, ?, ?, ?)",
                (_digest(session), labeller, now, now + self.lifetime_seconds),
            )
        return session

    def labeller(self, session: str | None) -> str | None:
        """The labeller of an open, unexpired session, or None."""
        if not session or len(session) > 128:
            return None
        row = (
            self.store.connection()
            .execute("SELECT labeller, expires_at FROM label_sessions WHERE digest = ?", (_digest(session),))
            .fetchone()
        )
        if row is None or row[1] < time.time():
            return None
        return row[0]

    def close(self, session: str | None) -> None:
        """End one session (`/logout`)."""
        if session:
            with self.store.transaction() as conn:
                conn.execute("DELETE FROM label_sessions WHERE digest = ?", (_digest(session),))

    def revoke(self, labellers) -> int:
        """End every session of `labellers` (removed from the token file); returns how many ended."""
        labellers = list(labellers)
        if not labellers:
            return 0
        with self.store.transaction() as conn:
            cursor = conn.execute(
                f"DELETE FROM label_sessions WHERE labeller IN ({','.join('?' * len(labellers))})", labellers
            )
            return cursor.rowcount


def _digest(session: str) -> str:
    return hashlib.sha256(session.encode("utf-8")).hexdigest()
