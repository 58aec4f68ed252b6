#!/usr/bin/env python
"""Generalisation check of selection (issue 27): settings chosen on pools of some models, measured on pools of OTHER
models, against random k's exact expectation, with prompt-level paired bootstrap CIs.

Data: the AlpacaEval pools (805 prompts x 32 models; gold = the GPT-4-Turbo judge score, the "paid" label). A pool
set is the candidates of a group of models (N = the group's size). Two tune/measure pairs, disjoint in models:

* `random-half`: the 32 models split in two halves of 16 by a seeded permutation; settings are chosen on half A's
  pools, reported on half B's;
* `strength`: the models ranked by their mean gold score; settings chosen on the 16 strongest models' pools, reported
  on the 16 weakest's (the kind of pools the issue found every learning strategy below random on).

Settings chosen on the tuning pools (a small grid: the safety margin, the surrogate and the safety rule's test,
prequential, cross-validated, or prequential over the 64 / 128 most recently tested prompts; the first 400 prompts), by the mean over the learning strategies of Δ chosen vs random; the tuning pools' own figures are written to the JSON but never to a report table.
`all:32` (every model) is also measured, labelled as overlapping the tuning models.

Strategies: random k (its exact expectation per prompt: the mean over all C(N, 2) pairs), AEPO λ = 1 (the old
default), and delta_ucb / ucb_random / double_ts / double_reversed_ts / max_min_lcb with the safety rule and robust chosen side on ("safe": the chosen
settings; "safe, prequential" / "safe, cross-validated" / "safe, recent W": the same with each other test of the
rule, the recent one with the window W that scored best on the tuning pools; "safe, defaults":
the package defaults, margin 0.02, Bayesian linear, prequential test, and "safe, defaults, cross-validated", each when
it differs from the rows before) and off ("unsafe": the behaviour before issue 27), run exactly as `aepo select` runs them (`ActiveSelector`, batches of 32
prompts, k = 2, features = embedding + log length). Budgets are prefixes of one run over the seeded prompt order
(B = 800: the first 400 prompts; B = 1610: all 805).

Per prompt: chosen gold (best of the two), gap (best - worst), chosen and rejected length (characters). Reported:
Δ chosen and Δ gap vs random with 95% paired percentile bootstrap CIs over prompts, total-gap ratio with its CI, and
the chosen / rejected lengths next to them. A sequential selection is chaotic (one different pick early
changes every later fit), so the main rows (random, AEPO, the chosen settings, the
package defaults, no rule) are measured again over `--seeds` seeds (prompt order and selection seed), each seed with
its own prompt-level CI: the tables give the mean, the range and how many seeds' CIs lie above / below zero.

    python experiments/efficacy_generalise.py --out experiments/results                 # MiniLM (cached embeddings)
    python experiments/efficacy_generalise.py --out /tmp/gen --embedder ngram --tag ngram
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from itertools import combinations
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from efficacy_active import bootstrap_ci
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
from efficacy_selection import embed_all, prompt_order

from aepo_trainer.choices import SAFETY_TESTS

LEARNERS = ["delta_ucb", "ucb_random", "double_ts", "double_reversed_ts", "max_min_lcb"]


def _config_default(name):
    from aepo_trainer import AEPOConfig

    return AEPOConfig.__dataclass_fields__[name].default


#: AEPOConfig's defaults of the settings the grid tunes (the all-32 rows, and the "(safe, defaults)" rows)
PACKAGE_DEFAULTS = dict(
    safety_margin=_config_default("active_safety_margin"),
    surrogate=_config_default("active_surrogate"),
    safety_test=_config_default("active_safety_test"),
    safety_window=_config_default("active_safety_window"),
)
RECENT = "prequential_recent"
#: the grid tuned on the tuning pools: (safety margin, surrogate, safety test, window of the recent test)
GRID = [
    (margin, surrogate, test, PACKAGE_DEFAULTS["safety_window"])
    for test in ("prequential", "cross_validated")
    for margin, surrogate in [(0.0, "bayesian_linear"), (0.02, "bayesian_linear"), (0.05, "bayesian_linear"),
                              (0.02, "ensemble")]
] + [(0.02, "bayesian_linear", RECENT, window) for window in (64, 128)]  # fmt: skip
#: the rows measured over every seed: random, AEPO, the chosen settings, the package defaults and no rule
SEED_ROWS = re.compile(r"^(random k|AEPO λ=1)$|\((safe|safe, defaults|unsafe)\)$")
TUNING_BUDGET = 800  # the tuning runs cover the first 400 prompts (of the tuning models' pools)


def model_groups(scores: np.ndarray, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (tuning model columns, measured model columns)."""
    M = scores.shape[1]
    perm = np.random.default_rng([seed, 27]).permutation(M)
    by_strength = np.argsort(-scores.mean(0), kind="stable")
    return {
        "random-half": (np.sort(perm[: M // 2]), np.sort(perm[M // 2 :])),
        "strength": (np.sort(by_strength[: M // 2]), np.sort(by_strength[M // 2 :])),
    }


def random_expectation(sc: np.ndarray, lengths: np.ndarray):
    """Per prompt: random k = 2's exact expected chosen, gap, chosen length and rejected length."""
    pairs = np.array(list(combinations(range(sc.shape[1]), 2)))
    a, b = sc[:, pairs[:, 0]], sc[:, pairs[:, 1]]
    la, lb = lengths[:, pairs[:, 0]], lengths[:, pairs[:, 1]]
    a_wins = a >= b
    chosen_len = np.where(a_wins, la, lb)
    rejected_len = np.where(a_wins, lb, la)
    return (
        np.maximum(a, b).mean(1),
        np.abs(a - b).mean(1),
        chosen_len.mean(1),
        rejected_len.mean(1),
    )


def outcome(sc: np.ndarray, lengths: np.ndarray, idx: np.ndarray):
    """Per prompt: chosen, gap, chosen length, rejected length of the selected pair `idx` [P, 2]."""
    s = np.take_along_axis(sc, idx, 1)
    ln = np.take_along_axis(lengths, idx, 1)
    hi = s.argmax(1)
    lo = 1 - hi
    r = np.arange(len(s))
    return s[r, hi], s[r, hi] - s[r, lo], ln[r, hi], ln[r, lo]


def run_aepo(emb, keys, seed):
    import torch

    from aepo_trainer.selection import select_subsets

    res = select_subsets(
        torch.from_numpy(np.ascontiguousarray(emb)), 2, diversity_weight=1.0, strategy="aepo", seed=seed,
        row_keys=torch.as_tensor(keys),
    )  # fmt: skip
    return res.indices.numpy()


def run_learner(emb, sc, texts, keys, strategy, seed, batch, **options):
    """Indices [P, 2] of an active strategy run as `aepo select` runs it, plus its safety trace."""
    import torch

    from aepo_trainer.selection import ActiveSelector

    sel = ActiveSelector(strategy, 2, seed=seed, **options)
    out, seconds = [], []
    for start in range(0, len(sc), batch):
        part = slice(start, min(start + batch, len(sc)))
        rows = [{"prompt": str(int(k)), "completions": t} for k, t in zip(keys[part], texts[part])]
        E = torch.from_numpy(np.ascontiguousarray(emb[part]))
        t0 = time.perf_counter()
        subsets = sel.select(rows, E, row_keys=keys[part].tolist()).indices.tolist()
        t1 = time.perf_counter()
        labels = [[float(sc[start + b, i]) for i in s] for b, s in enumerate(subsets)]
        q = sel.observe(rows, E, None, keys[part].tolist(), subsets, labels)
        seconds.append((t1 - t0 + q.fit_seconds, len(subsets)))
        out.extend(subsets)
    trace = [
        {
            "batch": q.batch,
            "follows_next": q.follows,
            "lcb": q.safety_lower_bound,
            "accuracy": q.safety_accuracy,
            "tested": q.prompts_tested,
        }
        for q in sel.history
    ]
    return np.array(out), {
        "trace": trace,
        "seconds": seconds,
        "followed_batches": sum(not q.cold_start for q in sel.history),
    }


def summarize(chosen, gap, clen, rlen, ref):
    rc, rg, _, _ = ref
    return {
        "prompts": len(chosen),
        "chosen": float(chosen.mean()),
        "d_chosen": float((chosen - rc).mean()),
        "d_chosen_ci": bootstrap_ci((chosen - rc,), lambda x, axis=-1: np.mean(x, axis=axis)),
        "d_gap": float((gap - rg).mean()),
        "d_gap_ci": bootstrap_ci((gap - rg,), lambda x, axis=-1: np.mean(x, axis=axis)),
        "gap_ratio": float(gap.sum() / rg.sum()),
        "gap_ratio_ci": bootstrap_ci((gap, rg), lambda a, b, axis=-1: np.sum(a, axis=axis) / np.sum(b, axis=axis)),
        "chosen_len": float(clen.mean()),
        "rejected_len": float(rlen.mean()),
    }


def measure(pools, strategies, keys, seed, batch, budgets):
    """{label: {budget: summary}} of `strategies` [(label, kind, options)] on `pools` (emb, sc, texts, lengths)."""
    emb, sc, texts, lengths = pools
    out, info = {}, {}
    ref_full = random_expectation(sc, lengths)
    for label, kind, options in strategies:
        t0 = time.time()
        if kind == "random":
            per = ref_full
        else:
            idx = run_aepo(emb, keys, seed) if kind == "aepo" else None
            if idx is None:
                idx, info[label] = run_learner(emb, sc, texts, keys, kind, seed, batch, **options)
            per = outcome(sc, lengths, idx)
        out[label] = {}
        for budget in budgets:
            n = min(len(sc), budget // 2)
            ref = tuple(r[:n] for r in ref_full)
            out[label][budget] = summarize(*(p[:n] for p in per), ref)
        print(f"  {label}: {time.time() - t0:.1f}s", flush=True)
    return out, info


def test_name(test, window):
    return f"recent {window}" if test == RECENT else test.replace("_", "-")


def strategy_list(margin, surrogate, test, window, recent_window):
    """The measured rows: random, AEPO, the learners with the chosen settings ("safe"), the same with each other test
    of the safety rule (the recent test with `recent_window`, the best window on the tuning pools), with the package
    defaults (when they differ), and without the rule ("unsafe")."""
    safe = dict(safety=True, robust_best=True, safety_margin=margin, surrogate=surrogate, safety_test=test,
                safety_window=window)  # fmt: skip
    defaults = dict(safety=True, robust_best=True, **PACKAGE_DEFAULTS)
    variants = [("safe", safe)]
    for other in SAFETY_TESTS:
        if other != test:
            options = {**safe, "safety_test": other, "safety_window": recent_window if other == RECENT else window}
            variants.append((f"safe, {test_name(other, options['safety_window'])}", options))
    variants += [
        ("safe, defaults", defaults),
        ("safe, defaults, cross-validated", {**defaults, "safety_test": "cross_validated"}),
    ]
    rows = [("random k", "random", {}), ("AEPO λ=1", "aepo", {})]
    seen = []
    for name, options in variants:
        if options in seen:  # the defaults may be the chosen settings: measured once
            continue
        seen.append(options)
        rows += [(f"{s} ({name})", s, options) for s in LEARNERS]
    unsafe = dict(safety=False, robust_best=False, surrogate=surrogate)
    rows += [(f"{s} (unsafe)", s, unsafe) for s in LEARNERS]
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_pool_arguments(p)
    p.add_argument("--embedder", choices=["minilm", "ngram"], default="minilm")
    p.add_argument("--budgets", type=int, nargs="+", default=[800, 1610])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--seeds",
        type=int,
        default=5,
        help="measure the main rows over this many seeds (prompt order and selection seed --seed ...)",
    )
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-prompts", type=int, default=None)
    p.add_argument("--grid", type=int, default=None, help="use only the first N settings of the grid (smoke runs)")
    p.add_argument("--tag", default="")
    p.add_argument("--render", default=None, help="re-write the tables from this JSON file, no run")
    args = p.parse_args(argv)
    if args.render:
        rerender(args.render, args.out, f"_{args.tag}" if args.tag else "")
        return
    import torch

    torch.set_num_threads(1)
    t_start = time.time()
    rows = load_jsonl(args.data)[: args.max_prompts]
    texts = [r["completions"] for r in rows]
    scores = np.array([r["scores"] for r in rows], dtype=np.float64)
    lengths = np.array([[len(t) for t in pool] for pool in texts], dtype=np.float64)
    generators = rows[0]["generators"]
    encoder = CharNgramEncoder() if args.embedder == "ngram" else MiniLMEncoder()
    embeddings, embed_info = embed_all(texts, args.data, args.cache_dir, encoder)
    from aepo_trainer.selection import prompt_key

    P = len(rows)
    all_keys = np.array([prompt_key(str(i)) for i in range(P)], dtype=np.int64)

    def arranged(seed):
        """(order, keys) of a seed: the prompts in the order they are annotated, and their keys."""
        order = prompt_order(P, seed)
        return order, all_keys[order]

    order, keys = arranged(args.seed)

    def pools(cols, order=order):
        return (
            embeddings[order][:, cols],
            scores[order][:, cols],
            [[texts[p][c] for c in cols] for p in order],
            lengths[order][:, cols],
        )

    def over_seeds(cols, strategies, first):
        """{label: [summary at each budget, per seed]} of the main rows (chosen settings, defaults, unsafe) over
        --seeds seeds, the first being `first` (the --seed run already measured): a sequential selection is chaotic
        (one different pick early changes what follows), so one seed's prompt-level CI understates the run-to-run
        spread."""
        main_rows = [row for row in strategies if SEED_ROWS.search(row[0])]
        out = {label: [first[label]] for label, _, _ in main_rows}
        for seed in range(args.seed + 1, args.seed + args.seeds):
            o, k = arranged(seed)
            res, _ = measure(pools(cols, o), main_rows, k, seed, args.batch, args.budgets)
            for label, per in res.items():
                out.setdefault(label, []).append(per)
        return out

    grid = GRID[: args.grid] if args.grid else GRID
    groups = model_groups(scores, args.seed)
    results = {"tuning": {}, "measured": {}, "settings": {}, "models": {}, "info": {}, "seeds": {}}
    recent_windows = {}  # split -> the recent test's best window on its tuning pools
    for name, (tune_cols, eval_cols) in groups.items():
        results["models"][name] = {
            "tuning": [generators[c] for c in tune_cols],
            "measured": [generators[c] for c in eval_cols],
        }
        print(f"[tune] {name} on {len(tune_cols)} models", flush=True)
        tune_pools = pools(tune_cols)
        scored = []
        for margin, surrogate, test, window in grid:
            learners = [
                row for row in strategy_list(margin, surrogate, test, window, window) if row[0].endswith("(safe)")
            ]
            n = TUNING_BUDGET // 2
            tune_part = (tune_pools[0][:n], tune_pools[1][:n], tune_pools[2][:n], tune_pools[3][:n])
            res, _ = measure(tune_part, [("random k", "random", {}), *learners], keys[:n], args.seed, args.batch,
                             [TUNING_BUDGET])  # fmt: skip
            value = float(np.mean([res[label][TUNING_BUDGET]["d_chosen"] for label, _, _ in learners]))
            scored.append(((margin, surrogate, test, window), value))
            results["tuning"][f"{name} margin={margin} {surrogate} {test_name(test, window)}"] = res
            print(f"[tune] {name} margin={margin} {surrogate} {test_name(test, window)}: mean Δ chosen {value:+.4f}",
                  flush=True)  # fmt: skip
        (margin, surrogate, test, window), _ = max(scored, key=lambda item: item[1])
        recent = [item for item in scored if item[0][2] == RECENT]
        recent_window = max(recent, key=lambda item: item[1])[0][3] if recent else PACKAGE_DEFAULTS["safety_window"]
        recent_windows[name] = recent_window
        results["settings"][name] = {"safety_margin": margin, "surrogate": surrogate, "safety_test": test,
                                     "safety_window": window, "recent_window": recent_window,
                                     "grid": scored}  # fmt: skip
        print(f"[measure] {name}: chosen margin={margin} surrogate={surrogate} test={test_name(test, window)}",
              flush=True)  # fmt: skip
        rows_measured = strategy_list(margin, surrogate, test, window, recent_window)
        res, info = measure(pools(eval_cols), rows_measured, keys, args.seed, args.batch, args.budgets)
        results["measured"][name] = res
        results["info"][name] = info
        if args.seeds > 1:
            results["seeds"][name] = over_seeds(eval_cols, rows_measured, res)
    # every model (overlaps the tuning models): the package defaults (margin 0.02, bayesian_linear, the default test)
    print("[measure] all:32 (package defaults)", flush=True)
    # the recent test's window there: the one half A chose (half A: the tuning pools of the random split)
    recent_window = recent_windows.get("random-half", PACKAGE_DEFAULTS["safety_window"])
    every = np.arange(scores.shape[1])
    rows_measured = strategy_list(*PACKAGE_DEFAULTS.values(), recent_window)
    res, info = measure(pools(every), rows_measured, keys, args.seed, args.batch, args.budgets)
    results["measured"]["all-32"] = res
    results["info"]["all-32"] = info
    if args.seeds > 1:
        results["seeds"]["all-32"] = over_seeds(every, rows_measured, res)
    embed_seconds_per_text = embed_info.get("seconds", float("nan")) / max(1, embed_info.get("texts", 1))
    meta = {
        "command": "python experiments/efficacy_generalise.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "data_sha256": file_sha256(args.data),
        "prompts": P,
        "embedder": encoder.tag,
        "embed_seconds_per_text": embed_seconds_per_text,
        "seed": args.seed,
        "seeds": args.seeds,
        "batch": args.batch,
        "defaults": ", ".join(f"{k} {v}" for k, v in PACKAGE_DEFAULTS.items()),
        "machine": machine_line(machine_info()),
        "wall_seconds": time.time() - t_start,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"_{args.tag}" if args.tag else ""
    (out / f"generalise{suffix}.json").write_text(json.dumps({"meta": meta, **results}, indent=1), encoding="utf-8")
    (out / f"generalise{suffix}.md").write_text(render(results, meta), encoding="utf-8")
    (out / f"generalise{suffix}_summary.md").write_text(summary_table(results), encoding="utf-8")
    print(f"[done] {time.time() - t_start:.0f}s -> {out}/generalise{suffix}.md")


def render(results, meta) -> str:
    lines = [
        "# Selection on pools nobody tuned to: leave-models-out (issue 27)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Embedder: {meta['embedder']}; {meta['prompts']} prompts; k = 2; surrogate updated every {meta['batch']} "
        f"prompts; seed {meta['seed']}; {meta['machine']}; wall time {meta['wall_seconds']:.0f} s.",
        *([meta["note"]] if meta.get("note") else []),
        "",
        "Δ = paired difference to random k's exact expectation on the same prompts, 95% percentile bootstrap CI over "
        "prompts (2000 resamples); ratio = total gap / random's; lengths in characters (chosen / rejected; random: "
        "its expectation). Only pools of models the settings were NOT chosen on are shown, except `all-32`, which "
        "overlaps the tuning models (package defaults: "
        + meta.get("defaults", "margin 0.02, Bayesian linear surrogate, prequential test")
        + "; '(safe, cross-validated)', '(safe, recent W)': the same with the cross-validated test, with the "
        "prequential test of the W most recently tested prompts; W: the best window on half A).",
        "",
    ]
    for name, res in results["measured"].items():
        setting = results["settings"].get(name)
        head = f"## `{name}`"
        if setting:
            models = results["models"][name]["measured"]
            head += (
                f": measured on {len(models)} models' pools (N = {len(models)}); settings chosen on the other "
                f"{len(results['models'][name]['tuning'])}: safety margin {setting['safety_margin']}, surrogate "
                f"`{setting['surrogate']}`, test `{setting.get('safety_test', 'prequential')}`"
                + (f" (window {setting['safety_window']})" if setting.get("safety_test") == RECENT else "")
            )
        lines += [head, ""]
        budgets = sorted({b for r in res.values() for b in r}, key=int)  # int keys, or str ones read from JSON
        for budget in budgets:
            table = []
            for label, per in res.items():
                r = per[budget]
                table.append(
                    [
                        label,
                        f"{r['chosen']:.3f}",
                        "–" if label == "random k" else _ci(r["d_chosen"], r["d_chosen_ci"]),
                        "–" if label == "random k" else _ci(r["d_gap"], r["d_gap_ci"]),
                        "1" if label == "random k" else
                        f"{r['gap_ratio']:.2f} [{r['gap_ratio_ci'][0]:.2f}, {r['gap_ratio_ci'][1]:.2f}]",
                        f"{r['chosen_len']:.0f} / {r['rejected_len']:.0f}",
                    ]
                )  # fmt: skip
            lines += [f"**B = {budget}** ({min(meta['prompts'], int(budget) // 2)} prompts)", ""]
            lines.append(
                markdown_table(
                    [
                        "strategy",
                        "chosen gold",
                        "Δ chosen [95% CI]",
                        "Δ gap [95% CI]",
                        "total gap ratio",
                        "length c / r",
                    ],
                    table,
                    ["---", "--:", "--:", "--:", "--:", "--:"],
                )
            )
        for budget in budgets:
            table = seeds_table(results, name, budget)
            if table:
                seeds = len(next(iter(results["seeds"][name].values())))
                lines += [f"**B = {budget}, over {seeds} seeds** (prompt order and selection seed; random k's "
                          "expectation is exact on every seed's prompts)", "", table]  # fmt: skip
        info = results["info"].get(name, {})
        if info:
            lines.append(
                "Batches selected by the acquisition (the rest by random k: warm-up or the safety rule): "
                + ", ".join(f"{label} {i['followed_batches']}/{len(i['trace'])}" for label, i in info.items())
            )
            lines.append("")
    return "\n".join(lines) + "\n"


def seed_spread(results, name: str, label: str, budget) -> tuple[str, str] | None:
    """(Δ chosen, total-gap ratio) of `label` over the seeds: 'mean (min – max)', with how many seeds' prompt-level
    CIs of Δ chosen lie above / below zero; None when it was measured on one seed only."""
    runs = results.get("seeds", {}).get(name, {}).get(label)
    if not runs or len(runs) < 2:
        return None
    cells = [per.get(budget, per.get(str(budget))) for per in runs]
    d = np.array([c["d_chosen"] for c in cells])
    ratio = np.array([c["gap_ratio"] for c in cells])
    above = sum(c["d_chosen_ci"][0] > 0 for c in cells)
    below = sum(c["d_chosen_ci"][1] < 0 for c in cells)
    return (
        f"{d.mean():+.3f} ({d.min():+.3f} – {d.max():+.3f}); CI > 0: {above}, < 0: {below} of {len(cells)}",
        f"{ratio.mean():.2f} ({ratio.min():.2f} – {ratio.max():.2f})",
    )


def seeds_table(results, name: str, budget) -> str:
    rows = []
    for label in results.get("seeds", {}).get(name, {}):
        spread = seed_spread(results, name, label, budget)
        if spread and label != "random k":
            rows.append([label, *spread])
    if not rows:
        return ""
    return markdown_table(["strategy", "Δ chosen over seeds: mean (min – max)", "total gap ratio: mean (min – max)"],
                          rows, ["---", "--:", "--:"])  # fmt: skip


def summary_table(results, budget: int = 800) -> str:
    """One compact table at budget B over every measured pool set: what docs/efficacy.md shows (the main rows, and
    every test of the safety rule for double_ts only; the full tables are in generalise*.md)."""
    names = {"random-half": "half B (random split)", "strength": "16 weakest models", "all-32": "all 32 (overlaps)"}
    table = []
    for name, res in results["measured"].items():
        for label, per in res.items():
            if not (SEED_ROWS.search(label) or label.startswith("double_ts (")):
                continue
            r = per.get(budget, per.get(str(budget)))
            if r is None:
                continue
            table.append(
                [
                    names.get(name, name),
                    label,
                    f"{r['chosen']:.3f}",
                    "–" if label == "random k" else _ci(r["d_chosen"], r["d_chosen_ci"]),
                    "1" if label == "random k" else
                    f"{r['gap_ratio']:.2f} [{r['gap_ratio_ci'][0]:.2f}, {r['gap_ratio_ci'][1]:.2f}]",
                    f"{r['chosen_len']:.0f} / {r['rejected_len']:.0f}",
                    "–" if label == "random k" else " · ".join(seed_spread(results, name, label, budget) or ["–"]),
                ]
            )  # fmt: skip
    return markdown_table(
        ["pools", "strategy", "chosen gold", "Δ chosen vs random [95% CI]", "total gap / random [95% CI]",
         "length chosen / rejected", "over seeds: Δ chosen · gap ratio"],
        table,
        ["---", "---", "--:", "--:", "--:", "--:", "--:"],
    )  # fmt: skip


def rerender(json_path, out_dir, suffix):
    data = json.loads(Path(json_path).read_text(encoding="utf-8"))
    out = Path(out_dir)
    (out / f"generalise{suffix}.md").write_text(render(data, data["meta"]), encoding="utf-8")
    (out / f"generalise{suffix}_summary.md").write_text(summary_table(data), encoding="utf-8")


if __name__ == "__main__":
    main()
