"""A 2-process CPU launch trains on pools with each prompt exactly once per epoch: every rank collates and selects
its own shard, the main process holds the one annotation ledger, and each item is paid once.

The launcher is torchrun (gloo): `accelerate launch --cpu --num_processes 2` starts a single process on CPU unless
mpirun is set up. Some steps hold different numbers of pairs on the two ranks (ties), which exercises the
variable-length gather of TRL's per-pair metrics, and an RPO loss is mixed in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from aepo_trainer.selection import prompt_key

NUM_PROMPTS = 8

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from aepo_trainer import AEPOConfig, AEPOTrainer

    model_path, out_dir, num_prompts = sys.argv[1], sys.argv[2], int(sys.argv[3])
    g = torch.Generator().manual_seed(0)
    rows = [{
        "prompt": f"Question {i}: what is {i} plus {i}?",
        "completions": [f" It is {2 * i}.", f" Maybe {i}.", f" I think {i + 1}.", f" Surely {2 * i}!"],
        # every third prompt is a tie: no pair, so the ranks hold different numbers of pairs in a step
        "scores": [0.5, 0.5, 0.5, 0.5] if i % 3 == 0 else [1.0, 0.1, 0.3, 0.8],
        "embeddings": torch.randn(4, 8, generator=g).tolist(),
    } for i in range(num_prompts)]
    args = AEPOConfig(
        output_dir=out_dir, bf16=False, report_to="none", per_device_train_batch_size=2, num_train_epochs=1,
        logging_steps=1, save_strategy="no", learning_rate=1e-3, activation_checkpointing=False, seed=0,
        disable_tqdm=True, max_length=64, loss_type=["sigmoid", "rpo_sq"], loss_weights=[1.0, 0.5],
    )
    trainer = AEPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_path),
        ref_model=AutoModelForCausalLM.from_pretrained(model_path),
        args=args, train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(model_path),
    )
    trainer.train()
    rank = trainer.accelerator.process_index
    with open(os.path.join(out_dir, f"seen_rank{rank}.json"), "w") as f:
        json.dump({"world": trainer.accelerator.num_processes, "keys": trainer._aepo_seen_prompt_keys,
                   "spent": None if trainer.annotation_service is None else trainer.annotation_service.spent,
                   "logged": [e for e in trainer.state.log_history if "loss" in e]}, f)
""")


def test_two_process_launch_trains_each_prompt_once(tmp_path, tiny_model_path):
    script = tmp_path / "train_pools.py"
    script.write_text(SCRIPT)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    # ACCELERATE_USE_CPU (= `use_cpu=True`) makes accelerate pick the MULTI_CPU (gloo) backend under torchrun.
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", ACCELERATE_USE_CPU="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        tiny_model_path,
        str(out_dir),
        str(NUM_PROMPTS),
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]

    seen = [json.loads((out_dir / f"seen_rank{r}.json").read_text()) for r in range(2)]
    assert all(s["world"] == 2 for s in seen)
    expected = sorted(prompt_key(f"Question {i}: what is {i} plus {i}?") for i in range(NUM_PROMPTS))
    assert sorted(seen[0]["keys"] + seen[1]["keys"]) == expected  # every prompt, exactly once
    assert seen[0]["keys"] and seen[1]["keys"]  # both ranks trained
    assert set(seen[0]["keys"]).isdisjoint(seen[1]["keys"])
    # one ledger, on the main process: k = 2 annotations per prompt, each paid once
    assert seen[0]["spent"] == 2 * NUM_PROMPTS and seen[1]["spent"] is None
    # the logged (gathered) metrics are the same on both ranks
    assert seen[0]["logged"] == seen[1]["logged"]
    assert seen[0]["logged"][-1]["aepo/annotations_spent"] == 2 * NUM_PROMPTS
    assert sum(e["aepo/ties_dropped"] for e in seen[0]["logged"]) == len(range(0, NUM_PROMPTS, 3))
