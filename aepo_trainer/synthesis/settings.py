"""The sampling settings and the response system prompt of each Safer-Instruct stage, read from the arguments (shared
by the pipeline and its cost forecast)."""

from __future__ import annotations

from .arguments import SaferInstructArguments
from .generators import SamplingConfig
from .templates import SAFETY_RESPONSE_SYSTEM_PROMPT

__all__ = ["sampling", "system_prompt"]


def sampling(args: SaferInstructArguments, stage: str) -> SamplingConfig:
    if stage == "induce":
        return SamplingConfig(
            args.induce_temperature, args.induce_top_p, 0, args.induce_max_new_tokens, args.sampling_seed
        )
    if stage == "filter":
        return SamplingConfig(args.judge_temperature, 1.0, 0, args.judge_max_new_tokens, args.sampling_seed)
    return SamplingConfig(args.response_temperature, args.response_top_p, 0, args.response_max_new_tokens, args.sampling_seed)  # fmt: skip


def system_prompt(args) -> str | None:
    return SAFETY_RESPONSE_SYSTEM_PROMPT if args.response_system_prompt == "safety" else args.response_system_prompt
