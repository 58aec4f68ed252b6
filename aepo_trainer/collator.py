"""`AEPODataCollator`: TRL preference batches from candidate pools, reduced on the fly.

Pair examples (`prompt_ids`/`chosen_ids`/`rejected_ids`) go through TRL's `DataCollatorForPreference` unchanged. Pool
examples (`prompt_ids`/`completions_ids`/embeddings, prepared by `aepo_trainer.pools`) are reduced with
`PoolReducer.reduce` (select k of N on the training device, annotate only the selected, pair) and laid out as a
*group batch*: every selected and annotated response of the batch once,

    input_ids, attention_mask, completion_mask   [R, L]   prompt_ids + completion_ids, truncated like TRL, right-padded
    pair_chosen_rows, pair_rejected_rows          [P]      rows of each preference pair
    response_scores                               [R]      annotated score of each response
    response_groups                               [R]      batch row (prompt) of each response; -1 for a filler row
    aepo_prompt_keys                              [B]      `prompt_key` of every prompt of the batch
    aepo_stats                                    [S]      `pipeline.STATS_FIELDS`, float32

so that the trainer computes each response's log-probabilities once, however many pairs it is in. A batch with no
trainable response (all prompts tied or skipped) carries one filler row with an empty completion mask: the trainer
still runs a forward on it, so that every process takes part in the same collective operations.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.data.data_collator import DataCollatorMixin
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import pad

from .pools import COMPLETIONS_IDS, PROMPT_IDS
from .reduction import PoolReducer, ReducedBatch

__all__ = ["POOL_BATCH_KEYS", "AEPODataCollator"]

POOL_BATCH_KEYS = (
    "pair_chosen_rows",
    "pair_rejected_rows",
    "response_scores",
    "response_groups",
    "aepo_prompt_keys",
    "aepo_stats",
)
_FILLER_TOKENS = 4  # length of the filler row of an empty batch


@dataclass
class AEPODataCollator(DataCollatorMixin):
    """Collates pool examples into group batches (see the module docstring); pair examples go to TRL's collator.

    Args:
        pad_token_id: token used for padding.
        reducer: the `PoolReducer` (needed for pool examples only).
        max_length, truncation_mode, pad_to_multiple_of: as in TRL's `DataCollatorForPreference`; each
            prompt+completion sequence is truncated the same way.
        device: where selection runs (the training device). Keep None (the embeddings' device, CPU) when the
            DataLoader uses worker processes.
        include_unpaired: also emit annotated responses that are in no pair (ties): the reward-aware losses use
            them (their target margin is 0). Defaults to True exactly when `reducer.args` has an RPO loss type.
        keep_examples: how many recent (prompt, chosen, rejected) examples to keep in `recent_pairs` for reports.
    """

    pad_token_id: int
    reducer: PoolReducer | None = None
    max_length: int | None = None
    truncation_mode: str = "keep_start"
    pad_to_multiple_of: int | None = None
    device: Any = None
    include_unpaired: bool | None = None
    keep_examples: int = 8
    return_tensors: str = "pt"
    recent_pairs: collections.deque = field(default=None, repr=False)

    def __post_init__(self):
        if self.truncation_mode not in ("keep_start", "keep_end"):
            raise ValueError(
                f"Unsupported truncation mode: {self.truncation_mode}, expected 'keep_start' or 'keep_end'"
            )
        if self.recent_pairs is None:
            self.recent_pairs = collections.deque(maxlen=self.keep_examples)
        self._pair_collator = DataCollatorForPreference(
            pad_token_id=self.pad_token_id,
            max_length=self.max_length,
            truncation_mode=self.truncation_mode,
            pad_to_multiple_of=self.pad_to_multiple_of,
        )

    # ------------------------------------------------------------------------------------------------ dispatch

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if examples and COMPLETIONS_IDS in examples[0]:
            return self.collate_pools(examples)
        return self._pair_collator(examples)

    # ------------------------------------------------------------------------------------------------ pools

    def _embeddings(self, examples: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        column = self.reducer.args.embeddings_column
        vectors = [torch.as_tensor(ex[column], dtype=torch.float32) for ex in examples]
        n_max = max(v.shape[0] for v in vectors)
        dim = vectors[0].shape[1]
        embeddings = torch.zeros(len(vectors), n_max, dim, dtype=torch.float32)
        mask = torch.zeros(len(vectors), n_max, dtype=torch.bool)
        for b, v in enumerate(vectors):
            embeddings[b, : v.shape[0]] = v
            mask[b, : v.shape[0]] = True
        if self.device is not None:
            embeddings, mask = embeddings.to(self.device), mask.to(self.device)
        return embeddings, mask

    def collate_pools(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if self.reducer is None:
            raise ValueError("AEPODataCollator needs a `reducer` (a PoolReducer) to collate pool examples.")
        args = self.reducer.args
        hidden = {PROMPT_IDS, COMPLETIONS_IDS, args.embeddings_column}
        rows = [{k: v for k, v in ex.items() if k not in hidden} for ex in examples]
        embeddings, mask = self._embeddings(examples)
        reduced = self.reducer.reduce(rows, embeddings, mask)
        return self.layout(examples, reduced)

    def layout(self, examples: list[dict[str, Any]], reduced: ReducedBatch) -> dict[str, Any]:
        """The group batch of `examples` given their reduction (see the module docstring)."""
        include_unpaired = self.include_unpaired
        if include_unpaired is None:
            include_unpaired = bool(self.reducer is not None and self.reducer.args.rpo_loss_types)
        paired = collections.defaultdict(set)
        for pair in reduced.pairs:
            paired[pair.row].update((pair.chosen, pair.rejected))

        row_of = {}  # (batch row, subset position) -> response row
        sequences, masks, scores, groups = [], [], [], []
        for b, (example, subset, row_scores) in enumerate(zip(examples, reduced.subsets, reduced.scores)):
            if row_scores is None:
                continue
            for j, pool_index in enumerate(subset):
                score = row_scores[j]
                if score is None or not (j in paired[b] or include_unpaired):
                    continue
                completion = example[COMPLETIONS_IDS][pool_index]
                row_of[(b, j)] = len(sequences)
                sequences.append(list(example[PROMPT_IDS]) + list(completion))
                masks.append([0] * len(example[PROMPT_IDS]) + [1] * len(completion))
                scores.append(float(score))
                groups.append(b)
        chosen_rows = [row_of[(p.row, p.chosen)] for p in reduced.pairs]
        rejected_rows = [row_of[(p.row, p.rejected)] for p in reduced.pairs]
        if not sequences:  # nothing to train on in this batch: one filler row, masked out of every loss
            sequences = [list(examples[0][PROMPT_IDS])[:_FILLER_TOKENS] or [self.pad_token_id]]
            masks = [[0] * len(sequences[0])]
            scores, groups = [0.0], [-1]

        if self.max_length is not None:
            sl = slice(None, self.max_length) if self.truncation_mode == "keep_start" else slice(-self.max_length, None)
            sequences = [s[sl] for s in sequences]
            masks = [m[sl] for m in masks]

        self._remember(examples, reduced)
        output = {
            "input_ids": pad(
                [torch.tensor(s) for s in sequences],
                padding_value=self.pad_token_id,
                padding_side="right",
                pad_to_multiple_of=self.pad_to_multiple_of,
            ),
            "attention_mask": pad(
                [torch.ones(len(s), dtype=torch.long) for s in sequences],
                padding_value=0,
                padding_side="right",
                pad_to_multiple_of=self.pad_to_multiple_of,
            ),
            "completion_mask": pad(
                [torch.tensor(m, dtype=torch.long) for m in masks],
                padding_value=0,
                padding_side="right",
                pad_to_multiple_of=self.pad_to_multiple_of,
            ),
            "pair_chosen_rows": torch.tensor(chosen_rows, dtype=torch.long),
            "pair_rejected_rows": torch.tensor(rejected_rows, dtype=torch.long),
            "response_scores": torch.tensor(scores, dtype=torch.float32),
            "response_groups": torch.tensor(groups, dtype=torch.long),
            "aepo_prompt_keys": torch.tensor(reduced.prompt_keys, dtype=torch.long),
            "aepo_stats": reduced.stats_vector(),
        }
        return output

    def _remember(self, examples, reduced: ReducedBatch) -> None:
        """Keep a few recent pairs (texts and scores) for end-of-training reports."""
        if self.reducer is None or not self.keep_examples:
            return
        ccol = self.reducer.args.completions_column
        for pair in reduced.pairs[: self.keep_examples]:
            example, subset = examples[pair.row], reduced.subsets[pair.row]
            self.recent_pairs.append(
                {
                    "prompt": example.get("prompt"),
                    "chosen": example[ccol][subset[pair.chosen]],
                    "rejected": example[ccol][subset[pair.rejected]],
                    "chosen_score": float(pair.chosen_score),
                    "rejected_score": float(pair.rejected_score),
                    "selected": list(subset),
                    "pool_size": len(example[ccol]),
                }
            )
