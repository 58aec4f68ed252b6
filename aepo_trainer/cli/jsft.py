"""`aepo jsft`: judge-augmented SFT (SELF-JUDGE's JSFT) of a causal LM with TRL's `SFTTrainer`.

A preference dataset (prompt, chosen, rejected) becomes judgment examples in both orders plus SFT examples on the
chosen responses (`aepo_trainer.self_judge.jsft`), and `trl.SFTTrainer` trains on them. Arguments are TRL's: every `SFTConfig`
and `ModelConfig` field (LoRA, quantization, ...) is a flag and a YAML key (`--config file.yaml`, as `trl sft`), plus
the `JSFTArguments` below. The trained model is then a policy that can judge its own samples
(`annotator='self_judge'`, `aepo best-of-n`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from .errors import EXIT_OK, InputError


@dataclass
class JSFTArguments:
    """What `aepo jsft` reads and how it mixes judgment and SFT examples."""

    dataset_name: str = field(
        metadata={
            "help": "Preference dataset: a .jsonl(.gz)/.json/.csv/.parquet file, a `save_to_disk` folder or a Hub "
            "dataset id, with prompt / chosen / rejected columns."
        },
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split to read."})
    max_rows: int | None = field(default=None, metadata={"help": "Only use the first M preference rows."})
    judge_fraction: float = field(
        default=0.5,
        metadata={"help": "Share of judgment examples in the training mixture, in [0, 1] (the rest: SFT on chosen)."},
    )
    judge_template: str | None = field(
        default=None,
        metadata={
            "help": "Judge question with {prompt}, {response_a}, {response_b} (default: the template "
            "`PairwiseJudgeAnnotator` asks, `DEFAULT_JUDGE_TEMPLATE`)."
        },
    )
    chat: bool = field(
        default=True,
        metadata={"help": "Conversational examples through the chat template (False: plain text + '\\nAnswer:')."},
    )
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompts."})
    chosen_column: str = field(default="chosen", metadata={"help": "Column holding the preferred responses."})
    rejected_column: str = field(default="rejected", metadata={"help": "Column holding the other responses."})


def build_parser():
    from trl import ModelConfig, SFTConfig

    from .args import LiteralHelpTrlParser

    return LiteralHelpTrlParser(
        (JSFTArguments, SFTConfig, ModelConfig), prog="aepo jsft", description=__doc__.split("\n\n")[0]
    )


def main(argv: list[str]) -> int:
    try:
        jsft_args, sft_args, model_args = build_parser().parse_args_and_config(args=argv)
    except ValueError as error:  # a config's own validation (SFTConfig, ModelConfig): bad input, not a crash
        raise InputError(str(error)) from None
    from .io import read_rows

    rows = read_rows(jsft_args.dataset_name, split=jsft_args.dataset_train_split)
    if jsft_args.max_rows is not None:
        rows = rows[: jsft_args.max_rows]
    if not rows:
        raise InputError(f"{jsft_args.dataset_name}: has no rows")
    dataset = _build_dataset(rows, jsft_args, seed=sft_args.seed)
    kinds = dataset["kind"]
    print(
        f"JSFT mixture: {kinds.count('judge')} judgment + {kinds.count('sft')} SFT examples "
        f"from {len(rows)} preference rows",
        file=sys.stderr,
    )
    if not model_args.model_name_or_path:
        raise InputError("--model_name_or_path is required")
    trainer = _trainer(dataset, sft_args, model_args)
    trainer.train()
    trainer.save_model(sft_args.output_dir)
    print(f"saved the JSFT model to {sft_args.output_dir}", file=sys.stderr)
    return EXIT_OK


def _build_dataset(rows, jsft_args, seed: int):
    from aepo_trainer.annotation.judge import DEFAULT_JUDGE_TEMPLATE
    from aepo_trainer.self_judge.jsft import build_jsft_dataset

    try:
        return build_jsft_dataset(
            rows,
            judge_fraction=jsft_args.judge_fraction,
            template=jsft_args.judge_template or DEFAULT_JUDGE_TEMPLATE,
            chat=jsft_args.chat,
            seed=seed,
            prompt_column=jsft_args.prompt_column,
            chosen_column=jsft_args.chosen_column,
            rejected_column=jsft_args.rejected_column,
        )
    except ValueError as error:
        raise InputError(f"{jsft_args.dataset_name}: {error}") from None


def _trainer(dataset, sft_args, model_args):
    """TRL's `SFTTrainer`, given the model by path as `trl sft` does (dtype, LoRA, 4-bit from `ModelConfig`)."""
    from transformers import AutoTokenizer
    from trl import SFTTrainer, get_peft_config, get_quantization_config

    sft_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": sft_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(sft_args.model_init_kwargs or {}),
    }
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            model_args.model_name_or_path, trust_remote_code=sft_args.trust_remote_code
        )
    except (OSError, ValueError) as error:
        raise InputError(f"--model_name_or_path {model_args.model_name_or_path!r}: cannot load it ({error})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return SFTTrainer(
        model=model_args.model_name_or_path,
        args=sft_args,
        train_dataset=dataset.remove_columns("kind"),
        processing_class=tokenizer,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
