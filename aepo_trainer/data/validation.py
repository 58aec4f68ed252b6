"""One validation pass over everything a run needs, before any paid or slow work.

Embedding the full pools takes minutes to hours and every annotation costs money, so a bad value found on row 4 812
after the embedding pass, or a reward model that fails to load after it, wastes both. This module checks, up front:

* **the dataset kind** — pools (`completions`), pairs (`chosen`/`rejected`), never both (D8), never neither, never
  empty (D9);
* **every row and every column** of a pool dataset — prompts and completions (strings or chat messages, one format,
  empty or invisible-only completions (D10) by the rule of `aepo_trainer.data.empty_completions`, no lone surrogate code
  point (D7)), `scores` (one finite number per completion when the `dataset_scores` annotator reads them: D1, D4),
  `embeddings` (one finite, non-zero vector of one dimension per completion, in every row or none: D2, D3);
* **the annotator and the models** — a reward model, judge or embedding model that cannot be found is reported now,
  not after the embedding pass;
* **the budget** — a budget that cannot pay for a single prompt.

Every problem is reported with the column, the row index and a short excerpt of the value; up to
`MAX_LISTED_PROBLEMS` are listed in one `InputValidationError`, followed by the count of the others, so a user fixes
a file in one round rather than one error per run.

Lone surrogates (D7) are refused rather than re-encoded: they come from a broken decoder upstream (`surrogateescape`,
UTF-16 halves), any repair would silently change the text that is annotated, stored and trained on, and the SQLite
store, JSON writers and tokenizers all reject them later anyway.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "MAX_LISTED_PROBLEMS",
    "InputValidationError",
    "Problem",
    "annotator_problems",
    "budget_problems",
    "dataset_kind",
    "is_blank",
    "pool_problems",
    "pretrained_problem",
    "store_problems",
    "validate_pool_dataset",
    "validate_training_inputs",
]

#: How many problems one error lists before it only counts the rest.
MAX_LISTED_PROBLEMS = 20
_EXCERPT_CHARS = 60
_PAIR_COLUMNS = ("chosen", "rejected")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Characters that render as nothing but are not whitespace to `str.strip` (Unicode category Cf covers zero-width
# space/joiners, BOM, word joiner, bidi marks); these few are letters or symbols that also display blank.
_BLANK_SYMBOLS = frozenset("\u115f\u1160\u3164\uffa0\u2800\u180e")


@dataclass(frozen=True)
class Problem:
    """One bad value: where it is (`column`, `row`; None when it concerns the whole dataset or a setting), what is
    wrong, and a short excerpt of the value."""

    column: str | None
    row: int | None
    message: str
    excerpt: str | None = None

    def describe(self, where: str) -> str:
        parts = [where]
        if self.row is not None:
            parts.append(f"row {self.row}")
        if self.column is not None:
            parts.append(f"field {_field(self.column)}" if self.row is not None else repr(self.column))
        text = ", ".join(parts) + f": {self.message}"
        return text + (f" (value: {self.excerpt})" if self.excerpt else "")


def _field(column: str) -> str:
    """'completions[3]' -> "'completions'[3]" (the column, then the position in its list)."""
    match = re.fullmatch(r"(.*)\[(\d+)\]", column)
    return f"{match.group(1)!r}[{match.group(2)}]" if match else repr(column)


class InputValidationError(ValueError):
    """Bad input found before any paid or slow work. `problems` holds every problem found (the message lists the
    first `MAX_LISTED_PROBLEMS`). The `aepo` CLI reports it without a traceback, with exit code 2."""

    is_user_error = True  # read by `aepo_trainer.cli.main` (no import needed there)

    def __init__(self, where: str, problems: list[Problem]):
        self.where = where
        self.problems = list(problems)
        lines = [p.describe(where) for p in self.problems[:MAX_LISTED_PROBLEMS]]
        if len(self.problems) == 1:
            message = lines[0]
        else:
            header = f"{where}: {len(self.problems)} problems found (nothing was annotated or paid for):"
            message = header + "\n  " + "\n  ".join(lines)
            if len(self.problems) > MAX_LISTED_PROBLEMS:
                message += f"\n  ... and {len(self.problems) - MAX_LISTED_PROBLEMS} more problem(s)"
        super().__init__(message)


def excerpt(value) -> str:
    """A short, printable excerpt of a value (surrogates escaped, long text cut)."""
    text = repr(value)
    if len(text) > _EXCERPT_CHARS:
        text = text[: _EXCERPT_CHARS - 3] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


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


# ----------------------------------------------------------------------------------------------------- dataset kind


def _columns(dataset) -> list[str] | None:
    columns = getattr(dataset, "column_names", None)
    if isinstance(columns, dict):  # a DatasetDict: not a single split
        return None
    if columns is not None:
        return list(columns)
    if isinstance(dataset, list):
        return list(dict.fromkeys(k for row in dataset if isinstance(row, dict) for k in row))
    return None


def _length(dataset) -> int | None:
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
    if _length(dataset) == 0:
        raise InputValidationError(where, [Problem(None, None, "the dataset is empty (no rows)")])
    columns = _columns(dataset)
    if columns is None:  # streaming: checked later, row by row, by whoever reads it
        from .pools import is_pool_dataset

        return "pools" if is_pool_dataset(dataset, args) else "pairs"
    pair_columns = [c for c in _PAIR_COLUMNS if c in columns]
    if ccol in columns and pair_columns:
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
    if ccol in columns:
        return "pools"
    if all(c in columns for c in _PAIR_COLUMNS):
        return "pairs"
    pool_columns = [getattr(args, "scores_column", "scores"), getattr(args, "embeddings_column", "embeddings")]
    if allow_prompts and "prompt" in columns and not pair_columns and not any(c in columns for c in pool_columns):
        return "prompts"  # no trace of a pool (scores, embeddings): a prompt-only dataset, not a broken pool dataset
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


# ----------------------------------------------------------------------------------------------------- pool rows


def pool_problems(dataset, args, need_scores: bool = False, allow_empty: bool = False) -> list[Problem]:
    """Every problem of a pool dataset (a `datasets.Dataset` or any iterable of row dicts), all rows, all columns.

    `need_scores`: the `dataset_scores` annotator reads `scores_column`, so it must exist in every row and hold one
    finite number per completion (otherwise only its length is checked where it is present). Empty completions (D10)
    are problems only under `args.empty_completions == 'error'` and never with `allow_empty` (on-policy pools).
    """
    ccol, scol, ecol = args.completions_column, args.scores_column, args.embeddings_column
    columns = _columns(dataset)
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
    # `aepo_trainer.data.empty_completions`: only 'error' refuses an empty candidate (settings objects without the field:
    # the strict rule)
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


# ----------------------------------------------------------------------------------------------------- models, budget


def pretrained_problem(name_or_path: str | None, setting: str) -> Problem | None:
    """A problem when `name_or_path` (a model folder or a Hub id) has no loadable `config.json` — checked in
    seconds, so that a missing reward model is not found after an hour of embedding."""
    if not name_or_path:
        return Problem(setting, None, "no model given")
    path = os.path.expanduser(str(name_or_path))
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "config.json")):
            return Problem(setting, None, f"the folder {name_or_path!r} holds no config.json: not a model folder")
    elif os.path.isabs(path) or path.startswith(".") or os.path.exists(path):
        return Problem(setting, None, f"the model folder {name_or_path!r} does not exist")
    try:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(path)
    except Exception as error:  # any failure means "cannot be loaded": report it
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return Problem(setting, None, f"cannot load the model {name_or_path!r}: {first_line[:300]}")
    return None


def annotator_problems(
    args, annotator=None, judge_available: bool = True, need_embedder: bool = True, check_annotator: bool = True
) -> list[Problem]:
    """The annotator (an object, or the one `args.annotator` names) and the embedding model can be loaded."""
    problems: list[Problem] = []
    if not check_annotator:
        pass
    elif annotator is None:
        kind = args.annotator
        if kind == "reward_model":
            problem = pretrained_problem(args.reward_model_name_or_path, "reward_model_name_or_path")
            if problem is not None:
                problems.append(problem)
        elif kind == "judge" and not judge_available:
            problems.append(
                Problem(
                    "annotator",
                    None,
                    "annotator='judge' uses the frozen starting model as judge: pass `ref_model` (or train a PEFT "
                    "adapter, judged with the adapter disabled)",
                )
            )
    else:
        path = getattr(annotator, "model_name_or_path", None)
        if path and getattr(annotator, "_model", None) is None:  # a reward model that is not loaded yet
            problem = pretrained_problem(path, "reward_model_name_or_path")
            if problem is not None:
                problems.append(problem)
    if need_embedder:
        from ..embedding.backends import backend_problem
        from ..embedding.embedder import _DEFAULT_ALIASES, _bundled_minilm_path

        backend = getattr(args, "embedding_backend", "torch")
        problem = backend_problem(backend, getattr(args, "embedding_quantized", False))
        if problem is not None:
            problems.append(Problem("embedding_backend", None, problem))
        name = args.embedding_model
        if not (name in _DEFAULT_ALIASES and _bundled_minilm_path() is not None):
            problem = pretrained_problem(name, "embedding_model")
            if problem is not None:
                problems.append(problem)
    return problems


def policy_signal_problems(args, command: str) -> list[Problem]:
    """Settings that read the policy being trained — its implicit rewards, computed in `AEPOTrainer`'s training step —
    cannot be honoured by a command that has no policy (`aepo select`): refused before anything is read or paid."""
    from ..choices import POLICY_STRATEGIES, SELECTION_STRATEGIES

    problems = []
    if args.selection_strategy in POLICY_STRATEGIES:
        others = ", ".join(repr(s) for s in SELECTION_STRATEGIES if s not in POLICY_STRATEGIES)
        problems.append(
            Problem(
                "selection_strategy",
                None,
                f"{args.selection_strategy!r} ranks candidates by the implicit reward beta * (log pi - log pi_ref) "
                f"of the policy being trained, which only AEPOTrainer computes (in its training step); {command} "
                f"has no policy. Train with it (`aepo train`, `AEPOTrainer`), or choose one of {others}",
            )
        )
    if getattr(args, "active_implicit_reward_feature", False):
        problems.append(
            Problem(
                "active_implicit_reward_feature",
                None,
                f"the surrogate's implicit-reward feature needs the policy being trained; {command} has none",
            )
        )
    return problems


def store_problems(args) -> list[Problem]:
    """An existing annotation store must be a readable SQLite store (D6); it is opened read-only, so this check
    writes nothing. A missing file is fine: it is created on the first annotation."""
    import sqlite3

    path = getattr(args, "annotation_store", None) or os.path.join(str(args.output_dir), "annotations.sqlite")
    if not os.path.exists(path) or (os.path.isfile(path) and os.path.getsize(path) == 0):
        return []  # created (or initialised) on the first annotation
    if not os.path.isfile(path):
        return [Problem("annotation_store", None, f"{path!r} is not a file")]
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        try:
            conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as error:
        from ..storage.annotations import _store_error

        return [Problem("annotation_store", None, str(_store_error(path, error, 5.0)))]
    return []


def budget_problems(args, pool_sizes: Iterable[int]) -> list[Problem]:
    """A positive budget smaller than the cost of one prompt would pay for nothing (0 = reuse stored labels only)."""
    budget = args.annotation_budget
    if not budget:
        return []
    sizes = list(pool_sizes)
    if not sizes:
        return []
    per_prompt = min(sizes) if args.selection_strategy == "west_of_n" else args.num_annotations
    if budget < per_prompt:
        return [
            Problem(
                "annotation_budget",
                None,
                f"{budget} cannot pay for a single prompt ({per_prompt} annotations per prompt with "
                f"selection_strategy={args.selection_strategy!r}); raise it, or set 0 to only reuse stored annotations",
            )
        ]
    return []


def _pool_sizes(dataset, column: str) -> list[int]:
    try:
        return [len(p) for p in dataset[column] if isinstance(p, list)]
    except (TypeError, KeyError):
        return []


def validate_training_inputs(
    args, train_dataset=None, eval_dataset=None, annotator=None, judge_available: bool = True
) -> None:
    """Everything `AEPOTrainer` needs, checked before the model is wrapped, the pools are tokenized and embedded, or
    anything is annotated: the kind of each dataset (D8, D9), every row and column of each pool dataset (D1-D3, D7,
    D10), the scores column of the `dataset_scores` annotator (D4), the annotator and embedding models, the budget.

    Raises `InputValidationError` listing every problem (up to `MAX_LISTED_PROBLEMS`). Pair datasets are left to
    `DPOTrainer`.
    """
    from ..annotation.dataset_scores import DatasetScoresAnnotator

    named = eval_dataset.items() if isinstance(eval_dataset, dict) else [("eval", eval_dataset)]
    datasets = [(n, d) for n, d in [("train", train_dataset), *named] if d is not None]
    kinds = {name: dataset_kind(d, args, name, allow_prompts=True) for name, d in datasets}
    pool_sets = [(name, d) for name, d in datasets if kinds[name] == "pools"]
    if kinds.get("train") == "prompts":  # on-policy: the pools are sampled in the training step (`on_policy`)
        problems = annotator_problems(args, annotator, judge_available=judge_available, need_embedder=True)
        if annotator is None and args.annotator == "dataset_scores":
            problems.append(
                Problem(
                    "annotator",
                    None,
                    "the train dataset has only prompts (on-policy pools), so there are no dataset scores to read: "
                    "pass an annotator (a reward function, `annotator=...`) or set `annotator` to 'reward_model', "
                    "'judge', 'self_judge', 'api_judge' or 'human'",
                )
            )
        problems += budget_problems(args, [args.num_generations]) + store_problems(args)
        if problems:
            raise InputValidationError("AEPO settings", problems)
    if not pool_sets:
        return
    if annotator is None:
        need_scores = args.annotator == "dataset_scores"
    else:
        need_scores = isinstance(annotator, DatasetScoresAnnotator)
        if need_scores and annotator.column != args.scores_column:
            args = _with_scores_column(args, annotator.column)
    for name, dataset in pool_sets:
        if _columns(dataset) is None:
            continue  # streaming pool datasets are refused by `prepare_pool_dataset`
        validate_pool_dataset(dataset, args, dataset_name=name, need_scores=need_scores)
    need_embedder = any(args.embeddings_column not in (_columns(d) or []) for _, d in pool_sets)
    problems = annotator_problems(args, annotator, judge_available=judge_available, need_embedder=need_embedder)
    problems += budget_problems(args, _pool_sizes(pool_sets[0][1], args.completions_column))
    problems += store_problems(args)
    if problems:
        raise InputValidationError("AEPO settings", problems)


def _with_scores_column(args, column: str):
    import copy

    patched = copy.copy(args)
    patched.scores_column = column
    return patched
