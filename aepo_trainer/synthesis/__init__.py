"""Safer-Instruct (arXiv 2311.08685): preference data from raw texts, without human labels.

Four composable stages over `datasets.Dataset`, each resumable through a `StageCheckpoint`:

1. `build_reversed_dataset` + `make_reverse_sft_trainer`: reversed instruction tuning with TRL's `SFTTrainer`
   (completion-only loss: only the instruction is trained).
2. `prepare_texts` + `induce_instructions`: the reversed model writes the instruction each raw text answers.
3. `judge_instructions` + `keep_accepted`: an expert judge keeps coherent, self-contained, matching instructions.
4. `write_expert_responses`, then `to_preference_pairs` / `to_candidate_pools` + `build_dataset_card`.

Models are called only through the `TextGenerator` protocol (`generators`), so a local model, vLLM, or a remote
service can play any role. The `aepo safer-instruct` command runs the stages from files (`pipeline`).
"""

from .checkpoint import StageCheckpoint
from .export import build_dataset_card, save_outputs, to_candidate_pools, to_preference_pairs
from .filtering import Verdict, judge_instructions, keep_accepted, parse_verdict
from .generators import (
    FunctionGenerator,
    SamplingConfig,
    TextGenerator,
    TransformersGenerator,
    Usage,
    VLLMGenerator,
    estimate_tokens,
)
from .induce import clean_instruction, induce_instructions
from .respond import expert_messages, write_expert_responses
from .reverse import build_reversed_dataset, make_reverse_sft_trainer, reverse_prompt
from .stage import SynthesisReport, row_key, run_resumable
from .templates import (
    JUDGE_TEMPLATES,
    QUALITY_JUDGE_TEMPLATE,
    REVERSE_TEMPLATE,
    SAFETY_JUDGE_TEMPLATE,
    SAFETY_RESPONSE_SYSTEM_PROMPT,
    fill,
    template_hash,
)
from .texts import prepare_texts, read_texts, text_sha256

__all__ = [
    "JUDGE_TEMPLATES",
    "QUALITY_JUDGE_TEMPLATE",
    "REVERSE_TEMPLATE",
    "SAFETY_JUDGE_TEMPLATE",
    "SAFETY_RESPONSE_SYSTEM_PROMPT",
    "FunctionGenerator",
    "SamplingConfig",
    "StageCheckpoint",
    "SynthesisReport",
    "TextGenerator",
    "TransformersGenerator",
    "Usage",
    "VLLMGenerator",
    "Verdict",
    "build_dataset_card",
    "build_reversed_dataset",
    "clean_instruction",
    "estimate_tokens",
    "expert_messages",
    "fill",
    "induce_instructions",
    "judge_instructions",
    "keep_accepted",
    "make_reverse_sft_trainer",
    "parse_verdict",
    "prepare_texts",
    "read_texts",
    "reverse_prompt",
    "row_key",
    "run_resumable",
    "save_outputs",
    "template_hash",
    "text_sha256",
    "to_candidate_pools",
    "to_preference_pairs",
    "write_expert_responses",
]
