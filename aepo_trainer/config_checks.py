"""The checks of `AEPOConfig`'s fields, as one table, run in order by `AEPOConfig.__post_init__`.

Each row is `(field, rule, expected)`: `rule(value, config)` says whether the field's value is acceptable, and a
failing row raises `ValueError("AEPOConfig.<field>=<value> is invalid: expected <expected>.")` — the first failing row
in table order, so the error a user sees does not depend on how the checks are written. The two checks that need
more than a value (the price table of the API judge, the on-policy sampling settings) are functions in the table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

from ._utils.model_names import same_model
from .choices import (
    ACTIVE_STRATEGIES,
    ACTIVE_SURROGATES,
    ANNOTATORS,
    COLD_START_STRATEGIES,
    EMBEDDING_BACKENDS,
    EMPTY_COMPLETION_RULES,
    JUDGE_MODES,
    PAIRING_RULES,
    POLICY_SIGNALS_DTYPES,
    POLICY_STRATEGIES,
    PROMPT_SELECTIONS,
    SAFETY_TESTS,
    SELECTION_SEARCHES,
    SELECTION_STRATEGIES,
    SELF_JUDGE_MODELS,
    VLLM_MODES,
)

__all__ = ["CHECKS", "Check", "check_config", "is_finite_number"]


class Check(NamedTuple):
    field: str
    rule: Callable[[object, object], bool]  # (value, config) -> acceptable
    expected: str


def is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _one_of(values) -> str:
    return "one of " + ", ".join(repr(v) for v in values)


# ----------------------------------------------------------------------------------------------- rules


def _int_at_least(low: int, bools: bool = True):
    """An int >= low (`bools=False`: True/False refused too)."""
    return lambda v, c: isinstance(v, int) and (bools or not isinstance(v, bool)) and v >= low


def _optional(rule):
    return lambda v, c: v is None or rule(v, c)


def _number(low: float, strict: bool = False):
    return lambda v, c: is_finite_number(v) and (v > low if strict else v >= low)


def _in(values):
    return lambda v, c: v in values


def _non_empty_string(v, c) -> bool:
    return isinstance(v, str) and v != ""


def _seconds(v, c) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0


def _api_prices(config) -> None:
    """`api_prices` parses, and prices the judge model when a dollar budget meters the API judge."""
    metered_judge = config.annotation_cost_budget is not None and config.annotator == "api_judge"
    if config.api_prices is None:
        if metered_judge:
            raise ValueError(
                "AEPOConfig.annotation_cost_budget is set but `api_prices` is not: the cost of a call is unknown "
                "without a price for the judge model."
            )
        return
    from .storage.usage import PriceTable

    try:
        prices = PriceTable(config.api_prices)
    except ValueError as error:
        raise ValueError(f"AEPOConfig.api_prices is invalid: {error}") from None
    if metered_judge:
        try:
            prices.require(config.judge_model)
        except ValueError as error:
            raise ValueError(f"AEPOConfig.api_prices: {error}") from None


def _sampling_settings(config) -> None:
    """The on-policy sampling settings are valid together (`SamplingSettings` checks them)."""
    from .generation.local import GenerationInputError

    try:
        config.sampling_settings()
    except GenerationInputError as error:
        raise ValueError(f"AEPOConfig: {error}") from None


# ----------------------------------------------------------------------------------------------- the table

CHECKS: tuple[Check | Callable, ...] = (
    Check("num_annotations", _int_at_least(2), "an integer >= 2"),
    Check("diversity_weight", _number(0), "a finite number >= 0"),
    Check("selection_strategy", _in(SELECTION_STRATEGIES), _one_of(SELECTION_STRATEGIES)),
    Check("selection_search", _in(SELECTION_SEARCHES), _one_of(SELECTION_SEARCHES)),
    Check("local_search_rounds", _int_at_least(0), "an integer >= 0"),
    # prompt-level selection (selection/prompts.py)
    Check("prompt_selection", _in(PROMPT_SELECTIONS), _one_of(PROMPT_SELECTIONS)),
    Check(
        "prompt_selection_ratio",
        _optional(lambda v, c: is_finite_number(v) and 0 < v <= 1),
        "None or a number in (0, 1]",
    ),
    Check(
        "prompt_selection_window",
        lambda v, c: (
            _int_at_least(1, bools=False)(v, c)
            and (v == 1 or (c.prompt_selection != "all" and c.prompt_selection_ratio is None))
        ),
        "an integer >= 1; > 1 only with a prompt_selection other than 'all' and prompt_selection_ratio None (the "
        "window keeps 1 / window of its prompts)",
    ),
    # active selection
    Check("active_warmup_annotations", _int_at_least(0), "an integer >= 0"),
    Check("active_cold_start", _in(COLD_START_STRATEGIES), _one_of(COLD_START_STRATEGIES)),
    Check("active_exploration", _number(0), "a finite number >= 0"),
    Check("active_quality_weight", _number(0), "a finite number >= 0"),
    Check("active_batch_size", _int_at_least(1), "an integer >= 1"),
    Check(
        "active_prior_precision",
        _optional(_number(0, strict=True)),
        "None (evidence maximisation) or a finite number > 0",
    ),
    Check(
        "active_noise_precision",
        _optional(_number(0, strict=True)),
        "None (evidence maximisation) or a finite number > 0",
    ),
    Check(
        "active_implicit_reward_feature",
        lambda v, c: isinstance(v, bool) and (not v or c.selection_strategy in ACTIVE_STRATEGIES),
        "a bool, True only with an active selection_strategy (the surrogate whose features it extends)",
    ),
    Check(
        "active_policy_features",
        lambda v, c: isinstance(v, bool) and (not v or c.selection_strategy in ACTIVE_STRATEGIES),
        "a bool, True only with an active selection_strategy (the surrogate whose features it extends)",
    ),
    Check("implicit_reward_batch_size", _int_at_least(1, bools=False), "an integer >= 1"),
    # the safety rule, the ensemble and the feature model (issue 27)
    Check("active_surrogate", _in(ACTIVE_SURROGATES), _one_of(ACTIVE_SURROGATES)),
    Check("active_ensemble_heads", _int_at_least(2, bools=False), "an integer >= 2"),
    Check(
        "active_safety_margin",
        _optional(lambda v, c: is_finite_number(v) and 0 <= v < 0.5),
        "None (the safety rule off) or a number in [0, 0.5)",
    ),
    Check(
        "active_safety_confidence",
        lambda v, c: is_finite_number(v) and 0.5 <= v < 1,
        "a number in [0.5, 1)",
    ),
    Check("active_safety_test", _in(SAFETY_TESTS), _one_of(SAFETY_TESTS)),
    Check("active_safety_window", _int_at_least(1, bools=False), "an integer >= 1"),
    Check("active_optimistic_best", lambda v, c: isinstance(v, bool), "a bool"),
    Check(
        "active_feature_model",
        _optional(lambda v, c: isinstance(v, str) and v.strip() != "" and c.selection_strategy in ACTIVE_STRATEGIES),
        "None, or a model id / path with an active selection_strategy (the surrogate whose features it extends)",
    ),
    lambda config: _feature_model_is_not_the_annotator(config),
    Check(
        "policy_signals_every",
        lambda v, c: _int_at_least(1, bools=False)(v, c) and (v == 1 or c.selection_strategy in POLICY_STRATEGIES),
        "an integer >= 1; > 1 only with selection_strategy='implicit_reward_gap' (an active surrogate needs the "
        "policy signals of every label it learns)",
    ),
    Check(
        "policy_signals_dtype",
        lambda v, c: v in POLICY_SIGNALS_DTYPES and (v == "auto" or (c.needs_implicit_rewards and not c.fp16)),
        _one_of(POLICY_SIGNALS_DTYPES) + "; 'bfloat16' only with policy signals (selection_strategy="
        "'implicit_reward_gap', active_implicit_reward_feature or active_policy_features: otherwise nothing reads it) "
        "and not with fp16=True (the step's fp16 autocast would override it)",
    ),
    Check(
        "precompute_pool_ref_logps",
        lambda v, c: isinstance(v, bool) and (not v or c.needs_implicit_rewards),
        "a bool, True only with policy signals (selection_strategy='implicit_reward_gap', "
        "active_implicit_reward_feature or active_policy_features)",
    ),
    # embedding
    Check("embedding_batch_size", _int_at_least(1), "an integer >= 1"),
    Check("embedding_backend", _in(EMBEDDING_BACKENDS), _one_of(EMBEDDING_BACKENDS)),
    Check(
        "embedding_quantized",
        lambda v, c: isinstance(v, bool) and (not v or c.embedding_backend in ("onnx", "openvino")),
        "True or False; True needs embedding_backend 'onnx' or 'openvino'",
    ),
    Check(
        "embedding_max_length",
        _optional(_int_at_least(1, bools=False)),
        "None (the model's own limit) or an integer >= 1",
    ),
    Check("embedding_model", lambda v, c: isinstance(v, str) and v.strip() != "", "a non-empty model id or path"),
    Check("completions_column", _non_empty_string, "a non-empty column name"),
    Check("scores_column", _non_empty_string, "a non-empty column name"),
    Check("embeddings_column", _non_empty_string, "a non-empty column name"),
    # annotation
    Check("empty_completions", _in(EMPTY_COMPLETION_RULES), _one_of(EMPTY_COMPLETION_RULES)),
    Check("annotator", _in(ANNOTATORS), _one_of(ANNOTATORS)),
    Check(
        "reward_model_name_or_path",
        lambda v, c: c.annotator != "reward_model" or bool(v),
        "a model id or path when annotator='reward_model'",
    ),
    Check("annotation_batch_size", _int_at_least(1), "an integer >= 1"),
    Check("annotation_budget", _optional(_int_at_least(0)), "None (unlimited) or an integer >= 0"),
    Check("annotator_version", _optional(_non_empty_string), "None or a non-empty string"),
    Check(
        "eval_annotation_budget",
        _optional(_int_at_least(0)),
        "None (each evaluation prompt annotated once) or an integer >= 0",
    ),
    Check("annotation_wait", _seconds, "a number of seconds >= 0 (inf: no limit)"),  # the labelling page
    # LLM services
    Check("judge_mode", _in(JUDGE_MODES), _one_of(JUDGE_MODES)),
    Check(
        "judge_model",
        lambda v, c: c.annotator != "api_judge" or bool(v),
        "the judge's model name when annotator='api_judge'",
    ),
    Check(
        "judge_api_base",
        lambda v, c: isinstance(v, str) and v.startswith(("http://", "https://")),
        "an http(s) URL such as 'http://localhost:8000/v1'",
    ),
    Check("judge_max_tokens", _int_at_least(1, bools=False), "an integer >= 1"),
    Check("judge_parse_retries", _int_at_least(0, bools=False), "an integer >= 0"),
    Check("api_concurrency", _int_at_least(1, bools=False), "an integer >= 1"),
    Check("api_max_retries", _int_at_least(0, bools=False), "an integer >= 0"),
    Check("api_requests_per_minute", _optional(_number(0, strict=True)), "a finite number > 0 or None (unlimited)"),
    Check("api_tokens_per_minute", _optional(_number(0, strict=True)), "a finite number > 0 or None (unlimited)"),
    Check("api_timeout", _number(0, strict=True), "a finite number > 0"),
    Check("annotation_cost_budget", _optional(_number(0)), "None (unlimited) or a number of dollars >= 0"),
    _api_prices,
    # pairing and losses
    Check("pairing_rule", _in(PAIRING_RULES), _one_of(PAIRING_RULES)),
    Check("pairing_margin", _number(0), "a finite number >= 0"),
    Check("reward_scale", _number(0, strict=True), "a finite number > 0"),
    # on-policy generation
    Check("self_judge_model", _in(SELF_JUDGE_MODELS), _one_of(SELF_JUDGE_MODELS)),
    Check("num_generations", _int_at_least(1, bools=False), "an integer >= 1"),
    Check("max_completion_length", _int_at_least(1, bools=False), "an integer >= 1"),
    Check("generate_every", _int_at_least(1, bools=False), "an integer >= 1"),
    Check("generation_batch_size", _optional(_int_at_least(1)), "None or an integer >= 1"),
    Check("vllm_mode", _in(VLLM_MODES), _one_of(VLLM_MODES)),
    _sampling_settings,
)


def _feature_model_is_not_the_annotator(config) -> None:
    """`active_feature_model` may not be the reward model that annotates (`selection/feature_model.py` says why)."""
    name = getattr(config, "active_feature_model", None)
    if config.annotator == "reward_model" and same_model(name, config.reward_model_name_or_path):
        raise ValueError(FEATURE_MODEL_IS_THE_ANNOTATOR.format(name=name))


#: Why the annotating reward model cannot be the feature model (the config check and the trainer's check of an
#: annotator object both say it).
FEATURE_MODEL_IS_THE_ANNOTATOR = (
    "AEPOConfig.active_feature_model={name!r} is the reward model that annotates (reward_model_name_or_path): its "
    "hidden state of a candidate is its label (the score head is one linear map of that state), so the features of all "
    "N candidates would cost a label for every candidate and selection would be moot. Use a different, cheaper "
    "reward model (or an instruct model) as active_feature_model, or score every candidate (num_annotations = the "
    "pool size: best-of-N)."
)


def check_config(config) -> None:
    """Run `CHECKS` in order on `config`; the first failing row raises `ValueError` naming the field."""
    for check in CHECKS:
        if not isinstance(check, Check):
            check(config)
            continue
        value = getattr(config, check.field)
        if not check.rule(value, config):
            raise ValueError(f"AEPOConfig.{check.field}={value!r} is invalid: expected {check.expected}.")
