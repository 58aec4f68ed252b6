#!/usr/bin/env python
"""Active-selection efficacy experiment (issue 15): at an equal annotation budget, do the strategies that learn from
the labels already paid for (a Bayesian linear surrogate + an acquisition) buy better preference pairs than random k,
AEPO and West-of-N? Confidence intervals are bootstrap intervals OVER PROMPTS, paired between strategies.

Data: the AlpacaEval pools (805 prompts x 32 real completions; gold reward = the GPT-4-Turbo judge score). Pool sets:

* `all`: every prompt's pool is a seeded random subset of N in {8, 32} of its 32 completions;
* `weak`: the same from the 27 completions of the non-FuseChat models only (N in {8, 16}) — the pools where the
  issue measured AEPO below random.

The prompts are visited in one seeded order, the same for every strategy. A k = 2 strategy covers the first B / 2
prompts at budget B, West-of-N the first B / N. The active strategies run exactly as `aepo select` runs them
(`ActiveSelector.select` on a batch of `--active-batch-size` prompts, the gold scores of the selected candidates are
"paid", `ActiveSelector.observe`, next batch), with the package defaults (cold start 'random' for the first 64
labels, beta = 1, gamma = 1, evidence-maximised prior). Budgets are prefixes of one run: the first 200 prompts of a
run to 800 prompts are exactly what a budget of 400 selects.

Per prompt: chosen gold score (best selected), gap (best - worst selected). Reported per strategy x pool set x N x
budget: mean chosen and gap with 95% percentile bootstrap CIs (`scipy.stats.bootstrap`, 2000 resamples over prompts),
total gap, and the paired difference to random k on the same prompts (chosen, gap) and the ratio of total gaps.

    python experiments/efficacy_active.py --out experiments/results                # MiniLM (cached embeddings)
    python experiments/efficacy_active.py --out /tmp/active --embedder ngram --tag ngram
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from efficacy_common import (
    CharNgramEncoder,
    MiniLMEncoder,
    add_pool_arguments,
    file_sha256,
    load_jsonl,
    machine_info,
    machine_line,
    markdown_table,
)
from efficacy_common import (
    fmt_interval as _ci,
)
from efficacy_selection import embed_all, pool_subsets, prompt_order

# (label, strategy, lambda) of the embedding-only baselines, and the active strategies (package defaults)
BASELINES = [("random k", "random", 0.0), ("AEPO λ=0.5", "aepo", 0.5), ("AEPO λ=1", "aepo", 1.0)]
ACTIVE = [
    ("DeltaUCB", "delta_ucb"),
    ("DTS", "double_ts"),
    ("DRTS", "double_reversed_ts"),
    ("MaxMinLCB", "max_min_lcb"),
    ("InfoMax", "info_max"),
    ("UCB + random", "ucb_random"),
    ("AEPO+UCB λ=0.5", "aepo_ucb"),
]
FUSECHAT = "FuseChat"


def bootstrap_ci(samples, statistic, paired=True, seed=0, n=2000):
    from scipy.stats import bootstrap

    res = bootstrap(
        samples,
        statistic,
        paired=paired,
        vectorized=True,
        n_resamples=n,
        confidence_level=0.95,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def _ratio(a, b, axis=-1):
    return np.sum(a, axis=axis) / np.sum(b, axis=axis)


def run_baseline(emb, scores, order, strategy, lam, k, n_prompts, seed, keys):
    import torch

    from aepo_trainer.selection import select_subsets

    covered = order[:n_prompts]
    res = select_subsets(
        torch.from_numpy(np.ascontiguousarray(emb[covered])),
        k,
        diversity_weight=lam,
        strategy=strategy,
        seed=seed,
        row_keys=torch.as_tensor(keys[covered]),
    )
    return res.indices.numpy(), {}


def run_active(emb, scores, texts, order, strategy, k, n_prompts, seed, keys, batch, lam):
    import torch

    from aepo_trainer.selection import ActiveSelector

    sel = ActiveSelector(strategy, k, seed=seed, diversity_weight=lam)
    out, timing = [], []
    for start in range(0, n_prompts, batch):
        idx = order[start : min(start + batch, n_prompts)]
        rows = [{"prompt": str(p), "completions": texts[p]} for p in idx]
        E = torch.from_numpy(np.ascontiguousarray(emb[idx]))
        t0 = time.perf_counter()
        result = sel.select(rows, E, row_keys=keys[idx].tolist())
        t_select = time.perf_counter() - t0
        subsets = result.indices.tolist()
        labels = [[float(scores[p, i]) for i in s] for p, s in zip(idx, subsets)]
        q = sel.observe(rows, E, None, keys[idx].tolist(), subsets, labels)
        timing.append((t_select, q.fit_seconds, len(idx)))
        out.extend(subsets)
    curve = [q.to_dict() for q in sel.history]
    return np.array(out), {"timing": timing, "curve": curve}


def per_prompt(scores_cov, idx):
    sel = np.take_along_axis(scores_cov, idx, axis=1)
    return sel.max(1), sel.max(1) - sel.min(1)


def summarize(label, chosen, gap, total_budget, covered, ref=None):
    rec = {
        "label": label,
        "prompts": int(covered),
        "chosen": float(chosen.mean()),
        "chosen_ci": bootstrap_ci((chosen,), _mean),
        "gap": float(gap.mean()),
        "gap_ci": bootstrap_ci((gap,), _mean),
        "total_gap": float(gap.sum()),
    }
    if ref is not None and len(ref[0]) == len(chosen):
        rc, rg = ref
        rec["d_chosen"] = float((chosen - rc).mean())
        rec["d_chosen_ci"] = bootstrap_ci((chosen - rc,), _mean)
        rec["d_gap"] = float((gap - rg).mean())
        rec["d_gap_ci"] = bootstrap_ci((gap - rg,), _mean)
        rec["gap_ratio"] = float(gap.sum() / rg.sum())
        rec["gap_ratio_ci"] = bootstrap_ci((gap, rg), _ratio)
    return rec


def pool_set(scores, embeddings, texts, generators, name, n, seed):
    """(emb [P, n, D], scores [P, n], texts [P][n]) of pool set `name` at size n."""
    cols = np.arange(scores.shape[1])
    if name == "weak":
        cols = np.array([i for i, g in enumerate(generators) if FUSECHAT not in g])
    P = scores.shape[0]
    sub = cols[pool_subsets(P, len(cols), n, seed)]
    emb = np.take_along_axis(embeddings, sub[:, :, None], axis=1)
    sc = np.take_along_axis(scores, sub, axis=1)
    tx = [[texts[p][i] for i in sub[p]] for p in range(P)]
    return emb, sc, tx


def rerender(json_path, out_dir, suffix):
    data = json.loads(Path(json_path).read_text(encoding="utf-8"))
    out = Path(out_dir)
    (out / f"active{suffix}.md").write_text(render(data["results"], data["meta"]), encoding="utf-8")
    (out / f"active{suffix}_summary.md").write_text(summary_table(data["results"]), encoding="utf-8")
    plot(data["curves"], data["results"], out / f"active{suffix}.png")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_pool_arguments(p)
    p.add_argument("--embedder", choices=["minilm", "ngram"], default="minilm")
    p.add_argument("--budgets", type=int, nargs="+", default=[400, 800, 1600])
    p.add_argument("--sets", nargs="+", default=["all:8", "all:32", "weak:8", "weak:16"])
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--active-batch-size", type=int, default=32)
    p.add_argument("--max-prompts", type=int, default=None)
    p.add_argument("--tag", default="")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--render", default=None, help="re-write the tables and plot from this JSON file, no run")
    args = p.parse_args(argv)
    if args.render:
        rerender(args.render, args.out, f"_{args.tag}" if args.tag else "")
        return
    import torch

    torch.set_num_threads(args.threads)
    t_start = time.time()
    rows = load_jsonl(args.data)[: args.max_prompts]
    texts = [r["completions"] for r in rows]
    scores = np.array([r["scores"] for r in rows], dtype=np.float64)
    generators = rows[0]["generators"]
    encoder = CharNgramEncoder() if args.embedder == "ngram" else MiniLMEncoder()
    embeddings, embed_info = embed_all(texts, args.data, args.cache_dir, encoder)
    from aepo_trainer.selection import prompt_key

    P = len(rows)
    keys = np.array([prompt_key(str(i)) for i in range(P)], dtype=np.int64)  # prompt "i" (rows built the same way)
    order = prompt_order(P, args.seed)
    k = args.k
    max_prompts = min(P, max(args.budgets) // k)
    results, curves, timings = [], {}, []
    for spec in args.sets:
        name, n = spec.split(":")
        n = int(n)
        emb, sc, tx = pool_set(scores, embeddings, texts, generators, name, n, args.seed)
        runs = {}
        for label, strategy, lam in BASELINES:
            runs[label] = run_baseline(emb, sc, order, strategy, lam, k, max_prompts, args.seed, keys)[0]
        for label, strategy in ACTIVE:
            t0 = time.time()
            idx, info = run_active(
                emb, sc, tx, order, strategy, k, max_prompts, args.seed, keys, args.active_batch_size, 0.5
            )
            runs[label] = idx
            curves[f"{spec} {label}"] = info["curve"]
            timings += [(spec, label, *t) for t in info["timing"]]
            print(f"[active] {spec} {label}: {time.time() - t0:.1f}s", flush=True)
        for budget in args.budgets:
            covered = min(P, budget // k)
            cov = order[:covered]
            ref = per_prompt(sc[cov], runs["random k"][:covered])
            for label, idx in runs.items():
                chosen, gap = per_prompt(sc[cov], idx[:covered])
                rec = summarize(label, chosen, gap, budget, covered, None if label == "random k" else ref)
                results.append({"set": name, "N": n, "budget": budget, **rec})
            w_cov = order[: min(P, budget // n)]  # West-of-N: the whole pool of fewer prompts
            wc, wg = sc[w_cov].max(1), sc[w_cov].max(1) - sc[w_cov].min(1)
            rec = summarize("West-of-N", wc, wg, budget, len(w_cov))
            rec["gap_ratio"] = float(wg.sum() / ref[1].sum())
            results.append({"set": name, "N": n, "budget": budget, **rec})
        print(f"[set] {spec} done ({time.time() - t_start:.0f}s)", flush=True)

    # cost of the surrogate vs embedding, per batch of prompts
    per_text = embed_info.get("seconds", float("nan")) / max(1, embed_info.get("texts", 1))
    cost = {}
    for spec, _label, t_sel, t_fit, m in timings:
        n = int(spec.split(":")[1])
        c = cost.setdefault(spec, {"select": [], "fit": [], "embed": []})
        c["select"].append(t_sel)
        c["fit"].append(t_fit)
        c["embed"].append(per_text * m * n)
    cost_rows = {
        s: {
            "select_s": float(np.mean(c["select"])),
            "fit_s": float(np.mean(c["fit"])),
            "embed_s": float(np.mean(c["embed"])),
            "ratio": float((np.mean(c["select"]) + np.mean(c["fit"])) / np.mean(c["embed"])),
        }
        for s, c in cost.items()
    }
    meta = {
        "command": "python experiments/efficacy_active.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "data_sha256": file_sha256(args.data),
        "prompts": P,
        "embedder": encoder.tag,
        "embed": embed_info,
        "k": k,
        "seed": args.seed,
        "active_batch_size": args.active_batch_size,
        "machine": machine_line(machine_info()),
        "wall_seconds": time.time() - t_start,
        "cost_per_batch": cost_rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"_{args.tag}" if args.tag else ""
    (out / f"active{suffix}.json").write_text(
        json.dumps({"meta": meta, "results": results, "curves": curves}, indent=1), encoding="utf-8"
    )
    (out / f"active{suffix}.md").write_text(render(results, meta), encoding="utf-8")
    (out / f"active{suffix}_summary.md").write_text(summary_table(results), encoding="utf-8")
    plot(curves, results, out / f"active{suffix}.png")
    print(f"[done] {time.time() - t_start:.0f}s -> {out}/active{suffix}.md")


def _plain(v, ci, d=3):
    return _ci(v, ci, d, sign="")


def render(results, meta) -> str:
    lines = [
        "# Active selection vs random k, AEPO and West-of-N (equal annotation budget)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Embedder: {meta['embedder']}; {meta['prompts']} prompts; k = {meta['k']}; surrogate updated every "
        f"{meta['active_batch_size']} prompts; seed {meta['seed']}; {meta['machine']}; "
        f"wall time {meta['wall_seconds']:.0f} s.",
        "",
        "95% percentile bootstrap CIs over prompts (2000 resamples); Δ = paired difference to random k on the same "
        "prompts; ratio = total gap / random k's total gap (paired bootstrap of the ratio).",
        "",
    ]
    for (s, n), group in _groups(results):
        lines.append(f"## pool set `{s}`, N = {n}")
        lines.append("")
        for budget in sorted({r["budget"] for r in group}):
            rows = [r for r in group if r["budget"] == budget]
            table = []
            for r in rows:
                table.append(
                    [
                        r["label"],
                        r["prompts"],
                        _plain(r["chosen"], r["chosen_ci"]),
                        _ci(r["d_chosen"], r["d_chosen_ci"]) if "d_chosen" in r else "–",
                        _plain(r["gap"], r["gap_ci"]),
                        f"{r['total_gap']:.1f}",
                        (
                            f"{r['gap_ratio']:.2f} [{r['gap_ratio_ci'][0]:.2f}, {r['gap_ratio_ci'][1]:.2f}]"
                            if "gap_ratio_ci" in r
                            else (f"{r['gap_ratio']:.2f}" if "gap_ratio" in r else "1")
                        ),
                    ]
                )
            lines.append(f"**budget B = {budget}**")
            lines.append("")
            lines.append(
                markdown_table(
                    ["strategy", "prompts", "chosen gold", "Δ chosen vs random", "gap", "total gap", "total gap ratio"],
                    table,
                )
            )
    lines.append("## Cost of the surrogate per batch of prompts")
    lines.append("")
    cost = meta["cost_per_batch"]
    lines.append(
        markdown_table(
            ["pool set", "acquisition s", "fit s", "embedding s (same texts)", "(fit + acquisition) / embedding"],
            [
                [s, f"{c['select_s']:.3f}", f"{c['fit_s']:.3f}", f"{c['embed_s']:.1f}", f"{c['ratio']:.2%}"]
                for s, c in cost.items()
            ],
        )
    )
    return "\n".join(lines) + "\n"


def summary_table(results, budget=800) -> str:
    """One compact table (budget B, every pool set): what docs/efficacy.md shows."""
    table = []
    for (s, n), group in _groups(results):
        for r in group:
            if r["budget"] != budget:
                continue
            table.append(
                [
                    f"{s} N={n}",
                    r["label"],
                    f"{r['chosen']:.3f}",
                    _ci(r["d_chosen"], r["d_chosen_ci"]) if "d_chosen" in r else "–",
                    f"{r['total_gap']:.1f}",
                    (
                        f"{r['gap_ratio']:.2f} [{r['gap_ratio_ci'][0]:.2f}, {r['gap_ratio_ci'][1]:.2f}]"
                        if "gap_ratio_ci" in r
                        else (f"{r['gap_ratio']:.2f}" if "gap_ratio" in r else "1")
                    ),
                ]
            )
    return markdown_table(
        ["pools", "strategy", "chosen gold", "Δ chosen vs random [95% CI]", "total gap", "total gap / random [95% CI]"],
        table,
        ["---", "---", "--:", "--:", "--:", "--:"],
    )


def _groups(results):
    keys = list(dict.fromkeys((r["set"], r["N"]) for r in results))
    return [((s, n), [r for r in results if (r["set"], r["N"]) == (s, n)]) for s, n in keys]


def plot(curves, results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _groups(results)
    fig, axes = plt.subplots(1, len(groups) + 1, figsize=(4.6 * (len(groups) + 1), 4.4), constrained_layout=True)
    budget = 800 if any(r["budget"] == 800 for r in results) else max(r["budget"] for r in results)
    for ax, ((s, n), group) in zip(axes, groups):
        rows = [r for r in group if r["budget"] == budget]
        labels = [r["label"] for r in rows]
        y = [r["chosen"] for r in rows]
        err = np.array([[r["chosen"] - r["chosen_ci"][0], r["chosen_ci"][1] - r["chosen"]] for r in rows]).T
        colors = [
            "tab:gray" if lab in ("random k", "West-of-N") or lab.startswith("AEPO λ") else "tab:blue" for lab in labels
        ]
        ax.barh(range(len(rows)), y, xerr=err, color=colors, alpha=0.8)
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("mean chosen gold score (95% CI)")
        ax.set_title(f"{s}, N = {n}, B = {budget}", fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    ax = axes[-1]
    for name, curve in curves.items():
        if "DeltaUCB" not in name and "UCB + random" not in name:
            continue
        pts = [(q["labels_before"], q["pairwise_accuracy"]) for q in curve if q["pairs_evaluated"]]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], ".-", label=name, alpha=0.8)
    ax.axhline(0.5, color="gray", linestyle=":")
    ax.set_xlabel("labels the surrogate was fitted on")
    ax.set_ylabel("pairwise accuracy on the next batch")
    ax.set_title("Learning curve (before each batch's labels)", fontsize=9)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
