"""Errors the `aepo` command turns into a message on stderr and a documented exit code.

| code | meaning |
|---|---|
| 0 | success |
| 1 | unexpected error (a bug, or a failure of a model/library): traceback printed |
| 2 | bad input: usage, missing or unreadable file, bad column or row, invalid setting; or the disk refused a write (full, read-only, no permission: `aepo_trainer.errors.StorageWriteError`) — rerun the same command once fixed |
| 3 | annotation budget exhausted: the pairs of the prompts annotated so far are written |
| 4 | annotations pending: a human annotation queue was written; rerun when labels are in |
| 130 | interrupted (Ctrl-C); rerun the same command to resume |
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_BUDGET_EXHAUSTED = 3
EXIT_ANNOTATIONS_PENDING = 4
EXIT_INTERRUPTED = 130


class CLIError(Exception):
    """An error the CLI reports as one message (no traceback) with `exit_code`."""

    exit_code = EXIT_ERROR


class InputError(CLIError):
    """Bad files, columns, rows or settings: exit code 2."""

    exit_code = EXIT_BAD_INPUT
