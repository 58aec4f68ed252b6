"""`build_annotator`: the annotator an `AEPOConfig` asks for."""

from __future__ import annotations

import os

from .._utils.model_names import same_model
from ..config_checks import FEATURE_MODEL_IS_THE_ANNOTATOR
from ..storage.annotations import default_store_path
from .dataset_scores import DatasetScoresAnnotator
from .human import HumanQueueAnnotator
from .judge import PairwiseJudgeAnnotator
from .reward_model import RewardModelAnnotator

__all__ = [
    "JUDGE_NEEDS_A_FROZEN_MODEL",
    "build_annotator",
    "judge_available",
    "refuse_annotator_as_feature_model",
    "resolve_annotator",
]

#: Why `annotator='judge'` cannot run: the one message of the preflight and of the factory.
JUDGE_NEEDS_A_FROZEN_MODEL = (
    "annotator='judge' uses the frozen starting model as judge: pass `ref_model` (or train a PEFT adapter, judged "
    "with the adapter disabled)"
)


def judge_available(model, ref_model=None, peft_config=None) -> bool:
    """True when a trainer has a frozen starting model to judge with: a `ref_model`, or a PEFT adapter (the policy
    with its adapter disabled). The one statement of this rule (the preflight asks it before any slow work)."""
    return ref_model is not None or peft_config is not None or hasattr(model, "peft_config")


def build_annotator(args, model=None, tokenizer=None, run_id: str | None = None, ref_model=None):
    """Map `args.annotator` (an `AEPOConfig` or any object with the same fields) to an annotator instance.

    * `'dataset_scores'`: `DatasetScoresAnnotator(args.scores_column)`.
    * `'reward_model'`: `RewardModelAnnotator(args.reward_model_name_or_path)`, loaded on first use on the policy's
      device when `model` is given (else CUDA when available).
    * `'judge'`: `PairwiseJudgeAnnotator(model, tokenizer)` — `model` is required: the policy when it is a PEFT model
      (judged with its adapter disabled, i.e. the frozen starting model), otherwise the frozen reference model.
    * `'api_judge'`: `ApiJudgeAnnotator.from_config(args, ...)` — an LLM behind an OpenAI-compatible API, metered in
      the annotation store (`annotation_store` or `<output_dir>/annotations.sqlite`) under `run_id` (default: the
      trainer's `default_run_id(args)`). The server is probed here: a bad key / unknown model / wrong URL fails now,
      before any paid call.
    * `'self_judge'`: the policy `model` as its own pairwise judge (SELF-JUDGE). With `args.self_judge_model='current'`
      (default) it judges with its current weights (PEFT: adapter enabled) and its identity follows the weights (see
      `PairwiseJudgeAnnotator`); with `'frozen'` it is the `'judge'` annotator: the starting model (PEFT: adapter
      disabled; otherwise `ref_model`, required).
    * `'human'`: `HumanQueueAnnotator(args.annotation_queue or <output_dir>/annotation_queue.jsonl)`, reading the
      labelling page's answers from the run's annotation store and waiting `args.annotation_wait` seconds for them.
    """
    kind = getattr(args, "annotator", "dataset_scores")
    batch_size = int(getattr(args, "annotation_batch_size", 16) or 16)
    if kind == "dataset_scores":
        return DatasetScoresAnnotator(getattr(args, "scores_column", "scores"))
    if kind == "reward_model":
        path = getattr(args, "reward_model_name_or_path", None)
        if not path:
            raise ValueError("AEPOConfig.annotator='reward_model' needs `reward_model_name_or_path`.")
        device = "auto"
        if model is not None:
            try:
                device = str(next(model.parameters()).device)
            except (AttributeError, StopIteration, TypeError):
                pass
        return RewardModelAnnotator(path, batch_size=batch_size, device=device)
    if kind == "judge":
        if model is None:
            raise ValueError(
                "AEPOConfig.annotator='judge' needs the judge model: the policy (PEFT: judged with the adapter "
                "disabled) or the frozen reference model."
            )
        return PairwiseJudgeAnnotator(model, tokenizer=tokenizer, batch_size=batch_size, disable_adapter=True)
    if kind == "api_judge":
        from .api_judge import ApiJudgeAnnotator

        store = default_store_path(args)
        if run_id is None:
            from .._utils.run_ids import default_run_id

            run_id = default_run_id(args)
        return ApiJudgeAnnotator.from_config(args, store, run_id=run_id)
    if kind == "self_judge":
        if model is None:
            raise ValueError("AEPOConfig.annotator='self_judge' needs the policy model.")
        if getattr(args, "self_judge_model", "current") == "frozen":
            from accelerate.utils import is_peft_model

            judge_model = model if is_peft_model(model) else ref_model
            if judge_model is None:
                raise ValueError(
                    "AEPOConfig.self_judge_model='frozen' judges with the starting model: train a PEFT adapter (judged "
                    "with it disabled) or pass the frozen reference model (`ref_model`)."
                )
            return PairwiseJudgeAnnotator(judge_model, tokenizer=tokenizer, batch_size=batch_size, disable_adapter=True)
        return PairwiseJudgeAnnotator(
            model, tokenizer=tokenizer, batch_size=batch_size, disable_adapter=False, tracks_policy=True
        )
    if kind == "human":
        queue = getattr(args, "annotation_queue", None)
        if not queue:
            output_dir = getattr(args, "output_dir", None)
            if not output_dir:
                raise ValueError("AEPOConfig.annotator='human' needs `annotation_queue` or `output_dir`.")
            queue = os.path.join(output_dir, "annotation_queue.jsonl")
        store = default_store_path(args)
        return HumanQueueAnnotator(queue, store=store, wait_timeout=float(getattr(args, "annotation_wait", 0.0) or 0.0))
    from ..choices import ANNOTATORS

    raise ValueError(f"AEPOConfig.annotator={kind!r} is invalid: expected one of {', '.join(map(repr, ANNOTATORS))}.")


def resolve_annotator(args, annotator=None, *, model=None, ref_model=None, tokenizer=None):
    """The annotator a trainer uses: `annotator` itself (an `Annotator`, or a TRL/GRPO-style reward function or list
    of them, wrapped in a `RewardFunctionAnnotator`), or, when None, the one `args.annotator` names
    (`build_annotator`; `annotator='judge'` judges with the frozen starting model: `ref_model`, or the policy with
    its PEFT adapter disabled)."""
    if annotator is None:
        from accelerate.utils import is_peft_model  # lazy: accelerate imports torch

        judge_model = None
        if args.annotator == "judge":
            judge_model = model if is_peft_model(model) else ref_model
            if judge_model is None:
                raise ValueError(JUDGE_NEEDS_A_FROZEN_MODEL + ".")
        return build_annotator(
            args, model=judge_model if judge_model is not None else model, tokenizer=tokenizer, ref_model=ref_model
        )
    if hasattr(annotator, "score") and hasattr(annotator, "identity"):
        return annotator
    from .reward_function import RewardFunctionAnnotator

    if not (callable(annotator) or isinstance(annotator, (list, tuple))):
        raise TypeError(
            f"`annotator` must be an Annotator (with `identity` and `score`) or a reward function, got "
            f"{type(annotator).__name__}."
        )
    return RewardFunctionAnnotator(annotator, tokenizer=tokenizer)


def refuse_annotator_as_feature_model(args, annotator) -> None:
    """Refuse an annotator object (`AEPOTrainer(annotator=...)`) that is the reward model `active_feature_model`
    names; the config check refuses the same for `annotator='reward_model'` (`config_checks`, which says why)."""
    name = getattr(args, "active_feature_model", None)
    if isinstance(annotator, RewardModelAnnotator) and same_model(name, annotator.model_name_or_path):
        raise ValueError(FEATURE_MODEL_IS_THE_ANNOTATOR.format(name=name))
