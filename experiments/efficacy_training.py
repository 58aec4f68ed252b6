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
2. Pools: N candidates per training prompt are sampled from the SFT policy (temperature 1).
3. Selection + annotation at an equal budget B: the subset strategies annotate k = 2 candidates per prompt and cover
   B/2 prompts; West-of-N annotates all N and covers B/N prompts. Candidates are embedded with a character n-gram
   embedder (default; see `--embedder`), selected with `aepo_trainer.selection.select_subsets`, scored with the gold
   reward and paired best vs worst with `aepo_trainer.pairing.make_pairs`.
4. DPO: `AEPOTrainer` (= TRL's DPOTrainer on pair data) from the SFT model, the same number of optimiser steps for
   every strategy (so West-of-N's fewer pairs are seen more often, not for less compute).
5. Evaluation: `--eval-samples` samples per held-out prompt (prompts never used in training), mean gold reward and
   exact-sort rate; the SFT policy itself is the reference row.

    python experiments/efficacy_training.py --out experiments/results            # default small CPU scale
    python experiments/efficacy_training.py --out /tmp/quick --quick              # smoke run, ~1-2 minutes
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from efficacy_common import (  # noqa: E402  (also sets the HF offline variables)
    CharNgramEncoder,
    MiniLMEncoder,
    fmt_ci,
    machine_info,
    machine_line,
    markdown_table,
    mean_ci,
)

DIGITS = "0123456789"

# (label, strategy, lambda)
STRATEGIES = [
    ("AEPO λ=0.5", "aepo", 0.5),
    ("AEPO λ=1", "aepo", 1.0),
    ("AEPO λ=2", "aepo", 2.0),
    ("random k", "random", 0.0),
    ("West-of-N", "west_of_n", 0.0),
    ("representativeness (λ=0)", "representativeness", 0.0),
    ("k-medoids", "kmedoids", 0.0),
]


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
    pool_size: int = 8
    k: int = 2
    budget: int | None = None  # default: k * train_prompts (the k = 2 strategies cover every prompt)
    dpo_steps: int = 64
    dpo_batch: int = 32
    dpo_lr: float = 3e-4
    beta: float = 0.1
    eval_prompts: int = 512
    eval_samples: int = 4
    seeds: int = 5
    extra: dict = field(default_factory=dict)


SCALES = {
    "quick": Scale(sft_steps=150, train_prompts=96, dpo_steps=8, dpo_batch=16, eval_prompts=64, eval_samples=2,
                   seeds=2),
    "small": Scale(),
    "large": Scale(hidden_size=256, num_layers=4, sft_steps=3000, sft_batch=128, sft_lr=1e-3, train_prompts=4096,
                   pool_size=16, dpo_steps=400, dpo_batch=64, dpo_lr=3e-4, eval_prompts=2048, eval_samples=8,
                   seeds=5),
}


# ---------------------------------------------------------------------------------------------------- the task
def target(prompt_digits: str) -> str:
    return "".join(sorted(prompt_digits))


def levenshtein(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def gold_reward(prompt_digits: str, completion: str) -> float:
    """1 - normalised edit distance to the sorted digits, clipped to [0, 1]."""
    t = target(prompt_digits)
    return max(0.0, 1.0 - levenshtein(completion.strip(), t) / len(t))


def random_prompt(rng: random.Random, scale: Scale) -> str:
    n = rng.randint(scale.min_len, scale.max_len)
    return "".join(rng.choice(DIGITS) for _ in range(n))


def corrupt(text: str, rng: random.Random) -> str:
    """1-3 random edits: substitute, swap neighbours, delete or insert a digit."""
    s = list(text)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(4)
        i = rng.randrange(len(s)) if s else 0
        if op == 0 and s:
            s[i] = rng.choice(DIGITS)
        elif op == 1 and len(s) > 1:
            j = min(i + 1, len(s) - 1)
            s[i], s[j] = s[j], s[i]
        elif op == 2 and len(s) > 1:
            del s[i]
        else:
            s.insert(i, rng.choice(DIGITS))
    return "".join(s)


def demonstration(prompt_digits: str, rng: random.Random, p_clean: float) -> str:
    t = target(prompt_digits)
    return t if rng.random() < p_clean else corrupt(t, rng)


def prompt_sets(scale: Scale, seed: int):
    """Disjoint training and held-out prompts. Held-out prompts are the same for every seed (seed-independent)."""
    eval_rng = random.Random(10_000)
    held_out = []
    seen = set()
    while len(held_out) < scale.eval_prompts:
        p = random_prompt(eval_rng, scale)
        if p not in seen:
            seen.add(p)
            held_out.append(p)
    rng = random.Random(seed * 7919 + 1)
    train = []
    while len(train) < scale.train_prompts:
        p = random_prompt(rng, scale)
        if p not in seen:
            seen.add(p)
            train.append(p)
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

    path = build_tiny_causal_lm(os.path.join(workdir, "init"), hidden_size=scale.hidden_size,
                                num_layers=scale.num_layers, seed=seed, tokenizer=tokenizer)
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
        attn = (torch.arange(width, device=device)[None] < torch.tensor([len(a) for a in ids], device=device)[:, None])
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

    gen = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=12,
                           num_return_sequences=n, pad_token_id=tokenizer.pad_token_id,
                           eos_token_id=tokenizer.eos_token_id, suppress_tokens=[tokenizer.pad_token_id])
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
                chunk = group[start:start + batch_prompts]
                x = torch.tensor([tokenizer(p + "=")["input_ids"] for p in chunk], device=device)
                g = model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=gen)
                texts = [decode_completion(tokenizer, row) for row in g[:, x.shape[1]:].tolist()]
                for i, text in enumerate(texts):
                    out.setdefault(chunk[i // n], []).append(text)
    return out


def evaluate(model, tokenizer, held_out, scale: Scale, device, seed: int = 12345):
    samples = sample(model, tokenizer, held_out, scale.eval_samples, seed, device)
    rewards = [gold_reward(p, y) for p in held_out for y in samples[p]]
    return {"gold_reward": float(np.mean(rewards)), "exact": float(np.mean([r == 1.0 for r in rewards]))}


# ---------------------------------------------------------------------------------------------------- selection
def build_pairs(pools: dict, train_prompts: list[str], embeddings: np.ndarray, strategy: str, lam: float, k: int,
                budget: int, seed: int):
    """Select, 'annotate' (gold reward) and pair best vs worst at the budget. Returns (pair rows, stats)."""
    import torch

    from aepo_trainer.pairing import make_pairs
    from aepo_trainer.selection import select_subsets, stable_row_key

    n = embeddings.shape[1]
    cost = n if strategy == "west_of_n" else k
    covered = train_prompts[: min(len(train_prompts), budget // cost)]  # train prompts are already in random order
    E = torch.from_numpy(np.ascontiguousarray(embeddings[: len(covered)]))
    keys = torch.tensor([stable_row_key(p) for p in covered], dtype=torch.int64)
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
        "diversity": float(res.diversity.mean()),
        "representativeness": float(res.representativeness.mean()),
    }
    return rows, stats


def dpo(model_dir: str, tokenizer, pairs: dict, scale: Scale, seed: int, workdir: str, device):
    from datasets import Dataset
    from transformers import Qwen2ForCausalLM

    from aepo_trainer import AEPOConfig, AEPOTrainer

    policy = Qwen2ForCausalLM.from_pretrained(model_dir)
    ref = Qwen2ForCausalLM.from_pretrained(model_dir)
    args = AEPOConfig(
        output_dir=os.path.join(workdir, "dpo"), bf16=False, report_to="none", seed=seed,
        per_device_train_batch_size=min(scale.dpo_batch, len(pairs["prompt"])), max_steps=scale.dpo_steps,
        learning_rate=scale.dpo_lr, lr_scheduler_type="constant", warmup_steps=0, beta=scale.beta,
        logging_steps=max(1, scale.dpo_steps // 4), save_strategy="no", activation_checkpointing=False,
        dataloader_num_workers=0, disable_tqdm=True, use_cpu=device.type == "cpu",
    )
    trainer = AEPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_dict(pairs),
                          processing_class=tokenizer)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return trainer.model.eval(), losses


# ---------------------------------------------------------------------------------------------------- one seed
def run_seed(scale: Scale, seed: int, strategies, embedder, device, log=print):
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    records = []
    tokenizer = build_tokenizer()
    train_prompts, held_out = prompt_sets(scale, seed)
    budget = scale.budget or scale.k * scale.train_prompts
    with tempfile.TemporaryDirectory(prefix="aepo-eff-") as workdir:
        t0 = time.time()
        model = sft(build_model(tokenizer, scale, seed, workdir), tokenizer, scale, seed, device, log=log)
        log(f"  [seed {seed}] SFT done in {time.time() - t0:.0f}s")
        sft_eval = evaluate(model, tokenizer, held_out, scale, device)
        records.append({"seed": seed, "label": "SFT policy (no DPO)", "strategy": "sft", "lam": 0.0, **sft_eval})
        log(f"  [seed {seed}] SFT policy: gold {sft_eval['gold_reward']:.3f}, exact {sft_eval['exact']:.3f}")

        pools = sample(model, tokenizer, train_prompts, scale.pool_size, seed + 1, device)
        pool_rewards = np.array([[gold_reward(p, y) for y in pools[p]] for p in train_prompts])
        flat = [y for p in train_prompts for y in pools[p]]
        embeddings = embedder.encode(flat).reshape(len(train_prompts), scale.pool_size, -1).astype(np.float32)
        model_dir = os.path.join(workdir, "sft")
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        for label, strategy, lam in strategies:
            t1 = time.time()
            pairs, stats = build_pairs(pools, train_prompts, embeddings, strategy, lam, scale.k, budget, seed)
            if pairs["prompt"]:
                trained, losses = dpo(model_dir, tokenizer, pairs, scale, seed, workdir, device)
                ev = evaluate(trained, tokenizer, held_out, scale, device)
            else:  # every annotated subset was a tie: nothing to train on, the policy stays the SFT policy
                trained, losses, ev = None, [], dict(sft_eval)
            records.append({"seed": seed, "label": label, "strategy": strategy, "lam": lam, **stats, **ev,
                            "dpo_losses": losses, "seconds": time.time() - t1})
            log(f"  [seed {seed}] {label:26s} pairs {stats['pairs']:4d} gap {stats['pair_gap']:.3f} -> gold "
                f"{ev['gold_reward']:.3f} exact {ev['exact']:.3f} ({time.time() - t1:.0f}s)")
            del trained
    records[0].update({"pool_mean_reward": float(pool_rewards.mean()),
                       "pool_exact": float((pool_rewards == 1.0).mean())})
    return records


# ---------------------------------------------------------------------------------------------------- reporting
def summarize(records):
    labels = list(dict.fromkeys(r["label"] for r in records))
    seeds = sorted({r["seed"] for r in records})
    by = {(r["label"], r["seed"]): r for r in records}
    out = []
    for label in labels:
        rows = [by[(label, s)] for s in seeds if (label, s) in by]
        e = {"label": label, "seeds": len(rows)}
        for m in ("gold_reward", "exact", "prompts", "pairs", "pair_chosen", "pair_rejected", "pair_gap",
                  "diversity", "representativeness"):
            vals = [r[m] for r in rows if m in r]
            e[m], e[m + "_ci"] = mean_ci(vals) if vals else (float("nan"), float("nan"))
        for ref in ("random k", "SFT policy (no DPO)"):
            diffs = [by[(label, s)]["gold_reward"] - by[(ref, s)]["gold_reward"] for s in seeds
                     if (label, s) in by and (ref, s) in by]
            key = "vs_random" if ref == "random k" else "vs_sft"
            e[key], e[key + "_ci"] = mean_ci(diffs)
        out.append(e)
    return out


def results_markdown(summary, meta) -> str:
    header = ["policy", "prompts annotated", "pairs", "pair gap (gold)", "held-out gold reward", "exact sorts",
              "Δ gold vs random k (paired)", "Δ gold vs SFT (paired)"]
    rows = []
    for e in summary:
        sft_row = e["label"].startswith("SFT")
        rows.append([
            e["label"],
            "–" if sft_row else f"{e['prompts']:.0f}",
            "–" if sft_row else fmt_ci(e["pairs"], e["pairs_ci"], 1),
            "–" if sft_row else fmt_ci(e["pair_gap"], e["pair_gap_ci"]),
            fmt_ci(e["gold_reward"], e["gold_reward_ci"]),
            fmt_ci(e["exact"], e["exact_ci"]),
            "–" if e["label"] == "random k" else fmt_ci(e["vs_random"], e["vs_random_ci"]),
            "–" if sft_row else fmt_ci(e["vs_sft"], e["vs_sft_ci"]),
        ])
    s = meta["scale"]
    lines = [
        "# Training-level efficacy at an equal annotation budget (digit sorting, programmatic gold reward)",
        "",
        f"Generated by `{meta['command']}` in {meta['wall_seconds'] / 60:.1f} min.",
        "",
        f"- Machine: {meta['machine']}.",
        f"- Scale `{meta['scale_name']}`: Qwen2 policy hidden {s['hidden_size']} × {s['num_layers']} layers "
        f"({meta['params']:,} parameters), SFT {s['sft_steps']} steps × {s['sft_batch']} noisy demonstrations "
        f"({s['p_clean']:.0%} exact); {s['train_prompts']} training prompts with pools of N = {s['pool_size']} samples; "
        f"budget B = {meta['budget']} annotations (k = {s['k']}: {meta['budget'] // s['k']} prompts; West-of-N: "
        f"{meta['budget'] // s['pool_size']} prompts); DPO β = {s['beta']}, lr {s['dpo_lr']}, {s['dpo_steps']} steps × "
        f"batch {s['dpo_batch']} for every strategy; evaluation: {s['eval_samples']} samples (temperature 1) on each of "
        f"{s['eval_prompts']} held-out prompts.",
        f"- Embedder for selection: {meta['embedder']}.",
        f"- Seeds: {meta['seeds']}. Values: mean ± 95% t-interval half-width over seeds; Δ columns are per-seed "
        "differences (same SFT model, same pools, same evaluation prompts) averaged over seeds.",
        f"- SFT pools: mean gold reward of a sample {meta['pool_mean_reward']:.3f}, exact {meta['pool_exact']:.3f}.",
        "",
        markdown_table(header, rows, ["---"] + ["--:"] * (len(header) - 1)),
    ]
    return "\n".join(lines)


def plot(summary, records, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [e["label"] for e in summary]
    colors = {"SFT policy (no DPO)": "#bbbbbb", "AEPO λ=0.5": "#1f77b4", "AEPO λ=1": "#0b3d91",
              "AEPO λ=2": "#6baed6", "random k": "#7f7f7f", "West-of-N": "#d62728",
              "representativeness (λ=0)": "#2ca02c", "k-medoids": "#9467bd"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    y = np.arange(len(labels))[::-1]
    for ax, (metric, name) in zip(axes, [("gold_reward", "held-out mean gold reward"),
                                         ("vs_random", "Δ gold reward vs random k (paired by seed)")]):
        vals = [e[metric] for e in summary]
        errs = [0 if np.isnan(e[metric + "_ci"]) else e[metric + "_ci"] for e in summary]
        ax.barh(y, vals, xerr=errs, color=[colors.get(lab, "#444") for lab in labels], capsize=3, alpha=0.85)
        for yy, lab in zip(y, labels):
            pts = [r.get("gold_reward") if metric == "gold_reward" else None for r in records if r["label"] == lab]
            pts = [p for p in pts if p is not None]
            ax.plot(pts, [yy] * len(pts), "k.", markersize=4, alpha=0.6)
        ax.set_yticks(y)
        ax.set_yticklabels(labels, fontsize=9)
        ax.set_title(name, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        if metric == "gold_reward":
            lo = min(v - e for v, e in zip(vals, errs))
            hi = max(max(v + e for v, e in zip(vals, errs)), max(r["gold_reward"] for r in records))
            ax.set_xlim(max(0.0, lo - 0.03), min(1.0, hi + 0.02))
        else:
            ax.axvline(0, color="k", linewidth=0.8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------- CLI
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="experiments/results")
    p.add_argument("--scale", choices=["small", "large"], default="small",
                   help="small: ~15-20 min on 2 CPU cores; large: for a GPU (bigger model, 4096 prompts, N = 16)")
    p.add_argument("--quick", action="store_true", help="smoke run (tiny everything, 2 seeds)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the scale's)")
    p.add_argument("--pool-size", type=int, default=None, help="N (default: the scale's)")
    p.add_argument("--budget", type=int, default=None, help="total annotations (default: k x training prompts)")
    p.add_argument("--embedder", choices=["ngram", "minilm"], default="ngram",
                   help="ngram: hashed character 1-3-grams (default: similarity = character agreement between two "
                        "digit strings); minilm: all-MiniLM-L6-v2, the product default for natural-language text")
    p.add_argument("--strategies", nargs="+", default=None, help="subset of strategy labels to run")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--tag", default="")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import torch

    scale_name = "quick" if args.quick else args.scale
    scale = Scale(**{k: v for k, v in asdict(SCALES[scale_name]).items()})
    if args.seeds is not None:
        scale.seeds = args.seeds
    if args.pool_size is not None:
        scale.pool_size = args.pool_size
    if args.budget is not None:
        scale.budget = args.budget
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    strategies = [s for s in STRATEGIES if args.strategies is None or s[0] in args.strategies]
    embedder = CharNgramEncoder() if args.embedder == "ngram" else MiniLMEncoder(bf16=device.type == "cpu")
    info = machine_info()
    t_start = time.time()
    records = []
    for seed in range(scale.seeds):
        print(f"[seed {seed}] ({time.time() - t_start:.0f}s elapsed)", flush=True)
        records += run_seed(scale, seed, strategies, embedder, device,
                            log=lambda m: print(m, flush=True))
    summary = summarize(records)
    with tempfile.TemporaryDirectory() as tmp:
        params = sum(p.numel() for p in build_model(build_tokenizer(), scale, 0, tmp).parameters())
    sft_rows = [r for r in records if r["strategy"] == "sft"]
    suffix = f"_{args.tag}" if args.tag else ("_quick" if args.quick else ("" if args.scale == "small" else
                                                                           f"_{args.scale}"))
    cmd = "python experiments/efficacy_training.py " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = {
        "command": cmd.strip(), "scale_name": scale_name, "scale": asdict(scale), "params": params,
        "budget": scale.budget or scale.k * scale.train_prompts, "seeds": list(range(scale.seeds)),
        "embedder": embedder.tag + (" (hashed character 1-3-grams, L2-normalised)" if args.embedder == "ngram"
                                    else " (aepo_trainer.embedding.Embedder)"),
        "machine": machine_line(info) + f"; device used: {device}", "machine_info": info,
        "pool_mean_reward": float(np.mean([r["pool_mean_reward"] for r in sft_rows])),
        "pool_exact": float(np.mean([r["pool_exact"] for r in sft_rows])),
        "wall_seconds": time.time() - t_start,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md_path, png_path, json_path = (out / f"training{suffix}.{ext}" for ext in ("md", "png", "json"))
    md_path.write_text(results_markdown(summary, meta), encoding="utf-8")
    plot(summary, records, png_path,
         f"DPO on each strategy's pairs at an equal budget (B = {meta['budget']}, N = {scale.pool_size}, "
         f"{scale.seeds} seeds; digit sorting)")
    json_path.write_text(json.dumps({"meta": meta, "summary": summary, "records": records}, indent=1),
                         encoding="utf-8")
    print(f"[done] {(time.time() - t_start) / 60:.1f} min -> {md_path}, {png_path}, {json_path}")
    return summary


if __name__ == "__main__":
    main()
