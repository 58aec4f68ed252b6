"""`aepo safer-instruct <step>`: Safer-Instruct preference data from raw texts (steps in
`aepo_trainer.synthesis.pipeline`).

Flags are the fields of `SaferInstructArguments`, TRL's `SFTConfig` (the reverse-SFT training) and `ModelConfig` (its
base model, LoRA, 4-bit loading), parsed by `TrlParser`: `--config file.yaml` sets any of them.
"""

from __future__ import annotations

import sys
import warnings

from .errors import EXIT_OK, InputError

OUTPUT_DIR_DEFAULT = "<work_dir>/reverse-model"

USAGE = """\
usage: aepo safer-instruct {reverse-sft,induce,filter,respond,all} [--config FILE.yaml] [--dry_run] [flags]

Safer-Instruct (arXiv 2311.08685): preference data from raw texts, without human labels.
  reverse-sft  fine-tune a model to write the instruction a response answers (TRL SFTTrainer, completion-only loss)
  induce       the reversed model writes an instruction for each raw text            -> <work_dir>/induced.jsonl
  filter       an expert judge keeps coherent, self-contained, matching instructions -> <work_dir>/judged.jsonl
  respond      an expert answers them: pairs (chosen = expert, rejected = original) and AEPO candidate pools
               -> <work_dir>/pairs.jsonl, pools.jsonl, README.md (dataset card)
  all          every step in order

Every step is resumable (rerun it: finished rows come from <work_dir>/checkpoint.sqlite) and has --dry_run (what it
would do and cost; writes nothing). `aepo safer-instruct <step> --help` lists every flag. Docs: docs/safer-instruct.md.
"""


def build_parser():
    import torch
    from trl import ModelConfig, SFTConfig

    from aepo_trainer.synthesis.arguments import SaferInstructArguments

    from .args import LiteralHelpTrlParser

    parser = LiteralHelpTrlParser((SaferInstructArguments, SFTConfig, ModelConfig), prog="aepo safer-instruct <step>")
    defaults = {"output_dir": OUTPUT_DIR_DEFAULT, "report_to": "none"}
    if not torch.cuda.is_available():  # TRL defaults bf16 to True, which TrainingArguments rejects on CPU
        defaults["bf16"] = False
    parser.set_defaults(**defaults)
    return parser


def main(argv: list[str]) -> int:
    from aepo_trainer.choices import SYNTHESIS_STEPS

    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return EXIT_OK
    step, rest = argv[0], argv[1:]
    if step not in SYNTHESIS_STEPS:
        raise InputError(f"unknown step {step!r}; choose one of {', '.join(SYNTHESIS_STEPS)}")
    try:
        with warnings.catch_warnings():  # TRL's own default (gradient_checkpointing=True), not the user's setting
            warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)
            args, sft_args, model_args = build_parser().parse_args_and_config(rest)
    except (ValueError, FileNotFoundError) as error:
        raise InputError(str(error)) from None
    if sft_args.output_dir == OUTPUT_DIR_DEFAULT:
        sft_args.output_dir = f"{args.work_dir.rstrip('/')}/reverse-model"

    from aepo_trainer.synthesis.pipeline import run_steps

    try:
        report = run_steps(step, args, sft_args, model_args)
    except (ValueError, FileNotFoundError) as error:
        raise InputError(str(error)) from None
    print(("[dry run] nothing was written\n" if args.dry_run else "") + report.summary(), file=sys.stderr)
    return EXIT_OK
