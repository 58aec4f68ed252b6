"""The package's own error types, and the one place where a write the disk refused becomes a clear error.

Why a module of its own: every stage writes (the annotation store and its usage ledger, `aepo select`'s chunks and
output, `aepo generate`'s pools, Safer-Instruct's checkpoint, the labelling page's answers, the trainer's card), and a
full disk, a read-only location or a missing permission must read the same everywhere: which path, what was kept,
and that rerunning the same command after fixing it resumes without paying twice (the store never loses a committed
annotation and never charges one twice; finished chunks and pools are skipped). Writers wrap their writes in
`storage_guard(path)` instead of each catching `OSError`/`sqlite3.Error` in its own way; the `aepo` CLI turns
`StorageWriteError` into one paragraph and exit code 2, the labelling page into HTTP 507.

What counts as "the disk refused the write":

| cause | raised as |
|---|---|
| `ENOSPC`, `EDQUOT` (disk or quota full), SQLite `SQLITE_FULL` ("database or disk is full") | `reason="full"` |
| `EFBIG` (a file-size limit: `ulimit -f`/`RLIMIT_FSIZE`, or the filesystem's largest file) | `reason="full"` |
| `EROFS`, SQLite `SQLITE_READONLY*`, or any refusal on a filesystem mounted read-only | `reason="read-only"` |
| `EACCES`, `EPERM`, SQLite `SQLITE_PERM`/`SQLITE_CANTOPEN` in a folder this user may not write | `reason="permission"` |
| SQLite `SQLITE_IOERR*` ("disk I/O error": SQLite maps `EFBIG` and other write failures to it) | `reason="io"` |

Nothing else is translated: a locked or corrupt store, a missing input file or a bug keep their own errors.
This module imports only the standard library (every stage may import it).
"""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["AEPOError", "StorageWriteError", "storage_error_of", "storage_guard"]

_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_READ_ONLY = {errno.EROFS}
_PERMISSION = {errno.EACCES, errno.EPERM}
# Libraries that raise OSError without an errno (pyarrow) still name the cause in their message.
_MESSAGES = {
    "no space left on device": "full",
    "disk quota exceeded": "full",
    "file too large": "full",
    "read-only file system": "read-only",
    "permission denied": "permission",
}

_WHAT = {
    "full": "the disk (or a quota or file-size limit) is full",
    "read-only": "the location is read-only",
    "permission": "this user may not write there",
    "io": "the disk refused the write (an I/O error: a full disk, a file-size limit, or failing storage)",
}
_FIX = {
    "full": "free some space there (or raise the quota or `ulimit -f`)",
    "read-only": "make the location writable (or remount it read-write)",
    "permission": "give this user write permission there",
    "io": "check the disk (free space, `ulimit -f`, `dmesg`)",
}


class AEPOError(Exception):
    """Base class of aepo-trainer's own errors (catch it to handle any of them)."""


class StorageWriteError(AEPOError):
    """A write the storage refused: the disk is full, the location is read-only, or permission is missing.

    Nothing committed before the failed write is lost: the annotation store rolled the write back, finished chunks
    and pools stay on disk. The message names the path, what was kept and how to resume; the `aepo` CLI prints it
    without a traceback and exits with code 2.

    Attributes:
        path: the file or folder that could not be written (None when unknown).
        reason: "full", "read-only", "permission" or "io" (see the module docstring).
        detail: the underlying error's text (also chained as `__cause__`).
        kept: what is safe on disk, by kind ("annotations", "chunks", ...), added by the layers the error crossed.
    """

    exit_code = 2  # read by `aepo_trainer.cli.main`

    def __init__(self, path: str | os.PathLike | None, reason: str, detail: str):
        self.path = None if path is None else os.fspath(path)
        self.reason = reason
        self.detail = detail
        self.kept: dict[str, str] = {}
        super().__init__(path, reason, detail)

    def keep(self, kind: str, text: str) -> None:
        """Record what is safe on disk (the first note of each kind wins: the innermost layer knows best)."""
        self.kept.setdefault(kind, text)

    @property
    def summary(self) -> str:
        """What happened, without the advice: `cannot write <path>: <why> (<the underlying error>)`."""
        where = f"cannot write {self.path}" if self.path else "cannot write"
        return f"{where}: {_WHAT[self.reason]} ({self.detail})"

    @property
    def fix(self) -> str:
        """What the user does about it (before retrying)."""
        return _FIX[self.reason][0].upper() + _FIX[self.reason][1:]

    def __str__(self) -> str:
        kept = "; ".join(self.kept.values()) if self.kept else "everything committed before this write"
        return (
            f"{self.summary}. Kept: {kept}; nothing already paid for is lost. "
            f"{self.fix}, then rerun the same command: it resumes where it stopped and pays for nothing twice."
        )


def storage_error_of(error: BaseException, path: str | os.PathLike | None = None) -> StorageWriteError | None:
    """`error` as a `StorageWriteError` when it is a write the storage refused, else None. `path` is what was being
    written (an `OSError`'s own `filename` wins when it has one)."""
    if isinstance(error, StorageWriteError):
        return error
    if isinstance(error, sqlite3.Error):
        reason = _sqlite_reason(error, path)
        detail = f"sqlite3: {error}"
    elif isinstance(error, OSError):
        reason = _os_reason(error, path)
        path = error.filename if error.filename not in (None, "") else path
        detail = error.strerror or str(error)
        if error.errno is not None:
            detail = f"{errno.errorcode.get(error.errno, error.errno)}: {detail}"
    else:
        return None
    if reason is None:
        return None
    translated = StorageWriteError(path, reason, detail)
    translated.__cause__ = error
    return translated


@contextmanager
def storage_guard(
    path: str | os.PathLike | None = None, *, kept: Callable[[], dict[str, str]] | None = None
) -> Iterator[None]:
    """Turn a refused write inside the block into `StorageWriteError` (naming `path`); other errors pass unchanged.

    `kept`: called when a `StorageWriteError` leaves the block (raised inside or translated here), returns notes of
    what is safe on disk (`{"chunks": "3 finished chunks in ..."}`); a failure to compute them is ignored.
    """
    try:
        yield
    except (OSError, sqlite3.Error, StorageWriteError) as error:
        translated = storage_error_of(error, path)
        if translated is None:
            raise
        if kept is not None:
            try:
                notes = kept()
            except Exception:  # the notes are a courtesy; the error must get out
                notes = {}
            for kind, text in notes.items():
                translated.keep(kind, text)
        if translated is error:
            raise
        raise translated from error


def _os_reason(error: OSError, path) -> str | None:
    if error.errno in _FULL:
        return "full"
    if error.errno in _READ_ONLY:
        return "read-only"
    if error.errno in _PERMISSION:
        return "read-only" if _on_read_only_filesystem(error.filename or path) else "permission"
    if error.errno is None:
        text = str(error).lower()
        for needle, reason in _MESSAGES.items():
            if needle in text:
                return reason
    return None


def _sqlite_reason(error: sqlite3.Error, path) -> str | None:
    name = getattr(error, "sqlite_errorname", "") or ""
    text = str(error).lower()
    if name == "SQLITE_FULL" or "disk is full" in text:
        return "full"
    if name.startswith("SQLITE_READONLY") or "readonly database" in text:
        return "read-only"
    if name in ("SQLITE_PERM", "SQLITE_CANTOPEN") or "unable to open database file" in text:
        if _on_read_only_filesystem(path):
            return "read-only"
        folder = os.path.dirname(os.path.abspath(os.fspath(path))) if path else None
        return "permission" if folder and os.path.isdir(folder) and not os.access(folder, os.W_OK) else None
    if name.startswith("SQLITE_IOERR") or "disk i/o error" in text:
        return "io"
    return None


def _on_read_only_filesystem(path) -> bool:
    """Whether the filesystem holding `path` (or its nearest existing parent) is mounted read-only."""
    if not path:
        return False
    current = os.path.abspath(os.fspath(path))
    while current and not os.path.exists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    try:
        return bool(os.statvfs(current).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False
