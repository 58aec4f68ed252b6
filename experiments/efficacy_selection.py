#!/usr/bin/env python
"""Selection-level efficacy experiment (issue 9, part 1): at an equal annotation budget, what preference pairs do
AEPO, random k, West-of-N, representativeness-only and k-medoids selection yield on real candidate pools?

Data: AlpacaEval pools (805 prompts x 32 real model completions; the GPT-4-Turbo judge score of each completion is the
gold reward). For each seed and pool size N in {4, 8, 16, 32}:

1. every prompt's pool is a seeded random subset of N of its 32 completions;
2. the prompts are put in a seeded random order (the same order for every strategy: common random numbers);
3. a strategy that annotates c completions per prompt (c = k for the subset strategies, c = N for West-of-N) covers the
   first floor(B / c) prompts of that order with the total budget B;
4. the c selected completions of each covered prompt are "annotated" (their gold scores are read) and paired best vs
   worst; a prompt whose selected scores are all equal gives no pair (tie).

Reported per strategy x N, as mean and 95% t-interval over seeds: prompts covered, pairs, mean gold reward of chosen
and rejected, gap (chosen - rejected), total gap (sum over pairs), how often the chosen response is the best of the
whole pool, and the diversity / representativeness of the selected sets (as returned by `select_subsets`).

    python experiments/efficacy_selection.py --out experiments/results            # full run (embeds once, cached)
    python experiments/efficacy_selection.py --out /tmp/quick --quick              # smoke run, ~20 s
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from efficacy_common import (
    STRATEGIES,
    CharNgramEncoder,
    MiniLMEncoder,
    add_pool_arguments,
    file_sha256,
    fmt_ci,
    load_jsonl,
    machine_info,
    machine_line,
    markdown_table,
    mean_ci,
)

METRICS = [
    "prompts",
    "annotations",
    "pairs",
    "chosen",
    "rejected",
    "gap",
    "total_gap",
    "chosen_is_pool_best",
    "diversity",
    "representativeness",
    "annotated_len",
    "chosen_len",
]


# ---------------------------------------------------------------------------------------------------- data
def load_pools(path: str | os.PathLike, max_prompts: int | None = None):
    """(prompts, completions [P][M], scores float64 [P, M]) from a pool JSONL(.gz) file with equal pool sizes."""
    rows = load_jsonl(path)
    if max_prompts:
        rows = rows[:max_prompts]
    sizes = {len(r["completions"]) for r in rows}
    if len(sizes) != 1:
        raise ValueError(f"{path}: pools of unequal sizes {sorted(sizes)}; this experiment expects equal sizes")
    scores = np.array([[np.nan if s is None else s for s in r["scores"]] for r in rows], dtype=np.float64)
    if np.isnan(scores).any():
        raise ValueError(f"{path}: missing scores; the gold reward must be known for every completion")
    return [r["prompt"] for r in rows], [list(r["completions"]) for r in rows], scores


def embed_all(completions: list[list[str]], data_path, cache_dir, encoder):
    """Embeddings [P, M, D] of every completion, cached under `cache_dir` by data-file hash + embedder tag.

    Returns (embeddings, info) where info says whether the cache was hit and how long the embedding took when it was
    computed (kept in a JSON file next to the cache)."""
    P, M = len(completions), len(completions[0])
    digest = file_sha256(data_path)[:16]
    cache = Path(cache_dir) / f"emb-{digest}-{encoder.tag}-p{P}x{M}.npy"
    sidecar = cache.with_suffix(".json")
    if cache.exists():
        emb = np.load(cache)
        if emb.shape[:2] == (P, M):
            print(f"[embed] cache hit: {cache}", flush=True)
            info = json.loads(sidecar.read_text()) if sidecar.exists() else {}
            return emb, {**info, "cache_hit": True}
    t0 = time.time()
    flat = [c for pool in completions for c in pool]
    print(f"[embed] encoding {len(flat)} completions with {encoder.tag} ...", flush=True)
    emb = encoder.encode(flat).reshape(P, M, -1).astype(np.float32)
    seconds = time.time() - t0
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npy")
    np.save(tmp, emb)
    os.replace(tmp, cache)
    import torch

    info = {
        "seconds": seconds,
        "texts": len(flat),
        "threads": torch.get_num_threads(),
        "machine": machine_line(machine_info()),
    }
    sidecar.write_text(json.dumps(info, indent=1))
    print(f"[embed] done in {seconds:.0f}s -> {cache}", flush=True)
    return emb, {**info, "cache_hit": False}


def pool_subsets(num_prompts: int, full_size: int, n: int, seed: int) -> np.ndarray:
    """[P, n] seeded random subset (without replacement) of each prompt's `full_size` candidates."""
    rng = np.random.default_rng([seed, n, 1])
    return np.argsort(rng.random((num_prompts, full_size)), axis=1)[:, :n]


def prompt_order(num_prompts: int, seed: int) -> np.ndarray:
    """The seeded order in which prompts are annotated (shared by every strategy and N of a seed)."""
    return np.random.default_rng([seed, 2]).permutation(num_prompts)


# ---------------------------------------------------------------------------------------------------- one cell
def best_vs_worst(selected_scores: np.ndarray, valid: np.ndarray):
    """Best-vs-worst pairing inside each annotated subset. Returns (has_pair [R], chosen [R], rejected [R])."""
    hi = np.where(valid, selected_scores, -np.inf).max(1)
    lo = np.where(valid, selected_scores, np.inf).min(1)
    return hi > lo, hi, lo


def evaluate_strategy(emb_n, scores_n, order, strategy, lam, k, budget, seed, row_keys, lengths_n=None):
    """Metrics of one strategy on pools `emb_n` [P, N, D] / `scores_n` [P, N] at total budget `budget`.

    `lengths_n` [P, N] (optional): completion lengths in characters, for the length diagnostics."""
    import torch

    from aepo_trainer.selection import select_subsets

    P, N = scores_n.shape
    cost = N if strategy == "west_of_n" else k
    covered = order[: min(P, budget // cost)]
    if len(covered) == 0:
        return {m: (0.0 if m in ("prompts", "annotations", "pairs", "total_gap") else float("nan")) for m in METRICS}
    E = torch.from_numpy(np.ascontiguousarray(emb_n[covered]))
    res = select_subsets(
        E,
        k,
        diversity_weight=lam,
        strategy=strategy,
        seed=seed,
        row_keys=torch.as_tensor(row_keys[covered], dtype=torch.int64),
    )
    idx = res.indices.numpy()
    valid = res.valid.numpy()
    sel_scores = np.take_along_axis(scores_n[covered], np.where(valid, idx, 0), axis=1)
    has_pair, chosen, rejected = best_vs_worst(sel_scores, valid)
    pool_best = scores_n[covered].max(1)
    nan = float("nan")
    if lengths_n is not None:
        sel_len = np.take_along_axis(lengths_n[covered], np.where(valid, idx, 0), axis=1).astype(np.float64)
        annotated_len = float(sel_len[valid].mean())
        best_pos = np.where(valid, sel_scores, -np.inf).argmax(1)
        chosen_len = float(sel_len[np.arange(len(covered)), best_pos][has_pair].mean()) if has_pair.any() else nan
    else:
        annotated_len = chosen_len = nan
    gap = chosen - rejected
    pairs = int(has_pair.sum())
    return {
        "prompts": float(len(covered)),
        "annotations": float(valid.sum()),
        "pairs": float(pairs),
        "chosen": float(chosen[has_pair].mean()) if pairs else nan,
        "rejected": float(rejected[has_pair].mean()) if pairs else nan,
        "gap": float(gap[has_pair].mean()) if pairs else nan,
        "total_gap": float(gap[has_pair].sum()),
        "chosen_is_pool_best": float((chosen[has_pair] >= pool_best[has_pair]).mean()) if pairs else nan,
        "diversity": float(res.diversity.mean()),
        "representativeness": float(res.representativeness.mean()),
        "annotated_len": annotated_len,
        "chosen_len": chosen_len,
    }


def run_experiment(
    embeddings, scores, row_keys, pool_sizes, seeds, budget, k=2, strategies=STRATEGIES, log=print, lengths=None
):
    """All strategies x pool sizes x seeds. Returns a list of records {strategy, label, lam, N, seed, metrics...}."""
    P, M = scores.shape
    records = []
    for seed in seeds:
        order = prompt_order(P, seed)
        for n in pool_sizes:
            if n > M:
                raise ValueError(f"pool size N={n} > {M} completions per prompt")
            sub = pool_subsets(P, M, n, seed)
            emb_n = np.take_along_axis(embeddings, sub[:, :, None], axis=1)
            scores_n = np.take_along_axis(scores, sub, axis=1)
            lengths_n = None if lengths is None else np.take_along_axis(lengths, sub, axis=1)
            for label, strategy, lam in strategies:
                t0 = time.time()
                metrics = evaluate_strategy(emb_n, scores_n, order, strategy, lam, k, budget, seed, row_keys, lengths_n)
                records.append(
                    {
                        "label": label,
                        "strategy": strategy,
                        "lam": lam,
                        "N": n,
                        "seed": seed,
                        "seconds": time.time() - t0,
                        **metrics,
                    }
                )
        log(f"[select] seed {seed} done")
    return records


# ---------------------------------------------------------------------------------------------------- diagnostics
def _ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (ties share their mean rank), like scipy.stats.rankdata."""
    out = np.empty(a.shape, dtype=np.float64)
    for idx in np.ndindex(a.shape[:-1]):
        row = a[idx]
        order = np.argsort(row, kind="mergesort")
        inv = np.empty_like(order)
        inv[order] = np.arange(len(row))
        sorted_row = row[order]
        first = np.r_[True, sorted_row[1:] != sorted_row[:-1]]
        dense = np.cumsum(first)[inv]
        bounds = np.r_[np.nonzero(first)[0], len(row)]
        out[idx] = 0.5 * (bounds[dense] + bounds[dense - 1] + 1)
    return out


def within_prompt_spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Mean over prompts of the Spearman correlation between x[p, :] and y[p, :] (constant rows skipped)."""
    rx, ry = _ranks(x), _ranks(y)
    rx -= rx.mean(1, keepdims=True)
    ry -= ry.mean(1, keepdims=True)
    den = np.sqrt((rx**2).sum(1) * (ry**2).sum(1))
    ok = den > 0
    return float(((rx * ry).sum(1)[ok] / den[ok]).mean())


def pool_diagnostics(embeddings: np.ndarray, scores: np.ndarray, lengths: np.ndarray) -> dict:
    """How representativeness (mean cosine similarity to the rest of the full pool), length and gold score relate."""
    E = embeddings / np.linalg.norm(embeddings, axis=-1, keepdims=True)
    sims = np.einsum("pnd,pmd->pnm", E, E)
    rep = (sims.sum(2) - np.einsum("pnn->pn", sims)) / (E.shape[1] - 1)
    return {
        "spearman_rep_score": within_prompt_spearman(rep, scores),
        "spearman_len_score": within_prompt_spearman(lengths.astype(np.float64), scores),
        "spearman_rep_len": within_prompt_spearman(rep, lengths.astype(np.float64)),
    }


# ---------------------------------------------------------------------------------------------------- reporting
def summarize(records):
    """Per (label, N): mean and 95% CI half-width of every metric over seeds."""
    out = []
    keys = []
    for r in records:
        if (r["label"], r["N"]) not in keys:
            keys.append((r["label"], r["N"]))
    for label, n in keys:
        rows = [r for r in records if r["label"] == label and r["N"] == n]
        entry = {"label": label, "strategy": rows[0]["strategy"], "lam": rows[0]["lam"], "N": n, "seeds": len(rows)}
        for m in METRICS:
            entry[m], entry[m + "_ci"] = mean_ci([r[m] for r in rows])
        out.append(entry)
    return out


def paired_differences(records, reference="random k", metrics=("chosen", "gap", "total_gap")):
    """Per (label, N): mean and 95% CI of the per-seed difference label - reference (same seed, same pools)."""
    out = []
    by = {(r["label"], r["N"], r["seed"]): r for r in records}
    labels = list(dict.fromkeys(r["label"] for r in records))
    sizes = sorted({r["N"] for r in records})
    seeds = sorted({r["seed"] for r in records})
    for n in sizes:
        for label in labels:
            if label == reference:
                continue
            entry = {"label": label, "N": n}
            for m in metrics:
                diffs = [
                    by[(label, n, s)][m] - by[(reference, n, s)][m]
                    for s in seeds
                    if (label, n, s) in by and (reference, n, s) in by
                ]
                entry[m], entry[m + "_ci"] = mean_ci(diffs)
            out.append(entry)
    return out


def _embed_note(info: dict) -> str:
    if not info.get("cache_hit"):
        return f"{info.get('seconds', float('nan')):.0f} s for {info.get('texts', 0)} texts, included above"
    if "seconds" in info:
        return (
            f"read from the cache; computing it took {info['seconds']:.0f} s for {info['texts']} texts with "
            f"{info['threads']} thread(s) on: {info['machine']}"
        )
    return "read from the cache"


def results_markdown(summary, diffs, meta) -> str:
    header = [
        "N",
        "strategy",
        "prompts covered",
        "pairs (after ties)",
        "gold chosen",
        "gold rejected",
        "gap",
        "total gap (Σ over pairs)",
        "chosen = pool best",
        "diversity",
        "representativeness",
    ]
    rows = []
    for e in summary:
        rows.append(
            [
                str(e["N"]),
                e["label"],
                f"{e['prompts']:.0f}",
                fmt_ci(e["pairs"], e["pairs_ci"], 1),
                fmt_ci(e["chosen"], e["chosen_ci"]),
                fmt_ci(e["rejected"], e["rejected_ci"]),
                fmt_ci(e["gap"], e["gap_ci"]),
                fmt_ci(e["total_gap"], e["total_gap_ci"], 1),
                fmt_ci(e["chosen_is_pool_best"], e["chosen_is_pool_best_ci"], 2),
                fmt_ci(e["diversity"], e["diversity_ci"]),
                fmt_ci(e["representativeness"], e["representativeness_ci"]),
            ]
        )
    lheader = ["N", "strategy", "mean length of annotated (chars)", "mean length of chosen (chars)"]
    lrows = [
        [
            str(e["N"]),
            e["label"],
            fmt_ci(e["annotated_len"], e["annotated_len_ci"], 0),
            fmt_ci(e["chosen_len"], e["chosen_len_ci"], 0),
        ]
        for e in summary
        if not math.isnan(e.get("annotated_len", float("nan")))
    ]
    dheader = ["N", "strategy", "Δ gold chosen", "Δ gap", "Δ total gap"]
    drows = [
        [
            str(e["N"]),
            e["label"],
            fmt_ci(e["chosen"], e["chosen_ci"]),
            fmt_ci(e["gap"], e["gap_ci"]),
            fmt_ci(e["total_gap"], e["total_gap_ci"], 1),
        ]
        for e in diffs
    ]
    lines = [
        "# Selection-level efficacy at an equal annotation budget (AlpacaEval pools)",
        "",
        f"Generated by `{meta['command']}` in {meta['wall_seconds']:.0f} s (selection and statistics "
        f"{meta['select_seconds']:.0f} s; embedding: {_embed_note(meta['embed'])}).",
        "",
        f"- Data: `{meta['data']}` (sha256 `{meta['data_sha256'][:16]}…`), {meta['prompts']} prompts × "
        f"{meta['full_pool']} completions, gold reward = GPT-4-Turbo judge score in [0, 1] (AlpacaEval, CC BY-NC 4.0).",
        f"- Embedder: {meta['embedder']}. Budget B = {meta['budget']} annotations per run; k = {meta['k']} for the "
        f"subset strategies (B/k = {meta['budget'] // meta['k']} prompts), West-of-N annotates whole pools (B/N prompts).",
        f"- Seeds: {meta['seeds']} ({len(meta['seeds'])} seeds; each seed draws the N-subset of every pool, the prompt "
        "order, and the random strategy's picks). Values: mean ± 95% t-interval half-width over seeds.",
        f"- Machine: {meta['machine']}.",
        "",
        "Pairing is best vs worst of the annotated subset; a subset whose scores are all equal gives no pair. "
        "`total gap` is the sum of (chosen − rejected) over the pairs: the preference signal bought by the budget. "
        "`chosen = pool best` is the share of pairs whose chosen response is the best of the whole N-pool. "
        "`diversity` = 1 − mean pairwise cosine similarity inside the annotated set; `representativeness` = mean "
        "similarity of the annotated responses to the rest of the pool (for West-of-N both describe the whole pool).",
        "",
        markdown_table(header, rows, ["--:", "---"] + ["--:"] * (len(header) - 2)),
        "## Paired differences against random k (same seed, same pools, same prompts)",
        "",
        markdown_table(dheader, drows, ["--:", "---", "--:", "--:", "--:"]),
    ]
    if "diagnostics" in meta:
        d = meta["diagnostics"]
        lines += [
            "## Does representativeness track the gold reward in these pools?",
            "",
            f"Mean within-prompt Spearman correlation over the full {meta['full_pool']}-completion pools: "
            f"representativeness vs gold score {d['spearman_rep_score']:+.3f}, length vs gold score "
            f"{d['spearman_len_score']:+.3f}, representativeness vs length {d['spearman_rep_len']:+.3f}.",
            "",
        ]
    if lrows:
        lines += [
            "## Length of the annotated responses (the judge is known to favour longer answers)",
            "",
            f"Mean length of the {meta['prompts']} × {meta['full_pool']} completions: {meta.get('mean_len', float('nan')):.0f} "
            "characters.",
            "",
            markdown_table(lheader, lrows, ["--:", "---", "--:", "--:"]),
        ]
    return "\n".join(lines)


def plot(summary, path, title_suffix=""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(e["label"] for e in summary))
    sizes = sorted({e["N"] for e in summary})
    panels = [
        ("pairs", "preference pairs (after ties)", True),
        ("total_gap", "total gap Σ(chosen − rejected)", True),
        ("chosen", "mean gold reward of chosen", False),
        ("rejected", "mean gold reward of rejected", False),
        ("gap", "mean gap (chosen − rejected)", False),
        ("diversity", "diversity of annotated set", False),
    ]
    styles = {
        "AEPO λ=0.5": ("#1f77b4", "o", "-"),
        "AEPO λ=1": ("#0b3d91", "o", "-"),
        "AEPO λ=2": ("#6baed6", "o", "-"),
        "random k": ("#7f7f7f", "s", "--"),
        "West-of-N": ("#d62728", "^", "-"),
        "representativeness (λ=0)": ("#2ca02c", "D", ":"),
        "k-medoids": ("#9467bd", "v", ":"),
    }
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.2))
    for ax, (metric, name, logy) in zip(axes.flat, panels):
        for i, label in enumerate(labels):
            es = [next(e for e in summary if e["label"] == label and e["N"] == n) for n in sizes]
            color, marker, ls = styles.get(label, (None, "o", "-"))
            x = np.array(sizes, dtype=float) * (1 + 0.025 * (i - len(labels) / 2))  # small dodge
            y = np.array([e[metric] for e in es])
            yerr = np.array([0.0 if math.isnan(e[metric + "_ci"]) else e[metric + "_ci"] for e in es])
            ax.errorbar(
                x,
                y,
                yerr=yerr,
                label=label,
                color=color,
                marker=marker,
                linestyle=ls,
                markersize=4,
                capsize=2,
                linewidth=1.3,
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(n) for n in sizes])
        if logy:
            from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("pool size N")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    handles, labs = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labs, loc="lower center", ncol=len(labs), fontsize=8.5, frameon=False)
    fig.suptitle("Equal annotation budget: what each selection strategy buys" + title_suffix, fontsize=12)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------- CLI
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    add_pool_arguments(p)
    p.add_argument("--pool-sizes", type=int, nargs="+", default=[4, 8, 16, 32])
    p.add_argument("--seeds", type=int, default=10, help="number of seeds (0..seeds-1)")
    p.add_argument(
        "--budget",
        type=int,
        default=None,
        help="total annotations per run (default: the number of prompts rounded down to a multiple of "
        "the largest N, i.e. 800 for the 805 AlpacaEval prompts: k=2 covers half of the prompts)",
    )
    p.add_argument("--k", type=int, default=2, help="annotations per prompt for the subset strategies")
    p.add_argument("--max-prompts", type=int, default=None, help="use only the first prompts of the file")
    p.add_argument(
        "--embedder",
        choices=["minilm", "ngram"],
        default="minilm",
        help="minilm: all-MiniLM-L6-v2 via aepo_trainer.embedding.Embedder (the product default); "
        "ngram: hashed character n-grams (no model, for smoke runs)",
    )
    p.add_argument("--fp32", action="store_true", help="embed in fp32 on CPU (default: bf16 autocast, ~2.5x faster)")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: first 64 prompts, N in {4, 8}, 3 seeds, char n-gram embedder"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared or oversubscribed machine, 2+ OpenMP threads can "
        "be several times slower than 1; on a dedicated machine try 2)",
    )
    p.add_argument(
        "--docs-assets", default=None, help="also copy the PNG there (docs/assets/efficacy for the documentation site)"
    )
    p.add_argument("--tag", default="", help="suffix of the output file names")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.quick:
        args.max_prompts = args.max_prompts or 64
        args.pool_sizes = [n for n in args.pool_sizes if n <= 8] or [4, 8]
        args.seeds = min(args.seeds, 3)
        args.embedder = "ngram"
        args.tag = args.tag or "quick"
    import torch

    torch.set_num_threads(max(1, args.threads))
    t_start = time.time()
    info = machine_info()
    prompts, completions, scores = load_pools(args.data, args.max_prompts)
    P, M = scores.shape
    budget = args.budget if args.budget is not None else (P // max(args.pool_sizes)) * max(args.pool_sizes)
    encoder = CharNgramEncoder() if args.embedder == "ngram" else MiniLMEncoder(bf16=not args.fp32)
    embeddings, embed_info = embed_all(completions, args.data, args.cache_dir, encoder)

    from aepo_trainer.selection import prompt_key

    row_keys = np.array([prompt_key(p) for p in prompts], dtype=np.int64)
    seeds = list(range(args.seeds))
    t0 = time.time()
    lengths = np.array([[len(c) for c in pool] for pool in completions], dtype=np.int64)
    records = run_experiment(embeddings, scores, row_keys, args.pool_sizes, seeds, budget, k=args.k, lengths=lengths)
    select_seconds = time.time() - t0
    summary = summarize(records)
    diffs = paired_differences(records)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"_{args.tag}" if args.tag else ""
    cmd = "python experiments/efficacy_selection.py " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = {
        "command": cmd.strip(),
        "data": Path(args.data).name,
        "data_sha256": file_sha256(args.data),
        "prompts": P,
        "full_pool": M,
        "pool_sizes": args.pool_sizes,
        "seeds": seeds,
        "budget": budget,
        "k": args.k,
        "embedder": encoder.tag
        + (
            " (aepo_trainer.embedding.Embedder, texts truncated to the model's max length)"
            if args.embedder == "minilm"
            else ""
        ),
        "machine": machine_line(info),
        "machine_info": info,
        "embed": embed_info,
        "select_seconds": select_seconds,
        "wall_seconds": time.time() - t_start,
        "mean_len": float(lengths.mean()),
        "diagnostics": pool_diagnostics(embeddings, scores, lengths),
    }
    md_path = out / f"selection{suffix}.md"
    png_path = out / f"selection{suffix}.png"
    json_path = out / f"selection{suffix}.json"
    md_path.write_text(results_markdown(summary, diffs, meta), encoding="utf-8")
    plot(summary, png_path, title_suffix=f" (B = {budget}, k = {args.k}, {len(seeds)} seeds)")
    json_path.write_text(
        json.dumps({"meta": meta, "summary": summary, "paired_vs_random": diffs, "records": records}, indent=1),
        encoding="utf-8",
    )
    if args.docs_assets:
        import shutil

        Path(args.docs_assets).mkdir(parents=True, exist_ok=True)
        shutil.copy(png_path, Path(args.docs_assets) / png_path.name)
    print(f"[done] {time.time() - t_start:.0f}s -> {md_path}, {png_path}, {json_path}")
    return summary


if __name__ == "__main__":
    main()
