#!/usr/bin/env python
"""The surrogate's noise count (issue 27): does the evidence's noise precision count the centred labels right?

The Bayesian linear surrogate (`aepo_trainer.selection.surrogate`) regresses within-prompt centred scores. Centring a
prompt's m labels leaves its noise m - 1 dimensions, so the noise update must count n - P degrees of freedom (n labels,
P prompts); with k = 2 the two centred rows of a prompt are one observation written twice. This experiment compares
the package's count, n - P, with the count before the fix, n (the package's own `_fit_design` told that the labels
came from no prompt: `prompts=0`, nothing else changes), as `aepo select` feeds the surrogate: batches of 32 prompts,
k = 2 random candidates labelled per prompt (random pairs, so both counts see the same labels), refitted after each
batch. Before each refit, on the batch's fresh labels it measures:

* the out-of-sample within-prompt pairwise accuracy of the posterior mean on the random pairs (the safety rule's
  statistic);
* the "follow gain": gold of the argmax-of-posterior-mean candidate of the whole pool minus random k's expected chosen
  gold (the mean over all C(N, 2) pairs of the better one) - what following the surrogate's best pick is worth;
* gamma, the fit's effective number of parameters, and its noise precision beta.

Pool sets: all 32 models (N = 32), the two seeded halves of 16 (`efficacy_generalise.model_groups`), the 16 weakest
models. Per pool set and count: mean over seeds and batches, by batch window; 95% t-intervals over seeds.

    python experiments/surrogate_noise_count.py --out experiments/results --cache-dir /work/cache
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
    MiniLMEncoder,
    add_pool_arguments,
    file_sha256,
    load_jsonl,
    machine_info,
    machine_line,
    markdown_table,
    mean_ci,
)
from efficacy_generalise import model_groups, random_expectation
from efficacy_selection import embed_all, prompt_order

WINDOWS = [(1, 4), (4, 8), (8, 13)]  # batch windows (batch 0 only fits: nothing to test yet)
COUNTS = ["n - P (package)", "n (before the fix)"]


def surrogate_for(count: str):
    from aepo_trainer.selection.surrogate import BayesianLinearSurrogate

    if count == COUNTS[0]:
        return BayesianLinearSurrogate()

    class CountsEveryRow(BayesianLinearSurrogate):
        """The count before the fix: every centred row an observation (no prompt's degree of freedom removed)."""

        def _fit_design(self, X, y, prompts, single):
            return super()._fit_design(X, y, 0, single)

    return CountsEveryRow()


def run(embeddings, scores, texts, prompts, seed, count, batch=32):
    """Per tested batch: (batch index, accuracy, follow gain, gamma, beta) of one seeded run."""
    import torch

    from aepo_trainer.selection import prompt_key
    from aepo_trainer.selection.surrogate import FEATURES, pool_features

    order = prompt_order(len(scores), seed)[:prompts]
    rng = np.random.default_rng([seed, 27, 1])
    surrogate = surrogate_for(count)
    N = scores.shape[1]
    out = []
    for start in range(0, len(order), batch):
        rows_idx = order[start : start + batch]
        rows = [{"completions": texts[p]} for p in rows_idx]
        E = torch.from_numpy(np.ascontiguousarray(embeddings[rows_idx]))
        mask = torch.ones(E.shape[:2], dtype=torch.bool)
        X = pool_features(rows, E, mask, "completions", FEATURES, None)
        sc = scores[rows_idx]
        pairs = np.array([rng.choice(N, 2, replace=False) for _ in rows_idx])
        if surrogate.ready:
            mu = surrogate.posterior(X, mask).mean.numpy()
            best = mu.argmax(1)
            random_chosen = random_expectation(sc, np.zeros_like(sc))[0]  # random k = 2's expected chosen gold
            gain = sc[np.arange(len(sc)), best] - random_chosen
            correct = [
                float((mu[b, i] - mu[b, j]) * (sc[b, i] - sc[b, j]) > 0)
                for b, (i, j) in enumerate(pairs)
                if sc[b, i] != sc[b, j]
            ]
            fit = surrogate.fitted
            out.append(
                (start // batch, float(np.mean(correct)), float(gain.mean()), fit.effective_parameters, fit.beta)
            )
        for b, p in enumerate(rows_idx):
            for i in pairs[b]:
                surrogate.add(prompt_key(str(int(p))), int(i), X[b, i], float(sc[b, i]))
        surrogate.fit()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_pool_arguments(p)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--prompts", type=int, default=400)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    t0 = time.time()
    rows = load_jsonl(args.data)
    texts = [r["completions"] for r in rows]
    scores = np.array([r["scores"] for r in rows], dtype=np.float64)
    embeddings, _ = embed_all(texts, args.data, args.cache_dir, MiniLMEncoder())
    groups = model_groups(scores, 0)
    sets = {
        "all 32": np.arange(scores.shape[1]),
        "half A": groups["random-half"][0],
        "half B": groups["random-half"][1],
        "16 weakest": groups["strength"][1],
    }
    results = {}
    for name, cols in sets.items():
        sub_texts = [[pool[c] for c in cols] for pool in texts]
        for count in COUNTS:
            runs = [
                run(embeddings[:, cols], scores[:, cols], sub_texts, args.prompts, seed, count)
                for seed in range(args.seeds)
            ]
            results[f"{name} | {count}"] = runs
            print(f"[{name}] {count}: done ({time.time() - t0:.0f}s)", flush=True)
    table = []
    for key, runs in results.items():
        name, count = key.split(" | ")
        for lo, hi in WINDOWS:
            per_seed = [[r for r in seed_run if lo <= r[0] < hi] for seed_run in runs]
            acc = mean_ci([np.mean([r[1] for r in s]) for s in per_seed])
            gain = mean_ci([np.mean([r[2] for r in s]) for s in per_seed])
            gamma = np.mean([r[3] for s in per_seed for r in s])
            table.append([name, count, f"{lo}–{hi - 1}", f"{acc[0]:.3f} ± {acc[1]:.3f}", f"{gain[0]:+.3f} ± {gain[1]:.3f}",
                          f"{gamma:.0f}"])  # fmt: skip
    meta = {
        "command": "python experiments/surrogate_noise_count.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "data_sha256": file_sha256(args.data),
        "machine": machine_line(machine_info()),
        "wall_seconds": time.time() - t0,
    }
    text = "\n".join(
        [
            "# The surrogate's noise count: n - P (package) vs n (before issue 27's fix)",
            "",
            f"Command: `{meta['command']}`  ",
            f"MiniLM features (embedding + log length), k = 2 random candidates labelled per prompt, batches of 32, "
            f"{args.prompts} prompts, {args.seeds} seeds (prompt order and pairs); {meta['machine']}; wall time "
            f"{meta['wall_seconds']:.0f} s.",
            "",
            "Per batch window (batches tested before the refit): out-of-sample pairwise accuracy on the random pairs, "
            "follow gain = gold of the argmax-posterior-mean candidate minus random k's expected chosen gold (mean ± "
            "95% t-interval over seeds), gamma = effective parameters of the fit (of 385 features).",
            "",
            markdown_table(
                ["pools", "noise count", "batches", "pairwise accuracy", "follow gain", "gamma"],
                table,
                ["---", "---", "--:", "--:", "--:", "--:"],
            ),
        ]
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "surrogate_noise_count.md").write_text(text + "\n", encoding="utf-8")
    (out / "surrogate_noise_count.json").write_text(json.dumps({"meta": meta, "runs": results}), encoding="utf-8")
    print(f"[done] {time.time() - t0:.0f}s -> {out}/surrogate_noise_count.md")


if __name__ == "__main__":
    main()
