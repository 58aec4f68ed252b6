#!/usr/bin/env python
"""Training-level efficacy experiment (issue 9, part 2): train DPO on the pairs each selection strategy yields at an
equal annotation budget, and measure the gold reward of the trained policies' samples on held-out prompts.

Task (programmatic gold reward, so new samples can be scored honestly): **sort the digits**. A prompt is a string of
3-7 random digits followed by "=" (e.g. `"52819="`); the ideal completion is the sorted digits (`"12589"`). The gold
reward of a completion y is `max(0, 1 - Levenshtein(y, sorted(x)) / len(x))` in [0, 1] (1 = exactly right), so
partially right answers get partial credit and every sample can be scored.

Pipeline per seed (everything below is re-drawn for every seed: model init, SFT data, pools, selection, DPO order):

1. SFT: a tiny Qwen2 (config from `aepo_trainer.testing`, 13-token character-level tokenizer) is trained from scratch on *noisy*
   demonstrations (30% exact sorts, 70% with 1-3 random edits), so that sampling gives varied candidates of varying
   correctness, like a real SFT model.
2. Pools: max(N) candidates per training prompt are sampled from the SFT policy (temperature 1); the pool of a
   smaller N is the first N of them.
3. Selection + annotation at an equal budget B: the subset strategies annotate k = 2 candidates per prompt and cover
   B/2 prompts; West-of-N annotates all N and covers B/N prompts. Candidates are embedded with a character n-gram
   embedder (default; see `--embedder`), selected with `aepo_trainer.selection.select_subsets`, scored with the gold
   reward and paired best vs worst with `aepo_trainer.reduction.pairing.make_pairs`.
4. DPO: `AEPOTrainer` (= TRL's DPOTrainer on pair data) from the SFT model, the same number of optimiser steps for
   every strategy (so West-of-N's fewer pairs are seen more often, not for less compute).
5. Evaluation: `eval_samples` samples per held-out prompt (prompts never used in training), mean gold reward and
   exact-sort rate; the SFT policy itself is the reference row.

    python experiments/efficacy_training.py --out experiments/results            # default small CPU scale
    python experiments/efficacy_training.py --out /tmp/quick --quick              # smoke run, ~20 s
    python experiments/efficacy_training.py --out experiments/results --scale large   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import tasks
from efficacy_common import (
    STRATEGIES,
    CharNgramEncoder,
    MiniLMEncoder,
    fmt_ci,
    machine_info,
    machine_line,
    markdown_table,
    mean_ci,
)
from tasks import levenshtein  # the task plugins' edit distance: one implementation for both experiments

from aepo_trainer.choices import ACTIVE_STRATEGIES

DIGITS = "0123456789"


@dataclass
class Scale:
    hidden_size: int = 64
    num_layers: int = 2
    min_len: int = 3
    max_len: int = 7
    p_clean: float = 0.3  # share of exact demonstrations in the SFT data
    sft_steps: int = 600
    sft_batch: int = 64
    sft_lr: float = 3e-3
    train_prompts: int = 512  # prompts with a pool; the budget decides how many get annotated
    pool_sizes: tuple = (8, 16)  # nested: the N=8 pool is the first 8 samples of the N=16 pool
    k: int = 2
    budget: int | None = None  # default: k * train_prompts (the k = 2 strategies cover every prompt)
    dpo_steps: int = 64
    dpo_batch: int = 32
    dpo_lr: float = 3e-4
    dpo_scheduler: str = "linear"
    beta: float = 0.5
    eval_prompts: int = 512
    eval_samples: int = 4
    seeds: int = 10


SCALES = {
    "quick": Scale(
        sft_steps=150,
        train_prompts=96,
        pool_sizes=(8,),
        dpo_steps=8,
        dpo_batch=16,
        eval_prompts=64,
        eval_samples=2,
        seeds=2,
    ),
    "small": Scale(),
    "large": Scale(
        hidden_size=256,
        num_layers=4,
        sft_steps=3000,
        sft_batch=128,
        sft_lr=1e-3,
        train_prompts=4096,
        pool_sizes=(8, 16, 32),
        dpo_steps=400,
        dpo_batch=64,
        dpo_lr=1e-4,
        eval_prompts=2048,
        eval_samples=8,
        seeds=5,
    ),
}


# ---------------------------------------------------------------------------------------------------- the task
def target(prompt_digits: str) -> str:
    return "".join(sorted(prompt_digits))


def gold_reward(prompt_digits: str, completion: str) -> float:
    """1 - normalised edit distance to the sorted digits, clipped to [0, 1]."""
    t = target(prompt_digits)
    return max(0.0, 1.0 - levenshtein(completion.strip(), t) / len(t))


def random_prompt(rng: random.Random, scale: Scale) -> str:
    n = rng.randint(scale.min_len, scale.max_len)
    return "".join(rng.choice(DIGITS) for _ in range(n))


def corrupt(text: str, rng: random.Random) -> str:
    """1-3 random edits of a digit string: the digit-sorting task plugin's edits (`tasks.corrupt`), one rule for both
    experiments."""
    return tasks.corrupt(text, rng, DIGITS)


def demonstration(prompt_digits: str, rng: random.Random, p_clean: float) -> str:
    t = target(prompt_digits)
    return t if rng.random() < p_clean else corrupt(t, rng)


def prompt_sets(scale: Scale, seed: int):
    """Disjoint training and held-out prompts. Held-out prompts are the same for every seed (seed-independent)."""
    seen: set = set()
    eval_rng, rng = random.Random(10_000), random.Random(seed * 7919 + 1)
    held_out = tasks.distinct_prompts(lambda: random_prompt(eval_rng, scale), scale.eval_prompts, seen)
    train = tasks.distinct_prompts(lambda: random_prompt(rng, scale), scale.train_prompts, seen)
    return train, held_out


# ---------------------------------------------------------------------------------------------------- model
VOCAB_SPECIALS = ["<|im_end|>", "<|pad|>"]  # EOS, padding


def build_tokenizer():
    """Character-level tokenizer over exactly the task's alphabet: the 10 digits, "=", EOS and padding (13 tokens).

    A larger vocabulary (e.g. the 260-token byte-level one of `aepo_trainer.testing`) lets DPO's well-known
    likelihood displacement move probability mass onto characters the SFT data never contained, so samples fill with
    junk bytes; with the task's alphabet only, mass can only move between meaningful tokens.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(VOCAB_SPECIALS + list(DIGITS + "="))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=VOCAB_SPECIALS[0], pad_token=VOCAB_SPECIALS[1])


def decode_completion(tokenizer, ids) -> str:
    """The characters up to the first EOS (the padding token is suppressed at sampling time)."""
    out = []
    for i in ids:
        i = int(i)
        if i in (tokenizer.eos_token_id, tokenizer.pad_token_id):
            break
        out.append(tokenizer.convert_ids_to_tokens(i))
    return "".join(out)


def build_model(tokenizer, scale: Scale, seed: int, workdir: str):
    """A freshly initialised tiny Qwen2 from `aepo_trainer.testing.build_tiny_causal_lm`, loaded back by path."""
    from transformers import Qwen2ForCausalLM

    from aepo_trainer.testing import build_tiny_causal_lm

    path = build_tiny_causal_lm(
        os.path.join(workdir, "init"),
        hidden_size=scale.hidden_size,
        num_layers=scale.num_layers,
        seed=seed,
        tokenizer=tokenizer,
    )
    return Qwen2ForCausalLM.from_pretrained(path)


def sft(model, tokenizer, scale: Scale, seed: int, device, log=print):
    """Plain causal-LM SFT on freshly drawn noisy demonstrations, loss on completion tokens (+ EOS) only."""
    import torch

    rng = random.Random(seed * 104729 + 3)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=scale.sft_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=scale.sft_lr, total_steps=scale.sft_steps, pct_start=0.1)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    for step in range(scale.sft_steps):
        ids, labels = [], []
        for _ in range(scale.sft_batch):
            p = random_prompt(rng, scale)
            pi = tokenizer(p + "=")["input_ids"]
            ci = tokenizer(demonstration(p, rng, scale.p_clean))["input_ids"] + [eos]
            ids.append(pi + ci)
            labels.append([-100] * len(pi) + ci)
        width = max(map(len, ids))
        x = torch.tensor([a + [pad] * (width - len(a)) for a in ids], device=device)
        y = torch.tensor([a + [-100] * (width - len(a)) for a in labels], device=device)
        attn = torch.arange(width, device=device)[None] < torch.tensor([len(a) for a in ids], device=device)[:, None]
        loss = model(input_ids=x, attention_mask=attn.long(), labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % max(1, scale.sft_steps // 4) == 0 or step == scale.sft_steps - 1:
            log(f"    sft step {step:5d} loss {loss.item():.3f}")
    model.eval()
    return model


def sample(model, tokenizer, prompts: list[str], n: int, seed: int, device, batch_prompts: int = 512):
    """n samples (temperature 1, no top-k/top-p; the padding token is never sampled) per prompt. Prompts are grouped
    by length, so there is no padding."""
    import torch
    from transformers import GenerationConfig

    gen = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=12,
        num_return_sequences=n,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        suppress_tokens=[tokenizer.pad_token_id],
    )
    out = {}
    torch.manual_seed(seed)
    model.eval()
    by_len: dict[int, list[str]] = {}
    for p in dict.fromkeys(prompts):
        by_len.setdefault(len(p), []).append(p)
    with torch.no_grad():
        for length in sorted(by_len):
            group = by_len[length]
            for start in range(0, len(group), batch_prompts):
                chunk = group[start : start + batch_prompts]
                x = torch.tensor([tokenizer(p + "=")["input_ids"] for p in chunk], device=device)
                g = model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=gen)
                texts = [decode_completion(tokenizer, row) for row in g[:, x.shape[1] :].tolist()]
                for i, text in enumerate(texts):
                    out.setdefault(chunk[i // n], []).append(text)
    return out


def evaluate(model, tokenizer, held_out, scale: Scale, device, seed: int = 12345):
    """Mean gold reward, exact-sort rate, share of samples of the right length and mean |length error|."""
    samples = sample(model, tokenizer, held_out, scale.eval_samples, seed, device)
    rewards = [gold_reward(p, y) for p in held_out for y in samples[p]]
    len_err = [len(y) - len(p) for p in held_out for y in samples[p]]
    return {
        "gold_reward": float(np.mean(rewards)),
        "exact": float(np.mean([r == 1.0 for r in rewards])),
        "right_length": float(np.mean([e == 0 for e in len_err])),
        "abs_length_error": float(np.mean(np.abs(len_err))),
    }


# ---------------------------------------------------------------------------------------------------- selection
#: Strategies that learn from the labels they buy (issue 15), run only when named with --strategies.
ACTIVE_TRAINING_STRATEGIES = [("DTS (active)", "double_ts", 1.0), ("AEPO+UCB (active)", "aepo_ucb", 1.0)]
ACTIVE_BATCH = 32  # prompts per surrogate update, as `aepo select --active_batch_size`
ACTIVE_WARMUP = 64  # labels before the surrogate selects (AEPOConfig.active_warmup_annotations' default)


def _select_actively(covered, pools, E, keys, strategy, lam, k, seed):
    """The package's `ActiveSelector` over the covered prompts in batches: select, buy the gold labels, learn them."""
    import torch

    from aepo_trainer.selection.active import ActiveSelector
    from aepo_trainer.selection.kernel import SelectionResult

    selector = ActiveSelector(strategy, k, diversity_weight=lam, seed=seed, warmup_annotations=ACTIVE_WARMUP)
    rows = [{"prompt": p, "completions": pools[p]} for p in covered]
    parts = []
    for start in range(0, len(covered), ACTIVE_BATCH):
        batch = rows[start : start + ACTIVE_BATCH]
        Eb, kb = E[start : start + ACTIVE_BATCH], keys[start : start + ACTIVE_BATCH]
        res = selector.select(batch, Eb, None, row_keys=kb)
        subsets = res.tolist()
        scores = [[gold_reward(r["prompt"], r["completions"][i]) for i in sub] for r, sub in zip(batch, subsets)]
        selector.observe(batch, Eb, None, kb, subsets, scores)
        parts.append(res)
    return SelectionResult(*(torch.cat([getattr(r, f) for r in parts]) for f in
                             ("indices", "objective", "representativeness", "diversity", "valid")))  # fmt: skip


def build_pairs(
    pools: dict,
    train_prompts: list[str],
    embeddings: np.ndarray,
    strategy: str,
    lam: float,
    k: int,
    budget: int,
    seed: int,
):
    """Select, 'annotate' (gold reward) and pair best vs worst at the budget. Returns (pair rows, stats)."""
    import torch

    from aepo_trainer.reduction.pairing import make_pairs
    from aepo_trainer.selection import prompt_key, select_subsets

    n = embeddings.shape[1]
    cost = n if strategy == "west_of_n" else k
    covered = train_prompts[: min(len(train_prompts), budget // cost)]  # train prompts are already in random order
    E = torch.from_numpy(np.ascontiguousarray(embeddings[: len(covered)]))
    keys = torch.tensor([prompt_key(p) for p in covered], dtype=torch.int64)
    if strategy in ACTIVE_STRATEGIES:
        res = _select_actively(covered, pools, E, keys, strategy, lam, k, seed)
    else:
        res = select_subsets(E, k, diversity_weight=lam, strategy=strategy, seed=seed, row_keys=keys)
    subsets = res.tolist()
    texts = [[pools[p][i] for i in sub] for p, sub in zip(covered, subsets)]
    scores = [[gold_reward(p, y) for y in row] for p, row in zip(covered, texts)]
    result = make_pairs(scores, rule="best_vs_worst", seed=seed, row_keys=keys.tolist())
    rows = {"prompt": [], "chosen": [], "rejected": []}
    for pair in result.pairs:
        p = covered[pair.row]
        rows["prompt"].append(p + "=")
        rows["chosen"].append(texts[pair.row][pair.chosen])
        rows["rejected"].append(texts[pair.row][pair.rejected])
    gaps = [pr.gap for pr in result.pairs]
    stats = {
        "prompts": len(covered),
        "annotations": sum(len(s) for s in subsets),
        "pairs": len(result.pairs),
        "ties": result.ties_dropped,
        "pair_chosen": float(np.mean([pr.chosen_score for pr in result.pairs])) if gaps else float("nan"),
        "pair_rejected": float(np.mean([pr.rejected_score for pr in result.pairs])) if gaps else float("nan"),
        "pair_gap": float(np.mean(gaps)) if gaps else float("nan"),
        "pair_chosen_exact": float(np.mean([pr.chosen_score == 1.0 for pr in result.pairs])) if gaps else float("nan"),
        "diversity": float(res.diversity.mean()),
        "representativeness": float(res.representativeness.mean()),
    }
    return rows, stats


def dpo(model_dir: str, tokenizer, pairs: dict, scale: Scale, seed: int, workdir: str, device):
    """DPO with `AEPOTrainer` on prompt/chosen/rejected pairs (exactly TRL's DPOTrainer), from the SFT model."""
    from datasets import Dataset
    from transformers import Qwen2ForCausalLM

    from aepo_trainer import AEPOConfig, AEPOTrainer

    policy = Qwen2ForCausalLM.from_pretrained(model_dir)
    ref = Qwen2ForCausalLM.from_pretrained(model_dir)
    args = AEPOConfig(
        output_dir=os.path.join(workdir, "dpo"),
        bf16=False,
        report_to="none",
        seed=seed,
        per_device_train_batch_size=min(scale.dpo_batch, len(pairs["prompt"])),
        max_steps=scale.dpo_steps,
        learning_rate=scale.dpo_lr,
        lr_scheduler_type=scale.dpo_scheduler,
        warmup_steps=0,
        beta=scale.beta,
        logging_steps=max(1, scale.dpo_steps // 4),
        save_strategy="no",
        activation_checkpointing=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        use_cpu=device.type == "cpu",
    )
    trainer = AEPOTrainer(
        model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_dict(pairs), processing_class=tokenizer
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # keep the console to one line per run (losses are in log_history)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return trainer.model.eval(), losses


# ---------------------------------------------------------------------------------------------------- one seed
SFT_LABEL = "SFT policy (no DPO)"


def run_seed(scale: Scale, seed: int, strategies, embedder, device, log=print):
    """SFT → pools → (for each N and strategy) select/annotate/pair → DPO → evaluate. Returns per-run records."""
    import transformers
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    transformers.logging.set_verbosity_error()
    records = []
    tokenizer = build_tokenizer()
    train_prompts, held_out = prompt_sets(scale, seed)
    budget = scale.budget or scale.k * scale.train_prompts
    n_max = max(scale.pool_sizes)
    with tempfile.TemporaryDirectory(prefix="aepo-eff-") as workdir:
        t0 = time.time()
        model = sft(build_model(tokenizer, scale, seed, workdir), tokenizer, scale, seed, device, log=lambda m: None)
        sft_eval = evaluate(model, tokenizer, held_out, scale, device)
        pools = sample(model, tokenizer, train_prompts, n_max, seed + 1, device)
        pool_rewards = np.array([[gold_reward(p, y) for y in pools[p]] for p in train_prompts])
        records.append(
            {
                "seed": seed,
                "label": SFT_LABEL,
                "strategy": "sft",
                "lam": 0.0,
                "N": 0,
                **sft_eval,
                "pool_mean_reward": float(pool_rewards.mean()),
                "pool_exact": float((pool_rewards == 1.0).mean()),
            }
        )
        log(
            f"  [seed {seed}] SFT ({time.time() - t0:.0f}s): gold {sft_eval['gold_reward']:.3f}, exact "
            f"{sft_eval['exact']:.3f}; samples in the pools: gold {pool_rewards.mean():.3f}"
        )
        flat = [y for p in train_prompts for y in pools[p]]
        embeddings = embedder.encode(flat).reshape(len(train_prompts), n_max, -1).astype(np.float32)
        model_dir = os.path.join(workdir, "sft")
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        for n in scale.pool_sizes:
            pools_n = {p: pools[p][:n] for p in train_prompts}
            for label, strategy, lam in strategies:
                t1 = time.time()
                pairs, stats = build_pairs(
                    pools_n, train_prompts, embeddings[:, :n], strategy, lam, scale.k, budget, seed
                )
                if pairs["prompt"]:
                    trained, losses = dpo(model_dir, tokenizer, pairs, scale, seed, workdir, device)
                    ev = evaluate(trained, tokenizer, held_out, scale, device)
                    del trained
                else:  # every annotated subset was a tie: nothing to train on, the policy stays the SFT policy
                    losses, ev = (
                        [],
                        {k: sft_eval[k] for k in ("gold_reward", "exact", "right_length", "abs_length_error")},
                    )
                records.append(
                    {
                        "seed": seed,
                        "label": label,
                        "strategy": strategy,
                        "lam": lam,
                        "N": n,
                        **stats,
                        **ev,
                        "dpo_losses": losses,
                        "seconds": time.time() - t1,
                    }
                )
                log(
                    f"  [seed {seed}] N={n:<3d}{label:26s} pairs {stats['pairs']:4d} gap {stats['pair_gap']:.3f} "
                    f"-> gold {ev['gold_reward']:.3f} exact {ev['exact']:.3f} ({time.time() - t1:.0f}s)"
                )
    return records


# ---------------------------------------------------------------------------------------------------- reporting
PAIR_METRICS = (
    "prompts",
    "pairs",
    "pair_chosen",
    "pair_rejected",
    "pair_gap",
    "pair_chosen_exact",
    "diversity",
    "representativeness",
)


def summarize(records):
    """Per (label, N): mean ± 95% CI over seeds, and paired per-seed differences vs random k and vs SFT."""
    seeds = sorted({r["seed"] for r in records})
    by = {(r["label"], r["N"], r["seed"]): r for r in records}
    keys = list(dict.fromkeys((r["label"], r["N"]) for r in records))
    out = []
    for label, n in keys:
        rows = [by[(label, n, s)] for s in seeds if (label, n, s) in by]
        e = {"label": label, "N": n, "seeds": len(rows)}
        for m in ("gold_reward", "exact", "right_length", "abs_length_error") + PAIR_METRICS:
            vals = [r[m] for r in rows if m in r]
            e[m], e[m + "_ci"] = mean_ci(vals) if vals else (float("nan"), float("nan"))
        for key, ref in (("vs_random", ("random k", n)), ("vs_sft", (SFT_LABEL, 0)), ("vs_west", ("West-of-N", n))):
            diffs = [
                by[(label, n, s)]["gold_reward"] - by[(*ref, s)]["gold_reward"]
                for s in seeds
                if (label, n, s) in by and (*ref, s) in by
            ]
            e[key], e[key + "_ci"] = mean_ci(diffs)
            exact_diffs = [
                by[(label, n, s)]["exact"] - by[(*ref, s)]["exact"]
                for s in seeds
                if (label, n, s) in by and (*ref, s) in by
            ]
            e[key + "_exact"], e[key + "_exact_ci"] = mean_ci(exact_diffs)
        out.append(e)
    return out


def results_markdown(summary, meta) -> str:
    header = [
        "N",
        "policy",
        "prompts annotated",
        "pairs",
        "gold chosen",
        "chosen exact",
        "gold rejected",
        "pair gap",
        "held-out gold reward",
        "exact sorts",
        "Δ gold vs random k",
        "Δ exact vs random k",
        "Δ gold vs West-of-N",
        "Δ gold vs SFT",
    ]
    rows = []
    for e in summary:
        sft_row = e["label"] == SFT_LABEL
        dash = "–"
        rows.append(
            [
                dash if sft_row else str(e["N"]),
                e["label"],
                dash if sft_row else f"{e['prompts']:.0f}",
                dash if sft_row else fmt_ci(e["pairs"], e["pairs_ci"], 1),
                dash if sft_row else fmt_ci(e["pair_chosen"], e["pair_chosen_ci"]),
                dash if sft_row else fmt_ci(e["pair_chosen_exact"], e["pair_chosen_exact_ci"], 2),
                dash if sft_row else fmt_ci(e["pair_rejected"], e["pair_rejected_ci"]),
                dash if sft_row else fmt_ci(e["pair_gap"], e["pair_gap_ci"]),
                fmt_ci(e["gold_reward"], e["gold_reward_ci"]),
                fmt_ci(e["exact"], e["exact_ci"]),
                dash if sft_row or e["label"] == "random k" else fmt_ci(e["vs_random"], e["vs_random_ci"]),
                dash if sft_row or e["label"] == "random k" else fmt_ci(e["vs_random_exact"], e["vs_random_exact_ci"]),
                dash if sft_row or e["label"] == "West-of-N" else fmt_ci(e["vs_west"], e["vs_west_ci"]),
                dash if sft_row else fmt_ci(e["vs_sft"], e["vs_sft_ci"]),
            ]
        )
    s = meta["scale"]
    sizes = ", ".join(str(n) for n in s["pool_sizes"])
    won = ", ".join(f"{meta['budget'] // n} prompts at N = {n}" for n in s["pool_sizes"])
    lines = [
        "# Training-level efficacy at an equal annotation budget (digit sorting, programmatic gold reward)",
        "",
        f"Generated by `{meta['command']}` in {meta['wall_seconds'] / 60:.1f} min.",
        "",
        f"- Machine: {meta['machine']}.",
        f"- Scale `{meta['scale_name']}`: Qwen2 policy, hidden {s['hidden_size']} × {s['num_layers']} layers "
        f"({meta['params']:,} parameters), 13-token character vocabulary; SFT {s['sft_steps']} steps × "
        f"{s['sft_batch']} noisy demonstrations ({s['p_clean']:.0%} exact sorts, the rest with 1–3 random edits).",
        f"- Pools: {s['train_prompts']} training prompts, N ∈ {{{sizes}}} samples each from the SFT policy "
        f"(temperature 1; the N = 8 pool is the first 8 of the 16). Budget B = {meta['budget']} annotations: the k = "
        f"{s['k']} strategies annotate {meta['budget'] // s['k']} prompts, West-of-N {won}.",
        f"- DPO (`AEPOTrainer` on the pairs = TRL DPOTrainer): β = {s['beta']}, lr {s['dpo_lr']} ({s['dpo_scheduler']} "
        f"decay), {s['dpo_steps']} steps × batch {s['dpo_batch']} for every strategy (equal compute; West-of-N's "
        "fewer pairs are repeated more often).",
        f"- Evaluation: {s['eval_samples']} samples (temperature 1) on each of {s['eval_prompts']} held-out prompts "
        "(the same prompts and sampling seed for every policy); gold reward = 1 − edit distance / length, "
        "exact = share of samples that are exactly the sorted digits.",
        f"- Selection embedder: {meta['embedder']}.",
        f"- Seeds: {len(meta['seeds'])} ({meta['seeds'][0]}–{meta['seeds'][-1]}); each seed re-draws the model "
        "initialisation, SFT data, training prompts, pools, random selections and DPO data order. Values: mean ± 95% "
        "t-interval half-width over seeds; Δ columns are per-seed paired differences (same SFT model, same pools, "
        "same evaluation), then mean ± 95% CI.",
        f"- Samples of the SFT policy in the pools: mean gold reward {meta['pool_mean_reward']:.3f}, exact "
        f"{meta['pool_exact']:.3f}.",
        "",
        markdown_table(header, rows, ["--:", "---"] + ["--:"] * (len(header) - 2)),
        "## Where the errors are: length of the held-out samples",
        "",
        "A sorted answer has as many digits as the prompt. `right length` = share of samples with exactly that many "
        "characters; `mean abs. length error` = mean absolute difference in characters.",
        "",
        markdown_table(
            ["N", "policy", "right length", "mean abs. length error", "held-out gold reward", "exact sorts"],
            [
                [
                    ("–" if e["label"] == SFT_LABEL else str(e["N"])),
                    e["label"],
                    fmt_ci(e["right_length"], e["right_length_ci"]),
                    fmt_ci(e["abs_length_error"], e["abs_length_error_ci"], 2),
                    fmt_ci(e["gold_reward"], e["gold_reward_ci"]),
                    fmt_ci(e["exact"], e["exact_ci"]),
                ]
                for e in summary
            ],
            ["--:", "---", "--:", "--:", "--:", "--:"],
        ),
    ]
    return "\n".join(lines)


def plot(summary, records, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sft = next(e for e in summary if e["label"] == SFT_LABEL)
    sizes = sorted({e["N"] for e in summary if e["label"] != SFT_LABEL})
    labels = list(dict.fromkeys(e["label"] for e in summary if e["label"] != SFT_LABEL))
    shades = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.32 * len(labels) * max(1, len(sizes)) + 1.6))
    height = 0.8 / max(1, len(sizes))
    base = np.arange(len(labels))[::-1].astype(float)
    for ax, metric, name in (
        (axes[0], "gold_reward", "held-out mean gold reward (dots: seeds)"),
        (axes[1], "vs_random", "Δ gold reward vs random k, paired by seed"),
    ):
        for j, n in enumerate(sizes):
            es = [next(e for e in summary if e["label"] == lab and e["N"] == n) for lab in labels]
            y = base + (len(sizes) - 1) / 2 * height - j * height
            vals = np.array([e[metric] for e in es])
            errs = np.array([0.0 if np.isnan(e[metric + "_ci"]) else e[metric + "_ci"] for e in es])
            vals = np.nan_to_num(vals)
            ax.barh(
                y,
                vals,
                height=height * 0.9,
                xerr=errs,
                color=shades[j % len(shades)],
                alpha=0.8,
                capsize=2,
                label=f"N = {n}",
            )
            if metric == "gold_reward":
                for yy, lab in zip(y, labels):
                    pts = [r["gold_reward"] for r in records if r["label"] == lab and r["N"] == n]
                    ax.plot(pts, [yy] * len(pts), "k.", markersize=2.5, alpha=0.6)
        ax.set_yticks(base)
        ax.set_yticklabels(labels, fontsize=9)
        ax.set_title(name, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        if metric == "gold_reward":
            ax.axvline(
                sft["gold_reward"],
                color="k",
                linestyle="--",
                linewidth=1,
                label=f"SFT policy ({sft['gold_reward']:.3f})",
            )
            lo = min(min(r["gold_reward"] for r in records), sft["gold_reward"])
            hi = max(r["gold_reward"] for r in records)
            ax.set_xlim(max(0.0, lo - 0.02), min(1.0, hi + 0.02))
            ax.legend(fontsize=8, loc="lower right")
        else:
            ax.axvline(0, color="k", linewidth=0.8)
            ax.legend(fontsize=8, loc="lower left")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------- CLI
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="experiments/results")
    p.add_argument(
        "--scale",
        choices=["small", "large"],
        default="small",
        help="small: ~9 min on 2 CPU cores with 1 thread; large: for a GPU (bigger model, 4096 prompts, N up to 32)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run (tiny everything, 2 seeds, N = 8)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the scale's)")
    p.add_argument("--pool-sizes", type=int, nargs="+", default=None, help="N values (default: the scale's)")
    p.add_argument("--budget", type=int, default=None, help="total annotations (default: k x training prompts)")
    p.add_argument("--beta", type=float, default=None, help="DPO beta (default: the scale's, 0.5)")
    p.add_argument("--dpo-lr", type=float, default=None, help="DPO learning rate (default: the scale's, 3e-4)")
    p.add_argument("--dpo-scheduler", default=None, help="DPO lr schedule (default: the scale's, linear)")
    p.add_argument("--dpo-steps", type=int, default=None, help="DPO optimiser steps (default: the scale's, 64)")
    p.add_argument(
        "--embedder",
        choices=["ngram", "minilm"],
        default="ngram",
        help="ngram (default): hashed character 1-3-grams, whose cosine tracks character agreement "
        "between two digit strings; minilm: all-MiniLM-L6-v2, the product default for natural text",
    )
    p.add_argument("--strategies", nargs="+", default=None, help="subset of strategy labels to run")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the model is tiny, and on a shared machine 2+ OpenMP threads "
        "can be 10-100x slower than 1)",
    )
    p.add_argument(
        "--docs-assets", default=None, help="also copy the PNG there (docs/assets/efficacy for the documentation site)"
    )
    p.add_argument("--tag", default="", help="suffix of the output file names")
    p.add_argument(
        "--render",
        default=None,
        metavar="JSON",
        help="only re-write the Markdown table and the plot from a results JSON of an earlier run",
    )
    return p.parse_args(argv)


def write_outputs(records, meta, md_path: Path, png_path: Path, docs_assets=None):
    summary = summarize(records)
    md_path.write_text(results_markdown(summary, meta), encoding="utf-8")
    plot(
        summary,
        records,
        png_path,
        f"DPO on each strategy's pairs at an equal budget (B = {meta['budget']}, {len(meta['seeds'])} seeds; "
        "digit sorting)",
    )
    if docs_assets:
        import shutil

        Path(docs_assets).mkdir(parents=True, exist_ok=True)
        shutil.copy(png_path, Path(docs_assets) / png_path.name)
    return summary


def main(argv=None):
    args = parse_args(argv)
    if args.render:
        data = json.loads(Path(args.render).read_text(encoding="utf-8"))
        base = Path(args.render).with_suffix("")
        return write_outputs(
            data["records"], data["meta"], base.with_suffix(".md"), base.with_suffix(".png"), args.docs_assets
        )
    import torch

    scale_name = "quick" if args.quick else args.scale
    scale = replace(SCALES[scale_name])
    if args.seeds is not None:
        scale.seeds = args.seeds
    if args.pool_sizes is not None:
        scale.pool_sizes = tuple(args.pool_sizes)
    if args.budget is not None:
        scale.budget = args.budget
    for name in ("beta", "dpo_lr", "dpo_scheduler", "dpo_steps"):
        if getattr(args, name) is not None:
            setattr(scale, name, getattr(args, name))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        torch.set_num_threads(max(1, args.threads))
    strategies = [s for s in STRATEGIES if args.strategies is None or s[0] in args.strategies]
    strategies += [s for s in ACTIVE_TRAINING_STRATEGIES if args.strategies is not None and s[0] in args.strategies]
    embedder = CharNgramEncoder() if args.embedder == "ngram" else MiniLMEncoder(bf16=device.type == "cpu")
    info = machine_info()
    t_start = time.time()
    records = []
    for seed in range(scale.seeds):
        print(f"[seed {seed}] ({time.time() - t_start:.0f}s elapsed)", flush=True)
        records += run_seed(scale, seed, strategies, embedder, device, log=lambda m: print(m, flush=True))
    with tempfile.TemporaryDirectory() as tmp:
        params = sum(p.numel() for p in build_model(build_tokenizer(), scale, 0, tmp).parameters())
    sft_rows = [r for r in records if r["strategy"] == "sft"]
    default_suffix = "_quick" if args.quick else ("" if args.scale == "small" else f"_{args.scale}")
    suffix = f"_{args.tag}" if args.tag else default_suffix
    cmd = "python experiments/efficacy_training.py " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = {
        "command": cmd.strip(),
        "scale_name": scale_name,
        "scale": asdict(scale),
        "params": params,
        "budget": scale.budget or scale.k * scale.train_prompts,
        "seeds": list(range(scale.seeds)),
        "embedder": embedder.tag
        + (
            " (hashed character 1-3-grams, L2-normalised)"
            if args.embedder == "ngram"
            else " (aepo_trainer.embedding.Embedder)"
        ),
        "machine": machine_line(info) + f"; device used: {device}",
        "machine_info": info,
        "pool_mean_reward": float(np.mean([r["pool_mean_reward"] for r in sft_rows])),
        "pool_exact": float(np.mean([r["pool_exact"] for r in sft_rows])),
        "wall_seconds": time.time() - t_start,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md_path, png_path, json_path = (out / f"training{suffix}.{ext}" for ext in ("md", "png", "json"))
    summary = write_outputs(records, meta, md_path, png_path, args.docs_assets)
    json_path.write_text(json.dumps({"meta": meta, "summary": summary, "records": records}, indent=1), encoding="utf-8")
    print(f"[done] {(time.time() - t_start) / 60:.1f} min -> {md_path}, {png_path}, {json_path}")
    return summary


if __name__ == "__main__":
    main()
