"""What `aepo select` reports: the run's summary, the dry run's bill, the active learning curve, the dataset card.

Kept apart from the command's loop (`select.py`) so that the loop reads as the stages it runs.
"""

from __future__ import annotations

import json
import os
import time


def pairs_card(args, config, service, totals: dict, prompts: int, pairs: int):
    """The dataset card of the written pairs: source, strategy, λ, k, seed, annotator identity, budget spent."""
    from aepo_trainer._utils.provenance import dataset_card, provenance

    settings = config.aepo_settings()
    settings.pop("loss_type", None)  # a training setting
    settings.pop("reward_scale", None)
    record = provenance(
        "preference pairs",
        args.input,
        settings,
        annotator_identity=service.identity,
        annotations_paid_this_run=int(totals["annotations_paid"]),
        annotations_reused=int(totals["annotations_reused"]),
        annotations_spent_by_run=service.spent,
        run_id=service.run_id,
        prompts=prompts,
        pairs=pairs,
        prompts_skipped_for_budget=int(totals["prompts_skipped"]),
        ties_dropped=int(totals["ties_dropped"]),
    )
    k = "every candidate (west_of_n)" if config.selection_strategy == "west_of_n" else f"k = {config.num_annotations}"
    description = (
        f"{pairs} preference pairs (prompt/chosen/rejected, with the annotated scores and the selected indices) from "
        f"{prompts} candidate pools of `{args.input}`: {k} candidates per prompt selected with "
        f"`{config.selection_strategy}` (λ = {config.diversity_weight:g}), annotated by `{service.identity}`, paired "
        f"`{config.pairing_rule}`."
    )
    return dataset_card(record, "AEPO preference pairs", description)


def write_learning_curve(selector, path: str) -> None:
    """One JSON line per batch: the surrogate's quality on the batch's labels before it saw them (atomic write)."""

    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for quality in selector.history:
            f.write(json.dumps(quality.to_dict(), allow_nan=True) + "\n")
    os.replace(tmp, path)


def active_summary(selector, path: str) -> str:
    """The learning curve in two lines: labels learned from, and the pooled accuracy on batches before their labels."""
    scored = [q for q in selector.history if q.pairs_evaluated]
    pairs = sum(q.pairs_evaluated for q in scored)
    accuracy = sum(q.pairwise_accuracy * q.pairs_evaluated for q in scored) / pairs if pairs else float("nan")
    cold = sum(q.cold_start for q in selector.history)
    safety = selector.safety.state()
    rule = (
        f"safety rule ({selector.safety.test}): {safety.prompts_tested} prompts tested out of sample, accuracy "
        f"{safety.accuracy:.3f}, lower "
        f"bound {safety.lower_bound:.3f} vs {safety.threshold:.2f} needed -> next batch "
        f"{'follows the surrogate' if not selector.cold else 'random (cold start)'}"
        if selector.safety.enabled
        else "safety rule off"
    )
    nonfinite = selector.nonfinite_features + selector.nonfinite_candidates
    return (
        f"active selection ({selector.strategy}): surrogate fitted on {len(selector.surrogate)} labels "
        f"({selector.invalid_labels} invalid, never used); {cold} of {len(selector.history)} batches selected by the "
        f"cold start ({selector.cold_start}); pairwise accuracy on new batches before their labels {accuracy:.3f} "
        f"over {pairs} pairs; {rule}"
        + (f"; {nonfinite} NaN/inf feature vectors (never learned)" if nonfinite else "")
        + f"; learning curve -> {path}"
    )


def dry_run_costs(rows, embeddings, reducer, service, size: int) -> list[tuple[int, int]]:
    """(annotations needed, of which already in the store) for each prompt of a chunk, as the run would select it."""
    from aepo_trainer.reduction.rows import batch_inputs

    config = reducer.args
    costs = []
    for start in range(0, len(rows), size):
        batch_rows, tensor, mask = batch_inputs(rows, embeddings, start, start + size, config.embeddings_column)
        costs.extend(
            service.cost(request) for request in reducer.requests(batch_rows, reducer.select(batch_rows, tensor, mask))
        )
    return costs


def report_dry_run(chunk_costs, reducer, service, store_path: str | None = None, unselected: int = 0) -> None:
    """Print what the run would pay for: selected items minus those in the store, against the budget. `unselected`:
    the prompts prompt selection leaves out (never requested, so they cost nothing and are not in `chunk_costs`)."""
    from .pool_stages import prompts_covered

    config = reducer.args
    costs = [cost for chunk in chunk_costs for cost in chunk]
    needed = sum(n for n, _ in costs)
    stored = sum(s for _, s in costs)
    per_prompt_cost = [n - s for n, s in costs]
    rows = costs
    to_pay = needed - stored
    remaining = service.remaining
    if reducer.active is not None:
        print(
            f"note: --selection_strategy {config.selection_strategy} chooses each batch from the labels of the "
            f"earlier ones; without labels this dry run selects every batch by the cold start "
            f"({config.active_cold_start}), so 'already in the store' is an estimate (the counts per prompt are exact)."
        )
    per_prompt = "N" if config.selection_strategy == "west_of_n" else config.num_annotations
    total = len(rows) + unselected
    lines = [
        f"dry run: {total} prompts, annotator {service.identity}, store {store_path or service.store.path} "
        "(nothing is written)",
    ]
    if config.prompt_selection != "all":
        lines.append(
            f"  left out by prompt choice {unselected:>10}  (--prompt_selection {config.prompt_selection}: never "
            f"annotated, not paid; {len(rows)} prompts chosen)"
        )
    lines += [
        f"  annotations needed        {needed:>10}  ({per_prompt} per prompt)",
        f"  already in the store      {stored:>10}  (free)",
        f"  would be paid             {to_pay:>10}",
    ]
    if remaining is None:
        lines.append(
            f"  budget                    unlimited  (spent so far by run '{service.run_id}': {service.spent})"
        )
    else:
        covered = prompts_covered(per_prompt_cost, remaining)
        lines += [
            f"  budget                    {config.annotation_budget:>10}  (spent so far: {service.spent}, "
            f"left: {remaining})",
            f"  prompts covered           {covered:>10}  of {total}"
            + ("" if covered == len(rows) else "  (the rest would be skipped: budget exhausted)"),
        ]
    print("\n".join(lines))


def summary(totals: dict, service, timings: dict, started: float, written: str | None) -> str:
    prompts = int(totals["prompts"])
    pairs = int(totals["pairs"])
    mean = (lambda name: totals[name] / prompts) if prompts else (lambda name: float("nan"))
    budget = "unlimited" if service.budget is None else f"{service.budget} (left {service.remaining})"
    stages = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in timings.items())
    lines = [
        f"prompts {prompts}  pairs {pairs}  skipped (budget) {int(totals['prompts_skipped'])}  "
        f"ties dropped {int(totals['ties_dropped'])}  invalid scores {int(totals['invalid_dropped'])}",
        f"annotations: paid {int(totals['annotations_paid'])}  reused from store {int(totals['annotations_reused'])}"
        f"  labels read {int(totals['annotations_recovered'])} (charged when queued)"
        f"  spent by run {service.spent}  budget {budget}  store {service.store.path}",
        f"selection: mean representativeness {mean('representativeness_sum'):.4f}  mean diversity "
        f"{mean('diversity_sum'):.4f}",
        f"wall time {time.perf_counter() - started:.1f}s ({stages})" + (f"; wrote {written}" if written else ""),
    ]
    return "\n".join(lines)
