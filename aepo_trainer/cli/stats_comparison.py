"""`aepo stats`' strategy comparison: every strategy and k selected on the pool file by `PoolReducer.select` (as
`aepo select` and the trainer select), with its cost and the quality of its subsets, and the table printed."""

from __future__ import annotations

import copy
import math
import sys

from .errors import InputError


def _variants(args, ks, pool_sizes):
    """(label, strategy, λ, k) for every comparison; West-of-N once (it annotates the whole pool)."""
    n_min = min(pool_sizes)
    skipped = [k for k in ks if k >= n_min]
    if skipped:
        print(
            f"k = {', '.join(map(str, skipped))} left out: not smaller than the smallest pool (N = {n_min}); "
            "selecting the whole pool is west_of_n",
            file=sys.stderr,
        )
    for strategy in args.strategies:
        if strategy == "west_of_n":
            yield "west_of_n", strategy, 0.0, None
            continue
        for k in ks:
            if k >= n_min:
                continue
            if strategy == "aepo":
                for weight in args.diversity_weight:
                    yield f"aepo λ={weight:g}", strategy, weight, k
            else:
                yield strategy, strategy, 0.0, k


def compute(rows, embeddings, config, args, ks, has_scores, pool_sizes) -> list[dict]:
    from tqdm.auto import tqdm

    from aepo_trainer.reduction.reducer import PoolReducer
    from aepo_trainer.reduction.rows import batch_inputs

    from .pool_stages import prompts_covered

    variants = list(_variants(args, ks, pool_sizes))
    if not variants:
        raise InputError(
            f"no strategy/k to compare: no k in {ks} is smaller than the smallest pool (N = {min(pool_sizes)})"
        )
    records = []
    bar = tqdm(total=len(variants) * len(rows), unit="prompt", desc="selecting", dynamic_ncols=True)
    for label, strategy, weight, k in variants:
        variant = copy.copy(config)  # the same settings object `aepo select` builds, one strategy at a time
        variant.selection_strategy = strategy
        variant.diversity_weight = weight
        variant.num_annotations = k if k is not None else 2
        reducer = PoolReducer(variant, service=None, device=args.device)
        size = variant.active_batch_size if reducer.active is not None else args.batch_size
        subsets, rep, div = [], [], []
        for start in range(0, len(rows), size):
            batch_rows, tensor, mask = batch_inputs(rows, embeddings, start, start + size, config.embeddings_column)
            selected = reducer.select(batch_rows, tensor, mask)
            selection, batch_subsets, keys = selected.selection, selected.subsets, selected.keys
            if reducer.active is not None:  # the scores column plays the annotator
                labels = [[row[config.scores_column][i] for i in sub] for row, sub in zip(batch_rows, batch_subsets)]
                reducer.active.observe(batch_rows, tensor, mask, keys, batch_subsets, labels)
            subsets.extend(batch_subsets)
            rep.extend(selection.representativeness.float().cpu().tolist())
            div.extend(selection.diversity.float().cpu().tolist())
            bar.update(len(batch_rows))
        costs = [len(s) for s in subsets]
        record = {
            "strategy": label,
            "k": k if k is not None else "N",
            "annotations": sum(costs),
            "representativeness": _mean(rep),
            "diversity": _mean(div),
            "_per_prompt": {"diversity": div, "costs": costs},  # for --diagnostics_plot; not in the table
        }
        if args.annotation_budget is not None:
            record["prompts_covered"] = prompts_covered(costs, args.annotation_budget)
        if has_scores:
            best, worst = [], []
            for row, subset in zip(rows, subsets):
                values = [row[config.scores_column][i] for i in subset]
                values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
                if len(values) >= 1:
                    best.append(max(values))
                    worst.append(min(values))
            record.update(best=_mean(best), worst=_mean(worst), gap=_mean([b - w for b, w in zip(best, worst)]))
            record["_per_prompt"].update(best=best, worst=worst)
        if reducer.active is not None:
            curve = [q.to_dict() for q in reducer.active.history]
            pairs = sum(q["pairs_evaluated"] for q in curve)
            record["pairwise_accuracy"] = (
                sum(q["pairwise_accuracy"] * q["pairs_evaluated"] for q in curve if q["pairs_evaluated"]) / pairs
                if pairs
                else float("nan")
            )
            record["learning_curve"] = curve
        records.append(record)
    bar.close()
    return records


def _mean(values) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else float("nan")


def format_table(records: list[dict], budget, prompts: int, has_scores: bool) -> str:
    columns = [("strategy", "strategy", "{}"), ("k", "k", "{}"), ("annotations", "annotations", "{}")]
    if budget is not None:
        columns.append(("prompts_covered", f"covered/{prompts} (budget {budget})", "{}"))
    columns += [("representativeness", "representativeness", "{:.4f}"), ("diversity", "diversity", "{:.4f}")]
    if has_scores:
        columns += [("best", "best score", "{:.3f}"), ("worst", "worst score", "{:.3f}"), ("gap", "gap", "{:.3f}")]
    if any("pairwise_accuracy" in r for r in records):
        columns.append(("pairwise_accuracy", "pairwise acc.", "{:.3f}"))
    cells = [[fmt.format(r.get(key, float("nan"))) if key in r else "–" for key, _, fmt in columns] for r in records]
    widths = [max(len(title), *(len(c[i]) for c in cells)) for i, (_, title, _) in enumerate(columns)]
    lines = [
        "  ".join(
            title.ljust(w) if i == 0 else title.rjust(w) for i, ((_, title, _), w) in enumerate(zip(columns, widths))
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for c in cells:
        lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths))))
    return "\n".join(lines)
