"""The run around `AEPOTrainer`'s steps: its ledger id, its checkpoints, when it stops, what it refuses.

Kept apart from the trainer so that each piece reads on its own: `default_run_id` names the annotation ledger of a
run, `last_complete_checkpoint` is what "rerun the same command" resumes from, `AEPOControlCallback` stops training
cleanly on a spent budget or pending labels (and keeps an empty step from advancing the schedule),
`refuse_options_pools_cannot_honour` fails at init on options pool batches cannot honour, and `as_aepo_config`
upgrades a plain `DPOConfig`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import re

from transformers import TrainerCallback
from trl import DPOConfig

from .._utils.run_ids import default_run_id
from ..config import AEPOConfig
from ..errors import storage_guard

logger = logging.getLogger("aepo_trainer.trainer")

__all__ = [
    "ACTIVE_LABELS_FILE",
    "ON_POLICY_STATE_FILE",
    "AEPOControlCallback",
    "as_aepo_config",
    "budget_already_spent",
    "default_run_id",
    "last_complete_checkpoint",
    "refuse_options_pools_cannot_honour",
    "restore_active_labels",
    "restore_run_state",
]

ACTIVE_LABELS_FILE = "aepo_active_labels.json"  # in each checkpoint: the labels an active strategy has learned
ON_POLICY_STATE_FILE = "aepo_on_policy.json"  # in each checkpoint: the on-policy counters (`OnPolicyPools.export`)


def last_complete_checkpoint(output_dir) -> str | None:
    """The newest `checkpoint-N` folder of `output_dir` whose save finished, or None.

    The Trainer writes `trainer_state.json` last, after the model, optimizer, scheduler and RNG states: a folder
    without a readable one was cut short (a kill during the save) and cannot be resumed from.
    """
    if not os.path.isdir(output_dir):
        return None
    steps = []
    for name in os.listdir(output_dir):
        match = re.fullmatch(r"checkpoint-(\d+)", name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            steps.append((int(match.group(1)), os.path.join(output_dir, name)))
    for _, path in sorted(steps, reverse=True):
        try:
            with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as f:
                json.load(f)
        except (OSError, ValueError):
            logger.warning("AEPO: skipping incomplete checkpoint %s (its save did not finish).", path)
            continue
        return path
    return None


def refuse_options_pools_cannot_honour(args) -> None:
    """Options that mean nothing for batches whose pairs are formed in the training step fail here, at init."""
    refusals = {
        "precompute_ref_log_probs": (
            "the preference pairs are formed during training, so they do not exist before it. Set "
            "`precompute_ref_log_probs=False` (the reference log-probs are then computed once per response in each "
            "batch; with policy signals, `precompute_pool_ref_logps=True` computes every candidate's once before "
            "training), or run `aepo select` first and train on the resulting pair dataset."
        ),
        "padding_free": (
            "pool batches are laid out as padded [responses, length] tensors (each selected response once). Set "
            "`padding_free=False`, or run `aepo select` first and train on the pair dataset."
        ),
        "use_liger_kernel": (
            "the pool loss computes each response's log-probs once through the fused LM head; Liger's fused DPO loss "
            "would bypass it. Set `use_liger_kernel=False`."
        ),
    }
    for name, why in refusals.items():
        if getattr(args, name, False):
            raise ValueError(f"`{name}=True` cannot be used with candidate-pool datasets: {why}")


class AEPOControlCallback(TrainerCallback):
    """Stops training cleanly (with a checkpoint) when the annotation budget is spent or labels are pending, and
    undoes the learning-rate schedule's advance on a step that formed no pair (its optimizer step changed nothing)."""

    def __init__(self, trainer):  # an AEPOTrainer
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        """An active strategy's surrogate and the on-policy counters go into the checkpoint: a resumed run selects
        as an uninterrupted one, and its running totals continue."""
        trainer = self.trainer
        active = trainer.pool_reducer.active if trainer.pool_reducer is not None else None
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if not trainer.accelerator.is_main_process or not os.path.isdir(folder):
            return control
        for name, owner in ((ACTIVE_LABELS_FILE, active), (ON_POLICY_STATE_FILE, trainer.aepo_on_policy)):
            if owner is not None:
                path = os.path.join(folder, name)
                with storage_guard(path), open(path, "w", encoding="utf-8") as f:
                    json.dump(owner.export(), f)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        trainer = self.trainer
        trainer.restore_schedule_after_empty_step()  # no pair on any process in this step: the schedule stays
        if trainer.aepo_stop_reason is not None and not control.should_training_stop:
            control.should_training_stop = True
            control.should_save = True  # a budget stop always leaves a checkpoint to resume from
            logger.warning("AEPO: stopping training at step %d. %s", state.global_step, trainer.aepo_stop_reason)
        return control


def as_aepo_config(args: DPOConfig) -> AEPOConfig:
    """Upgrade a plain `DPOConfig` to an `AEPOConfig` with default AEPO fields, keeping every DPO/Trainer value.

    The values were already post-processed by `DPOConfig.__post_init__` (devices, logging dirs, deprecations), so
    they are copied as they are rather than run through `__post_init__` a second time.
    """
    if not isinstance(args, DPOConfig):
        raise TypeError(f"`args` must be an AEPOConfig or a DPOConfig, got {type(args).__name__}.")
    upgraded = copy.copy(args)
    upgraded.__class__ = AEPOConfig
    dpo_fields = {f.name for f in dataclasses.fields(DPOConfig)}
    for f in dataclasses.fields(AEPOConfig):
        if f.name not in dpo_fields:
            setattr(
                upgraded, f.name, f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            )
    return upgraded


def restore_run_state(trainer, checkpoint: str) -> None:
    """On resume, every rank: an active strategy's labels (`restore_active_labels`) and the on-policy counters
    (`ON_POLICY_STATE_FILE`) come back from `checkpoint`."""
    if trainer.pool_reducer is not None and trainer.pool_reducer.active is not None:
        restore_active_labels(trainer.pool_reducer.active, checkpoint, trainer.accelerator)
    if trainer.aepo_on_policy is not None:
        state = _read_on_main_process(checkpoint, ON_POLICY_STATE_FILE, trainer.accelerator, "generated tokens count 0")
        if state:
            trainer.aepo_on_policy.absorb(state)


def restore_active_labels(active, checkpoint: str, accelerator) -> None:
    """Read an active strategy's labels from `checkpoint` on the main process and teach them to every rank's
    surrogate (a resumed run selects as an uninterrupted one would)."""
    items = _read_on_main_process(checkpoint, ACTIVE_LABELS_FILE, accelerator, "the active surrogate starts cold")
    if items:
        active.absorb(items)  # {labels, tests} (issue 27), or an older checkpoint's bare label list


def _read_on_main_process(checkpoint: str, name: str, accelerator, otherwise: str):
    """The JSON file `name` of `checkpoint`, read on the main process and broadcast to every rank (None, with a
    warning saying `otherwise`, when the checkpoint has none)."""
    from accelerate.utils import broadcast_object_list

    items = [None]
    if accelerator.is_main_process:
        path = os.path.join(checkpoint, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                items = [json.load(f)]
        else:
            logger.warning("AEPO: %s has no %s: %s.", checkpoint, name, otherwise)
    if accelerator.num_processes > 1:
        broadcast_object_list(items, from_process=0)
    return items[0]


def budget_already_spent(trainer) -> bool:
    """True when the training budget cannot pay for one more prompt: the run stops before fetching data (a rerun of a
    run that stopped for its budget trains nothing and changes no weight). Decided on the main process, broadcast."""
    args = trainer.args
    if args.annotation_budget is None:
        return False
    from accelerate.utils import broadcast_object_list

    verdict = [None]
    service = trainer.annotation_service
    if service is not None:
        need = 2 if args.selection_strategy == "west_of_n" else args.num_annotations
        verdict = [service.budget_message() if service.remaining < need else None]
    if trainer.accelerator.num_processes > 1:
        broadcast_object_list(verdict, from_process=0)
    if verdict[0] is not None and trainer.aepo_stop_reason is None:
        trainer.aepo_stop_reason = verdict[0]
        logger.warning("AEPO: nothing to train. %s", verdict[0])
    return verdict[0] is not None
