"""Candidate-pool datasets: detection, validation and one-time preparation for `AEPOTrainer`.

A *pool dataset* has one row per prompt with the prompt's candidate completions:

    {"prompt": "...", "completions": ["...", "...", ...]}                                   # standard
    {"prompt": [{"role": "user", ...}], "completions": [[{"role": "assistant", ...}], ...]}   # conversational

plus optional `scores` (one per completion, read by the 'dataset_scores' annotator), `embeddings` (one vector per
completion; otherwise computed once with `embed_pools`) and any other columns (handed to annotators, e.g. to reward
functions as keyword arguments). Column names follow `AEPOConfig.completions_column` / `scores_column` /
`embeddings_column`.

Preparation happens once, before training (`prepare_pool_dataset`):

* **Tokenization is TRL's own.** The pools are flattened into pseudo preference pairs (completion 2i as "chosen",
  2i+1 as "rejected") and handed to `DPOTrainer._prepare_dataset`, so EOS handling, chat templates, tools and the
  prompt/completion boundary are exactly those of DPO training on pairs; each completion is tokenized once. The pairs
  are then regrouped into one row per pool with `prompt_ids` and `completions_ids` (a list per completion).
* **Embeddings** come from the `embeddings` column when present, else from `embed_pools` (the sentence embedder).
* Both steps are `datasets.map` calls with deterministic fingerprints, so a dataset loaded from files is prepared
  once and read back from the datasets cache afterwards.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

from .empty_completions import apply_to_dataset
from .kinds import first_row, is_pool_dataset
from .rows import validate_pool_dataset

logger = logging.getLogger(__name__)

__all__ = [
    "COMPLETIONS_IDS",
    "PROMPT_IDS",
    "is_pool_dataset",
    "is_prepared_pool_dataset",
    "prepare_pool_dataset",
    "validate_pool_dataset",
]

PROMPT_IDS = "prompt_ids"
COMPLETIONS_IDS = "completions_ids"
_PAIR_COLUMNS_PASSED_TO_TRL = ("tools", "chat_template_kwargs")  # read by TRL's tokenize_fn when present


def is_prepared_pool_dataset(dataset) -> bool:
    row = first_row(dataset)
    return row is not None and COMPLETIONS_IDS in row and PROMPT_IDS in row


# ----------------------------------------------------------------------------------------------------- validation
# The checks live in `rows` and the detector in `kinds` (the one of the package); both are re-exported here.


# ----------------------------------------------------------------------------------------------------- preparation


def _explode_pools(batch: dict, completions_column: str, extra_columns: list[str]) -> dict:
    """Pools -> pseudo preference pairs (completion 2i as chosen, 2i+1 as rejected; an odd last one paired with
    itself), so that TRL tokenizes every completion exactly like a DPO completion."""
    out: dict[str, list] = {"prompt": [], "chosen": [], "rejected": []}
    for column in extra_columns:
        out[column] = []
    for i, (prompt, pool) in enumerate(zip(batch["prompt"], batch[completions_column])):
        for t in range(0, len(pool), 2):
            out["prompt"].append(prompt)
            out["chosen"].append(pool[t])
            out["rejected"].append(pool[t + 1] if t + 1 < len(pool) else pool[t])
            for column in extra_columns:
                out[column].append(batch[column][i])
    return out


def _regroup(batch: dict, indices: list[int], tokens: dict, offsets: list[int], completions_column: str) -> dict:
    """One row per pool: the common tokenized prompt and one token list per completion (the tokens of
    prompt+completion after the shortest prompt prefix shared by all the pool's pseudo pairs)."""
    prompt_ids_out, completions_ids_out = [], []
    for index, pool in zip(indices, batch[completions_column]):
        start, stop = offsets[index], offsets[index + 1]
        pair_prompts = tokens["prompt_ids"][start:stop]
        common = min(len(p) for p in pair_prompts)
        completions_ids = []
        for t, pair_prompt in enumerate(pair_prompts):
            carry = list(pair_prompt[common:])  # prompt tokens a pair kept that another pair merged into its answer
            completions_ids.append(carry + list(tokens["chosen_ids"][start + t]))
            if 2 * t + 1 < len(pool):
                completions_ids.append(carry + list(tokens["rejected_ids"][start + t]))
        prompt_ids_out.append(list(pair_prompts[0][:common]))
        completions_ids_out.append(completions_ids)
    return {PROMPT_IDS: prompt_ids_out, COMPLETIONS_IDS: completions_ids_out}


def prepare_pool_dataset(
    dataset,
    args,
    tokenize_pairs: Callable[[Any, Any], Any],
    dataset_name: str = "train",
    embed: Callable[[Any, Any], Any] | None = None,
    allow_empty: bool = False,
):
    """Validate, tokenize (through `tokenize_pairs`, i.e. TRL's `_prepare_dataset`) and embed a pool dataset.

    Args:
        dataset: a `datasets.Dataset` of pools.
        args: the `AEPOConfig`.
        tokenize_pairs: `f(pair_dataset, args) -> tokenized` (the trainer passes `DPOTrainer._prepare_dataset`); it is
            called with a copy of `args` whose `max_length` is None, so that no pseudo pair is dropped and the pools
            stay aligned; pools whose prompt alone fills `max_length` are dropped here instead, as TRL does for pairs.
        embed: `f(dataset, args) -> dataset` adding `args.embeddings_column` (used only when that column is absent).
        allow_empty: keep empty completions whatever `args.empty_completions` says, without a warning (on-policy
            pools: a policy that stops at once produced a real sample, the EOS-only response). Otherwise the rule of
            `aepo_trainer.data.empty_completions` applies: keep (warned), drop, or error.

    Returns:
        The dataset with all its original columns plus `prompt_ids`, `completions_ids` and the embeddings column.
    """
    from datasets import Dataset
    from datasets.fingerprint import Hasher

    if not isinstance(dataset, Dataset):
        raise TypeError(
            f"Pool datasets must be map-style `datasets.Dataset` objects (got {type(dataset).__name__}): pools are "
            "prepared once (tokenized and embedded) before training. Materialize a streaming dataset first, e.g. "
            "`Dataset.from_list(list(iterable_dataset))`."
        )
    if is_prepared_pool_dataset(dataset):
        return dataset
    validate_pool_dataset(dataset, args, dataset_name, allow_empty=allow_empty)
    if not allow_empty:  # the rule of `empty_completions` (keep: a warning; drop: removed before anything else)
        dataset = apply_to_dataset(dataset, args, dataset_name)
    ccol = args.completions_column

    extra = [c for c in _PAIR_COLUMNS_PASSED_TO_TRL if c in dataset.column_names]
    flat = dataset.select_columns(["prompt", ccol, *extra]).map(
        _explode_pools,
        batched=True,
        remove_columns=["prompt", ccol] if ccol != "prompt" else ["prompt"],
        fn_kwargs={"completions_column": ccol, "extra_columns": extra},
        desc=f"Flattening {dataset_name} pools for tokenization",
    )
    untruncated = copy.copy(args)
    untruncated.max_length = None
    tokenized = tokenize_pairs(flat, untruncated)
    tokens = tokenized.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]).to_dict()

    offsets = [0]
    for pool in dataset[ccol]:
        offsets.append(offsets[-1] + (len(pool) + 1) // 2)
    if offsets[-1] != len(tokens["prompt_ids"]):  # pragma: no cover - defensive
        raise RuntimeError("Internal error: tokenized pseudo pairs are not aligned with the pools.")

    prepared = dataset.map(
        _regroup,
        batched=True,
        with_indices=True,
        fn_kwargs={"tokens": tokens, "offsets": offsets, "completions_column": ccol},
        new_fingerprint=Hasher.hash(("aepo-regroup-v1", dataset._fingerprint, tokenized._fingerprint)),
        desc=f"Grouping tokenized {dataset_name} pools",
    )

    if args.max_length is not None and args.truncation_mode == "keep_start":
        before = len(prepared)
        max_length = args.max_length
        prepared = prepared.filter(
            lambda row: len(row[PROMPT_IDS]) < max_length,
            desc=f"Dropping {dataset_name} pools whose prompt fills max_length",
        )
        if len(prepared) < before:
            logger.warning(
                "%d of %d %s pools were dropped: their prompt alone is at least max_length=%d tokens, so truncation "
                "would leave no completion token to train on (as DPOTrainer does for pairs).",
                before - len(prepared),
                before,
                dataset_name,
                max_length,
            )
        if len(prepared) == 0:
            raise ValueError(
                f"Every {dataset_name} pool was dropped: all prompts are at least max_length={max_length} tokens long."
            )

    if args.embeddings_column not in prepared.column_names:
        if embed is None:
            raise ValueError(
                f"The {dataset_name} pool dataset has no {args.embeddings_column!r} column and no embedder is available."
            )
        prepared = embed(prepared, args)
    return prepared
