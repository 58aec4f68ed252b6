#!/usr/bin/env python
"""A policy the paid labels train, measured on real pools: best-of-N with a reward model fitted on each strategy's pairs.

The policy-level experiment (`policy_training.py`) needs a gold reward for *new* samples, so it runs on synthetic
tasks. On the AlpacaEval pools every candidate already has its gold (judge) score, so one policy CAN be measured on
real data: best-of-N under a learned reward model, pi(x) = argmax over the pool of r_hat(x, y). Each strategy buys
k = 2 labels per prompt on the first B/2 prompts (exactly as `efficacy_generalise.py` runs it), the purchased pairs
(chosen = the better-scored, ties dropped) train a Bradley-Terry reward model, and the policy answers the HELD-OUT
prompts (the rest of the 805, never labelled) with the pool candidate its reward model ranks first; the policy's value
is the gold score of that answer.

Reward model: logistic regression on the difference of the surrogate's own features (`FEATURES`: the normalised
embedding and log length) of chosen and rejected, no intercept, L2 penalty chosen by 5-fold cross-validation of the
log-loss over the strategy's own pairs (grid 10^-3 .. 10^3): nothing is tuned on the held-out prompts. A strategy's
pairs are its data; more informative pairs should give a better ranking of unseen pools.

Pool sets as `efficacy_generalise.py`: half B (the models the settings were not chosen on), the 16 weakest models,
all 32 (overlapping). Strategies: random k (uniform pairs, one seeded draw), AEPO lambda = 1, and DTS / UCB + random /
DeltaUCB with the safety rule (package defaults) and DTS without it. Reported per pool set, over `--seeds` seeds (each:
prompt order, which prompts are held out, selection and random-pair draws): the held-out best-of-N gold, its paired
difference to the random-k-trained policy with a 95% percentile bootstrap CI over held-out prompts (seed 0), and the
mean / range over seeds; the pool mean (a random answer) and the oracle (the pool's best) frame the scale.

    python experiments/bon_policy.py --out experiments/results --cache-dir /work/cache
"""

from __future__ import annotations

import argparse
import json
import sys
import time
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
from efficacy_generalise import PACKAGE_DEFAULTS, model_groups, run_aepo, run_learner
from efficacy_selection import embed_all, prompt_order

PENALTIES = [10.0**e for e in range(-3, 4)]
STRATEGIES = [
    ("random k", "random", {}),
    ("AEPO λ=1", "aepo", {}),
    ("double_ts (safe)", "double_ts", dict(safety=True, robust_best=True, **PACKAGE_DEFAULTS)),
    ("ucb_random (safe)", "ucb_random", dict(safety=True, robust_best=True, **PACKAGE_DEFAULTS)),
    ("delta_ucb (safe)", "delta_ucb", dict(safety=True, robust_best=True, **PACKAGE_DEFAULTS)),
    ("double_ts (unsafe)", "double_ts", dict(safety=False, robust_best=False)),
]


def features(embeddings, texts):
    """[P, N, F] the surrogate's features of every candidate (what the reward model reads)."""
    import torch

    from aepo_trainer.selection.surrogate import FEATURES, pool_features

    E = torch.from_numpy(np.ascontiguousarray(embeddings))
    mask = torch.ones(E.shape[:2], dtype=torch.bool)
    rows = [{"completions": pool} for pool in texts]
    return pool_features(rows, E, mask, "completions", FEATURES, None).numpy()


def _loss(w, D, penalty):
    margin = D @ w
    loss = np.logaddexp(0.0, -margin).sum() + 0.5 * penalty * (w @ w)
    grad = -(D.T @ (1.0 / (1.0 + np.exp(margin)))) + penalty * w
    return loss, grad


def fit_bradley_terry(D, penalty):
    """Weights w of P(chosen > rejected) = sigmoid(w . (x_chosen - x_rejected)), L2 penalty `penalty`."""
    from scipy.optimize import minimize

    res = minimize(_loss, np.zeros(D.shape[1]), args=(D, penalty), jac=True, method="L-BFGS-B")
    return res.x


def reward_model(D, seed):
    """(w, penalty): the penalty with the lowest 5-fold cross-validated log-loss over the pairs D, then refitted on all."""
    folds = np.random.default_rng([seed, 27, 3]).permutation(len(D)) % 5
    scores = []
    for penalty in PENALTIES:
        loss = 0.0
        for f in range(5):
            w = fit_bradley_terry(D[folds != f], penalty)
            loss += np.logaddexp(0.0, -(D[folds == f] @ w)).sum()
        scores.append(loss)
    penalty = PENALTIES[int(np.argmin(scores))]
    return fit_bradley_terry(D, penalty), penalty


def purchased_pairs(kind, options, emb, sc, texts, keys, seed):
    """[P, 2] (chosen, rejected) indices of a strategy's k = 2 purchase on these prompts, ties dropped (mask [P])."""
    if kind == "random":
        rng = np.random.default_rng([seed, 27, 4])
        idx = np.array([rng.choice(sc.shape[1], 2, replace=False) for _ in range(len(sc))])
    elif kind == "aepo":
        idx = run_aepo(emb, keys, seed)
    else:
        idx, _ = run_learner(emb, sc, texts, keys, kind, seed, 32, **options)
    s = np.take_along_axis(sc, idx, 1)
    order = np.argsort(-s, axis=1, kind="stable")
    pairs = np.take_along_axis(idx, order, 1)
    return pairs, s[:, 0] != s[:, 1]


def run_seed(emb, sc, texts, feats, keys_all, seed, budget):
    """{label: per-held-out-prompt gold of the best-of-N policy} and the penalties chosen, for one seed."""
    order = prompt_order(len(sc), seed)
    train, held = order[: budget // 2], order[budget // 2 :]
    out, penalties = {}, {}
    for label, kind, options in STRATEGIES:
        pairs, valid = purchased_pairs(
            kind, options, emb[train], sc[train], [texts[p] for p in train], keys_all[train], seed
        )
        rows = np.arange(len(train))[valid]
        D = feats[train][rows, pairs[valid, 0]] - feats[train][rows, pairs[valid, 1]]
        w, penalties[label] = reward_model(D, seed)
        pick = (feats[held] @ w).argmax(1)
        out[label] = sc[held][np.arange(len(held)), pick]
    return out, penalties, sc[held].mean(1), sc[held].max(1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_pool_arguments(p)
    p.add_argument("--budget", type=int, default=800, help="labels bought per strategy (k = 2: budget / 2 prompts)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--embedder", choices=["minilm", "ngram"], default="minilm")
    p.add_argument("--tag", default="", help="suffix of the output files (bon_policy<_tag>.*)")
    args = p.parse_args(argv)
    if args.budget < 4 or args.budget % 2:
        p.error(f"--budget must be an even number >= 4 (k = 2 labels per prompt), got {args.budget}")
    import torch

    from aepo_trainer.selection import prompt_key

    torch.set_num_threads(1)
    t0 = time.time()
    rows = load_jsonl(args.data)
    if args.budget // 2 >= len(rows):
        p.error(f"--budget {args.budget} labels cover all {len(rows)} prompts: none would be left to answer held out")
    texts = [r["completions"] for r in rows]
    scores = np.array([r["scores"] for r in rows], dtype=np.float64)
    encoder = CharNgramEncoder() if args.embedder == "ngram" else MiniLMEncoder()
    embeddings, _ = embed_all(texts, args.data, args.cache_dir, encoder)
    keys_all = np.array([prompt_key(str(i)) for i in range(len(rows))], dtype=np.int64)
    groups = model_groups(scores, 0)
    sets = {
        "half B": groups["random-half"][1],
        "16 weakest": groups["strength"][1],
        "all 32 (overlaps)": np.arange(scores.shape[1]),
    }
    results, table = {}, []
    for name, cols in sets.items():
        sub_texts = [[pool[c] for c in cols] for pool in texts]
        emb, sc = embeddings[:, cols], scores[:, cols]
        feats = features(emb, sub_texts)
        runs = [run_seed(emb, sc, sub_texts, feats, keys_all, seed, args.budget) for seed in range(args.seeds)]
        results[name] = {
            "seeds": [{label: gold.tolist() for label, gold in r[0].items()} for r in runs],
            "penalties": [r[1] for r in runs],
        }
        pool_mean = float(np.mean([r[2].mean() for r in runs]))  # a random answer, over every seed's held-out prompts
        pool_best = float(np.mean([r[3].mean() for r in runs]))
        for label, _, _ in STRATEGIES:
            diffs = [r[0][label] - r[0]["random k"] for r in runs]
            per_seed = [float(d.mean()) for d in diffs]
            gold = float(np.mean([r[0][label].mean() for r in runs]))
            if label == "random k":
                delta, spread = "–", "–"
            else:
                cis = [bootstrap_ci((d,), lambda x, axis=-1: np.mean(x, axis=axis)) for d in diffs]
                lo, hi = cis[0]
                delta = f"{per_seed[0]:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                above, below = sum(c[0] > 0 for c in cis), sum(c[1] < 0 for c in cis)
                spread = (f"{np.mean(per_seed):+.3f} ({min(per_seed):+.3f} – {max(per_seed):+.3f}); "
                          f"CI > 0: {above}, < 0: {below} of {len(cis)}")  # fmt: skip
            table.append([name, label, f"{gold:.3f}", delta, spread])
        table.append([name, "(a random answer / the pool's best)", f"{pool_mean:.3f} / {pool_best:.3f}",
                      "", ""])  # fmt: skip
        print(f"[{name}] done ({time.time() - t0:.0f}s)", flush=True)
    meta = {
        "command": "python experiments/bon_policy.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "data_sha256": file_sha256(args.data),
        "machine": machine_line(machine_info()),
        "wall_seconds": time.time() - t0,
    }
    held = len(rows) - args.budget // 2
    summary = markdown_table(
        ["pools", "pairs bought by", "held-out gold", "Δ vs random k (seed 0) [95% CI]", "Δ over seeds"],
        table,
        ["---", "---", "--:", "--:", "--:"],
    )
    text = "\n".join(
        [
            "# Best-of-N with a reward model trained on each strategy's pairs (held-out prompts)",
            "",
            f"Command: `{meta['command']}`  ",
            f"{encoder.tag} features; {args.budget} labels (k = 2, {args.budget // 2} prompts) per strategy, the other "
            f"{held} prompts held out; {args.seeds} seeds; {meta['machine']}; wall time {meta['wall_seconds']:.0f} s.",
            "",
            "Held-out gold = mean gold score of the answer the policy picks (mean over seeds); Δ vs random k = paired "
            "per held-out prompt, seed 0, 95% percentile bootstrap CI; over seeds: mean (min – max) of Δ and how many "
            "seeds' CIs lie above / below zero.",
            "",
            summary,
        ]
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"_{args.tag}" if args.tag else ""
    (out / f"bon_policy{suffix}.md").write_text(text + "\n", encoding="utf-8")
    (out / f"bon_policy{suffix}_summary.md").write_text(summary, encoding="utf-8")  # the table docs/efficacy.md shows
    (out / f"bon_policy{suffix}.json").write_text(json.dumps({"meta": meta, "results": results}), encoding="utf-8")
    print(f"[done] {time.time() - t0:.0f}s -> {out}/bon_policy{suffix}.md")


if __name__ == "__main__":
    main()
