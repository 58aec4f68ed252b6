"""The policy's implicit reward of each candidate: r(x, y) = β·(log π(y|x) − log π_ref(y|x)) (DPO; ActiveDPO uses it
to choose what to annotate, arXiv 2505.19241).

`implicit_rewards` turns per-candidate sequence log-probs (summed over the completion tokens) into rewards; in the
training step those log-probs come out of the forward passes the DPO loss makes anyway. `completion_logps` computes
them for candidates that were not part of a forward pass yet (a pool before selection), batched, one forward per
chunk of sequences, with the reference being the same model with its PEFT adapter disabled when no reference model
is given. `reward_gaps` gives the matrix of pairwise gaps r_i − r_j a pair acquisition ranks (largest gap, or the
most uncertain one when a posterior is available).

`select_implicit_reward_gap` is the selection strategy `implicit_reward_gap`: the k candidates that span the policy's
implicit-reward range — for k = 2 the top and the bottom candidate, for k > 2 the candidates nearest to k evenly
spaced points of [min, max]. Why: the pair the policy already separates most is the one whose label tells it most when
it is wrong (DPO's gradient weight on a pair is σ(−margin), large when a label contradicts a large implicit margin),
and a wide spread avoids paying for near-duplicates the policy cannot tell apart. A prompt whose candidates all have
the same implicit reward (at the first step the policy *is* the reference, so every reward is 0) carries no signal:
it is selected by the fallback strategy instead (`AEPOConfig.active_cold_start`).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

__all__ = [
    "MIN_GAP",
    "completion_logps",
    "implicit_reward_gap_indices",
    "implicit_rewards",
    "reward_gaps",
    "select_implicit_reward_gap",
]

#: A prompt whose implicit rewards span no more than this (reward units) has no usable signal: it falls back.
MIN_GAP = 1e-6


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


@torch.no_grad()
def implicit_reward_gap_indices(
    rewards: torch.Tensor, k: int, mask: torch.Tensor | None = None, min_gap: float = MIN_GAP
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k candidates of each row spanning its implicit-reward range, and which rows have a usable range.

    For target j = 0, k-1, 1, 2, ..., k-2 (the two ends first) the valid candidate not chosen yet that is nearest to
    min + j/(k-1) · (max − min) is taken, ties to the lowest index, so k = 2 gives exactly argmin and argmax. Batched
    over rows (the loop runs over the k targets). Returns (indices `[B, k]` sorted ascending, informative `[B]` bool:
    the row's valid rewards are finite and span more than `min_gap`).
    """
    if rewards.dim() != 2:
        raise ValueError(f"implicit rewards must have shape [B, N], got {list(rewards.shape)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"k must be an integer >= 2, got {k!r}")
    B, N = rewards.shape
    mask = torch.ones(B, N, dtype=torch.bool, device=rewards.device) if mask is None else mask.to(rewards.device)
    counts = mask.sum(1)
    if B and int(counts.min()) < k:
        row = int((counts < k).nonzero()[0, 0])
        raise ValueError(f"row {row} has {int(counts[row])} candidates, fewer than k = {k}")
    r = rewards.double()
    finite = (torch.isfinite(r) | ~mask).all(1)
    r = torch.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0).masked_fill(~mask, 0.0)
    low = r.masked_fill(~mask, float("inf")).min(1).values
    high = r.masked_fill(~mask, float("-inf")).max(1).values
    taken = ~mask
    chosen = []
    for j in [0, k - 1, *range(1, k - 1)]:
        target = low + (high - low) * (j / (k - 1))
        distance = (r - target[:, None]).abs().masked_fill(taken, float("inf"))
        index = distance.min(1).indices  # the first minimum: ties go to the lowest index
        taken = taken.scatter(1, index[:, None], True)
        chosen.append(index)
    indices = torch.stack(chosen, 1).sort(1).values
    return indices, finite & ((high - low) > min_gap)


def select_implicit_reward_gap(
    embeddings: torch.Tensor,
    rewards: torch.Tensor,
    k: int,
    *,
    mask: torch.Tensor | None = None,
    fallback=None,
    min_gap: float = MIN_GAP,
):
    """The `implicit_reward_gap` strategy as a `SelectionResult` (see the module): rows without a usable range take
    the rows of `fallback` (a `SelectionResult` of the same batch, e.g. the cold-start strategy's), or keep the
    lowest-index choice when no fallback is given. Representativeness and diversity are reported as for the active
    strategies. Returns (result, informative `[B]`)."""
    from .active import describe_selection

    device = embeddings.device
    if mask is None:
        mask = torch.ones(embeddings.shape[:2], dtype=torch.bool, device=device)
    mask = mask.to(device)
    if tuple(rewards.shape) != tuple(mask.shape):
        raise ValueError(f"implicit rewards have shape {list(rewards.shape)}, the pools {list(mask.shape)}")
    indices, informative = implicit_reward_gap_indices(rewards.to(device), k, mask, min_gap)
    if fallback is not None:
        indices = torch.where(informative[:, None], indices, fallback.indices.to(device))
    return describe_selection(embeddings, mask, indices), informative
