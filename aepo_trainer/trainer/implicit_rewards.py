"""The policy's implicit reward of every candidate of a pool batch, computed in the training step before selection.

`implicit_reward_gap` and the surrogate's implicit-reward feature (`AEPOConfig.active_implicit_reward_feature`) rank
candidates by r(x, y) = β·(log π(y|x) − log π_ref(y|x)). Only the training step has the policy, so the trainer computes
r for all N candidates of each pool batch here, after the pools are embedded and before any is selected, and hands it
to `PoolReducer.select` as a policy signal — the data flow stays one-way: pool → embed → implicit reward → select →
annotate → pair → step.

The sequences are those the DPO step itself would train on: the pool batch is laid out by `build_group_batch` (TRL's
truncation and padding) with every valid candidate as a response, and both passes use the fused LM head exactly as
`DPOTrainer._compute_loss` does. The reference pass is `reference.reference_outputs` — `ref_model`, or the policy
with its PEFT adapter disabled (or its frozen "ref" adapter) — so r equals the implicit reward the DPO loss would see
(without `ld_alpha`: the plain sum of the completion's token log-probs). Both passes run without gradients, in eval
mode (no dropout: the ranking is deterministic), in chunks of `implicit_reward_batch_size` sequences.

This whole-sequence pass is the fallback of `policy_signals.compute_policy_signals` (which shares each prompt's
encoding across its candidates and caches the reference log-probs) for models whose LM head scales or soft-caps its
logits and for prompt-learning PEFT; the tests also use it as the reference computation of the implicit rewards.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from .._trl_compat import disable_gradient_checkpointing
from ..selection.implicit_reward import implicit_rewards
from .group_batch import build_group_batch
from .reference import reference_outputs

__all__ = ["pool_implicit_rewards"]


@torch.no_grad()
def pool_implicit_rewards(trainer, batch: dict) -> torch.Tensor:
    """`[B, N]` float32 implicit reward of every candidate of the pool batch (0 on padding), on the training device."""
    args = trainer.args
    mask = batch["pool_mask"].bool()
    B, N = mask.shape
    subsets = [[j for j, ok in enumerate(row) if ok] for row in mask.tolist()]
    layout = SimpleNamespace(subsets=subsets, scores=[[0.0] * len(s) for s in subsets], pairs=[], prompt_keys=[0] * B)
    group = build_group_batch(
        batch,
        layout,
        pad_token_id=trainer.pad_token_id,
        max_length=args.max_length,
        truncation_mode=args.truncation_mode,
        include_unpaired=True,
    )
    device = trainer.accelerator.device
    group = {name: value.to(device) for name, value in group.items()}
    positions = [(b, j) for b, subset in enumerate(subsets) for j in subset]
    out = torch.zeros(B, N, dtype=torch.float32, device=device)
    model = trainer.model
    was_training = model.training
    model.eval()
    try:
        values = []
        size = args.implicit_reward_batch_size
        for start in range(0, len(positions), size):
            attention = group["attention_mask"][start : start + size]
            width = int(attention.sum(1).max())
            input_ids = group["input_ids"][start : start + size, :width]
            completion = group["completion_mask"][start : start + size, :width]
            kwargs = {"input_ids": input_ids, "attention_mask": attention[:, :width], "use_cache": False}
            labels = input_ids.masked_fill(completion == 0, -100)
            with trainer.compute_loss_context_manager():
                with disable_gradient_checkpointing(model, args.gradient_checkpointing_kwargs):
                    policy = model(**kwargs, labels=labels, fused_lm_head=True)
                ref = reference_outputs(trainer, kwargs, labels)
            seq_len = completion.size(1) - 1
            shift = completion[:, 1:].float()
            policy_logps = (policy.log_probs[:, -seq_len:].float() * shift).sum(1)
            ref_logps = (ref.log_probs[:, -seq_len:].float() * shift).sum(1)
            values.append(implicit_rewards(policy_logps, ref_logps, trainer.beta))
    finally:
        model.train(was_training)
    if positions:
        rows = torch.tensor([b for b, _ in positions], device=device)
        cols = torch.tensor([j for _, j in positions], device=device)
        out[rows, cols] = torch.cat(values).to(device)
    return out
