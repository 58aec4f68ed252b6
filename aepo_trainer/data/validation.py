"""One validation pass over everything a run needs, before any paid or slow work (the run's preflight).

Embedding the full pools takes minutes to hours and every annotation costs money, so a bad value found on row 4 812
after the embedding pass, or a reward model that fails to load after it, wastes both. `validate_training_inputs`
checks, up front:

* **the dataset kind** (`kinds`) — pools (`completions`), pairs (`chosen`/`rejected`), never both (D8), never
  neither, never empty (D9);
* **every row and every column** of a pool dataset (`rows`);
* **the annotator and the models** — a reward model, judge or embedding model that cannot be found is reported now,
  not after the embedding pass;
* **the budget** — a budget that cannot pay for a single prompt; and the annotation store's file.

Every problem is reported with the column, the row index and a short excerpt of the value (`errors`). This module
also re-exports the names of `errors`, `kinds` and `rows`, its parts before the split.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from ..storage.annotations import check_readable, default_store_path
from .errors import MAX_LISTED_PROBLEMS, InputValidationError, Problem, excerpt
from .kinds import columns_of, dataset_kind
from .rows import is_blank, pool_problems, validate_pool_dataset

__all__ = [
    "MAX_LISTED_PROBLEMS",
    "InputValidationError",
    "Problem",
    "annotator_problems",
    "budget_problems",
    "dataset_kind",
    "excerpt",
    "is_blank",
    "policy_signal_problems",
    "pool_problems",
    "pretrained_problem",
    "store_problems",
    "validate_pool_dataset",
    "validate_training_inputs",
]


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
            from ..annotation.factory import JUDGE_NEEDS_A_FROZEN_MODEL

            problems.append(Problem("annotator", None, JUDGE_NEEDS_A_FROZEN_MODEL))
    else:
        path = getattr(annotator, "model_name_or_path", None)
        if path and getattr(annotator, "_model", None) is None:  # a reward model that is not loaded yet
            problem = pretrained_problem(path, "reward_model_name_or_path")
            if problem is not None:
                problems.append(problem)
    if need_embedder:
        from ..embedding.backends import backend_problem
        from ..embedding.embedder import DEFAULT_MODEL_ALIASES, bundled_minilm_path

        backend = getattr(args, "embedding_backend", "torch")
        problem = backend_problem(backend, getattr(args, "embedding_quantized", False))
        if problem is not None:
            problems.append(Problem("embedding_backend", None, problem))
        elif backend == "static":
            from ..embedding.embedder import Embedder
            from ..embedding.static import static_table_dir, static_table_problem

            table = static_table_dir(Embedder(args.embedding_model, backend="static").static_source)
            problem = static_table_problem(table)
            if problem is not None:
                problems.append(Problem("embedding_backend", None, problem))
        name = args.embedding_model
        if not (name in DEFAULT_MODEL_ALIASES and bundled_minilm_path() is not None):
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
    from ..choices import POLICY_PROMPT_SELECTIONS, PROMPT_SELECTIONS

    if getattr(args, "prompt_selection", "all") in POLICY_PROMPT_SELECTIONS:
        others = ", ".join(repr(s) for s in PROMPT_SELECTIONS if s not in POLICY_PROMPT_SELECTIONS)
        problems.append(
            Problem(
                "prompt_selection",
                None,
                f"{args.prompt_selection!r} ranks prompts by the implicit reward of the policy being trained; "
                f"{command} has no policy. Choose one of {others}",
            )
        )
    if getattr(args, "prompt_selection_window", 1) > 1:
        problems.append(
            Problem(
                "prompt_selection_window",
                None,
                f"a window of upcoming training batches exists only in AEPOTrainer; {command} chooses prompts within "
                "each chunk it reads. Leave prompt_selection_window at 1",
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

    path = default_store_path(args)
    if not os.path.exists(path) or (os.path.isfile(path) and os.path.getsize(path) == 0):
        return []  # created (or initialised) on the first annotation
    if not os.path.isfile(path):
        return [Problem("annotation_store", None, f"{path!r} is not a file")]
    error = check_readable(path, timeout=5.0)
    return [] if error is None else [Problem("annotation_store", None, str(error))]


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
        if columns_of(dataset) is None:
            continue  # streaming pool datasets are refused by `prepare_pool_dataset`
        validate_pool_dataset(dataset, args, dataset_name=name, need_scores=need_scores)
    need_embedder = any(args.embeddings_column not in (columns_of(d) or []) for _, d in pool_sets)
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
