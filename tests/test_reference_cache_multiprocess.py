"""The reference log-probs cache of the policy signals across 2 processes (torchrun, gloo; the pattern of
`test_multiprocess.py`): each candidate's reference log-prob is computed once in the whole launch (each rank its own
prompts), the main process writes every rank's values into the run's store, and a second trainer on that store —
no checkpoint — hands them to both ranks: identical caches on both, no reference pass on either."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

NUM_PROMPTS, POOL_SIZE = 8, 4

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from aepo_trainer import AEPOConfig, AEPOTrainer
    from aepo_trainer.storage.reference_logps import ReferenceLogpsTable
    from aepo_trainer.trainer.policy_signals import signals_state

    model_path, out_dir, num_prompts, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    g = torch.Generator().manual_seed(0)
    rows = [{
        "prompt": f"Question {i}: what is {i} plus {i}?",
        "completions": [f" It is {2 * i + j}." + " so" * j for j in range(size)],
        "scores": torch.randperm(size, generator=g).float().tolist(),
        "embeddings": torch.randn(size, 8, generator=g).tolist(),
    } for i in range(num_prompts)]

    def run(precompute):
        args = AEPOConfig(
            output_dir=out_dir, bf16=False, report_to="none", per_device_train_batch_size=2, num_train_epochs=1,
            logging_steps=1, save_strategy="no", learning_rate=1e-3, activation_checkpointing=False, seed=0,
            disable_tqdm=True, max_length=64, beta=0.5, selection_strategy="implicit_reward_gap",
            precompute_pool_ref_logps=precompute,
        )
        trainer = AEPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(model_path),
            ref_model=AutoModelForCausalLM.from_pretrained(model_path),
            args=args, train_dataset=Dataset.from_list(rows),
            processing_class=AutoTokenizer.from_pretrained(model_path),
        )
        trainer.train()
        state = signals_state(trainer)
        stored = None
        if trainer.accelerator.is_main_process:
            stored = ReferenceLogpsTable(trainer.annotation_service.store).load(state.cache.identity)
            stored = {k.hex(): v for k, v in stored.items()}
        return {
            "reference_passes": state.forward_passes["reference"],
            "cache": {k.hex(): v for k, v in state.cache.values.items()},
            "identity": state.cache.identity,
            "stored": stored,
        }

    first = run(precompute=False)   # each rank scores its own prompts in the steps
    second = run(precompute=True)   # same store, no checkpoint: everything comes from the store
    from accelerate import PartialState
    rank = PartialState().process_index
    with open(os.path.join(out_dir, f"cache_rank{rank}.json"), "w") as f:
        json.dump({"world": PartialState().num_processes, "first": first, "second": second}, f)
""")


def test_reference_cache_is_computed_once_and_shared_by_both_ranks(tmp_path, tiny_model_path):
    script = tmp_path / "reference_cache.py"
    script.write_text(SCRIPT)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", ACCELERATE_USE_CPU="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           tiny_model_path, str(out_dir), str(NUM_PROMPTS), str(POOL_SIZE)]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]

    ranks = [json.loads((out_dir / f"cache_rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    first = [r["first"] for r in ranks]
    # every prompt's candidates scored once in the whole launch: 4 prompts on each rank, disjoint
    assert [f["reference_passes"] for f in first] == [NUM_PROMPTS // 2] * 2
    assert all(len(f["cache"]) == NUM_PROMPTS // 2 * POOL_SIZE for f in first)
    assert set(first[0]["cache"]).isdisjoint(first[1]["cache"])
    # the main process wrote both ranks' values into the store (the other rank holds no store)
    assert first[0]["stored"] == {**first[0]["cache"], **first[1]["cache"]} and first[1]["stored"] is None

    second = [r["second"] for r in ranks]
    assert second[0]["identity"] == second[1]["identity"] == first[0]["identity"]
    assert [s["reference_passes"] for s in second] == [0, 0]  # read from the store, handed to both ranks
    assert second[0]["cache"] == second[1]["cache"] == first[0]["stored"]
    assert len(second[0]["cache"]) == NUM_PROMPTS * POOL_SIZE
