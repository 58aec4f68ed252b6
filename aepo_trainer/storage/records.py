"""The store's records as Python objects (an annotation, a reservation) and the liveness test of a reservation's
owner process; re-exported by `annotations`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

__all__ = ["Reservation", "StoredAnnotation", "pid_alive"]


@dataclass(frozen=True)
class StoredAnnotation:
    """One annotation as stored. `score` is None when the annotator's result was invalid (`valid` False)."""

    key: str
    annotator: str
    prompt: object
    completion: object
    score: float | None
    valid: bool
    raw: str | None
    run_id: str | None
    created_at: float


@dataclass
class Reservation:
    """The ledger's decision for one prompt (one group of keys).

    `status`: "ok" (cached keys are served; `to_annotate` are reserved for the caller), "wait" (another live process
    holds a reservation on one of the keys: ask again later), or "skip" (the new charges do not fit in the budget;
    nothing was reserved).
    """

    status: str
    cached: dict[str, StoredAnnotation] = field(default_factory=dict)
    charged: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    cost: int = 0

    @property
    def to_annotate(self) -> list[str]:
        return self.charged + self.recovered


def pid_alive(pid: int | None) -> bool:
    """True when a process of this id runs on this host (a reservation's owner is still alive)."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True
