"""Selection: which k of each prompt's N candidates are annotated.

* `kernel.py`: the fused, batched AEPO objective (representativeness + λ·diversity) and the paper's baselines
  (random, West-of-N, representativeness only, k-medoids): `select_subsets`.
* `search.py`: the batched searches behind it (exact k = 2, greedy + seeded local search, exhaustive) and the
  counter-based hash that makes every random choice reproducible.
* `keys.py`: `prompt_key`, the per-prompt key of every random choice.
* `surrogate.py`, `acquisitions.py`, `active.py`: active selection that learns from the paid labels — a Bayesian
  linear reward surrogate, the batched acquisitions (DeltaUCB, Thompson sampling, MaxMinLCB, InfoMax, ...) and the
  stateful `ActiveSelector` that alternates `select` and `observe`.
* `implicit_reward.py`: the policy's implicit reward β·(log π − log π_ref) per candidate, a selection feature.
* `prompts.py`: prompt-level selection — which prompts of a window get labels when the budget covers fewer prompts
  than the data (random, greedy D-optimal as APO, the policy's implicit-reward spread).
"""

from __future__ import annotations

from ..choices import SELECTION_SEARCHES as SEARCHES
from ..choices import SELECTION_STRATEGIES as STRATEGIES
from .active import ActiveSelector, BatchQuality
from .kernel import SelectionResult, select_subsets
from .keys import prompt_key
from .surrogate import BayesianLinearSurrogate

__all__ = [
    "SEARCHES",
    "STRATEGIES",
    "ActiveSelector",
    "BatchQuality",
    "BayesianLinearSurrogate",
    "SelectionResult",
    "prompt_key",
    "select_subsets",
]
