"""The sampling setup `aepo generate` and `aepo best-of-n` share: checking the sampling flags and the prompts, and
building the generator the `--backend` flag names (transformers, vLLM, or an OpenAI-compatible server)."""

from __future__ import annotations

import os

from .errors import InputError

__all__ = ["BACKENDS", "check_prompts", "check_sampling_args", "make_generator", "prompt_id"]


def check_sampling_args(args) -> None:
    for name in ("num_completions", "batch_size", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.top_k < 0 or args.repetition_penalty <= 0:
        raise InputError("--temperature must be >= 0, --top_p in (0, 1], --top_k >= 0 and --repetition_penalty > 0")
    if args.max_prompts is not None and args.max_prompts < 0:
        raise InputError(f"--max_prompts must be >= 0, got {args.max_prompts}")
    if args.backend == "openai":
        from .args import build_config

        build_config(args, output_dir=os.path.dirname(os.path.abspath(args.output)))  # AEPOConfig's validation


def check_prompts(rows: list[dict], args) -> None:
    if not rows:
        raise InputError(f"{args.input}: has no rows")
    for number, row in enumerate(rows):
        if args.prompt_column not in row:
            raise InputError(
                f"{args.input}: row {number} has no {args.prompt_column!r} column (columns: "
                f"{', '.join(map(repr, row))}); pass --prompt_column"
            )
        prompt = row[args.prompt_column]
        if not (isinstance(prompt, str) and prompt.strip()) and not _is_conversation(prompt):
            raise InputError(
                f"{args.input}: row {number}, column {args.prompt_column!r}: expected a non-empty string "
                f"or a list of chat messages, got {type(prompt).__name__}"
            )


def _is_conversation(prompt) -> bool:
    return (
        isinstance(prompt, list)
        and bool(prompt)
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt)
    )


def prompt_id(prompt) -> str:
    from aepo_trainer.annotation.base import canonical_json

    return canonical_json(prompt)


# --------------------------------------------------------------------------------------------------- backends
# A backend is a factory `(args, settings, ledger_run_id) -> generator`, where the generator has `generate(prompts,
# seeds) -> list[GeneratedPool]` (see `aepo_trainer.generation`); a backend that pays per call charges it to the usage
# ledger `ledger_run_id` (None: its own default). Adding a backend = one name in `choices.GENERATE_BACKENDS`,
# one factory here, and its flags in `build_parser`.
def _transformers_backend(args, settings, ledger_run_id=None):
    from aepo_trainer.generation import load_transformers_generator

    return load_transformers_generator(
        args.model_name_or_path,
        settings,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
    )


def _vllm_backend(args, settings, ledger_run_id=None):
    from aepo_trainer.generation.vllm import VLLMGenerator

    return VLLMGenerator.from_pretrained(
        args.model_name_or_path, settings, seed=args.seed, dtype=args.dtype, trust_remote_code=args.trust_remote_code
    )


def _openai_backend(args, settings, ledger_run_id=None):
    from .generate_api import OpenAISampler

    return OpenAISampler(args, run_id=ledger_run_id)


BACKENDS = {"transformers": _transformers_backend, "vllm": _vllm_backend, "openai": _openai_backend}


def _resolve_backend(name: str) -> str:
    if name != "auto":
        return name
    import torch

    from aepo_trainer.generation.vllm import is_vllm_available

    return "vllm" if is_vllm_available() and torch.cuda.is_available() else "transformers"


def make_generator(args, ledger_run_id: str | None = None):
    """The sampling backend `args.backend` names; paid calls are charged to the usage ledger `ledger_run_id`."""
    from aepo_trainer.generation import GenerationInputError, SamplingSettings

    try:
        settings = SamplingSettings(
            num_generations=args.num_completions,
            max_completion_length=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            repetition_penalty=args.repetition_penalty,
            use_chat_template=args.use_chat_template,
        )
        return BACKENDS[_resolve_backend(args.backend)](args, settings, ledger_run_id)
    except GenerationInputError as error:
        raise InputError(str(error)) from None
