"""What the store raises, and where it lives by default (imported by `annotations` and re-exported there)."""

from __future__ import annotations

import os
import sqlite3

__all__ = [
    "STORE_FILE",
    "AnnotationStoreError",
    "BudgetExhausted",
    "default_store_path",
    "rollback_quietly",
    "store_error",
]


class BudgetExhausted(RuntimeError):
    """The annotation budget of a run is spent.

    `AnnotationService.annotate` returns `budget_exhausted=True` by default; with `on_budget_exhausted="raise"` it
    raises this instead, after everything annotated has been saved. `outcome` holds what the call did obtain.
    """

    def __init__(self, message: str, *, spent: int, budget: int, run_id: str, outcome=None):
        super().__init__(message)
        self.spent = spent
        self.budget = budget
        self.run_id = run_id
        self.outcome = outcome


# ------------------------------------------------------------------------------------------------------- helpers


#: The store's file name when none is given: `<output_dir>/annotations.sqlite`.
STORE_FILE = "annotations.sqlite"


def default_store_path(args) -> str | None:
    """The run's store: `args.annotation_store`, else `<args.output_dir>/annotations.sqlite` (None without either).
    The one statement of this default."""
    store = getattr(args, "annotation_store", None)
    if store:
        return store
    output_dir = getattr(args, "output_dir", None)
    return os.path.join(str(output_dir), STORE_FILE) if output_dir else None


class AnnotationStoreError(RuntimeError):
    """The SQLite annotation store cannot be used: locked by another process, corrupt, or not a store. A user
    error, reported by the `aepo` CLI without a traceback (exit code 2); nothing was annotated or paid for."""

    is_user_error = True  # read by `aepo_trainer.cli.main`


def store_error(path: str, error: sqlite3.Error, timeout: float) -> AnnotationStoreError:
    text = str(error)
    if "locked" in text or "busy" in text:
        hint = (
            f"it is locked by another process (waited {timeout:g}s for its write lock). Wait for that run to finish, "
            "or give this run its own `annotation_store` path; a store on a network file system (NFS) also shows "
            "this, keep it on a local disk"
        )
    elif isinstance(error, sqlite3.DatabaseError) and not isinstance(error, sqlite3.OperationalError):
        hint = (
            "it is corrupt or not an SQLite annotation store. Restore it from a backup, or move it away and point "
            "`annotation_store` at a new path (its annotations would then be paid again)"
        )
    else:
        hint = "check that the path is a writable file on a local disk"
    return AnnotationStoreError(f"Annotation store {path} cannot be used: {hint} (sqlite3: {text}).")


def rollback_quietly(conn: sqlite3.Connection) -> None:
    """Roll back an open transaction; SQLite may have rolled it back itself (a full disk does): no second error."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
