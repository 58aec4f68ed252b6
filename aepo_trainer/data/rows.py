"""Every row and every column of a pool dataset, checked in one pass before any paid or slow work.

Prompts and completions (strings or chat messages, one format, empty or invisible-only completions (D10) by the rule
of `aepo_trainer.data.empty_completions`, no lone surrogate code point (D7)), `scores` (one finite number per completion when the `dataset_scores` annotator reads them:
D1, D4), `embeddings` (one finite, non-zero vector of one dimension per completion, in every row or none: D2, D3).

Lone surrogates (D7) are refused rather than re-encoded: they come from a broken decoder upstream (`surrogateescape`,
UTF-16 halves), any repair would silently change the text that is annotated, stored and trained on, and the SQLite
store, JSON writers and tokenizers all reject them later anyway.
"""

from __future__ import annotations

import math
import re
import unicodedata

from .errors import InputValidationError, Problem, excerpt
from .kinds import columns_of

__all__ = ["is_blank", "pool_problems", "validate_pool_dataset"]

_SURROGATE = re.compile("[\ud800-\udfff]")
# Characters that render as nothing but are not whitespace to `str.strip` (Unicode category Cf covers zero-width
# space/joiners, BOM, word joiner, bidi marks); these few are letters or symbols that also display blank.
_BLANK_SYMBOLS = frozenset("\u115f\u1160\u3164\uffa0\u2800\u180e")


def is_blank(text: str) -> bool:
    """True when `text` shows nothing: whitespace, zero-width and other invisible characters only (D10)."""
    for ch in text:
        if ch.isspace() or ch in _BLANK_SYMBOLS:
            continue
        if unicodedata.category(ch) in ("Cf", "Cc", "Zs", "Zl", "Zp", "Mn", "Me"):
            continue  # format/control characters, and combining marks with nothing to combine with
        return False
    return True


# ----------------------------------------------------------------------------------------------------- formats


def _is_message(x) -> bool:
    return isinstance(x, dict) and "role" in x and "content" in x


def _value_format(x) -> str | None:
    """'standard' for a string, 'conversational' for a non-empty list of chat messages, None otherwise."""
    if isinstance(x, str):
        return "standard"
    if isinstance(x, list) and len(x) > 0 and all(_is_message(m) for m in x):
        return "conversational"
    return None


def _texts(x, fmt: str) -> list[str]:
    if fmt == "standard":
        return [x]
    return [m["content"] if isinstance(m.get("content"), str) else str(m.get("content") or "") for m in x]


def _is_empty(x, fmt: str) -> bool:
    return all(is_blank(t) for t in _texts(x, fmt))


def _surrogate(x, fmt: str) -> str | None:
    """The first text holding a lone surrogate code point (D7), or None."""
    for text in _texts(x, fmt):
        if _SURROGATE.search(text):
            return text
    return None


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ----------------------------------------------------------------------------------------------------- pool rows


def pool_problems(dataset, args, need_scores: bool = False, allow_empty: bool = False) -> list[Problem]:
    """Every problem of a pool dataset (a `datasets.Dataset` or any iterable of row dicts), all rows, all columns.

    `need_scores`: the `dataset_scores` annotator reads `scores_column`, so it must exist in every row and hold one
    finite number per completion (otherwise only its length is checked where it is present). Empty completions (D10)
    are problems only under `args.empty_completions == 'error'` and never with `allow_empty` (on-policy pools).
    """
    ccol, scol, ecol = args.completions_column, args.scores_column, args.embeddings_column
    columns = columns_of(dataset)
    problems: list[Problem] = []
    if columns is not None:
        for needed in ("prompt", ccol):
            if needed not in columns:
                problems.append(
                    Problem(
                        needed,
                        0,
                        f"missing column {needed!r} (columns: {', '.join(map(repr, columns))}). A pool dataset has "
                        f"one row per prompt with 'prompt' and {ccol!r} (a list of candidate completions); set "
                        "`completions_column` (CLI: --completions_column) if yours is named differently.",
                    )
                )
        if need_scores and scol not in columns:
            problems.append(
                Problem(
                    scol,
                    0,
                    f"missing column {scol!r}, which --annotator dataset_scores (`annotator='dataset_scores'`) reads (one "
                    "score per completion; "
                    f"columns: {', '.join(map(repr, columns))}). Set `scores_column` (--scores_column) or choose "
                    "another `annotator` (--annotator).",
                )
            )
        if problems:
            return problems
    west_of_n = args.selection_strategy == "west_of_n"
    k = 2 if west_of_n else args.num_annotations
    # `aepo_trainer.data.empty_completions`: only 'error' refuses an empty candidate (settings objects without the
    # field: the strict rule)
    refuse_empty = not allow_empty and getattr(args, "empty_completions", "error") == "error"
    wanted = [c for c in dict.fromkeys(("prompt", ccol, scol, ecol)) if columns is None or c in columns]
    rows = dataset.select_columns(wanted) if hasattr(dataset, "select_columns") and columns is not None else dataset
    expected_format = None
    embedding_dim = None
    rows_with_embeddings: list[int] = []
    rows_without_embeddings: list[int] = []
    n_rows = 0
    for index, row in enumerate(rows):
        n_rows += 1
        prompt = row.get("prompt")
        prompt_format = _value_format(prompt)
        if prompt is None:
            problems.append(Problem("prompt", index, "missing prompt"))
        elif prompt_format is None:
            problems.append(
                Problem(
                    "prompt",
                    index,
                    "expected a string or a list of chat messages ({'role', 'content'} dicts), got "
                    f"{type(prompt).__name__}",
                    excerpt(prompt),
                )
            )
        else:
            if expected_format is None:
                expected_format = prompt_format
            elif prompt_format != expected_format:
                problems.append(
                    Problem(
                        "prompt",
                        index,
                        f"mixed formats: row 0 is {expected_format} but this row is {prompt_format}. Use one format "
                        "for the whole dataset.",
                    )
                )
            bad = _surrogate(prompt, prompt_format)
            if bad is not None:
                problems.append(_surrogate_problem("prompt", index, bad))
        pool = row.get(ccol)
        if not isinstance(pool, list):
            problems.append(
                Problem(
                    ccol,
                    index,
                    f"expected a list of candidate completions, got {type(pool).__name__}",
                    excerpt(pool),
                )
            )
            continue
        if len(pool) < k:
            need = "2 (west_of_n needs a pair)" if west_of_n else f"num_annotations = {k}"
            problems.append(Problem(ccol, index, f"{len(pool)} completion(s), fewer than {need}"))
        for j, completion in enumerate(pool):
            field = f"{ccol}[{j}]"
            fmt = _value_format(completion)
            if fmt is None:
                problems.append(
                    Problem(
                        field,
                        index,
                        f"expected a string or a list of chat messages, got {type(completion).__name__}",
                        excerpt(completion),
                    )
                )
                continue
            if prompt_format is not None and fmt != prompt_format:
                problems.append(
                    Problem(field, index, f"mixed formats: the prompt is {prompt_format} but this completion is {fmt}")
                )
            if refuse_empty and _is_empty(completion, fmt):
                problems.append(
                    Problem(
                        field,
                        index,
                        "empty completion (only whitespace or invisible characters; empty_completions='error')",
                        excerpt(completion),
                    )
                )
            bad = _surrogate(completion, fmt)
            if bad is not None:
                problems.append(_surrogate_problem(field, index, bad))
        problems.extend(_score_problems(row.get(scol), len(pool), scol, index, need_scores))
        vectors = row.get(ecol)
        if vectors is None:
            rows_without_embeddings.append(index)
            continue
        rows_with_embeddings.append(index)
        if _is_clean_matrix(vectors, len(pool), embedding_dim):  # an [N, D] array read from Arrow: checked at once
            embedding_dim = embedding_dim or int(vectors.shape[1])
            continue
        if hasattr(vectors, "tolist"):  # an array with a problem: reported vector by vector below
            vectors = vectors.tolist()
        if not isinstance(vectors, (list, tuple)) or len(vectors) != len(pool):
            got = len(vectors) if isinstance(vectors, (list, tuple)) else type(vectors).__name__
            problems.append(Problem(ecol, index, f"expected one embedding per completion ({len(pool)}), got {got}"))
            continue
        for j, vector in enumerate(vectors):
            field = f"{ecol}[{j}]"
            if vector is None:
                problems.append(Problem(field, index, "null embedding (D3): every completion needs a vector"))
                continue
            dim = len(vector) if isinstance(vector, (list, tuple)) else -1
            if embedding_dim is None and dim > 0:
                embedding_dim = dim
            if dim <= 0 or dim != embedding_dim:
                problems.append(
                    Problem(
                        field,
                        index,
                        f"expected a vector of dimension {embedding_dim}, got {'a non-vector' if dim < 0 else dim}",
                        excerpt(vector),
                    )
                )
                continue
            if not all(_finite_number(v) for v in vector):
                problems.append(Problem(field, index, "non-finite or non-numeric embedding value", excerpt(vector)))
            elif not any(v != 0 for v in vector):
                problems.append(
                    Problem(field, index, "all-zero embedding: its cosine similarity is undefined", excerpt(vector))
                )
    if n_rows == 0:
        problems.append(Problem(None, None, "the dataset is empty (no rows)"))
    if rows_with_embeddings and rows_without_embeddings:
        first = rows_without_embeddings[0]
        problems.append(
            Problem(
                ecol,
                first,
                f"null embeddings in {len(rows_without_embeddings)} row(s) (first: {first}) while "
                f"{len(rows_with_embeddings)} row(s) have them: give every row its vectors, or drop the column to "
                "have them all computed by the embedder (mixing the two mixes embedding spaces)",
            )
        )
    return problems


def _surrogate_problem(field: str, row: int, text: str) -> Problem:
    position = _SURROGATE.search(text).start()
    return Problem(
        field,
        row,
        f"lone surrogate code point U+{ord(text[position]):04X} at character {position}: the text is not valid "
        "Unicode (often a file decoded with errors='surrogateescape' or a split UTF-16 pair); fix the text upstream",
        excerpt(text[max(0, position - 20) : position + 20]),
    )


def _score_problems(values, pool_size: int, column: str, row: int, need_scores: bool) -> list[Problem]:
    if values is None:
        if need_scores:
            return [Problem(column, row, "null scores: the 'dataset_scores' annotator needs one score per completion")]
        return []
    if not isinstance(values, (list, tuple)) or len(values) != pool_size:
        got = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
        return [Problem(column, row, f"expected one score per completion ({pool_size}), got {got}", excerpt(values))]
    if not need_scores:
        return []
    return [
        Problem(f"{column}[{j}]", row, "expected a finite number (the 'dataset_scores' annotator reads it)", excerpt(v))
        for j, v in enumerate(values)
        if not _finite_number(v)
    ]


def _is_clean_matrix(vectors, pool_size: int, dim: int | None) -> bool:
    """True for a float `[pool_size, D]` numpy array (D = `dim` when known) of finite vectors none of which is all
    zero: streamed Arrow inputs hold embeddings as arrays, and checking one array beats checking N x D floats."""
    import numpy as np

    if not isinstance(vectors, np.ndarray) or vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.floating):
        return False
    if vectors.shape[0] != pool_size or vectors.shape[1] == 0 or (dim is not None and vectors.shape[1] != dim):
        return False
    return bool(np.isfinite(vectors).all() and (vectors != 0).any(axis=1).all())


def validate_pool_dataset(
    dataset, args, dataset_name: str = "train", need_scores: bool = False, allow_empty: bool = False
) -> None:
    """Check every row of a pool dataset; raise `InputValidationError` (a `ValueError`) listing the problems, each
    with row index, field and excerpt. `allow_empty`: empty completions are real samples (on-policy pools)."""
    problems = pool_problems(dataset, args, need_scores=need_scores, allow_empty=allow_empty)
    if problems:
        raise InputValidationError(f"{dataset_name} pool dataset", problems)
