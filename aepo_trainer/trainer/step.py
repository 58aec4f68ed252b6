"""Pool reduction inside `AEPOTrainer`'s step: the batches about to be trained are selected, paid for and paired.

`reduce_pool_batches` runs once per optimizer step on the `gradient_accumulation_steps` pool batches the Trainer has
just fetched (and once per evaluation batch), on every rank:

    select (each rank, its own batches, on its device)
      -> annotate (all ranks' requests in one call on the main process: one ledger, exact budget)
      -> pair -> group batches (`group_batch.build_group_batch`)

Paying here, rather than in the DataLoader, is what makes the pay exact: annotations paid = k × prompts of the steps
actually trained, whatever `dataloader_num_workers` (the collator is pure) and however far the DataLoader looks ahead.
The statistics of the step are gathered from every rank once and logged as `aepo/*` metrics; the pair counts decide
how each micro-batch's loss is weighted (losses are means over the pairs actually formed) and whether the step
updates the weights at all (a step in which no prompt on any rank formed a pair takes no optimizer step).
"""

from __future__ import annotations

import math

import torch

from ..annotation.ledger import annotate_on_main_process, split_reply
from ..data.collator import POOL_ROWS
from ..reduction.reducer import STATS_FIELDS
from .group_batch import build_group_batch
from .on_policy import phase

__all__ = ["STEP_PAIRS", "TERMS", "record_stats", "reduce_pool_batches"]

TERMS = (
    "aepo_terms"  # loss terms of this micro-batch on this rank (pairs; for rpo_* alone: prompts with >= 2 responses)
)
STEP_PAIRS = "aepo_step_terms"  # loss terms of the whole optimizer step, all micro-batches, all ranks


def reduce_pool_batches(trainer, batches: list[dict], mode: str) -> list[dict]:
    """Select -> annotate (main process) -> pair -> lay out every pool batch of one step; returns group batches."""
    args = trainer.args
    reducer = trainer.pool_reducer
    service = trainer.annotation_services.get(mode) if trainer.annotation_services else None
    device = trainer.accelerator.device

    learn = mode == "train"  # active strategies learn from training labels only; evaluation selects the same each time
    known = reducer.active.surrogate.keys() if learn and reducer.active is not None else None
    picks, requests, sizes = [], [], []
    policy_signals = learn and bool(reducer.needed_signals)  # implicit rewards: computed here, where the policy is
    spreads = []
    with phase(trainer, "select"):
        for batch in batches:
            rows = batch[POOL_ROWS]
            signals = None
            if policy_signals:
                from .implicit_rewards import pool_implicit_rewards

                signals = {"implicit_rewards": pool_implicit_rewards(trainer, batch)}
                spreads.append(_spread(signals["implicit_rewards"], batch["pool_mask"].to(device)))
            selected = reducer.select(
                rows,
                batch["pool_embeddings"].to(device),
                batch["pool_mask"].to(device),
                learn=learn,
                signals=signals,
            )
            batch_requests = reducer.requests(rows, selected)
            picks.append(selected)
            requests.extend(batch_requests)
            sizes.append(len(batch_requests))
    with phase(trainer, "annotate"):
        reply = annotate_on_main_process(trainer.accelerator, service, requests)

    include_unpaired = bool(args.rpo_loss_types)
    trl_types = [t for t in trainer.loss_types if t not in args.rpo_loss_types]
    out, stats, terms, qualities = [], [], [], []
    for batch, selected, part in zip(batches, picks, split_reply(reply, sizes)):
        reduced = reducer.finish(batch[POOL_ROWS], selected, part)
        if reduced.active is not None:
            qualities.append(reduced.active)
        group = build_group_batch(
            batch,
            reduced,
            pad_token_id=trainer.pad_token_id,
            max_length=args.max_length,
            truncation_mode=args.truncation_mode,
            pad_to_multiple_of=args.pad_to_multiple_of,
            include_unpaired=include_unpaired,
        )
        if trl_types:
            n_terms = len(reduced.pairs)
        else:  # reward-aware losses alone: one term per prompt with at least two annotated responses
            n_terms = sum(1 for s in reduced.scores if s is not None and sum(v is not None for v in s) >= 2)
        group[TERMS] = n_terms
        out.append(group)
        stats.append(reduced.stats_vector())
        terms.append(n_terms)
        if mode == "train":
            trainer._aepo_remember(batch[POOL_ROWS], reduced)
    step_terms = int(trainer.accelerator.reduce(torch.tensor(float(sum(terms)), device=device), "sum").item())
    for group in out:
        group[STEP_PAIRS] = step_terms
    summary = record_stats(trainer, mode, _sum_stats(stats), step_terms)
    if known is not None:
        share_active_labels(trainer, known)
        record_active_quality(trainer, qualities)
    if policy_signals:
        record_implicit_rewards(trainer, spreads)
    if mode == "train":
        trainer._aepo_after_annotation(reply, summary)
    return out


def _spread(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B] max - min of each prompt's implicit rewards over its valid candidates."""
    high = rewards.masked_fill(~mask, float("-inf")).max(1).values
    low = rewards.masked_fill(~mask, float("inf")).min(1).values
    return (high - low).float()


def record_implicit_rewards(trainer, spreads: list[torch.Tensor]) -> None:
    """`aepo/implicit_reward_spread` (mean over the step's prompts, all ranks) and `aepo/implicit_reward_flat`
    (prompts without spread: `implicit_reward_gap` selected them by its fallback), one collective."""
    from ..selection.implicit_reward import MIN_GAP

    device = trainer.accelerator.device
    spread = torch.cat(spreads) if spreads else torch.zeros(0, device=device)
    local = torch.tensor([float(spread.sum()), float(spread.numel()), float((spread <= MIN_GAP).sum())], device=device)
    total = (
        trainer.accelerator.reduce(local, "sum").tolist() if trainer.accelerator.num_processes > 1 else local.tolist()
    )
    m = trainer._metrics["train"]
    if total[1] > 0:
        m["aepo/implicit_reward_spread"].append(total[0] / total[1])
    m["aepo/implicit_reward_flat"].append(total[2])


_RUNNING = [STATS_FIELDS.index("annotations_spent"), STATS_FIELDS.index("budget_left")]


def _sum_stats(stats: list[torch.Tensor]) -> torch.Tensor | None:
    """The step's statistics on this rank: sums over its micro-batches, except the running totals (the same in every
    micro-batch of one annotation call), which are taken as they are."""
    if not stats:
        return None
    total = torch.stack(stats).sum(dim=0)
    total[_RUNNING] = stats[-1][_RUNNING]
    return total


def record_stats(trainer, mode: str, stats: torch.Tensor | None, step_terms: int) -> dict:
    """Gather one step's statistics from every rank (one collective) and append the `aepo/*` metrics."""
    device = trainer.accelerator.device
    local = stats if stats is not None else torch.zeros(len(STATS_FIELDS))
    rows = trainer.accelerator.gather(local.float().to(device).reshape(1, -1)).cpu()
    s = dict(zip(STATS_FIELDS, rows.T))
    total = {name: float(torch.nan_to_num(col).sum()) for name, col in s.items()}
    m = trainer._metrics[mode]
    prompts = max(total["prompts"], 1.0)
    pairs = total["pairs"]
    m["aepo/representativeness"].append(total["representativeness_sum"] / prompts)
    m["aepo/diversity"].append(total["diversity_sum"] / prompts)
    m["aepo/pairs"].append(pairs)
    if pairs > 0:
        m["aepo/reward_chosen"].append(total["reward_chosen_sum"] / pairs)
        m["aepo/reward_rejected"].append(total["reward_rejected_sum"] / pairs)
    for name in ("ties_dropped", "invalid_dropped", "prompts_skipped", "annotations_paid", "annotations_reused"):
        m[f"aepo/{name}"].append(total[name])
    m["aepo/empty_batches"].append(float(step_terms == 0))
    if total["gold_pairs"] > 0 and not trainer._aepo_labels_are_dataset_scores:
        m["aepo/label_gold_agreement"].append(total["gold_agreements"] / total["gold_pairs"])
    spent = float(torch.nan_to_num(s["annotations_spent"], nan=0.0).max())
    m["aepo/annotations_spent"] = [spent]  # a running total: keep the latest, not the mean over the log window
    budget_left = s["budget_left"]
    if not torch.isnan(budget_left).all():
        m["aepo/budget_left"] = [float(budget_left[~torch.isnan(budget_left)].min())]
    return {
        "budget_exhausted": bool(total["budget_exhausted"] > 0),
        "pending": bool(total["annotations_pending"] > 0),
        "spent": spent,
        "pairs": pairs,
        "budget_left": math.nan if torch.isnan(budget_left).all() else float(budget_left.nan_to_num(math.inf).min()),
    }


def share_active_labels(trainer, known: set) -> None:
    """Every rank learns the labels the other ranks paid for in this step, so that all ranks hold the same surrogate
    (its fit depends only on the set of labels) and select alike in the next step."""
    if trainer.accelerator.num_processes == 1:
        return
    from accelerate.utils import gather_object

    active = trainer.pool_reducer.active
    mine = active.surrogate.export(active.surrogate.keys() - known)
    everyone = gather_object([mine])
    active.absorb([item for part in everyone for item in part])


def record_active_quality(trainer, qualities: list) -> None:
    """The learning curve, logged: how the surrogate ranked this step's labels BEFORE it saw them."""
    m = trainer._metrics["train"]
    active = trainer.pool_reducer.active
    m["aepo/active_labels"] = [float(len(active.surrogate))]
    m["aepo/active_cold_start"].append(float(active.cold))
    for name in ("spearman", "pairwise_accuracy"):
        values = [getattr(q, name) for q in qualities if not math.isnan(getattr(q, name))]
        if values:
            m[f"aepo/active_{name}"].append(sum(values) / len(values))
