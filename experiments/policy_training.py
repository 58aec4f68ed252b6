#!/usr/bin/env python
"""Policy-level efficacy through the product (issue 28): does a selection strategy train a better *policy* per label?

Everything a user runs, run as a user runs it: `AEPOTrainer` on candidate pools (and on prompt-only data, sampling the
pools from the policy in the training step), the task's gold reward as a TRL-style reward function annotator (the
paid label), `annotation_budget` doing the stopping, `prompt_selection` choosing which prompts get labels when the
budget covers fewer prompts than the data. Per task and seed:

1. SFT: a tiny Qwen2 over the task's characters, trained from scratch on demonstrations of controllable quality
   (`--sft-quality` of them correct), so that its samples vary in correctness like a real SFT model's.
2. Pools: N samples per training prompt from the SFT policy (temperature 1), embedded with hashed character n-grams
   (the `embeddings` column the trainer reads).
3. For each budget B (a share of k x prompts) and strategy: `AEPOTrainer` from the SFT weights, one epoch over the
   training prompts, `annotation_budget=B`; the labels the gold-reward annotator was paid for are counted by the
   annotator itself.
4. Evaluation: `--eval-samples` samples on each of `--eval-prompts` held-out prompts (the same prompts and sampling
   seed for every policy of a seed), per-prompt mean gold reward and length-controlled reward.

Statistics (`policy_stats.py`): paired differences against random k on the same prompts and seeds, percentile
bootstrap over seeds and prompts; labels to parity = the smallest budget at which a strategy's mean policy reaches
random k's at the full budget (linear interpolation between the measured budgets).

    python experiments/policy_training.py --out experiments/results                 # default CPU scale
    python experiments/policy_training.py --out /tmp/policy --quick                  # smoke run, seconds
    python experiments/policy_training.py --task mypkg.tasks:Palindrome --out /tmp/p # any task plugin
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from efficacy_common import CharNgramEncoder, fmt_interval, machine_info, machine_line, markdown_table
from policy_lab import (
    SCALES,
    Scale,
    build_tokenizer,
    evaluate,
    pool_dataset,
    prompt_sets,
    sample,
    sft,
    train_policy,
)
from policy_stats import bootstrap_ci, labels_to_parity
from tasks import load_task

BUILTIN_TASKS = ("tasks:DigitSort", "tasks:Addition")


#: (label, AEPOConfig overrides, data): "pools" = offline pools of the SFT policy, "on-policy" = prompt-only data.
#: Prompt-level rules only where the budget covers fewer prompts than the data (they change nothing otherwise).
STRATEGIES = [
    ("random k", {"selection_strategy": "random"}, "pools"),
    ("AEPO λ=1", {"selection_strategy": "aepo"}, "pools"),
    ("DTS (n-gram features)", {"selection_strategy": "double_ts"}, "pools"),
    (
        "DTS (+ implicit reward feature)",
        {"selection_strategy": "double_ts", "active_implicit_reward_feature": True},
        "pools",
    ),
    (
        "DTS (+ policy features)",
        {"selection_strategy": "double_ts", "active_policy_features": True},
        "pools",
    ),
    ("implicit_reward_gap", {"selection_strategy": "implicit_reward_gap"}, "pools"),
    ("West-of-N", {"selection_strategy": "west_of_n"}, "pools"),
    ("random k, prompts: random", {"selection_strategy": "random", "prompt_selection": "random"}, "pools"),
    ("random k, prompts: D-optimal", {"selection_strategy": "random", "prompt_selection": "d_optimal"}, "pools"),
    (
        "random k, prompts: implicit-reward spread",
        {"selection_strategy": "random", "prompt_selection": "implicit_reward_spread"},
        "pools",
    ),
    # a window of upcoming batches (`prompt_selection_window`, "auto" = 1 / budget share): full batches of the chosen
    # prompts, fewer optimizer steps, instead of a share of every step's batch
    (
        "random k, prompts: random, window",
        {"selection_strategy": "random", "prompt_selection": "random", "prompt_selection_window": "auto"},
        "pools",
    ),
    (
        "random k, prompts: D-optimal, window",
        {"selection_strategy": "random", "prompt_selection": "d_optimal", "prompt_selection_window": "auto"},
        "pools",
    ),
    (
        "random k, prompts: implicit-reward spread, window",
        {
            "selection_strategy": "random",
            "prompt_selection": "implicit_reward_spread",
            "prompt_selection_window": "auto",
        },
        "pools",
    ),
    ("on-policy random k", {"selection_strategy": "random"}, "on-policy"),
    ("on-policy implicit_reward_gap", {"selection_strategy": "implicit_reward_gap"}, "on-policy"),
    (
        "on-policy random k, prompts: D-optimal",
        {"selection_strategy": "random", "prompt_selection": "d_optimal"},
        "on-policy",
    ),
]
QUICK_STRATEGIES = ["random k", "DTS (n-gram features)", "random k, prompts: D-optimal", "on-policy random k"]
REFERENCE = "random k"
ON_POLICY_REFERENCE = "on-policy random k"


# ---------------------------------------------------------------------------------------------------- model
def run_task_seed(task, scale: Scale, seed: int, strategies, log=print) -> list[dict]:
    import transformers
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar
    from transformers import Qwen2ForCausalLM

    disable_progress_bar()
    transformers.logging.set_verbosity_error()
    tokenizer = build_tokenizer(task.alphabet)
    train, held_out = prompt_sets(task, scale, seed)
    records = []
    with tempfile.TemporaryDirectory(prefix="aepo-policy-") as workdir:
        t0 = time.perf_counter()
        sft_dir = sft(task, tokenizer, scale, seed, workdir)
        sft_model = Qwen2ForCausalLM.from_pretrained(sft_dir)
        pool_tokens = []  # the offline pools: sampled once per task and seed, shared by every offline strategy
        pools = sample(sft_model, tokenizer, task, train, scale.pool_size, seed=seed + 1, tokens=pool_tokens)
        pool_gold = float(np.mean([task.gold_reward(p, y) for p in train for y in pools[p]]))
        ev = evaluate(sft_model, tokenizer, task, held_out, scale)
        base = {"task": task.name, "seed": seed}
        records.append({**base, "label": "SFT", "budget": 0, "share": 0.0, **ev, "pool_gold": pool_gold,
                        "pool_generated_tokens": int(sum(pool_tokens)), "sft_seconds": time.perf_counter() - t0})  # fmt: skip
        log(
            f"  [{task.name} seed {seed}] SFT {time.perf_counter() - t0:.0f}s: held-out gold "
            f"{np.mean(ev['gold']):.3f}, pool samples {pool_gold:.3f}"
        )
        data = {
            "pools": pool_dataset(task, pools, train, CharNgramEncoder()),
            "on-policy": Dataset.from_dict({"prompt": [p + task.prompt_suffix for p in train]}),
        }
        run = 0
        for share in scale.budget_shares:
            budget = round(share * scale.k * scale.train_prompts)
            for label, overrides, kind in strategies:
                if "prompt_selection" in overrides and share >= 1.0:
                    continue  # every prompt is paid for: prompt selection changes nothing
                if overrides.get("prompt_selection_window") == "auto":  # the window the budget pays one batch of
                    overrides = {**overrides, "prompt_selection_window": max(1, round(1 / share))}
                run += 1
                t1 = time.perf_counter()
                model, cost = train_policy(
                    task, sft_dir, tokenizer, data[kind], overrides, budget, scale, seed, f"{workdir}/run{run}"
                )
                ev = evaluate(model, tokenizer, task, held_out, scale)
                wall = time.perf_counter() - t1
                records.append({**base, "label": label, "data": kind, "budget": budget, "share": share, **cost,
                                **ev, "wall_seconds": wall})  # fmt: skip
                log(
                    f"  [{task.name} seed {seed}] B={budget:<5d}{label:42s} labels {cost['labels']:5d} prompts "
                    f"{cost['prompts_covered']:4d} steps {cost['optimizer_steps']:3d} -> gold "
                    f"{np.mean(ev['gold']):.3f} ({wall:.0f}s)"
                )
    return records


# ---------------------------------------------------------------------------------------------------- statistics
def _matrix(records, task, label, budget, metric="gold"):
    rows = sorted((r for r in records if r["task"] == task and r["label"] == label and r["budget"] == budget),
                  key=lambda r: r["seed"])  # fmt: skip
    return np.array([r[metric] for r in rows]) if rows else None


def reference_for(label: str) -> str:
    """The random-k run a strategy is compared with: on the same data (offline pools, or on-policy sampling); the
    on-policy random k itself is compared with the offline random k (the effect of the data source)."""
    if label.startswith("on-policy") and label != ON_POLICY_REFERENCE:
        return ON_POLICY_REFERENCE
    return REFERENCE


def summarize(records, replicates: int = 2000) -> dict:
    """Per task x budget x strategy: mean policy gold with its bootstrap CI, paired Δ vs random k (and vs the
    prompt-selection control), costs; per task: labels to parity with random k at the full budget."""
    out = {"rows": [], "parity": []}
    for task in dict.fromkeys(r["task"] for r in records):
        recs = [r for r in records if r["task"] == task]
        budgets = sorted({r["budget"] for r in recs if r["label"] != "SFT"})
        sft = _matrix(recs, task, "SFT", 0)
        for budget in budgets:
            controls = {
                window: _matrix(recs, task, "random k, prompts: random" + window, budget) for window in ("", ", window")
            }
            for label in dict.fromkeys(r["label"] for r in recs if r["budget"] == budget):
                ref = _matrix(recs, task, reference_for(label), budget)
                m = _matrix(recs, task, label, budget)
                lc = _matrix(recs, task, label, budget, "length_controlled")
                these = [r for r in recs if r["label"] == label and r["budget"] == budget]
                row = {"task": task, "budget": budget, "label": label, "seeds": len(these)}
                row["gold"] = bootstrap_ci(m, replicates=replicates)
                row["length_controlled"] = bootstrap_ci(lc, replicates=replicates)
                row["vs_sft"] = bootstrap_ci(m - sft, replicates=replicates)
                if ref is not None and label != reference_for(label) and ref.shape == m.shape:
                    row["vs_random"] = bootstrap_ci(m - ref, replicates=replicates)
                control = controls[", window" if label.endswith(", window") else ""]
                is_rule = label.startswith("random k, prompts:") and not label.startswith("random k, prompts: random")
                if control is not None and is_rule and control.shape == m.shape:
                    row["vs_prompt_control"] = bootstrap_ci(m - control, replicates=replicates)
                for name in ("labels", "prompts_covered", "pairs", "optimizer_steps", "train_seconds", "wall_seconds"):
                    row[name] = float(np.mean([r[name] for r in these]))
                row["generated"] = float(np.mean([r.get("pools_generated", 0) for r in these]))
                for name in ("generated_tokens", "eval_generated_tokens"):
                    row[name] = float(np.mean([r.get(name, 0) for r in these]))
                out["rows"].append(row)
        out["parity"] += parity_table(recs, task, budgets, replicates=min(replicates, 500))
    return out


def parity_table(recs, task, budgets, replicates: int = 500) -> list[dict]:
    """Labels each strategy needs to match random k's policy at the largest budget (point estimate from the seed- and
    prompt-means; interval from the same two-level bootstrap, 'never' counted as infinitely many labels)."""
    full = budgets[-1]
    target_m = _matrix(recs, task, REFERENCE, full)
    if target_m is None:
        return []
    labels = list(dict.fromkeys(r["label"] for r in recs if r["label"] != "SFT"))
    curves = {}
    for label in labels:
        pts = [(b, _matrix(recs, task, label, b)) for b in budgets]
        pts = [(b, m) for b, m in pts if m is not None and m.shape == target_m.shape]
        if len(pts) >= 2 or (pts and pts[0][0] == full):
            curves[label] = pts
    rng = np.random.default_rng(0)
    n_seeds, n_prompts = target_m.shape
    draws = [(rng.integers(0, n_seeds, n_seeds), rng.integers(0, n_prompts, n_prompts)) for _ in range(replicates)]
    out = []
    for label, pts in curves.items():
        bs = [b for b, _ in pts]
        point = labels_to_parity(bs, [m.mean() for _, m in pts], float(target_m.mean()))
        boot = []
        for s, p in draws:
            target = target_m[np.ix_(s, p)].mean()
            v = labels_to_parity(bs, [m[np.ix_(s, p)].mean() for _, m in pts], float(target))
            boot.append(np.inf if v is None else v)
        low, high = np.quantile(boot, [0.025, 0.975], method="inverted_cdf")  # no interpolation with inf
        out.append({"task": task, "label": label, "budgets": bs, "full_budget": full, "parity_labels": point,
                    "parity_ci": [float(low), float(high)]})  # fmt: skip
    return out


def fmt(ci, digits: int = 3, signed: bool = False) -> str:
    return fmt_interval(ci[0], ci[1:], digits, "+" if signed else "")


def results_markdown(summary: dict, meta: dict) -> str:
    s = meta["scale"]
    lines = [
        "# Policy-level efficacy through AEPOTrainer (issue 28)",
        "",
        f"Generated by `{meta['command']}` in {meta['wall_seconds'] / 60:.1f} min"
        + (f" wall, {meta['cpu_seconds'] / 60:.1f} min CPU time." if "cpu_seconds" in meta else "."),
        "",
        f"- Machine: {meta['machine']}.",
        f"- Tasks: {', '.join(meta['tasks'])}. Tiny Qwen2 ({s['hidden_size']} hidden × {s['num_layers']} layers, "
        f"character vocabulary); SFT {s['sft_steps']} steps × {s['sft_batch']} demonstrations, "
        f"{s['sft_quality']:.0%} of them correct.",
        f"- {s['train_prompts']} training prompts per seed, N = {s['pool_size']}, k = {s['k']}; budgets "
        f"{', '.join(str(b) for b in meta['budgets'])} labels (= {', '.join(str(x) for x in s['budget_shares'])} × k "
        f"× prompts). `AEPOTrainer`, one epoch, {s['prompts_per_step']} prompts per step, DPO β = {s['beta']}, lr "
        f"{s['dpo_lr']} (linear), the gold reward as a reward-function annotator, `annotation_budget` stops the run.",
        f"- Evaluation: {s['eval_samples']} samples (temperature 1) on each of {s['eval_prompts']} held-out prompts, "
        f"the same prompts for every seed and policy. {s['seeds']} seeds (each re-draws model init, SFT data, "
        "training prompts, pools and selection randomness).",
        "- Intervals: 95% percentile bootstrap over seeds and prompts (2,000 replicates); Δ columns are paired "
        "differences (same seed, same held-out prompts). 'Δ vs random k (same data)': offline strategies against "
        "offline random k, on-policy strategies against on-policy random k, and on-policy random k against offline "
        "random k (the effect of sampling the pools from the current policy). 'vs control' compares an offline "
        "prompt-selection rule with the random prompt choice at the same coverage (', window': with the same "
        "window). ', window' = `prompt_selection_window` = 1 / budget share (4 at 0.25, 2 at 0.5): each step chooses "
        "among that many upcoming batches and trains one full batch of the chosen prompts; without it the rule "
        "annotates that share of every step's batch.",
        "- Compute per strategy (means over seeds): optimizer steps; 'step gen. tokens' = completion tokens sampled "
        "in the training step (on-policy data; the trainer's own `aepo/generated_tokens`, EOS included), 0 on "
        "offline pools, whose samples are drawn once per seed and shared by every offline strategy (see each task's "
        "'offline pools' line); 'eval gen. tokens' = tokens sampled to evaluate the policy (the same prompts and "
        "samples count for every strategy); 'train s' = `trainer.train()`, 'wall s' = training + evaluation, "
        "measured on a shared machine (see the load above).",
        "",
    ]
    for task in meta["tasks"]:
        rows = [r for r in summary["rows"] if r["task"] == task]
        header = ["budget", "strategy", "labels", "prompts", "pairs", "opt. steps", "held-out gold",
                  "Δ vs random k (same data)", "Δ vs control", "length-controlled", "step gen. tokens",
                  "eval gen. tokens", "train s", "wall s"]  # fmt: skip
        table = []
        for r in rows:
            table.append(
                [
                    str(r["budget"]),
                    r["label"],
                    f"{r['labels']:.0f}",
                    f"{r['prompts_covered']:.0f}",
                    f"{r['pairs']:.0f}",
                    f"{r['optimizer_steps']:.0f}",
                    fmt(r["gold"]),
                    fmt(r["vs_random"], signed=True) if "vs_random" in r else "–",
                    fmt(r["vs_prompt_control"], signed=True) if "vs_prompt_control" in r else "–",
                    fmt(r["length_controlled"]),
                    f"{r.get('generated_tokens', 0):.0f}",
                    f"{r.get('eval_generated_tokens', 0):.0f}",
                    f"{r['train_seconds']:.0f}",
                    f"{r['wall_seconds']:.0f}",
                ]
            )
        sft = next((r for r in summary["rows"] if r["task"] == task), None)
        lines += [f"## {task}", ""]
        if sft is not None:
            lines += [f"SFT policy (no DPO): held-out gold {meta['sft_gold'][task]:.3f}.", ""]
        shared = meta.get("shared_compute", {}).get(task)
        if shared:
            lines += [
                f"Offline pools (shared by every offline strategy of a seed): {shared['pool_generated_tokens']:.0f} "
                f"generated tokens per seed; SFT + pools + SFT evaluation {shared['sft_seconds']:.0f} s per seed.",
                "",
            ]
        lines += [markdown_table(header, table, ["--:", "---"] + ["--:"] * (len(header) - 2))]
        par = [p for p in summary["parity"] if p["task"] == task]
        if par:
            lines += [
                f"Labels to parity with random k at B = {par[0]['full_budget']} (measured budgets "
                f"{', '.join(str(b) for b in par[0]['budgets'])}; 'never' = not reached at any measured budget):",
                "",
            ]
            prow = []
            for p in par:
                point = "never" if p["parity_labels"] is None else f"{p['parity_labels']:.0f}"
                lo, hi = p["parity_ci"]
                ci = "[" + ", ".join("never" if np.isinf(v) else f"{v:.0f}" for v in (lo, hi)) + "]"
                share = "–" if p["parity_labels"] is None else f"{p['parity_labels'] / p['full_budget']:.2f}"
                prow.append([p["label"], point, ci, share])
            lines += [markdown_table(["strategy", "labels to parity", "95% CI", "share of B"], prow,
                                     ["---", "--:", "--:", "--:"])]  # fmt: skip
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- CLI
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="experiments/results")
    p.add_argument(
        "--task",
        action="append",
        default=None,
        help="a task plugin 'package.module:Name' (repeatable; default: the built-ins tasks:DigitSort and "
        "tasks:Addition; see experiments/README.md)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: tiny everything, 1 seed, 4 strategies")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--first-seed", type=int, default=0, help="run seeds first-seed .. first-seed + seeds - 1")
    p.add_argument("--train-prompts", type=int, default=None)
    p.add_argument("--eval-prompts", type=int, default=None)
    p.add_argument("--eval-samples", type=int, default=None)
    p.add_argument("--budget-shares", type=float, nargs="+", default=None, help="budgets as shares of k x prompts")
    p.add_argument("--strategies", nargs="+", default=None, help="subset of strategy labels")
    p.add_argument("--tag", default="", help="suffix of the output file names")
    p.add_argument(
        "--render",
        nargs="+",
        default=None,
        metavar="JSON",
        help="only re-write the Markdown from a results JSON (several: merged into --out/policy[_TAG].{md,json})",
    )
    return p.parse_args(argv)


def _sft_gold(records, task: str) -> float:
    return float(np.mean([np.mean(r["gold"]) for r in records if r["task"] == task and r["label"] == "SFT"]))


def _shared_compute(records, task: str) -> dict:
    sft = [r for r in records if r["task"] == task and r["label"] == "SFT" and "pool_generated_tokens" in r]
    if not sft:
        return {}
    return {name: float(np.mean([r[name] for r in sft])) for name in ("pool_generated_tokens", "sft_seconds")}


def _suffix(args) -> str:
    return f"_{args.tag}" if args.tag else ("_quick" if args.quick else "")


def main(argv=None):
    args = parse_args(argv)
    if args.render:  # one results JSON, or several (e.g. one per task, run in parallel) merged into --out
        parts = [json.loads(Path(path).read_text(encoding="utf-8")) for path in args.render]
        records = [r for part in parts for r in part["records"]]
        # several runs of one task and seed (e.g. more strategies later) repeat its deterministic SFT record: keep one
        unique = {}
        for r in records:
            unique.setdefault((r["task"], r["seed"], r["label"], r["budget"]), r)
        records = list(unique.values())
        meta = dict(parts[0]["meta"])
        if len(parts) > 1:
            meta["command"] = " && ".join(part["meta"].get("command", "(partial)") for part in parts)
            meta["wall_seconds"] = max(part["meta"]["wall_seconds"] for part in parts)
            meta["machine"] = meta.get("machine", "") + f" ({len(parts)} processes, partly in parallel)"
        tasks_seen = list(dict.fromkeys(r["task"] for r in records))  # a partial file's meta is minimal
        meta["tasks"] = tasks_seen
        meta["sft_gold"] = {t: _sft_gold(records, t) for t in tasks_seen}
        meta["shared_compute"] = {t: _shared_compute(records, t) for t in tasks_seen}
        if all("cpu_seconds" in part["meta"] for part in parts):
            meta["cpu_seconds"] = sum(part["meta"]["cpu_seconds"] for part in parts)
        meta["budgets"] = sorted({r["budget"] for r in records if r["label"] != "SFT"})
        meta["scale"] = {**meta["scale"], "seeds": len({(r["task"], r["seed"]) for r in records}) // len(tasks_seen)}
        meta.setdefault("command", "python experiments/policy_training.py (partial)")
        meta.setdefault("machine", "see the per-process files")
        summary = summarize(records)
        base = Path(args.render[0]).with_suffix("") if len(parts) == 1 else Path(args.out) / f"policy{_suffix(args)}"
        base.with_suffix(".md").write_text(results_markdown(summary, meta), encoding="utf-8")
        if len(parts) > 1:
            base.with_suffix(".json").write_text(
                json.dumps({"meta": meta, "summary": summary, "records": records}), encoding="utf-8"
            )
        return summary
    import torch

    torch.set_num_threads(1)
    tasks = [load_task(spec) for spec in (args.task or BUILTIN_TASKS)]  # a broken plugin fails here, in a second
    scale = replace(SCALES["quick" if args.quick else "small"])
    for name in ("seeds", "train_prompts", "eval_prompts", "eval_samples"):
        if getattr(args, name) is not None:
            setattr(scale, name, getattr(args, name))
    if args.budget_shares:
        scale.budget_shares = tuple(sorted(args.budget_shares))
    wanted = args.strategies or (QUICK_STRATEGIES if args.quick else None)
    strategies = [s for s in STRATEGIES if wanted is None or s[0] in wanted]
    unknown = set(wanted or ()) - {s[0] for s in STRATEGIES}
    if unknown:
        raise SystemExit(f"unknown strategies {sorted(unknown)}; choose from {[s[0] for s in STRATEGIES]}")
    started, cpu_started = time.time(), time.process_time()
    load_start = " ".join(f"{x:.1f}" for x in os.getloadavg())
    records = []
    for task in tasks:
        for seed in range(args.first_seed, args.first_seed + scale.seeds):
            print(f"[{task.name} seed {seed}] ({time.time() - started:.0f}s elapsed)", flush=True)
            records += run_task_seed(task, scale, seed, strategies, log=lambda m: print(m, flush=True))
            partial = {
                "command": "python experiments/policy_training.py " + " ".join(argv or sys.argv[1:]) + " (partial)",
                "tasks": [t.name for t in tasks],
                "sft_gold": {},
                "wall_seconds": time.time() - started,
                "cpu_seconds": time.process_time() - cpu_started,
                "machine": machine_line(machine_info()) + f"; load at start: {load_start}",
            }
            Path(args.out).mkdir(parents=True, exist_ok=True)  # what is done so far survives an interrupted run
            (Path(args.out) / f"policy{_suffix(args)}.partial.json").write_text(
                json.dumps({"meta": {**partial, "scale": asdict(scale)}, "records": records}), encoding="utf-8"
            )
    summary = summarize(records, replicates=200 if args.quick else 2000)
    meta = {
        "command": "python experiments/policy_training.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "scale": asdict(scale),
        "tasks": [t.name for t in tasks],
        "budgets": sorted({r["budget"] for r in records if r["label"] != "SFT"}),
        "sft_gold": {t.name: _sft_gold(records, t.name) for t in tasks},
        "shared_compute": {t.name: _shared_compute(records, t.name) for t in tasks},
        "machine": machine_line(machine_info())
        + f"; load average (1, 5, 15 min) at start {load_start}, at end "
        + " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "wall_seconds": time.time() - started,
        "cpu_seconds": time.process_time() - cpu_started,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = _suffix(args)
    md, js = out / f"policy{suffix}.md", out / f"policy{suffix}.json"
    md.write_text(results_markdown(summary, meta), encoding="utf-8")
    js.write_text(json.dumps({"meta": meta, "summary": summary, "records": records}), encoding="utf-8")
    print(f"[done] {(time.time() - started) / 60:.1f} min -> {md}, {js}")
    return summary


if __name__ == "__main__":
    main()
