#!/usr/bin/env python
"""Static embeddings vs MiniLM for selection (issue 31): does `embedding_backend="static"` (a token table distilled
from all-MiniLM-L6-v2, `aepo_trainer.embedding.static`) keep what the features are used for?

Two measurements, each static vs MiniLM on the same prompts, with 95% percentile bootstrap CIs over prompts
(`scipy.stats.bootstrap`, 2000 resamples, paired where two figures share prompts):

1. The surrogate's out-of-sample within-prompt pairwise accuracy: the package's `BayesianLinearSurrogate` (evidence
   maximisation: nothing tuned) fitted on every candidate of half the prompts, predicting the other half (and the
   reverse, so each prompt is predicted once, by a model that never saw it); accuracy = share of a prompt's candidate
   pairs with different gold scores that the posterior mean orders like the judge.
2. Each strategy's chosen gold score and total gap vs random k at an equal budget (`efficacy_active.py`'s runs:
   `select_subsets` for AEPO, `ActiveSelector` batch by batch for the active strategies, package defaults).

Splits (none used to choose anything; the static table's settings are model2vec's defaults, fixed beforehand):
* `shared`: the shared pools, N = 32 (all models);
* `half-A` / `half-B`: the 32 models split in two seeded halves of 16; the surrogate is fitted on one half's
  completions and tested on the OTHER half's completions of the other prompts (leave models out); strategies run on
  each half's pools (N = 16);
* `weak16`: the pools of the 16 weakest models (lowest mean gold score), N = 16.

MiniLM embeddings come from the `embed_all` cache of `efficacy_selection.py` (`emb-*-minilm*-p805x32.npy`; computed
with the torch backend if absent: ~8 min of CPU). Static embeddings are computed here by the package's `Embedder`.

    python experiments/static_vs_minilm.py --out experiments/results --cache-dir /work/cache
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from efficacy_active import ACTIVE, bootstrap_ci, per_prompt, run_active, run_baseline
from efficacy_common import (
    MiniLMEncoder,
    add_pool_arguments,
    file_sha256,
    load_jsonl,
    machine_info,
    machine_line,
    markdown_table,
)
from efficacy_common import fmt_interval as _ci
from efficacy_selection import embed_all, pool_subsets, prompt_order

STRATEGIES = [("AEPO λ=0.5", "aepo", 0.5), *[(label, name, None) for label, name in ACTIVE]]


class StaticEncoder:
    """The package's static backend (table distilled once from the bundled MiniLM, cached in the HF datasets cache)."""

    def __init__(self):
        from aepo_trainer.embedding import Embedder
        from aepo_trainer.embedding.static import STATIC_DEFAULTS

        self.embedder = Embedder(backend="static", show_progress=False)
        self.tag = f"static-minilm-{STATIC_DEFAULTS.tag().replace(',', '-')}"

    def encode(self, texts):
        return self.embedder.encode(list(texts)).numpy()


def minilm_embeddings(texts, data, cache_dir):
    digest = file_sha256(data)[:16]
    P, M = len(texts), len(texts[0])
    found = sorted(glob.glob(str(Path(cache_dir) / f"emb-{digest}-minilm*-p{P}x{M}.npy")))
    if found:
        print(f"[embed] MiniLM from {found[0]}", flush=True)
        return np.load(found[0]), Path(found[0]).name
    emb, _ = embed_all(texts, data, cache_dir, MiniLMEncoder())
    return emb, "computed"


# ---------------------------------------------------------------------------------------------------- surrogate
def pairwise_accuracy(pred: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Per prompt: share of candidate pairs with different gold scores ordered alike by `pred` ([P, n] each)."""
    dp = pred[:, :, None] - pred[:, None, :]
    dg = gold[:, :, None] - gold[:, None, :]
    upper = np.triu(np.ones(dg.shape[1:], dtype=bool), 1)[None]
    valid = (dg != 0) & upper
    right = (np.sign(dp) == np.sign(dg)) & valid
    return right.sum((1, 2)) / np.maximum(valid.sum((1, 2)), 1)


def surrogate_accuracy(emb, scores, train_cols, test_cols, seed):
    """Each prompt's pairwise accuracy on `test_cols`, predicted by a surrogate fitted on the other half's prompts
    with their `train_cols` candidates ([P] array)."""
    import torch

    from aepo_trainer.selection.surrogate import BayesianLinearSurrogate

    P = scores.shape[0]
    halves = np.array_split(np.random.default_rng(seed).permutation(P), 2)
    out = np.empty(P)
    for fit_on, test_on in (halves, halves[::-1]):
        model = BayesianLinearSurrogate()
        for p in fit_on:
            for c in train_cols:
                model.add(int(p), int(c), torch.from_numpy(emb[p, c].astype(np.float64)), float(scores[p, c]))
        model.fit()
        X = torch.from_numpy(emb[test_on][:, test_cols])
        mean = model.posterior(X, torch.ones(X.shape[:2], dtype=torch.bool)).mean.numpy()
        out[test_on] = pairwise_accuracy(mean, scores[test_on][:, test_cols])
    return out


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def _ratio(a, b, axis=-1):
    return np.sum(a, axis=axis) / np.sum(b, axis=axis)


def _ratio_difference(a, b, c, d, axis=-1):
    return np.sum(a, axis=axis) / np.sum(b, axis=axis) - np.sum(c, axis=axis) / np.sum(d, axis=axis)


# ---------------------------------------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_pool_arguments(p)
    p.add_argument("--budget", type=int, default=800, help="labels per strategy (k = 2: budget / 2 prompts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--active-batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-strategies", action="store_true", help="the surrogate accuracies only")
    p.add_argument("--skip-surrogate", action="store_true", help="the strategy runs only")
    p.add_argument(
        "--embedders",
        nargs="+",
        default=["MiniLM", "static"],
        choices=["MiniLM", "static"],
        help="whose strategy runs to do (a run of one is combined with a run of the other by --combine)",
    )
    p.add_argument("--tag", default="", help="suffix of the output files (static_vs_minilm<_tag>.*)")
    p.add_argument("--combine", nargs="+", default=None, help="merge these JSON outputs into one report, no run")
    p.add_argument("--strategies", nargs="+", default=None, help="labels of the strategies to run (default: all)")
    p.add_argument("--splits", nargs="+", default=None, help="splits of the strategy runs (default: all four)")
    args = p.parse_args(argv)
    suffix = f"_{args.tag}" if args.tag else ""
    if args.combine:
        combine(args.combine, Path(args.out), suffix)
        return
    import torch

    torch.set_num_threads(args.threads)
    t_start = time.time()
    rows = load_jsonl(args.data)
    texts = [r["completions"] for r in rows]
    scores = np.array([r["scores"] for r in rows], dtype=np.float64)
    generators = list(rows[0]["generators"])
    P, M = scores.shape
    embeddings, minilm_source = {}, "not used"
    if "MiniLM" in args.embedders:
        minilm, minilm_source = minilm_embeddings(texts, args.data, args.cache_dir)
        embeddings["MiniLM"] = minilm.astype(np.float32)
    t0 = time.time()
    static, static_info = embed_all(texts, args.data, args.cache_dir, StaticEncoder())
    static_seconds = static_info.get("seconds", time.time() - t0)
    if "static" in args.embedders:
        embeddings["static"] = static.astype(np.float32)

    halves = np.array_split(np.random.default_rng(args.seed).permutation(M), 2)
    half_a, half_b = np.sort(halves[0]), np.sort(halves[1])
    weak16 = np.sort(np.argsort(scores.mean(0))[:16])
    everything = np.arange(M)
    # (name, fit columns, test columns) of the surrogate; the pool columns of the strategies are the test columns
    splits = [
        ("shared", everything, everything),
        ("half-A", half_b, half_a),  # fitted on the other models' completions: leave models out
        ("half-B", half_a, half_b),
        ("weak16", weak16, weak16),
    ]
    results = {"surrogate": [], "strategies": [], "per_prompt": {}, "split_info": {}}
    for name, fit_cols, test_cols in [] if args.skip_surrogate or len(embeddings) < 2 else splits:
        acc = {e: surrogate_accuracy(embeddings[e], scores, fit_cols, test_cols, args.seed) for e in embeddings}
        diff = acc["static"] - acc["MiniLM"]
        rec = {
            "split": name,
            "prompts": P,
            **{f"{e}": float(a.mean()) for e, a in acc.items()},
            **{f"{e}_ci": bootstrap_ci((a,), _mean) for e, a in acc.items()},
            "diff": float(diff.mean()),
            "diff_ci": bootstrap_ci((diff,), _mean),
        }
        results["surrogate"].append(rec)
        print(f"[surrogate] {name}: {json.dumps(rec)}", flush=True)

    if not args.skip_strategies:
        from aepo_trainer.selection import prompt_key

        keys_all = np.array([prompt_key(str(i)) for i in range(P)], dtype=np.int64)
        order = prompt_order(P, args.seed)
        covered = min(P, args.budget // 2)
        cov = order[:covered]
        strategies = [s for s in STRATEGIES if args.strategies is None or s[0] in args.strategies]
        for name, _, cols in splits:
            if args.splits is not None and name not in args.splits:
                continue
            n = len(cols)
            sub = cols[pool_subsets(P, len(cols), n, args.seed)]
            sc = np.take_along_axis(scores, sub, axis=1)
            tx = [[texts[q][i] for i in sub[q]] for q in range(P)]
            results["split_info"][name] = {"N": n, "budget": args.budget, "prompts": covered}
            per = results["per_prompt"].setdefault(name, {})
            for e, emb_all in embeddings.items():
                emb = np.take_along_axis(emb_all, sub[:, :, None], axis=1)
                runs = {"random k": run_baseline(emb, sc, order, "random", 0.0, 2, covered, args.seed, keys_all)[0]}
                for label, strategy, lam in strategies:
                    t1 = time.time()
                    if lam is not None:
                        runs[label] = run_baseline(emb, sc, order, strategy, lam, 2, covered, args.seed, keys_all)[0]
                    else:
                        runs[label] = run_active(
                            emb, sc, tx, order, strategy, 2, covered, args.seed, keys_all, args.active_batch_size, 0.5
                        )[0]
                    print(f"[strategy] {name} {e} {label}: {time.time() - t1:.1f}s", flush=True)
                per[e] = {
                    label: [a.tolist() for a in per_prompt(sc[cov], idx[:covered])] for label, idx in runs.items()
                }
            print(f"[set] {name} done ({time.time() - t_start:.0f}s)", flush=True)
        results["strategies"] = strategy_records(results["per_prompt"], results["split_info"])

    meta = {
        "command": "python experiments/static_vs_minilm.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "data_sha256": file_sha256(args.data),
        "prompts": P,
        "models": M,
        "half_a": [generators[i] for i in half_a],
        "half_b": [generators[i] for i in half_b],
        "weak16": [generators[i] for i in weak16],
        "minilm_embeddings": minilm_source,
        "static_tag": StaticEncoder().tag,
        "static_embed_seconds": static_seconds,
        "machine": machine_line(machine_info()),
        "wall_seconds": time.time() - t_start,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"static_vs_minilm{suffix}.json").write_text(
        json.dumps({"meta": meta, **results}, indent=1), encoding="utf-8"
    )
    (out / f"static_vs_minilm{suffix}.md").write_text(render(results, meta), encoding="utf-8")
    print(f"[done] {time.time() - t_start:.0f}s -> {out}/static_vs_minilm{suffix}.md")


def combine(paths, out: Path, suffix: str):
    """One report from the JSON outputs of runs that split the work (e.g. the splits over two processes)."""
    parts = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    used = [part for part in parts if part["meta"]["minilm_embeddings"] != "not used"]
    meta = dict((used or parts)[0]["meta"])
    meta["command"] = " + ".join(part["meta"]["command"] for part in parts)
    meta["wall_seconds"] = max(part["meta"]["wall_seconds"] for part in parts)
    results = {"surrogate": [r for part in parts for r in part["surrogate"]], "per_prompt": {}, "split_info": {}}
    for part in parts:
        results["split_info"].update(part.get("split_info", {}))
        for split, by_embedder in part.get("per_prompt", {}).items():
            results["per_prompt"].setdefault(split, {}).update(by_embedder)
    results["strategies"] = strategy_records(results["per_prompt"], results["split_info"])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"static_vs_minilm{suffix}.json").write_text(
        json.dumps({"meta": meta, "parts": [p["meta"] for p in parts], **results}, indent=1), encoding="utf-8"
    )
    (out / f"static_vs_minilm{suffix}.md").write_text(render(results, meta), encoding="utf-8")


def strategy_records(per_prompt_all, split_info):
    """Per split x strategy: each embedder's paired Δ chosen and total-gap ratio vs random k, and static minus MiniLM
    (paired on prompts); splits missing one embedder's runs are left out."""
    records = []
    for split, per in per_prompt_all.items():
        if set(per) != {"MiniLM", "static"}:
            continue
        per = {e: {label: tuple(np.array(a) for a in v) for label, v in runs.items()} for e, runs in per.items()}
        for label in [s[0] for s in STRATEGIES if s[0] in per["static"] and s[0] in per["MiniLM"]]:
            rec = {"split": split, **split_info[split], "label": label}
            for e in ("MiniLM", "static"):
                chosen, gap = per[e][label]
                rc, rg = per[e]["random k"]
                rec[f"{e}_d_chosen"] = float((chosen - rc).mean())
                rec[f"{e}_d_chosen_ci"] = bootstrap_ci((chosen - rc,), _mean)
                rec[f"{e}_gap_ratio"] = float(gap.sum() / rg.sum())
                rec[f"{e}_gap_ratio_ci"] = bootstrap_ci((gap, rg), _ratio)
            (cs, gs), (cm, gm) = per["static"][label], per["MiniLM"][label]
            rec["chosen_static_minus_minilm"] = float((cs - cm).mean())
            rec["chosen_static_minus_minilm_ci"] = bootstrap_ci((cs - cm,), _mean)
            rs, rm = per["static"]["random k"][1], per["MiniLM"]["random k"][1]
            rec["gap_ratio_static_minus_minilm"] = rec["static_gap_ratio"] - rec["MiniLM_gap_ratio"]
            rec["gap_ratio_static_minus_minilm_ci"] = bootstrap_ci((gs, rs, gm, rm), _ratio_difference)
            records.append(rec)
    return records


def render(results, meta) -> str:
    lines = [
        "# Static embeddings vs MiniLM for selection (issue 31)",
        "",
        f"Command: `{meta['command']}`  ",
        f"{meta['prompts']} prompts x {meta['models']} models; static table `{meta['static_tag']}` (all 25,760 texts "
        f"embedded in {meta['static_embed_seconds']:.1f} s); MiniLM: {meta['minilm_embeddings']}; {meta['machine']}; "
        f"wall time {meta['wall_seconds']:.0f} s.",
        "",
        f"Model halves: A = {', '.join(meta['half_a'])}; B = {', '.join(meta['half_b'])}. "
        f"16 weakest: {', '.join(meta['weak16'])}.",
        "",
        "95% percentile bootstrap CIs over prompts (2000 resamples), paired between static and MiniLM.",
        "",
        "## Surrogate: out-of-sample within-prompt pairwise accuracy",
        "",
        "Bayesian linear surrogate (evidence maximisation) fitted on half the prompts, tested on the other half (and the "
        "reverse). `half-A`: fitted on model half B's completions, tested on half A's (leave models out).",
        "",
        markdown_table(
            ["split", "MiniLM", "static", "static − MiniLM"],
            [
                [
                    r["split"],
                    _ci(r["MiniLM"], r["MiniLM_ci"], sign=""),
                    _ci(r["static"], r["static_ci"], sign=""),
                    _ci(r["diff"], r["diff_ci"]),
                ]
                for r in results["surrogate"]
            ],
        ),
    ]
    if results["strategies"]:
        first = results["strategies"][0]
        lines += [
            "",
            f"## Strategies vs random k (k = 2, budget {first['budget']} labels = {first['prompts']} prompts)",
            "",
            "Δ chosen = mean chosen gold minus random k's on the same prompts; gap ratio = total gap / random k's. "
            "Last columns: static minus MiniLM, paired on prompts.",
            "",
            markdown_table(
                [
                    "pools",
                    "strategy",
                    "Δ chosen MiniLM",
                    "Δ chosen static",
                    "gap ratio MiniLM",
                    "gap ratio static",
                    "chosen static − MiniLM",
                    "gap ratio static − MiniLM",
                ],
                [
                    [
                        f"{r['split']} N={r['N']}",
                        r["label"],
                        _ci(r["MiniLM_d_chosen"], r["MiniLM_d_chosen_ci"]),
                        _ci(r["static_d_chosen"], r["static_d_chosen_ci"]),
                        _ci(r["MiniLM_gap_ratio"], r["MiniLM_gap_ratio_ci"], 2, ""),
                        _ci(r["static_gap_ratio"], r["static_gap_ratio_ci"], 2, ""),
                        _ci(r["chosen_static_minus_minilm"], r["chosen_static_minus_minilm_ci"]),
                        _ci(r["gap_ratio_static_minus_minilm"], r["gap_ratio_static_minus_minilm_ci"], 2),
                    ]
                    for r in results["strategies"]
                ],
            ),
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
