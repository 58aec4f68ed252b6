"""Policy signals of every candidate of a pool batch at the cost of little more than a DPO step.

Selection that reads the policy (`implicit_reward_gap`, the surrogate's `active_implicit_reward_feature` and
`active_policy_features`) needs, before any candidate is selected, for each of the N candidates y of a prompt x:

    log π(y|x), log π_ref(y|x)   ->  implicit reward r = β·(log π − log π_ref)
    h(y|x)                       ->  the policy's representation: mean of the last hidden layer over y's tokens

Three things keep that cheap (issue 33):

1. **The reference never changes**, so log π_ref(y|x) is computed once per candidate and kept in a
   `ReferenceLogpsCache`, keyed by the reference's identity (a digest of its full weights with their dtypes, which
   reference: `ref_model`, the PEFT policy with its adapter disabled, or its frozen "ref" adapter, and the precision the
   values are computed at: the run's mixed precision, or the bf16 autocast of `policy_signals_dtype`; digested on the
   main process and broadcast, so every rank keys alike) and by the candidate's kept tokens (prompt
   and completion after TRL's truncation). It is filled in the training step the first time a candidate is scored, or
   for the whole training set before training with `AEPOConfig.precompute_pool_ref_logps` (TRL's
   `precompute_ref_log_probs`, for candidates instead of pairs). It is kept in the run's store (table
   `reference_logps`, `storage.reference_logps`: the main process writes every rank's new values, at each step its
   own and at every save and at the end of training all ranks' together, and reads them back at the start of
   training for every rank), so a resumed or restarted run against the same reference, with or without a checkpoint,
   and every rank, reuse it; every checkpoint also carries it (gathered from all ranks), so a checkpoint restores it
   even where the store is not at hand.
2. **The N candidates share the prompt** (`candidate_scoring`): each prompt is encoded once (`use_cache=True`) and
   its key/value cache is expanded over its candidates (`DynamicCache.batch_repeat_interleave`), which are then
   scored from that prefix. The prompt's tokens are not encoded N times. Only `truncation_mode="keep_start"` keeps every candidate's prompt whole;
   under `keep_end` a long candidate cuts its prompt's start, so those batches are scored as whole sequences.
3. **No pass is repeated**: the reference log-probs of the selected candidates feed the step's DPO loss (TRL's
   `precompute_ref_log_probs` path: the step makes no reference pass), and the hidden-state features come out of the
   same policy pass as the log-probs. The policy log-probs of the selected pair cannot be reused by the step: the
   step needs them with gradients, in train mode.

Each prompt is one forward unit (its prompt pass, then its candidates in chunks of `implicit_reward_batch_size`), so
a candidate's log-prob depends only on its own pool, never on which prompts share its batch: a cached reference value
is bitwise the value a fresh pass computes, and at the first step (policy = reference) every implicit reward is
exactly 0, as before. Log-probs are computed from the backbone's last hidden state through the output embedding in
float32 (the LM head TRL fuses); models whose head scales or soft-caps its logits, and prompt-learning PEFT, are scored
by the whole-sequence fused-head pass of `trainer.implicit_rewards` instead (no hidden-state features there).

`AEPOConfig.policy_signals_dtype = "bfloat16"` scores the signals (policy and reference) under bf16 autocast while the
step trains in float32: the faster pass of hardware with fast bf16; the reference values of the two precisions are
cached apart (identity suffix "|autocast=bfloat16"), and the DPO loss reads the step-precision ones, so it is DPO's
exactly: those are scored for the selected candidates only (`PolicySignals.step_reference`), not for all N.

`AEPOConfig.policy_signals_every` = s refreshes the signals on every s-th optimizer step only; the prompts of the other
steps are selected by the strategy's fallback (`active_cold_start`), as a prompt without implicit-reward spread is.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import TrainerCallback

from .._trl_compat import disable_gradient_checkpointing, use_adapter
from ..selection.implicit_reward import implicit_rewards
from .candidate_scoring import prefix_scoring_supported, score_pool_candidates
from .reference import reference_source
from .reference_cache import (
    ReferenceLogpsCache,
    candidate_keys,
    reference_identity,
    reference_weights_digest,
    weights_are_sharded,
)

__all__ = [
    "REF_LOGPS_FILE",
    "PolicySignals",
    "PolicySignalsCallback",
    "ReferenceLogpsCache",
    "candidate_keys",
    "check_policy_signals_setup",
    "compute_policy_signals",
    "load_from_store",
    "policy_signals_due",
    "policy_signals_of_step",
    "precompute_reference_logps",
    "prepare_reference_cache",
    "reference_identity",
    "restore_reference_cache",
    "save_to_store",
]

#: The reference log-probs cache inside a checkpoint folder.
REF_LOGPS_FILE = "aepo_reference_logps.pt"


# ------------------------------------------------------------------------------------------------ in the step
@dataclass
class PolicySignals:
    """The policy signals of one pool batch (`[B, N]`, 0 on padding), for selection and for the step."""

    implicit_rewards: torch.Tensor
    policy_logps: torch.Tensor | None  # None from the whole-sequence fallback pass (`trainer.implicit_rewards`)
    ref_logps: torch.Tensor | None
    policy_features: torch.Tensor | None  # [B, N, H], with `active_policy_features`
    # with bf16 signals (`ref_logps` None): [(b, j)] -> [R] the step-precision reference log-probs of those candidates
    step_reference: Callable[[list[tuple[int, int]]], torch.Tensor] | None = None

    def for_selection(self) -> dict:
        signals = {"implicit_rewards": self.implicit_rewards}
        if self.policy_features is not None:
            signals["policy_features"] = self.policy_features
        return signals


def policy_signals_of_step(trainer):
    """The step's policy-signals function for `step.reduce_pool_batches`: `compute_policy_signals`, or one that
    answers None on the steps `policy_signals_every` skips."""
    fresh = policy_signals_due(trainer)
    return lambda batch: compute_policy_signals(trainer, batch) if fresh else None


def prepare_reference_cache(trainer, checkpoint) -> None:
    """Before training (every rank): the values of this reference in the run's store and, on a resume, in its
    checkpoint; then, with `precompute_pool_ref_logps`, every training candidate's reference log-prob that is still
    missing (one pass; on-policy pools do not exist yet), saved to the store."""
    state = signals_state(trainer)
    if checkpoint and restore_reference_cache(trainer, checkpoint) and trainer.accelerator.is_main_process:
        for cache in state.caches:  # a checkpoint's values reach a store that lacks them: once, from the main process
            cache.unsaved.update(cache.values)
    load_from_store(trainer)
    if trainer.args.precompute_pool_ref_logps and trainer.train_dataset is not None:
        from ..data.pools import is_pool_dataset

        if is_pool_dataset(trainer.train_dataset, trainer.args):
            precompute_reference_logps(trainer, trainer.train_dataset, trainer.args.per_device_train_batch_size)
    save_to_store(trainer, all_ranks=True)


def policy_signals_due(trainer) -> bool:
    """True on the optimizer steps whose prompts are selected with fresh policy signals (`policy_signals_every`)."""
    every = getattr(trainer.args, "policy_signals_every", 1)
    return trainer.state.global_step % every == 0


def check_policy_signals_setup(trainer) -> None:
    """At trainer init, before any paid or slow work: refuse what the policy signals cannot do soundly.

    * Sharded weights (FSDP, DeepSpeed ZeRO-3): the reference log-probs cached in the run's store are keyed by a
      digest of the reference's full weights, which no rank holds, and the signals pass runs the unwrapped model.
    * `policy_signals_dtype="bfloat16"` on a CUDA device without bf16 (CPU bf16 autocast always works)."""
    args = trainer.args
    if weights_are_sharded(trainer):
        raise ValueError(
            "AEPOConfig.selection_strategy / active_implicit_reward_feature / active_policy_features: policy signals "
            "are not supported with FSDP or DeepSpeed ZeRO-3: the reference log-probs they cache (in memory, in "
            "checkpoints, in the run's store `reference_logps`; all of them with `precompute_pool_ref_logps=True`) "
            "are keyed by a digest of the reference's full weights, which sharding leaves on no rank. Train with "
            "DDP or ZeRO-1/2, or choose a selection strategy without policy signals."
        )
    device = trainer.accelerator.device
    if args.policy_signals_dtype == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(
            "AEPOConfig.policy_signals_dtype='bfloat16' is invalid on this GPU: it does not support bfloat16 "
            "(torch.cuda.is_bf16_supported() is False); use policy_signals_dtype='auto'."
        )


class _TrainerSignalsState:
    """The trainer's policy-signals state: the reference caches, and whether prefix scoring applies to its model."""

    def __init__(self, trainer):
        accelerator = trainer.accelerator
        # `policy_signals_dtype="bfloat16"` while training in float32: the signals are scored in bf16, their
        # reference values kept in a cache (and store rows) of their own
        self.signals_bf16 = getattr(trainer.args, "policy_signals_dtype", "auto") == "bfloat16" and not (
            trainer.args.bf16
        )
        # The caches' keys: the reference's weights and the precision of each computation. Digested on the main
        # process and handed to every rank (one collective), so that all ranks' values share one key.
        identities = None
        if accelerator.is_main_process:
            digest = reference_weights_digest(trainer)
            identities = [
                reference_identity(digest, f"mixed_precision={accelerator.mixed_precision}"),
                reference_identity(digest, "autocast=bfloat16"),
            ]
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            identities = broadcast_object_list([identities], from_process=0)[0]
        self.cache = ReferenceLogpsCache(identities[0])  # the step's precision: what the DPO loss reads
        self.signals_cache = ReferenceLogpsCache(identities[1]) if self.signals_bf16 else self.cache
        self.prefix_ok = prefix_scoring_supported(accelerator.unwrap_model(trainer.model))
        if trainer.ref_model is not None:
            self.prefix_ok = self.prefix_ok and prefix_scoring_supported(accelerator.unwrap_model(trainer.ref_model))
        self.forward_passes = {"policy": 0, "reference": 0}  # candidate units scored (tests count them)
        self.table = None  # the run's `ReferenceLogpsTable` (main process), opened on first use

    @property
    def caches(self) -> list[ReferenceLogpsCache]:
        """Every reference cache of the run (one, or two with bf16 signals)."""
        return [self.cache] if self.signals_cache is self.cache else [self.cache, self.signals_cache]


def _scoring_context(trainer, bf16: bool):
    """The autocast of a policy-signals pass: bf16 (`policy_signals_dtype`), or the step's own, as TRL's reference
    pass runs."""
    if bf16:
        return torch.autocast(device_type=trainer.accelerator.device.type, dtype=torch.bfloat16)
    return trainer.compute_loss_context_manager()


def _store_table(trainer):
    """The `reference_logps` table of the run's store, on the process that holds the store (the main one); None
    elsewhere, and for a run without an annotation service."""
    state = signals_state(trainer)
    if state.table is None:
        service = getattr(trainer, "annotation_service", None)
        if service is None or not trainer.accelerator.is_main_process:
            return None
        from ..storage.reference_logps import ReferenceLogpsTable

        state.table = ReferenceLogpsTable(service.store)
    return state.table


def load_from_store(trainer) -> int:
    """Every rank's cache gets this reference's values from the run's store (read on the main process, broadcast:
    one collective when several processes train). Returns the entries added here."""
    state = signals_state(trainer)
    table = _store_table(trainer)
    values = {c.identity: table.load(c.identity) for c in state.caches} if table is not None else {}
    for cache in state.caches:  # what the store holds already is not written again (a checkpoint's values)
        stored = values.get(cache.identity, {})
        cache.unsaved = {k: v for k, v in cache.unsaved.items() if k not in stored}
    if trainer.accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        values = broadcast_object_list([values], from_process=0)[0]
    return sum(c.absorb({"identity": c.identity, "values": values.get(c.identity, {})}) for c in state.caches)


def save_to_store(trainer, all_ranks: bool) -> int:
    """Write the values computed since the last save into the run's store (main process). `all_ranks=True` gathers
    every rank's first (one collective: call it on every rank); otherwise only the main process's own are written
    and the other ranks keep theirs for the next gathering save. Returns the rows added."""
    state = getattr(trainer, "aepo_policy_signals", None)
    if state is None:
        return 0
    world = trainer.accelerator.num_processes
    if all_ranks and world > 1:
        from accelerate.utils import gather_object

        unsaved: dict[str, dict[bytes, float]] = {c.identity: {} for c in state.caches}
        for part in gather_object([{c.identity: c.take_unsaved() for c in state.caches}]):
            for identity, values in part.items():
                unsaved[identity].update(values)
    elif trainer.accelerator.is_main_process:
        unsaved = {c.identity: c.take_unsaved() for c in state.caches}
    else:
        return 0
    table = _store_table(trainer)
    return sum(table.save(identity, values) for identity, values in unsaved.items()) if table is not None else 0


def signals_state(trainer) -> _TrainerSignalsState:
    state = getattr(trainer, "aepo_policy_signals", None)
    if state is None:
        state = _TrainerSignalsState(trainer)
        trainer.aepo_policy_signals = state
    return state


def _reference_model_context(trainer):
    """(model to score with, context) for the reference, exactly as `DPOTrainer._compute_loss` obtains it."""
    import contextlib

    source = reference_source(trainer)
    if source in ("ref_adapter", "adapter_disabled"):
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        return unwrapped, use_adapter(unwrapped, adapter_name="ref" if source == "ref_adapter" else None)
    if source is None:
        raise ValueError(
            "Policy signals need a reference model: pass `ref_model`, or train a PEFT adapter (the reference is then "
            "the policy with its adapter disabled)."
        )
    return trainer.accelerator.unwrap_model(trainer.ref_model), contextlib.nullcontext()


def reference_logps(trainer, batch: dict, positions: list[tuple[int, int]], bf16: bool = False) -> torch.Tensor:
    """[R] reference log-probs of the candidates, from the cache where known; the rest are scored and cached. At the
    step's precision (what the DPO loss reads), or `bf16` under bf16 autocast (`policy_signals_dtype="bfloat16"`)."""
    state = signals_state(trainer)
    args = trainer.args
    bf16 = bf16 and state.signals_bf16
    cache = state.signals_cache if bf16 else state.cache
    keys = candidate_keys(batch, positions, args.max_length, args.truncation_mode)
    found = cache.lookup(keys)
    missing = [i for i, v in enumerate(found) if v is None]
    if missing:
        model, context = _reference_model_context(trainer)
        was_training = model.training
        model.eval()
        try:
            with (
                context,
                disable_gradient_checkpointing(trainer.model, args.gradient_checkpointing_kwargs),
                _scoring_context(trainer, bf16),
            ):
                scored = score_pool_candidates(
                    model,
                    batch,
                    [positions[i] for i in missing],
                    max_length=args.max_length,
                    truncation_mode=args.truncation_mode,
                    batch_size=args.implicit_reward_batch_size,
                )
        finally:
            model.train(was_training)
        state.forward_passes["reference"] += len({positions[i][0] for i in missing})
        values = scored.logps.cpu().tolist()
        cache.store([keys[i] for i in missing], values)
        for i, v in zip(missing, values):
            found[i] = v
    return torch.tensor(found, dtype=torch.float32)


@torch.no_grad()
def compute_policy_signals(trainer, batch: dict, signals_dtype: str | None = None) -> PolicySignals:
    """Implicit rewards (and, with `active_policy_features`, hidden-state features) of every valid candidate of a
    pool batch: one prefix-shared no-grad pass of the policy in eval mode, reference log-probs from the cache.
    `signals_dtype="auto"` scores this call at the step's precision even under `policy_signals_dtype="bfloat16"` (the
    benchmark compares the two precisions on the same weights); None: as configured."""
    args = trainer.args
    state = signals_state(trainer)
    bf16 = state.signals_bf16 and signals_dtype != "auto"
    want_features = bool(getattr(args, "active_policy_features", False))
    mask = batch["pool_mask"].bool()
    B, N = mask.shape
    device = trainer.accelerator.device
    positions = [(b, j) for b, row in enumerate(mask.tolist()) for j, ok in enumerate(row) if ok]
    if not state.prefix_ok:
        if want_features:
            raise ValueError(
                "active_policy_features reads the policy's last hidden state, which this model's LM head (logit "
                "scaling or soft-capping, or prompt-learning PEFT) is not scored from here: turn it off."
            )
        from .implicit_rewards import pool_implicit_rewards

        return PolicySignals(pool_implicit_rewards(trainer, batch), None, None, None)
    ref = reference_logps(trainer, batch, positions, bf16=bf16)
    model = trainer.accelerator.unwrap_model(trainer.model)
    was_training = model.training
    model.eval()
    try:
        with (
            disable_gradient_checkpointing(trainer.model, args.gradient_checkpointing_kwargs),
            _scoring_context(trainer, bf16),
        ):
            scored = score_pool_candidates(
                model,
                batch,
                positions,
                max_length=args.max_length,
                truncation_mode=args.truncation_mode,
                batch_size=args.implicit_reward_batch_size,
                features=want_features,
            )
    finally:
        model.train(was_training)
    state.forward_passes["policy"] += len({b for b, _ in positions})
    policy = torch.zeros(B, N, dtype=torch.float32, device=device)
    reference = torch.zeros(B, N, dtype=torch.float32, device=device)
    feats = None
    if positions:
        rows = torch.tensor([b for b, _ in positions], device=device)
        cols = torch.tensor([j for _, j in positions], device=device)
        policy[rows, cols] = scored.logps.to(device)
        reference[rows, cols] = ref.to(device)
        if want_features:
            feats = torch.zeros(B, N, scored.features.shape[-1], dtype=torch.float32, device=device)
            feats[rows, cols] = scored.features.to(device)
    elif want_features:
        feats = torch.zeros(B, N, 1, dtype=torch.float32, device=device)
    rewards = implicit_rewards(policy, reference, trainer.beta).masked_fill(~mask.to(device), 0.0)
    if not bf16:
        return PolicySignals(rewards, policy, reference, feats)
    # bf16 signals: the DPO loss reads step-precision reference values, of the selected candidates only (scored when
    # the step asks, `group_reference_logps`), not of all N
    return PolicySignals(rewards, policy, None, feats, lambda pos: reference_logps(trainer, batch, pos))


def group_reference_logps(signals: PolicySignals, group: dict) -> torch.Tensor | None:
    """The reference log-probs of a group batch's rows (`build_group_batch`), taken from the signals' pass: the step
    then makes no reference pass. None when the group has no `response_candidates` to index them by."""
    candidates = group.get("response_candidates")
    if candidates is None or (signals.ref_logps is None and signals.step_reference is None):
        return None
    rows = group["response_groups"]
    valid = rows >= 0
    out = torch.zeros(rows.shape[0], dtype=torch.float32, device=rows.device)
    if signals.ref_logps is not None:
        out[valid] = signals.ref_logps.to(rows.device)[rows[valid], candidates[valid]]
        return out
    wanted = list(zip(rows[valid].tolist(), candidates[valid].tolist()))
    needed = sorted(set(wanted))  # the selected candidates, each once
    values = dict(zip(needed, signals.step_reference(needed).tolist()))
    out[valid] = torch.tensor([values[p] for p in wanted], dtype=torch.float32, device=rows.device)
    return out


def precompute_reference_logps(trainer, dataset, batch_size: int) -> int:
    """Fill the cache with every candidate of `dataset` (a prepared pool dataset), each rank a share of its rows,
    gathered so that every rank holds them all. Returns the number of entries computed here."""
    from torch.utils.data import DataLoader

    state = signals_state(trainer)
    accelerator = trainer.accelerator
    rank, world = accelerator.process_index, accelerator.num_processes
    indices = [i for i in range(len(dataset)) if i % world == rank]
    before = sum(len(c) for c in state.caches)
    loader = DataLoader(
        torch.utils.data.Subset(dataset, indices), batch_size=batch_size, collate_fn=trainer.data_collator
    )
    for batch in loader:
        mask = batch["pool_mask"].bool()
        positions = [(b, j) for b, row in enumerate(mask.tolist()) for j, ok in enumerate(row) if ok]
        reference_logps(trainer, batch, positions)  # both precisions: which candidates the steps select is not known
        if state.signals_bf16:
            reference_logps(trainer, batch, positions, bf16=True)
    computed = sum(len(c) for c in state.caches) - before
    if world > 1:
        from accelerate.utils import gather_object

        for part in gather_object([[c.export() for c in state.caches]]):
            for exported in part:
                for cache in state.caches:
                    cache.absorb(exported)
    return computed


def exported_for_checkpoint(trainer) -> list[dict] | None:
    """Every rank's cache entries, one export per cache (one collective: call on every rank), for the main process
    to save."""
    state = getattr(trainer, "aepo_policy_signals", None)
    if state is None:
        return None
    exported = [c.export() for c in state.caches]
    if trainer.accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        merged = [ReferenceLogpsCache(c.identity) for c in state.caches]
        for part in gather_object([exported]):
            for one in part:
                for cache in merged:
                    cache.absorb(one)
        exported = [c.export() for c in merged]
    return exported


class PolicySignalsCallback(TrainerCallback):
    """Keeps the reference cache in the run's store (the main process's new values after every step, every rank's
    at every save and at the end of training) and in every checkpoint (`on_save` and `on_train_end` run on every
    rank)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        save_to_store(self.trainer, all_ranks=False)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        save_to_store(self.trainer, all_ranks=True)
        return control

    def on_save(self, args, state, control, **kwargs):
        save_to_store(self.trainer, all_ranks=True)
        exported = exported_for_checkpoint(self.trainer)
        if exported is not None and self.trainer.accelerator.is_main_process:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(folder):
                torch.save(exported, os.path.join(folder, REF_LOGPS_FILE))
        return control


def restore_reference_cache(trainer, checkpoint: str) -> int:
    """Load a checkpoint's reference cache (every rank reads the file); entries of another reference are ignored."""
    path = os.path.join(checkpoint, REF_LOGPS_FILE)
    if not os.path.exists(path):
        return 0
    saved = torch.load(path, weights_only=True)
    parts = saved if isinstance(saved, list) else [saved]  # a list of caches; one dict before bf16 signals
    caches = signals_state(trainer).caches
    return sum(cache.absorb(part) for part in parts for cache in caches)
