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

__all__ = ["AEPOTrainer"]


def __getattr__(name: str):
    if name == "AEPOTrainer":
        from .core import AEPOTrainer  # lazy: the package's submodules must not import the trainer

        return AEPOTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
