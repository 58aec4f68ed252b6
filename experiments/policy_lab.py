"""The building blocks of the policy-level experiments (`policy_training.py`, `signals_interval.py`).

One task (a plugin of `tasks.py`) becomes: a character tokenizer, train and held-out prompt sets, a tiny Qwen2 policy
SFT-trained from scratch on demonstrations of controllable quality, pools of N samples from it (the candidate pools
a user would generate), the gold reward as a TRL-style reward-function annotator (the paid label, counted), an
`AEPOTrainer` built the way users build one, and the held-out evaluation. The experiments differ only in the strategies
they compare and in what they report.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass

import numpy as np
from tasks import distinct_prompts

SPECIALS = ["<|im_end|>", "<|pad|>"]  # EOS, padding


@dataclass
class Scale:
    hidden_size: int = 64
    num_layers: int = 2
    sft_quality: float = 0.3
    sft_steps: int = 400
    sft_batch: int = 64
    sft_lr: float = 3e-3
    train_prompts: int = 256
    pool_size: int = 8
    k: int = 2
    budget_shares: tuple = (0.25, 0.5, 1.0)  # of k x train_prompts
    prompts_per_step: int = 8
    dpo_lr: float = 3e-4
    beta: float = 0.5
    eval_prompts: int = 256
    eval_samples: int = 4
    seeds: int = 3


SCALES = {
    "quick": Scale(
        sft_steps=40,
        sft_batch=32,
        train_prompts=32,
        pool_size=4,
        budget_shares=(0.5, 1.0),
        prompts_per_step=8,
        eval_prompts=16,
        eval_samples=2,
        seeds=1,
    ),
    "small": Scale(),
}


def build_tokenizer(alphabet: str):
    """Character-level tokenizer over exactly the task's alphabet (+ EOS, padding): see efficacy_training.py for
    why a small vocabulary keeps DPO's likelihood displacement on meaningful characters."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + list(alphabet))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=SPECIALS[0], pad_token=SPECIALS[1])


def prompt_sets(task, scale: Scale, seed: int):
    """Held-out prompts (the same for every seed) and disjoint training prompts (re-drawn per seed)."""
    seen: set = set()
    eval_rng, rng = random.Random(10_000), random.Random(seed * 7919 + 1)
    held_out = distinct_prompts(lambda: task.prompt(eval_rng), scale.eval_prompts, seen)
    train = distinct_prompts(lambda: task.prompt(rng), scale.train_prompts, seen)
    return train, held_out


def sft(task, tokenizer, scale: Scale, seed: int, workdir: str):
    """A fresh tiny Qwen2, causal-LM SFT on the task's demonstrations (loss on completion + EOS)."""
    import torch
    from transformers import Qwen2ForCausalLM

    from aepo_trainer.testing import build_tiny_causal_lm

    path = build_tiny_causal_lm(
        os.path.join(workdir, "init"),
        hidden_size=scale.hidden_size,
        num_layers=scale.num_layers,
        seed=seed,
        tokenizer=tokenizer,
    )
    model = Qwen2ForCausalLM.from_pretrained(path).train()
    rng = random.Random(seed * 104729 + 3)
    opt = torch.optim.AdamW(model.parameters(), lr=scale.sft_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=scale.sft_lr, total_steps=scale.sft_steps, pct_start=0.1)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    for _ in range(scale.sft_steps):
        ids, labels = [], []
        for _ in range(scale.sft_batch):
            p = task.prompt(rng)
            pi = tokenizer(p + task.prompt_suffix)["input_ids"]
            ci = tokenizer(task.demonstration(p, rng, scale.sft_quality))["input_ids"] + [eos]
            ids.append(pi + ci)
            labels.append([-100] * len(pi) + ci)
        width = max(map(len, ids))
        x = torch.tensor([a + [pad] * (width - len(a)) for a in ids])
        y = torch.tensor([a + [-100] * (width - len(a)) for a in labels])
        attn = (torch.arange(width)[None] < torch.tensor([len(a) for a in ids])[:, None]).long()
        model(input_ids=x, attention_mask=attn, labels=y).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    out = os.path.join(workdir, "sft")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def sample(model, tokenizer, task, prompts: list[str], n: int, seed: int, tokens: list | None = None):
    """n samples per prompt (temperature 1; padding never sampled), prompts grouped by length (no padding).
    `tokens`, when given, gets the number of generated tokens appended (EOS included, as the trainer counts them)."""
    import torch
    from transformers import GenerationConfig

    gen = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=task.max_completion_chars,
        num_return_sequences=n,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        suppress_tokens=[tokenizer.pad_token_id],
    )
    torch.manual_seed(seed)
    model.eval()
    by_len: dict[int, list[str]] = {}
    for p in dict.fromkeys(prompts):
        by_len.setdefault(len(p), []).append(p)
    out: dict[str, list[str]] = {}
    with torch.no_grad():
        for length in sorted(by_len):
            group = by_len[length]
            for start in range(0, len(group), 512):
                chunk = group[start : start + 512]
                x = torch.tensor([tokenizer(p + task.prompt_suffix)["input_ids"] for p in chunk])
                g = model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=gen)
                generated = 0
                for i, row in enumerate(g[:, x.shape[1] :].tolist()):
                    text = []
                    for t in row:
                        if t in (tokenizer.eos_token_id, tokenizer.pad_token_id):
                            generated += t == tokenizer.eos_token_id
                            break
                        text.append(tokenizer.convert_ids_to_tokens(t))
                    generated += len(text)
                    out.setdefault(chunk[i // n], []).append("".join(text))
                if tokens is not None:
                    tokens.append(generated)
    return out


def evaluate(model, tokenizer, task, held_out, scale: Scale) -> dict:
    """Per held-out prompt: mean gold and length-controlled reward over `eval_samples` samples (fixed seed)."""
    tokens = []
    samples = sample(model, tokenizer, task, held_out, scale.eval_samples, seed=12345, tokens=tokens)
    gold = [float(np.mean([task.gold_reward(p, y) for y in samples[p]])) for p in held_out]
    lc = [float(np.mean([task.length_controlled_reward(p, y) for y in samples[p]])) for p in held_out]
    return {"gold": gold, "length_controlled": lc, "eval_generated_tokens": int(sum(tokens))}


# ---------------------------------------------------------------------------------------------------- the product
class GoldReward:
    """The paid label: the task's gold reward as a TRL-style reward function. It counts what it is paid for."""

    def __init__(self, task):
        self.task = task
        self.__name__ = f"gold_{task.name}"
        self.calls: list[tuple[str, str]] = []

    def __call__(self, prompts, completions, **kwargs):
        suffix = self.task.prompt_suffix
        self.calls.extend(zip(prompts, completions))
        return [self.task.gold_reward(p[: -len(suffix)] if suffix else p, c) for p, c in zip(prompts, completions)]


def dpo_trainer(
    sft_dir, tokenizer, data, annotator, scale: Scale, seed: int, workdir: str, trainer_class=None, **fields
):
    """The experiments' `AEPOTrainer`: the SFT weights as policy and reference, the scale's DPO settings, CPU, no
    checkpoints or console printing; `fields` add or override `AEPOConfig` settings (the strategy under test);
    `trainer_class`: an `AEPOTrainer` subclass to build instead (a probe)."""
    from transformers import Qwen2ForCausalLM
    from transformers.trainer_callback import PrinterCallback

    from aepo_trainer import AEPOConfig, AEPOTrainer

    settings = dict(
        output_dir=workdir,
        bf16=False,
        report_to="none",
        seed=seed,
        use_cpu=True,
        per_device_train_batch_size=scale.prompts_per_step,
        num_train_epochs=1,
        learning_rate=scale.dpo_lr,
        lr_scheduler_type="linear",
        beta=scale.beta,
        max_length=32,
        logging_steps=1,
        save_strategy="no",
        activation_checkpointing=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        num_annotations=scale.k,
    )
    trainer = (trainer_class or AEPOTrainer)(
        model=Qwen2ForCausalLM.from_pretrained(sft_dir),
        ref_model=Qwen2ForCausalLM.from_pretrained(sft_dir),
        args=AEPOConfig(**{**settings, **fields}),
        train_dataset=data,
        processing_class=tokenizer,
        annotator=annotator,
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def train_policy(task, sft_dir, tokenizer, data, overrides: dict, budget: int, scale: Scale, seed: int, workdir: str):
    """One `AEPOTrainer` run from the SFT weights; returns the trained model and what it cost."""

    reward = GoldReward(task)
    trainer = dpo_trainer(
        sft_dir,
        tokenizer,
        data,
        reward,
        scale,
        seed,
        workdir,
        annotation_budget=budget,
        num_generations=scale.pool_size,
        max_completion_length=task.max_completion_chars,
        active_warmup_annotations=32,
        **overrides,
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    history = trainer.state.log_history
    cost = {
        "labels": len(reward.calls),
        "labels_spent": float(trainer.annotation_service.spent),
        "prompts_covered": len({p for p, _ in reward.calls}),
        "pairs": float(sum(e.get("aepo/pairs", 0.0) for e in history)),
        "prompts_unselected": float(sum(e.get("aepo/prompts_unselected", 0.0) for e in history)),
        "optimizer_steps": int(trainer.state.global_step),
        "train_seconds": seconds,
    }
    # compute: the product's own count of on-policy sampled tokens (its logged running total; 0 on offline pools)
    totals = [e["aepo/generated_tokens"] for e in history if "aepo/generated_tokens" in e]
    cost["generated_tokens"] = int(totals[-1]) if totals else 0
    if trainer.aepo_on_policy is not None:
        cost["pools_generated"] = int(trainer.aepo_on_policy.generated)
    return trainer.model.eval(), cost


def pool_dataset(task, pools: dict, train: list[str], embedder):
    """The pool rows the trainer reads. Rule for real samples: an empty completion (the policy stopped at once) is
    dropped from its pool, since the product refuses empty candidates; a prompt left with fewer than 2 candidates is
    dropped (it could never form a pair). Pools may therefore be ragged, which the trainer handles."""
    from datasets import Dataset

    kept = {p: [y for y in pools[p] if y.strip()] for p in train}
    rows = [p for p in train if len(kept[p]) >= 2]
    flat = [y for p in rows for y in kept[p]]
    emb = embedder.encode(flat)
    out, start = [], 0
    for p in rows:
        out.append(emb[start : start + len(kept[p])].tolist())
        start += len(kept[p])
    return Dataset.from_dict(
        {"prompt": [p + task.prompt_suffix for p in rows], "completions": [kept[p] for p in rows], "embeddings": out}
    )
