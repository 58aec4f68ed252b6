"""Train a policy with AEPO: candidate pools -> select k of N -> annotate only those -> pair -> DPO, on the fly.

    python examples/train.py --config examples/configs/demo.yaml                 # CPU, offline, a few minutes
    accelerate launch examples/train.py --config examples/configs/demo.yaml      # the same through accelerate
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 examples/train.py --config examples/configs/demo.yaml
    accelerate launch examples/train.py --config examples/configs/qlora_consumer_gpu.yaml   # 7B, 4-bit, LoRA

Every `AEPOConfig` field (TRL's `DPOConfig` plus the AEPO fields), every `ModelConfig` field (LoRA, 4-bit loading)
and the script arguments below are flags and YAML keys; flags override the YAML file. See docs/training.md.
"""

from __future__ import annotations

import os
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

DEMO_DATASET = "aepo-demo"


@dataclass
class ScriptArguments:
    dataset_name: str = field(
        default=DEMO_DATASET,
        metadata={
            "help": "Pool dataset: 'aepo-demo' (48 AlpacaEval prompts x 8 scored completions shipped in the "
            "package, CC BY-NC 4.0), a local .jsonl/.jsonl.gz/.json/.parquet/.csv file, a `save_to_disk` "
            "folder, or a Hub dataset id. One row per prompt: 'prompt', 'completions' (+ 'scores', ...)."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    max_prompts: int | None = field(default=None, metadata={"help": "Only use the first M prompts."})
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


def load_pools(script_args):
    from datasets import load_dataset, load_from_disk

    name = script_args.dataset_name
    if name == DEMO_DATASET:
        import aepo_trainer

        name = str(Path(aepo_trainer.__file__).parent / "data" / "alpaca_eval_pools_demo.jsonl")
    path = Path(os.path.expanduser(name))
    if path.is_dir():
        dataset = load_from_disk(str(path))
        dataset = dataset[script_args.dataset_train_split] if hasattr(dataset, "keys") else dataset
    elif path.is_file():
        suffixes = "".join(path.suffixes).lower()
        builder = next((b for ext, b in ((".parquet", "parquet"), (".csv", "csv")) if ext in suffixes), "json")
        dataset = load_dataset(builder, data_files=str(path), split="train")
    else:
        dataset = load_dataset(name, name=script_args.dataset_config, split=script_args.dataset_train_split)
    if script_args.max_prompts is not None:
        dataset = dataset.select(range(min(script_args.max_prompts, len(dataset))))
    return dataset


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


def _snippet(x, width: int = 96) -> str:
    from aepo_trainer.annotation.base import to_text

    text = " ".join(to_text(x).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def summary(trainer, script_args) -> str:
    args = trainer.args
    lines = ["", "=" * 100, "AEPO training summary", "=" * 100]
    pool_sizes = None
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


def main(argv=None) -> int:
    from trl import ModelConfig, TrlParser, get_peft_config, get_quantization_config

    from aepo_trainer import AEPOConfig, AEPOTrainer

    parser = TrlParser((ScriptArguments, AEPOConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config(args=argv)

    ensure_model(script_args, model_args, training_args.distributed_state)
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }
    dataset = load_pools(script_args)

    trainer = AEPOTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        resume = True  # the last checkpoint in output_dir
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    if trainer.is_world_process_zero():
        print(summary(trainer, script_args), flush=True)
    if hasattr(trainer, "end"):
        trainer.end()
    return 0


if __name__ == "__main__":
    sys.exit(main())
