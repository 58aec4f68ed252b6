"""`AEPODataCollator`: pads and stacks candidate pools; nothing else.

The collator is a pure function of its examples: no annotator, no annotation service, no store, no side effects, so it
is safe to pickle into DataLoader worker processes and safe to call ahead of time (accelerate looks one batch ahead,
worker processes prefetch several). Everything that costs money or depends on the model — selection, annotation,
pairing — happens later, in `AEPOTrainer`'s training step, on the batch that is about to be trained.

Pair examples (`prompt_ids`/`chosen_ids`/`rejected_ids`) go through TRL's `DataCollatorForPreference` unchanged, so
pair training stays exactly DPO. Pool examples (`prompt_ids`/`completions_ids`/embeddings, prepared once by
`aepo_trainer.data.pools`) become a *pool batch*:

    pool_prompt_ids           [B, Lp]      prompt tokens, right-padded with `pad_token_id`
    pool_prompt_lengths       [B]          real prompt length of each row
    pool_completion_ids       [B, N, Lc]   every candidate's tokens, right-padded
    pool_completion_lengths   [B, N]       real length of each candidate (0 for a padding slot)
    pool_mask                 [B, N]       True for real candidates (pools may differ in size)
    pool_embeddings           [B, N, D]    float32 sentence embeddings (zeros in padding slots)
    pool_scores               [B, N]       float32 dataset scores, NaN where missing (only when the column exists)
    pool_rows                 list[dict]   each row's prompt, completions and other columns (annotators read them)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from transformers.data.data_collator import DataCollatorMixin

from .._trl_compat import DataCollatorForPreference
from .pools import COMPLETIONS_IDS, PROMPT_IDS

__all__ = ["POOL_ROWS", "AEPODataCollator", "is_pool_batch"]

POOL_ROWS = "pool_rows"


def is_pool_batch(batch: dict) -> bool:
    """True for a batch `AEPODataCollator` made from pool examples (as opposed to a TRL pair batch)."""
    return isinstance(batch, dict) and POOL_ROWS in batch


def _right_pad(sequences: list, width: int, value) -> list:
    return [list(s) + [value] * (width - len(s)) for s in sequences]


@dataclass
class AEPODataCollator(DataCollatorMixin):
    """Pads and stacks pool examples into a pool batch (see the module docstring); pair examples go to TRL's collator.

    Args:
        pad_token_id: token used for padding.
        embeddings_column, completions_column, scores_column: the pool columns (`AEPOConfig` names).
        max_length, truncation_mode, pad_to_multiple_of: as in TRL's `DataCollatorForPreference`; they apply to pair
            examples here, and to the prompt+completion sequences the trainer lays out from a pool batch.
    """

    pad_token_id: int
    embeddings_column: str = "embeddings"
    completions_column: str = "completions"
    scores_column: str = "scores"
    max_length: int | None = None
    truncation_mode: str = "keep_start"
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"

    def __post_init__(self):
        if self.truncation_mode not in ("keep_start", "keep_end"):
            raise ValueError(
                f"Unsupported truncation mode: {self.truncation_mode}, expected 'keep_start' or 'keep_end'"
            )
        self._pair_collator = DataCollatorForPreference(
            pad_token_id=self.pad_token_id,
            max_length=self.max_length,
            truncation_mode=self.truncation_mode,
            pad_to_multiple_of=self.pad_to_multiple_of,
        )

    @classmethod
    def from_config(cls, args, pad_token_id: int) -> AEPODataCollator:
        """The collator an `AEPOConfig` implies."""
        return cls(
            pad_token_id=pad_token_id,
            embeddings_column=args.embeddings_column,
            completions_column=args.completions_column,
            scores_column=args.scores_column,
            max_length=args.max_length,
            truncation_mode=args.truncation_mode,
            pad_to_multiple_of=args.pad_to_multiple_of,
        )

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if examples and COMPLETIONS_IDS in examples[0]:
            return self.collate_pools(examples)
        return self._pair_collator(examples)

    def collate_pools(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        prompts = [list(ex[PROMPT_IDS]) for ex in examples]
        pools = [[list(c) for c in ex[COMPLETIONS_IDS]] for ex in examples]
        n_max = max(len(p) for p in pools)
        lp = max(1, max(len(p) for p in prompts))
        lc = max(1, max((len(c) for p in pools for c in p), default=1))
        pad = self.pad_token_id

        completion_ids = torch.full((len(examples), n_max, lc), pad, dtype=torch.long)
        completion_lengths = torch.zeros(len(examples), n_max, dtype=torch.long)
        for b, pool in enumerate(pools):
            for j, ids in enumerate(pool):
                completion_ids[b, j, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                completion_lengths[b, j] = len(ids)
        mask = torch.zeros(len(examples), n_max, dtype=torch.bool)
        for b, pool in enumerate(pools):
            mask[b, : len(pool)] = True

        vectors = [torch.as_tensor(ex[self.embeddings_column], dtype=torch.float32) for ex in examples]
        embeddings = torch.zeros(len(examples), n_max, vectors[0].shape[-1], dtype=torch.float32)
        for b, v in enumerate(vectors):
            embeddings[b, : v.shape[0]] = v

        hidden = {PROMPT_IDS, COMPLETIONS_IDS, self.embeddings_column}
        batch = {
            "pool_prompt_ids": torch.tensor(_right_pad(prompts, lp, pad), dtype=torch.long),
            "pool_prompt_lengths": torch.tensor([len(p) for p in prompts], dtype=torch.long),
            "pool_completion_ids": completion_ids,
            "pool_completion_lengths": completion_lengths,
            "pool_mask": mask,
            "pool_embeddings": embeddings,
            POOL_ROWS: [{k: v for k, v in ex.items() if k not in hidden} for ex in examples],
        }
        if self.scores_column in examples[0]:
            scores = torch.full((len(examples), n_max), math.nan, dtype=torch.float32)
            for b, ex in enumerate(examples):
                for j, value in enumerate(ex[self.scores_column] or []):
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        scores[b, j] = float(value)
            batch["pool_scores"] = scores
        return batch
