"""The last data stage: a reduced pool batch laid out as the *group batch* the pool loss consumes.

Every selected and annotated response of the batch appears **once**, however many pairs it is in, so that the trainer
computes each response's policy and reference log-probabilities once:

    input_ids, attention_mask, completion_mask   [R, L]   prompt_ids + completion_ids, truncated like TRL, right-padded
    pair_chosen_rows, pair_rejected_rows          [P]      rows of each preference pair
    response_scores                               [R]      annotated score of each response
    response_groups                               [R]      batch row (prompt) of each response; -1 for a filler row
    response_candidates                           [R]      pool index of each response in its row (0 for a filler)
    aepo_prompt_keys                              [B]      `prompt_key` of every prompt of the batch

The sequences are gathered from the collator's padded pool tensors with index arithmetic on the device (no Python
loop over tokens). A batch with no trainable response on this process (all its prompts tied or skipped) carries one
filler row with an empty completion mask: when another process does have pairs, this one still runs a forward and a
backward, so that every process takes part in the same collective operations.
"""

from __future__ import annotations

import collections

import torch

__all__ = ["FILLER_TOKENS", "build_group_batch"]

FILLER_TOKENS = 4  # length of the filler row of a batch without pairs


def build_group_batch(
    pool: dict,
    reduced,
    *,
    pad_token_id: int,
    max_length: int | None = None,
    truncation_mode: str = "keep_start",
    pad_to_multiple_of: int | None = None,
    include_unpaired: bool = False,
) -> dict:
    """The group batch of a pool batch (`AEPODataCollator` output) given its reduction (`PoolReducer.finish`).

    `include_unpaired` also lays out annotated responses that are in no pair (ties): the reward-aware losses use them
    (their target margin is 0).
    """
    prompt_ids = pool["pool_prompt_ids"]
    device = prompt_ids.device
    paired = collections.defaultdict(set)
    for pair in reduced.pairs:
        paired[pair.row].update((pair.chosen, pair.rejected))

    row_of = {}  # (batch row, subset position) -> response row
    rows, candidates, scores, groups = [], [], [], []
    for b, (subset, row_scores) in enumerate(zip(reduced.subsets, reduced.scores)):
        if row_scores is None:
            continue
        for j, pool_index in enumerate(subset):
            score = row_scores[j]
            if score is None or not (j in paired[b] or include_unpaired):
                continue
            row_of[(b, j)] = len(rows)
            rows.append(b)
            candidates.append(pool_index)
            scores.append(float(score))
            groups.append(b)
    chosen_rows = [row_of[(p.row, p.chosen)] for p in reduced.pairs]
    rejected_rows = [row_of[(p.row, p.rejected)] for p in reduced.pairs]

    if rows:
        b_idx = torch.tensor(rows, dtype=torch.long, device=device)
        j_idx = torch.tensor(candidates, dtype=torch.long, device=device)
        prompt_len = pool["pool_prompt_lengths"].to(device)[b_idx]
        completion_len = pool["pool_completion_lengths"].to(device)[b_idx, j_idx]
        prompt_tokens = prompt_ids[b_idx]  # [R, Lp]
        completion_tokens = pool["pool_completion_ids"].to(device)[b_idx, j_idx]  # [R, Lc]
    else:  # nothing to train on in this batch: one filler row, masked out of every loss
        prompt_len = pool["pool_prompt_lengths"].to(device)[:1].clamp(max=FILLER_TOKENS).clamp(min=1)
        completion_len = torch.zeros_like(prompt_len)
        prompt_tokens = prompt_ids[:1]
        completion_tokens = torch.full((1, 1), pad_token_id, dtype=torch.long, device=device)
        scores, groups, candidates = [0.0], [-1], [0]

    total = prompt_len + completion_len
    kept = total if max_length is None else total.clamp(max=max_length)
    offset = (total - kept) if truncation_mode == "keep_end" else torch.zeros_like(total)
    width = int(kept.max())
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    position = torch.arange(width, device=device).unsqueeze(0) + offset.unsqueeze(1)  # [R, L] source positions
    in_prompt = position < prompt_len.unsqueeze(1)
    from_prompt = prompt_tokens.gather(1, position.clamp(max=prompt_tokens.shape[1] - 1))
    completion_position = (position - prompt_len.unsqueeze(1)).clamp(min=0, max=completion_tokens.shape[1] - 1)
    from_completion = completion_tokens.gather(1, completion_position)
    real = torch.arange(width, device=device).unsqueeze(0) < kept.unsqueeze(1)
    input_ids = torch.where(in_prompt, from_prompt, from_completion).masked_fill(~real, pad_token_id)

    return {
        "input_ids": input_ids,
        "attention_mask": real.long(),
        "completion_mask": (real & ~in_prompt).long(),
        "pair_chosen_rows": torch.tensor(chosen_rows, dtype=torch.long, device=device),
        "pair_rejected_rows": torch.tensor(rejected_rows, dtype=torch.long, device=device),
        "response_scores": torch.tensor(scores, dtype=torch.float32, device=device),
        "response_groups": torch.tensor(groups, dtype=torch.long, device=device),
        "response_candidates": torch.tensor(candidates, dtype=torch.long, device=device),
        "aepo_prompt_keys": torch.tensor(reduced.prompt_keys, dtype=torch.long, device=device),
    }
