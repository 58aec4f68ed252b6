"""What kind of dataset a run got — the one detector of the package.

* **pools**: one row per prompt with `prompt` and a list of candidate completions (`completions_column`);
* **pairs**: `chosen`/`rejected` preference pairs (any TRL format), left entirely to `DPOTrainer`;
* **prompts**: a `prompt` column and no trace of a pool or a pair: the trainer samples its pools on-policy.

`kind_of_columns` is the rule; `dataset_kind` applies it to a dataset's columns and raises `InputValidationError` for
an empty dataset (D9), a dataset with both pool and pair columns (D8) or one with neither (D9); `is_pool_dataset` and
`is_prompt_only_dataset` apply it to a dataset's first row (they also work on a streamed dataset, and never raise).
"""

from __future__ import annotations

from .errors import InputValidationError, Problem, excerpt

__all__ = [
    "PAIR_COLUMNS",
    "columns_of",
    "dataset_kind",
    "first_row",
    "is_pool_dataset",
    "is_prompt_only_dataset",
    "kind_of_columns",
    "length_of",
]

PAIR_COLUMNS = ("chosen", "rejected")


def kind_of_columns(columns, args) -> str | None:
    """'pools', 'pairs', 'prompts', 'both' (the pool column and a pair column: refused) or None (neither)."""
    ccol = getattr(args, "completions_column", "completions")
    pair_columns = [c for c in PAIR_COLUMNS if c in columns]
    if ccol in columns:
        return "both" if pair_columns else "pools"
    if all(c in columns for c in PAIR_COLUMNS):
        return "pairs"
    pool_columns = [getattr(args, "scores_column", "scores"), getattr(args, "embeddings_column", "embeddings")]
    if "prompt" in columns and not pair_columns and not any(c in columns for c in pool_columns):
        return "prompts"  # no trace of a pool (scores, embeddings): a prompt-only dataset, not a broken pool dataset
    return None


def first_row(dataset) -> dict | None:
    """The dataset's first row (None for no dataset or an empty one); works on streamed datasets."""
    if dataset is None:
        return None
    try:
        return next(iter(dataset))
    except StopIteration:
        return None


def is_pool_dataset(dataset, args) -> bool:
    """True when `dataset` is a candidate-pool dataset: its first row has `args.completions_column` and no
    `"chosen"`. Anything else (prompt/chosen/rejected pairs in any TRL format) is left entirely to `DPOTrainer`."""
    row = first_row(dataset)
    column = getattr(args, "completions_column", "completions")
    return row is not None and column in row and "chosen" not in row


def is_prompt_only_dataset(dataset, args) -> bool:
    """True when the first row has a prompt and none of the pool or pair columns (completions, scores, embeddings,
    chosen, rejected): sample its pools on-policy. A pool dataset that lost its completions column is not one."""
    row = first_row(dataset)
    return row is not None and kind_of_columns(row, args) == "prompts"


def columns_of(dataset) -> list[str] | None:
    columns = getattr(dataset, "column_names", None)
    if isinstance(columns, dict):  # a DatasetDict: not a single split
        return None
    if columns is not None:
        return list(columns)
    if isinstance(dataset, list):
        return list(dict.fromkeys(k for row in dataset if isinstance(row, dict) for k in row))
    return None


def length_of(dataset) -> int | None:
    try:
        return len(dataset)
    except TypeError:  # an IterableDataset
        return None


def dataset_kind(dataset, args, dataset_name: str = "train", allow_prompts: bool = False) -> str:
    """'pools' or 'pairs' ('prompts' too with `allow_prompts`: a prompt-only dataset, whose pools the trainer samples
    on-policy); raises `InputValidationError` for an empty dataset (D9), a dataset with both the pool column and
    `chosen`/`rejected` (D8), or one with neither (D9)."""
    where = f"{dataset_name} dataset"
    ccol = getattr(args, "completions_column", "completions")
    if length_of(dataset) == 0:
        raise InputValidationError(where, [Problem(None, None, "the dataset is empty (no rows)")])
    columns = columns_of(dataset)
    if columns is None:  # streaming: checked later, row by row, by whoever reads it
        return "pools" if is_pool_dataset(dataset, args) else "pairs"
    kind = kind_of_columns(columns, args)
    if kind == "both":
        pair_columns = [c for c in PAIR_COLUMNS if c in columns]
        raise InputValidationError(
            where,
            [
                Problem(
                    ccol,
                    0,
                    f"the dataset has both the pool column {ccol!r} and the pair column(s) {pair_columns}: it is "
                    "either a pool dataset (prompt + a list of candidate completions) or a preference dataset "
                    "(prompt/chosen/rejected), not both. Drop the columns of the kind you do not want to train on "
                    "(`dataset.remove_columns([...])`).",
                    excerpt(columns),
                )
            ],
        )
    if kind in ("pools", "pairs") or (kind == "prompts" and allow_prompts):
        return kind
    raise InputValidationError(
        where,
        [
            Problem(
                ccol,
                0,
                f"missing column {ccol!r} (columns: {', '.join(map(repr, columns))}). A pool dataset has one row "
                f"per prompt with 'prompt' and {ccol!r} (a list of candidate completions); a preference dataset has "
                "'chosen' and 'rejected'. Set `completions_column` (CLI: --completions_column) if yours is named "
                "differently.",
            )
        ],
    )
