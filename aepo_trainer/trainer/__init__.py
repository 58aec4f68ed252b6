"""The training step: `AEPOTrainer` and the modules of its step.

* `core`: `AEPOTrainer` (a `DPOTrainer`; hooks only).
* `step`: one pool batch -> select, annotate, pair -> a group batch (`reduce_pool_batches`).
* `group_batch`: the pairs laid out as one tensor batch.
* `pool_loss`: forward passes and TRL's loss on the pairs; `losses`: the reward-aware loss.
* `implicit_rewards`: the policy's implicit rewards of the candidates (for `implicit_reward` selection).
* `on_policy`: pools sampled from the policy inside the step; `run_control`: budget stops and the run's settings.

`AEPOTrainer` is imported lazily, so importing a step module does not import the whole trainer.
"""

from __future__ import annotations

from .._utils.lazy import lazy_getattr

_EXPORTS = {"AEPOTrainer": "aepo_trainer.trainer.core"}  # lazy: the step's modules must not import the trainer
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
