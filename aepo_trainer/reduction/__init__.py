"""One batch of pools reduced to preference pairs: select -> annotate -> pair (shared by the trainer and `aepo select`).

* `reducer`: `PoolReducer`, `ReducedBatch`, `STATS_FIELDS`.
* `pairing`: `make_pairs` and the pairing rules.

Public names are imported lazily, so importing one of the submodules does not import the others.
"""

from __future__ import annotations

from .._utils.lazy import lazy_getattr

_EXPORTS = {
    "STATS_FIELDS": "aepo_trainer.reduction.reducer",
    "PoolReducer": "aepo_trainer.reduction.reducer",
    "ReducedBatch": "aepo_trainer.reduction.reducer",
    "Selected": "aepo_trainer.reduction.reducer",
    "Pair": "aepo_trainer.reduction.pairing",
    "PairingResult": "aepo_trainer.reduction.pairing",
    "make_pairs": "aepo_trainer.reduction.pairing",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
