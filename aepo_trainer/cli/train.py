"""`aepo train`: train a policy with AEPO from a YAML config, like `trl dpo --config ...`.

    aepo train --config demo                                    # a config shipped with the package (offline demo)
    aepo train --config my.yaml --num_annotations 4             # flags override the YAML file
    accelerate launch -m aepo_trainer.cli train --config paper  # several processes / GPUs

The arguments are TRL's: `TrlParser((TrainScriptArguments, AEPOConfig, ModelConfig))`, so every `AEPOConfig` field
(TRL's `DPOConfig` plus the AEPO fields), every `ModelConfig` field (LoRA, 4-bit loading, dtype) and the script
arguments below are both flags and YAML keys; an `env:` mapping in the YAML is exported. `resume_from_checkpoint`
(`true`/`last`, or a checkpoint folder) is honoured from the config. `examples/train.py` is this command.
"""

from __future__ import annotations

import logging
import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from trl import ScriptArguments

from .errors import EXIT_OK, InputError

logger = logging.getLogger(__name__)

DEMO_DATASET = "aepo-demo"
CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class TrainScriptArguments(ScriptArguments):
    """TRL's `ScriptArguments` (dataset name, config, splits) plus what the AEPO training script adds."""

    dataset_name: str | None = field(
        default=DEMO_DATASET,
        metadata={
            "help": "Pool dataset: 'aepo-demo' (48 AlpacaEval prompts x 8 scored completions shipped in the "
            "package, CC BY-NC 4.0), a local .jsonl/.jsonl.gz/.json/.parquet/.csv file, a `save_to_disk` "
            "folder, or a Hub dataset id. One row per prompt: 'prompt', 'completions' (+ 'scores', ...). Pair "
            "datasets (prompt/chosen/rejected) train as with `trl dpo`."
        },
    )
    max_prompts: int | None = field(default=None, metadata={"help": "Only use the first M prompts."})
    eval_size: float = field(
        default=0.0,
        metadata={
            "help": "When the dataset has no `dataset_test_split` split: hold out this many prompts (>= 1) or this "
            "fraction (< 1) of the train split as the eval split (seeded by `seed`). Used when `eval_strategy` is "
            "not 'no'. Evaluating on pools annotates the held-out prompts too (charged to the same budget)."
        },
    )
    build_tiny_model: bool = field(
        default=False,
        metadata={
            "help": "If `model_name_or_path` is a local folder that does not exist, build a tiny offline "
            "Qwen2-style model (byte-level BPE tokenizer, ChatML template) there first. Used by demo.yaml so "
            "the demo needs no download."
        },
    )
    tiny_model_hidden_size: int = field(default=64, metadata={"help": "Hidden size of the tiny demo model."})
    tiny_model_layers: int = field(default=2, metadata={"help": "Layers of the tiny demo model."})
    show_examples: int = field(default=3, metadata={"help": "Selected pairs to print in the final summary."})
    prompt_only: bool = field(
        default=False,
        metadata={
            "help": "Keep only the dataset's prompt column: the trainer then samples the pools from the policy "
            "being trained (on-policy AEPO, `num_generations` per prompt; docs/on-policy.md)."
        },
    )


def bundled_configs() -> dict[str, Path]:
    """The example configs shipped with the package, by name (`aepo train --config demo`)."""
    return {p.stem: p for p in sorted(CONFIGS_DIR.glob("*.yaml"))}


def resolve_config_argument(argv: list[str]) -> list[str]:
    """`--config NAME` names a bundled config when no file NAME exists."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        value, prefix = None, None
        if arg == "--config" and i + 1 < len(argv):
            value, index = argv[i + 1], i + 1
        elif arg.startswith("--config="):
            value, index, prefix = arg.split("=", 1)[1], i, "--config="
        if value is None or os.path.exists(value):
            continue
        bundled = bundled_configs()
        name = Path(value).stem if value.endswith((".yaml", ".yml")) and os.sep not in value else value
        if name not in bundled:
            raise InputError(
                f"config file {value!r} does not exist (bundled configs: {', '.join(bundled)}; folder {CONFIGS_DIR})"
            )
        argv[index] = f"{prefix or ''}{bundled[name]}"
    return argv


def build_parser():
    from trl import ModelConfig

    from aepo_trainer.config import AEPOConfig

    from .args import LiteralHelpTrlParser

    return LiteralHelpTrlParser((TrainScriptArguments, AEPOConfig, ModelConfig), prog="aepo train")


def parse_arguments(argv: list[str]):
    """(script_args, training_args, model_args); a value a dataclass rejects is an `InputError` (exit code 2)."""
    parser = build_parser()
    try:
        return parser.parse_args_and_config(args=resolve_config_argument(argv))
    except (ValueError, TypeError) as error:
        raise InputError(str(error)) from None


def load_pools(script_args, training_args, with_eval: bool):
    """(train, eval or None) through `aepo_trainer.cli.io.load_dataset_any` (the `datasets` loaders)."""
    from datasets import DatasetDict

    from .io import load_dataset_any

    name = script_args.dataset_name
    if name == DEMO_DATASET:
        import aepo_trainer

        name = str(Path(aepo_trainer.__file__).parent / "data" / "alpaca_eval_pools_demo.jsonl")
    loaded = load_dataset_any(name, name=script_args.dataset_config, args=training_args)
    if isinstance(loaded, DatasetDict):
        if script_args.dataset_train_split not in loaded:
            raise InputError(f"{name}: no split {script_args.dataset_train_split!r} (splits: {', '.join(loaded)})")
        train = loaded[script_args.dataset_train_split]
        test = loaded.get(script_args.dataset_test_split) if script_args.dataset_test_split else None
    else:
        train, test = loaded, None
    if script_args.max_prompts is not None:
        train = train.select(range(min(script_args.max_prompts, len(train))))
    if script_args.prompt_only:
        train = train.select_columns(["prompt"])
    if not with_eval:
        return train, None
    if test is None:
        size = script_args.eval_size
        if not size or size <= 0:
            raise InputError(
                f"eval_strategy is set but {name} has no {script_args.dataset_test_split!r} split: set "
                "`dataset_test_split`, or `eval_size` (prompts, or a fraction) to hold some out of the train split"
            )
        size = int(size) if size >= 1 else float(size)
        if (isinstance(size, int) and size >= len(train)) or len(train) < 2:
            raise InputError(f"eval_size={script_args.eval_size} leaves no training prompt out of {len(train)}")
        split = train.train_test_split(test_size=size, seed=training_args.seed, shuffle=True)
        train, test = split["train"], split["test"]
    return train, test


def ensure_model(script_args, model_args, accelerator_state) -> None:
    """Build the tiny demo model at `model_name_or_path` when asked to and missing (main process first)."""
    path = Path(os.path.expanduser(model_args.model_name_or_path))
    if not script_args.build_tiny_model or (path / "config.json").exists():
        return
    with accelerator_state.main_process_first():
        if not (path / "config.json").exists():
            from aepo_trainer.testing import build_tiny_causal_lm

            build_tiny_causal_lm(
                path, hidden_size=script_args.tiny_model_hidden_size, num_layers=script_args.tiny_model_layers
            )
            print(f"Built the tiny offline demo model at {path}")


def resolve_resume(training_args):
    """`resume_from_checkpoint` from the config: True/'true'/'last' = the last checkpoint in `output_dir` (none yet:
    start from scratch, and say so), a folder = that checkpoint (must exist)."""
    from transformers.trainer_utils import get_last_checkpoint

    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.strip().lower() in ("true", "last", "yes", "1"):
        resume = True
    if isinstance(resume, str) and resume.strip().lower() in ("false", "no", "0", "", "none"):
        resume = None
    if resume is True:
        output_dir = training_args.output_dir
        last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if last is None:
            logger.warning("resume_from_checkpoint: no checkpoint in %s yet; training from the start.", output_dir)
            return None
        logger.info("Resuming from %s", last)
        return last
    if isinstance(resume, str) and not os.path.isdir(resume):
        raise InputError(f"resume_from_checkpoint={resume!r}: no such checkpoint folder")
    return resume


def main(argv: list[str]) -> int:
    from trl import get_peft_config, get_quantization_config

    from aepo_trainer import AEPOTrainer

    script_args, training_args, model_args = parse_arguments(argv)
    if not model_args.model_name_or_path:
        raise InputError("model_name_or_path is required (a Hub id or a local model folder)")
    ensure_model(script_args, model_args, training_args.distributed_state)
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }
    resume = resolve_resume(training_args)
    train_dataset, eval_dataset = load_pools(script_args, training_args, with_eval=training_args.eval_strategy != "no")
    trainer = AEPOTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    if trainer.is_world_process_zero():
        print(summary(trainer, script_args), flush=True)
    if hasattr(trainer, "end"):
        trainer.end()
    return EXIT_OK


def _snippet(x, width: int = 96) -> str:
    from aepo_trainer.annotation.base import to_text

    text = " ".join(to_text(x).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def summary(trainer, script_args) -> str:
    args = trainer.args
    lines = ["", "=" * 100, "AEPO training summary", "=" * 100]
    pool_sizes = None
    if getattr(trainer, "aepo_on_policy", None) is not None:  # on-policy: the pools are sampled during training
        pool_sizes = [args.num_generations]
    else:
        try:
            pool_sizes = sorted({len(c) for c in trainer.train_dataset[args.completions_column]})
        except (KeyError, TypeError):
            pass
    k = "all N (west_of_n)" if args.selection_strategy == "west_of_n" else f"k={args.num_annotations}"
    lines.append(
        f"Selection: {k} of N={'/'.join(map(str, pool_sizes or ['?']))} candidates per prompt, strategy "
        f"'{args.selection_strategy}' (lambda={args.diversity_weight}), pairing '{args.pairing_rule}', "
        f"loss {args.loss_type}"
    )
    service = trainer.annotation_service
    if service is not None:
        budget = "unlimited" if service.budget is None else str(service.budget)
        lines.append(
            f"Annotations: {service.spent} spent / budget {budget} (annotator {service.identity}; "
            f"store {service.store.path})"
        )
    pairs = trainer.recent_pairs[: script_args.show_examples]
    if pairs:
        lines.append("Selected and annotated pairs (most recent):")
        for p in pairs:
            lines.append(f"  prompt:   {_snippet(p['prompt'])}")
            lines.append(f"    selected {p['selected']} of {p['pool_size']} candidates")
            lines.append(f"    chosen   (score {p['chosen_score']:.3g}): {_snippet(p['chosen'])}")
            lines.append(f"    rejected (score {p['rejected_score']:.3g}): {_snippet(p['rejected'])}")
    logged = [e for e in trainer.state.log_history if "loss" in e]
    if logged:
        first, last = logged[0], logged[-1]
        line = (
            f"Training: loss {first['loss']:.4f} (step {first['step']}) -> {last['loss']:.4f} (step {last['step']}), "
            f"{trainer.state.global_step} steps"
        )
        if "rewards/accuracies" in last:
            line += f"; reward accuracy {last['rewards/accuracies']:.2f}, margin {last['rewards/margins']:.4f}"
        lines.append(line)
        if "aepo/representativeness" in last:
            lines.append(
                f"Selected subsets (last log): representativeness {last['aepo/representativeness']:.3f}, "
                f"diversity {last['aepo/diversity']:.3f}"
            )
    if trainer.aepo_stop_reason:
        lines.append("Stopped early: " + textwrap.shorten(trainer.aepo_stop_reason, 400))
    lines.append(f"Model saved to: {os.path.abspath(args.output_dir)}")
    lines.append("=" * 100)
    return "\n".join(lines)
