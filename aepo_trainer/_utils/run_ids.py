"""The id of a run's annotation ledger, derived from its `output_dir` (shared by the trainer, on-policy pools and the
annotator factory)."""

from __future__ import annotations

import hashlib
import os

__all__ = ["default_run_id"]


def default_run_id(args) -> str:
    """The annotation ledger of a run: derived from its `output_dir`, so a resumed run (same `output_dir`) keeps
    counting against the same budget and reuses every annotation already paid for."""
    path = os.path.abspath(os.path.expanduser(str(args.output_dir)))
    return f"{os.path.basename(path.rstrip(os.sep)) or 'run'}-{hashlib.sha256(path.encode()).hexdigest()[:12]}"
