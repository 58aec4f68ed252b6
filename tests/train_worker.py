"""A small AEPOTrainer run on synthetic pools, for the subprocess tests (torchrun ranks and nodes, kill and resume).

    python train_worker.py MODEL_PATH OUTPUT_DIR '{"max_steps": 3, ...}'

Every annotation goes through a reward function that appends one line per scored completion to
`calls_rank<R>.jsonl` in the working directory, so a test counts exactly what was paid for and by which process.
At the end each rank writes `result_rank<R>.json` (prompts trained, spend, a hash of its weights, the log) in the
working directory. `kill_during_save_at=N` SIGKILLs the process in the middle of saving checkpoint N (after the model
weights, before the optimizer and the trainer state), like a machine that dies during a save.
`prompt_only=true` trains on the prompts alone (on-policy: the pools are sampled in the step); `perturb_ref=true`
nudges the reference's weights, so that the policy's implicit rewards differ from 0 from the first step on.
`record_selections=true` writes, per training batch this rank selected, the rows' keys and selected candidates as
selected and which rows kept them after prompt selection (`selections` in the result).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer

from aepo_trainer import AEPOConfig, AEPOTrainer


def rows(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [
        {
            "prompt": f"Question {i}: what is {i} plus {i}?",
            "completions": [f" It is {2 * i}.", f" Maybe {i}.", f" I think {i + 1}.", f" Surely {2 * i}!"],
            "embeddings": torch.randn(4, 8, generator=g).tolist(),
        }
        for i in range(n)
    ]


def main() -> None:
    model_path, output_dir, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    rank = int(os.environ.get("RANK", "0"))
    calls_path = os.path.abspath(f"calls_rank{rank}.jsonl")

    def reward(prompts, completions, **columns):
        with open(calls_path, "a", encoding="utf-8") as f:
            for p, c in zip(prompts, completions):
                f.write(json.dumps({"prompt": p, "completion": c}) + "\n")
        return [float(len(c)) for c in completions]  # no ties: lengths differ within every pool

    kill_at = options.pop("kill_during_save_at", None)
    if kill_at is not None:
        original = Trainer._save_optimizer_and_scheduler

        def save_then_die(self, output_dir_):
            if self.state.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, output_dir_)

        Trainer._save_optimizer_and_scheduler = save_then_die

    num_prompts = options.pop("num_prompts", 8)
    resume = options.pop("resume", False)
    prompt_only = options.pop("prompt_only", False)
    perturb_ref = options.pop("perturb_ref", False)
    record_selections = options.pop("record_selections", False)
    settings = dict(
        output_dir=output_dir,
        bf16=False,
        report_to="none",
        per_device_train_batch_size=2,
        logging_steps=1,
        save_strategy="no",
        learning_rate=1e-3,
        activation_checkpointing=False,
        seed=0,
        disable_tqdm=True,
        max_length=64,
        ddp_timeout=120,
    )
    settings.update(options)
    ref_model = AutoModelForCausalLM.from_pretrained(model_path)
    if perturb_ref:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in ref_model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    data = [{"prompt": row["prompt"]} for row in rows(num_prompts)] if prompt_only else rows(num_prompts)
    trainer = AEPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_path),
        ref_model=ref_model,
        args=AEPOConfig(**settings),
        train_dataset=Dataset.from_list(data),
        processing_class=AutoTokenizer.from_pretrained(model_path),
        annotator=reward,
    )
    selections = []
    if record_selections:  # each batch's selection as made, and (the same objects, after the step) as kept
        select = trainer.pool_reducer.select

        def recording_select(batch_rows, *args, **kwargs):
            picked = select(batch_rows, *args, **kwargs)
            if kwargs.get("learn"):
                selections.append((picked, [list(s) for s in picked.subsets]))
            return picked

        trainer.pool_reducer.select = recording_select
    trainer.train(resume_from_checkpoint=True if resume else None)
    digest = hashlib.sha256()
    for name, p in sorted(trainer.model.named_parameters()):
        digest.update(name.encode())
        digest.update(p.detach().cpu().numpy().tobytes())
    service = trainer.annotation_service
    result = {
        "world": trainer.accelerator.num_processes,
        "keys": trainer._aepo_seen_prompt_keys,
        "spent": None if service is None else service.spent,
        "store": None if service is None else str(service.store.path),
        "weights": digest.hexdigest(),
        "global_step": trainer.state.global_step,
        "stop_reason": trainer.aepo_stop_reason,
        "logged": [e for e in trainer.state.log_history if "loss" in e],
        "surrogate": None,
        "generated": None if trainer.aepo_on_policy is None else trainer.aepo_on_policy.generated,
        "generated_tokens_total": None if trainer.aepo_on_policy is None else trainer.aepo_on_policy.export(),
        "selections": [
            {"keys": picked.keys, "selected": subsets, "kept": [bool(s) for s in picked.subsets]}
            for picked, subsets in selections
        ],
    }
    active = trainer.pool_reducer.active
    if active is not None:  # what an active strategy learned, as a digest: equal on every rank
        result["surrogate"] = hashlib.sha256(json.dumps(active.surrogate.export()).encode()).hexdigest()
        result["surrogate_labels"] = len(active.surrogate)
        result["safety"] = active.safety.export()  # the safety rule's record (issue 27): equal on every rank
        result["follows"] = [e["aepo/active_follows"] for e in trainer.state.log_history if "aepo/active_follows" in e]
        result["safety_bounds"] = [
            e["aepo/active_safety_lower_bound"] for e in trainer.state.log_history if "aepo/active_follows" in e
        ]
        if active.surrogate.ready:  # the fitted model itself (an ensemble's heads included), as a digest
            features = torch.stack([torch.tensor(item[2], dtype=torch.float64) for item in active.surrogate.export()])
            post = active.surrogate.posterior(features[None], torch.ones(1, len(features), dtype=torch.bool))
            result["posterior"] = hashlib.sha256(
                post.mean.numpy().tobytes() + post.whitened.numpy().tobytes()
            ).hexdigest()
    with open(f"result_rank{rank}.json", "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
