"""`SaferInstructArguments`: every setting of `aepo safer-instruct`, as a `TrlParser`-ready dataclass.

The command parses `(SaferInstructArguments, SFTConfig, ModelConfig)` with TRL's `TrlParser`, so `--config file.yaml`
works as in TRL's scripts and every `SFTConfig` / `ModelConfig` field (LoRA, 4-bit loading, learning rate, ...) drives
the reverse-SFT step. Field names here never repeat theirs: `output_dir` is where the reversed model goes,
`model_name_or_path` is its base model, `seed` its training seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aepo_trainer.choices import GENERATOR_BACKENDS, JUDGE_RUBRICS, LONG_TEXT_POLICIES

from .templates import REVERSE_TEMPLATE

__all__ = ["SaferInstructArguments"]


@dataclass
class SaferInstructArguments:
    """Settings of the Safer-Instruct pipeline (see docs/safer-instruct.md)."""

    # --- where everything goes
    work_dir: str = field(
        default="safer-instruct",
        metadata={
            "help": "Folder of the run: checkpoint.sqlite (every finished row of every stage), the stage outputs "
            "(induced/judged/responded .jsonl) and the exports (pairs.jsonl, pools.jsonl, README.md card)."
        },
    )
    dry_run: bool = field(
        default=False,
        metadata={"help": "Print what the step would do and what it would cost; write nothing, load no model."},
    )
    build_tiny_models: bool = field(
        default=False,
        metadata={
            "help": "Build a tiny offline model at each local model path that does not exist yet (the demo; "
            "such models produce gibberish, only the plumbing is real)."
        },
    )
    # --- stage 1: reverse SFT
    sft_dataset: str | None = field(
        default=None,
        metadata={
            "help": "Instruction dataset for reverse SFT: a .jsonl/.json/.csv/.parquet file, a save_to_disk "
            "folder or a Hub id, with instruction/output columns or a messages column."
        },
    )
    sft_split: str = field(default="train", metadata={"help": "Split of `sft_dataset`."})
    instruction_column: str = field(default="instruction", metadata={"help": "Instruction column of `sft_dataset`."})
    input_column: str = field(
        default="input", metadata={"help": "Optional Alpaca-style input column, appended to the instruction."}
    )
    output_column: str = field(default="output", metadata={"help": "Response column of `sft_dataset`."})
    messages_column: str = field(
        default="messages", metadata={"help": "Chat column of `sft_dataset` (used when instruction/output are absent)."}
    )
    max_sft_examples: int | None = field(default=None, metadata={"help": "Use only the first N SFT examples."})
    reverse_template: str = field(
        default=REVERSE_TEMPLATE,
        metadata={"help": "Reversal prompt with a {response} placeholder (default: the paper's)."},
    )
    # --- stage 2: induction
    reverse_model: str | None = field(
        default=None,
        metadata={"help": "The reversed model to induce with (default: `output_dir`, where reverse-sft saves it)."},
    )
    texts: str | None = field(
        default=None,
        metadata={"help": "Raw texts: .jsonl (decoded line by line; non-UTF-8 lines are counted and skipped), .txt "
        "(one text per line), .json/.csv/.parquet, a save_to_disk folder or a Hub id."},
    )  # fmt: skip
    texts_split: str = field(default="train", metadata={"help": "Split of `texts`."})
    text_column: str = field(default="text", metadata={"help": "Column of `texts` holding the raw text."})
    id_column: str | None = field(
        default=None, metadata={"help": "Column identifying each source row (default: its row index)."}
    )
    max_texts: int | None = field(default=None, metadata={"help": "Use only the first N texts."})
    max_text_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Longest text (in reversed-model tokens) kept whole; default: the reversed model's context "
            "minus the template and `induce_max_new_tokens`."
        },
    )
    long_texts: str = field(
        default="truncate",
        metadata={"help": "Texts over `max_text_tokens`: truncate (flagged) or skip (counted).", "choices": LONG_TEXT_POLICIES},
    )  # fmt: skip
    num_instructions: int = field(default=1, metadata={"help": "Candidate instructions sampled per text."})
    induce_temperature: float = field(default=0.7, metadata={"help": "Induction sampling temperature (0 = greedy)."})
    induce_top_p: float = field(default=0.95, metadata={"help": "Induction nucleus sampling mass."})
    induce_max_new_tokens: int = field(default=128, metadata={"help": "Longest induced instruction, in tokens."})
    # --- stage 3: filtering
    judge_model: str | None = field(
        default=None, metadata={"help": "Expert judge: a local instruct model (path or Hub id)."}
    )
    judge_rubric: str = field(
        default="quality",
        metadata={"help": "quality (coherent, self-contained, matches) or safety (also: is the text harmful).", "choices": JUDGE_RUBRICS},
    )  # fmt: skip
    judge_template: str | None = field(
        default=None, metadata={"help": "Custom judge prompt with {text} and {instruction} (default: the rubric's)."}
    )
    judge_retries: int = field(default=2, metadata={"help": "Extra attempts for a verdict that cannot be parsed."})
    judge_temperature: float = field(default=0.0, metadata={"help": "Judge sampling temperature (0 = greedy)."})
    judge_max_new_tokens: int = field(default=96, metadata={"help": "Longest judge reply, in tokens."})
    require_harmful: bool | None = field(
        default=None,
        metadata={"help": "Keep only texts the judge calls harmful (default: true with the safety rubric)."},
    )
    keep_unparsed: bool = field(
        default=False,
        metadata={"help": "Keep rows whose verdict could not be parsed (still marked 'unparsed'); smoke tests only."},
    )
    judge_price_input_per_1m: float = field(default=0.0, metadata={"help": "Judge price, USD per 1M prompt tokens."})
    judge_price_output_per_1m: float = field(
        default=0.0, metadata={"help": "Judge price, USD per 1M completion tokens."}
    )
    # --- stage 4: expert responses
    expert_model: str | None = field(
        default=None, metadata={"help": "Expert that writes the chosen responses (default: `judge_model`)."}
    )
    num_responses: int = field(default=1, metadata={"help": "Expert responses sampled per accepted instruction."})
    response_temperature: float = field(default=0.7, metadata={"help": "Expert sampling temperature."})
    response_top_p: float = field(default=0.95, metadata={"help": "Expert nucleus sampling mass."})
    response_max_new_tokens: int = field(default=512, metadata={"help": "Longest expert response, in tokens."})
    response_system_prompt: str | None = field(
        default=None,
        metadata={"help": "System prompt of the expert; 'safety' = the built-in harmless-assistant prompt."},
    )
    expert_price_input_per_1m: float = field(default=0.0, metadata={"help": "Expert price, USD per 1M prompt tokens."})
    expert_price_output_per_1m: float = field(
        default=0.0, metadata={"help": "Expert price, USD per 1M completion tokens."}
    )
    conversational_output: bool = field(
        default=False, metadata={"help": "Write pairs/pools as chat messages instead of strings."}
    )
    # --- judge and expert behind an OpenAI-compatible API (docs/llm-services.md)
    expert_api_base: str | None = field(
        default=None,
        metadata={
            "help": "Base URL of an OpenAI-compatible API (e.g. https://api.openai.com/v1, http://localhost:8000/v1) "
            "serving `judge_model` and `expert_model`. Unset: they are local models (`backend`)."
        },
    )
    expert_api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={"help": "Environment variable holding the API key (never logged or stored)."},
    )
    expert_api_concurrency: int = field(default=8, metadata={"help": "API requests in flight at once."})
    expert_api_requests_per_minute: float | None = field(
        default=None, metadata={"help": "Client-side requests-per-minute limit (None: no limit)."}
    )
    # --- running local models
    backend: str = field(
        default="auto",
        metadata={"help": "Local models: transformers, vllm, or auto (vLLM when installed and a GPU is present).", "choices": GENERATOR_BACKENDS},
    )  # fmt: skip
    device: str = field(default="auto", metadata={"help": "Device for transformers ('auto': cuda when available)."})
    synthesis_batch_size: int = field(
        default=8, metadata={"help": "Rows per model call and per checkpoint commit in induce/filter/respond."}
    )
    sampling_seed: int = field(default=0, metadata={"help": "Seed of the induction, judge and expert sampling."})

    def __post_init__(self):
        for name in ("num_instructions", "num_responses", "synthesis_batch_size", "induce_max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.judge_retries < 0:
            raise ValueError(f"judge_retries must be >= 0, got {self.judge_retries}")
        if "{response}" not in self.reverse_template:
            raise ValueError("reverse_template needs a {response} placeholder")
        for name, allowed in (
            ("long_texts", LONG_TEXT_POLICIES),
            ("judge_rubric", JUDGE_RUBRICS),
            ("backend", GENERATOR_BACKENDS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
