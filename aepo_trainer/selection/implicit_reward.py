"""The policy's implicit reward of each candidate: r(x, y) = β·(log π(y|x) − log π_ref(y|x)) (DPO; ActiveDPO uses it
to choose what to annotate, arXiv 2505.19241).

`implicit_rewards` turns per-candidate sequence log-probs (summed over the completion tokens) into rewards; in the
training step those log-probs come out of the forward passes the DPO loss makes anyway. `completion_logps` computes
them for candidates that were not part of a forward pass yet (a pool before selection), batched, one forward per
chunk of sequences, with the reference being the same model with its PEFT adapter disabled when no reference model
is given. `reward_gaps` gives the matrix of pairwise gaps r_i − r_j a pair acquisition ranks (largest gap, or the
most uncertain one when a posterior is available).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

__all__ = ["completion_logps", "implicit_rewards", "reward_gaps"]


def implicit_rewards(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """β·(log π(y|x) − log π_ref(y|x)) per candidate, from sequence log-probs of the same shape (any shape)."""
    if policy_logps.shape != ref_logps.shape:
        raise ValueError(f"policy and reference log-probs differ in shape: {policy_logps.shape} vs {ref_logps.shape}")
    return beta * (policy_logps.float() - ref_logps.float())


def reward_gaps(rewards: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """`[..., N, N]` matrix of r_i − r_j; pairs involving a masked-out candidate (and i = j) are NaN."""
    gaps = rewards.unsqueeze(-1) - rewards.unsqueeze(-2)
    n = rewards.shape[-1]
    invalid = torch.eye(n, dtype=torch.bool, device=rewards.device).expand_as(gaps)
    if mask is not None:
        invalid = invalid | ~(mask.unsqueeze(-1) & mask.unsqueeze(-2))
    return gaps.masked_fill(invalid, float("nan"))


@torch.no_grad()
def completion_logps(
    model,
    prompt_ids: list[int],
    completions_ids: list[list[int]],
    *,
    pad_token_id: int,
    batch_size: int = 8,
    disable_adapter: bool = False,
) -> torch.Tensor:
    """Σ_t log p(y_t | x, y_<t) of each completion after `prompt_ids` (float32, `[N]`), right-padded batches.

    `disable_adapter=True` evaluates a PEFT model with its adapter disabled: the reference of a LoRA policy.
    """
    device = next(model.parameters()).device
    out = []
    ctx = model.disable_adapter() if disable_adapter else nullcontext()
    was_training = model.training
    model.eval()
    try:
        with ctx:
            for start in range(0, len(completions_ids), batch_size):
                chunk = completions_ids[start : start + batch_size]
                seqs = [list(prompt_ids) + list(c) for c in chunk]
                width = max(len(s) for s in seqs)
                ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
                attention = torch.zeros((len(seqs), width), dtype=torch.long)
                completion = torch.zeros((len(seqs), width), dtype=torch.bool)
                for row, seq in enumerate(seqs):
                    ids[row, : len(seq)] = torch.tensor(seq)
                    attention[row, : len(seq)] = 1
                    completion[row, len(prompt_ids) : len(seq)] = True
                ids, attention, completion = ids.to(device), attention.to(device), completion.to(device)
                logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
                targets = ids[:, 1:]
                token_logps = torch.gather(logits.log_softmax(-1), 2, targets.unsqueeze(-1)).squeeze(-1)
                out.append((token_logps * completion[:, 1:]).sum(-1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)
