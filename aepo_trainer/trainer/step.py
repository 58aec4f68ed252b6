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

The step takes its inputs (the reducer, the annotation service, the accelerator, the layout settings) and returns a
`StepResult`: the group batches, the annotation reply, the step's summary, its metrics and a few pairs to remember.
`AEPOTrainer` applies the result to its own state; nothing here reads or writes the trainer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .._utils.timing import PhaseTimer, phase
from ..annotation.ledger import AnnotationReply, annotate_on_main_process, split_reply
from ..data.collator import POOL_ROWS
from ..reduction.reducer import RUNNING_TOTALS, STATS_FIELDS
from ..reduction.rows import pair_record
from .batch_keys import REF_LOGPS, STEP_PAIRS, TERMS
from .group_batch import build_group_batch
from .policy_signals import PolicySignals, group_reference_logps

__all__ = ["STEP_PAIRS", "TERMS", "GroupLayout", "StepResult", "pair_texts", "reduce_pool_batches", "step_metrics"]


@dataclass(frozen=True)
class GroupLayout:
    """How the group batches are laid out (TRL's truncation and padding settings of the run)."""

    pad_token_id: int
    max_length: int | None = None
    truncation_mode: str = "keep_end"
    pad_to_multiple_of: int | None = None


@dataclass
class StepResult:
    """What one step's reduction gives the trainer.

    Attributes:
        groups: one group batch per pool batch, in order (`TERMS` and `STEP_PAIRS` set).
        step_terms: loss terms of the whole step, all micro-batches, all ranks (0: the step trains nothing).
        reply: the annotation reply of the step (all its batches).
        summary: `budget_exhausted`, `pending`, `spent`, `pairs`, `budget_left` of the step, all ranks.
        metrics: `(name, value, running_total)` in order: append `value` to the metric `name`, or make it the only
            value when `running_total` (a running total logs its latest value, not a mean over the log window).
        recent_pairs: the step's pairs on this rank with their texts and scores (training only), for reports.
    """

    groups: list[dict]
    step_terms: int
    reply: AnnotationReply
    summary: dict
    metrics: list[tuple[str, float, bool]] = field(default_factory=list)
    recent_pairs: list[dict] = field(default_factory=list)


def reduce_pool_batches(
    batches: list[dict],
    mode: str,
    *,
    reducer,
    service,
    accelerator,
    layout: GroupLayout,
    pairs_are_terms: bool = True,
    include_unpaired: bool = False,
    completions_column: str = "completions",
    policy_signals: Callable[[dict], PolicySignals | None] | None = None,
    timer: PhaseTimer | None = None,
    gold_agreement: bool = True,
    planned_prompts: int | None = None,
) -> StepResult:
    """Select -> annotate (main process) -> pair -> lay out every pool batch of one step.

    Args:
        batches: the step's pool batches (`AEPODataCollator` output) on this rank.
        mode: "train" (active strategies learn, pairs are remembered) or "eval".
        reducer: the run's `PoolReducer`; service: its `AnnotationService` for `mode` (None: no annotation).
        accelerator: the run's accelerator (one collective per statistic; one annotation call on the main process).
        layout: TRL's truncation and padding of the run.
        pairs_are_terms: True when TRL loss types are trained (a term is a pair); False for `rpo_*` losses alone (a
            term is a prompt with at least two annotated responses).
        include_unpaired: lay out the annotated responses that are in no pair too (the `rpo_*` losses use them).
        completions_column: the pool's completions column (for the remembered pairs' texts).
        policy_signals: `batch -> PolicySignals` (`policy_signals.compute_policy_signals`: implicit rewards, policy
            features, reference log-probs) when the selection strategy needs them (training only); it answers None
            on a step without fresh signals (`policy_signals_every`), whose prompts are then all selected by the
            fallback, as prompts without implicit-reward spread are.
        timer: the run's phase timer (select, annotate).
        gold_agreement: log `aepo/label_gold_agreement` (False when the labels *are* the dataset's scores).
        planned_prompts: the prompts the run goes through (`selection.prompts.planned_prompts`): with
            `prompt_selection`, each step annotates the share of its prompts the budget pays for over them.
    """
    device = accelerator.device
    learn = mode == "train"  # active strategies learn from training labels only; evaluation selects the same each time
    known = reducer.active.surrogate.keys() if learn and reducer.active is not None else None
    picks, requests, sizes = [], [], []
    wants_signals = learn and bool(reducer.needed_signals)  # computed here, where the policy is
    spreads, computed, all_signals = [], [], []
    with phase(timer, "select"):
        for batch in batches:
            rows = batch[POOL_ROWS]
            signals = None
            if wants_signals:
                mask = batch["pool_mask"].to(device)
                batch_signals = policy_signals(batch)
                computed.append(batch_signals)
                if batch_signals is None:  # no fresh signals this step: every prompt is flat, so it falls back
                    signals = {"implicit_rewards": torch.zeros(mask.shape, device=device)}
                else:
                    signals = batch_signals.for_selection()
                spreads.append(_spread(signals["implicit_rewards"], mask))
            all_signals.append(signals)
            picks.append(
                reducer.select(
                    rows,
                    batch["pool_embeddings"].to(device),
                    batch["pool_mask"].to(device),
                    learn=learn,
                    signals=signals,
                )
            )
        unselected = None
        if learn and reducer.args.prompt_selection != "all":  # prompts left out cost nothing: their requests are empty
            from ..selection.prompts import drop_unchosen_prompts, prompt_ratio

            ratio = prompt_ratio(reducer.args, planned_prompts)
            features = [b["pool_embeddings"] for b in batches]
            unselected = drop_unchosen_prompts(reducer.args, picks, features, ratio=ratio, signals=all_signals)
        for batch, selected in zip(batches, picks):
            batch_requests = reducer.requests(batch[POOL_ROWS], selected)
            requests.extend(batch_requests)
            sizes.append(len(batch_requests))
    with phase(timer, "annotate"):
        reply = annotate_on_main_process(accelerator, service, requests)

    out, stats, terms, qualities, recent = [], [], [], [], []
    for batch, selected, part in zip(batches, picks, split_reply(reply, sizes)):
        reduced = reducer.finish(batch[POOL_ROWS], selected, part)
        if reduced.active is not None:
            qualities.append(reduced.active)
        group = build_group_batch(
            batch,
            reduced,
            pad_token_id=layout.pad_token_id,
            max_length=layout.max_length,
            truncation_mode=layout.truncation_mode,
            pad_to_multiple_of=layout.pad_to_multiple_of,
            include_unpaired=include_unpaired,
        )
        if pairs_are_terms:
            n_terms = len(reduced.pairs)
        else:  # reward-aware losses alone: one term per prompt with at least two annotated responses
            n_terms = sum(1 for s in reduced.scores if s is not None and sum(v is not None for v in s) >= 2)
        group[TERMS] = n_terms
        if computed and computed[len(out)] is not None:  # the selected rows' reference log-probs: no second pass
            ref_logps = group_reference_logps(computed[len(out)], group)
            if ref_logps is not None:
                group[REF_LOGPS] = ref_logps
        out.append(group)
        stats.append(reduced.stats_vector())
        terms.append(n_terms)
        if mode == "train":
            recent.extend(pair_texts(batch[POOL_ROWS], reduced, completions_column))
    step_terms = int(accelerator.reduce(torch.tensor(float(sum(terms)), device=device), "sum").item())
    for group in out:
        group[STEP_PAIRS] = step_terms
    summary, metrics = step_metrics(accelerator, _sum_stats(stats), step_terms, gold_agreement)
    if known is not None:
        share_active_labels(accelerator, reducer.active, known)
        metrics += active_quality_metrics(reducer.active, qualities)
    if wants_signals:
        metrics += implicit_reward_metrics(accelerator, spreads)
    if unselected is not None:  # every rank's, like the other statistics of the step
        unselected = accelerator.reduce(torch.tensor(float(unselected), device=device), "sum").item()
        metrics.append(("aepo/prompts_unselected", float(unselected), False))
    return StepResult(out, step_terms, reply, summary, metrics, recent)


def pair_texts(rows: list[dict], reduced, completions_column: str = "completions") -> list[dict]:
    """Each pair of a reduced batch with its texts and scores, as `AEPOTrainer.recent_pairs` reports them."""
    out = []
    for pair in reduced.pairs:
        record = pair_record(rows[pair.row], reduced, pair, completions_column)
        out.append(
            {
                "prompt": rows[pair.row].get("prompt"),
                "chosen": record["chosen"],
                "rejected": record["rejected"],
                "chosen_score": float(pair.chosen_score),
                "rejected_score": float(pair.rejected_score),
                "selected": record["selected_indices"],
                "pool_size": len(rows[pair.row][completions_column]),
            }
        )
    return out


def _spread(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B] max - min of each prompt's implicit rewards over its valid candidates."""
    high = rewards.masked_fill(~mask, float("-inf")).max(1).values
    low = rewards.masked_fill(~mask, float("inf")).min(1).values
    return (high - low).float()


def implicit_reward_metrics(accelerator, spreads: list[torch.Tensor]) -> list[tuple[str, float, bool]]:
    """`aepo/implicit_reward_spread` (mean over the step's prompts, all ranks) and `aepo/implicit_reward_flat`
    (prompts without spread: `implicit_reward_gap` selected them by its fallback), one collective."""
    from ..selection.implicit_reward import MIN_GAP

    device = accelerator.device
    spread = torch.cat(spreads) if spreads else torch.zeros(0, device=device)
    local = torch.tensor([float(spread.sum()), float(spread.numel()), float((spread <= MIN_GAP).sum())], device=device)
    total = accelerator.reduce(local, "sum").tolist() if accelerator.num_processes > 1 else local.tolist()
    metrics = []
    if total[1] > 0:
        metrics.append(("aepo/implicit_reward_spread", total[0] / total[1], False))
    metrics.append(("aepo/implicit_reward_flat", total[2], False))
    return metrics


_RUNNING = [STATS_FIELDS.index(name) for name in RUNNING_TOTALS]


def _sum_stats(stats: list[torch.Tensor]) -> torch.Tensor | None:
    """The step's statistics on this rank: sums over its micro-batches, except the running totals (the same in every
    micro-batch of one annotation call), which are taken as they are."""
    if not stats:
        return None
    total = torch.stack(stats).sum(dim=0)
    total[_RUNNING] = stats[-1][_RUNNING]
    return total


def step_metrics(
    accelerator, stats: torch.Tensor | None, step_terms: int, gold_agreement: bool = True
) -> tuple[dict, list[tuple[str, float, bool]]]:
    """Gather one step's statistics from every rank (one collective): the step's summary and its `aepo/*` metrics."""
    device = accelerator.device
    local = stats if stats is not None else torch.zeros(len(STATS_FIELDS))
    rows = accelerator.gather(local.float().to(device).reshape(1, -1)).cpu()
    s = dict(zip(STATS_FIELDS, rows.T))
    total = {name: float(torch.nan_to_num(col).sum()) for name, col in s.items()}
    m = []
    prompts = max(total["prompts"], 1.0)
    pairs = total["pairs"]
    m.append(("aepo/representativeness", total["representativeness_sum"] / prompts, False))
    m.append(("aepo/diversity", total["diversity_sum"] / prompts, False))
    m.append(("aepo/pairs", pairs, False))
    if pairs > 0:
        m.append(("aepo/reward_chosen", total["reward_chosen_sum"] / pairs, False))
        m.append(("aepo/reward_rejected", total["reward_rejected_sum"] / pairs, False))
    for name in ("ties_dropped", "invalid_dropped", "prompts_skipped", "annotations_paid", "annotations_reused"):
        m.append((f"aepo/{name}", total[name], False))
    m.append(("aepo/empty_batches", float(step_terms == 0), False))
    if total["gold_pairs"] > 0 and gold_agreement:
        m.append(("aepo/label_gold_agreement", total["gold_agreements"] / total["gold_pairs"], False))
    spent = float(torch.nan_to_num(s["annotations_spent"], nan=0.0).max())
    m.append(("aepo/annotations_spent", spent, True))  # a running total: the latest, not the mean over the window
    budget_left = s["budget_left"]
    if not torch.isnan(budget_left).all():
        m.append(("aepo/budget_left", float(budget_left[~torch.isnan(budget_left)].min()), True))
    summary = {
        "budget_exhausted": bool(total["budget_exhausted"] > 0),
        "pending": bool(total["annotations_pending"] > 0),
        "spent": spent,
        "pairs": pairs,
        "budget_left": math.nan if torch.isnan(budget_left).all() else float(budget_left.nan_to_num(math.inf).min()),
    }
    return summary, m


def share_active_labels(accelerator, active, known: set) -> None:
    """Every rank learns the labels the other ranks paid for in this step, so that all ranks hold the same surrogate
    (its fit depends only on the set of labels) and select alike in the next step."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import gather_object

    everyone = gather_object([active.export(known)])  # labels and the safety rule's out-of-sample tests
    for part in everyone:  # both are sets, so the merge order does not matter
        active.absorb(part)


def active_quality_metrics(active, qualities: list) -> list[tuple[str, float, bool]]:
    """The learning curve, logged: how the surrogate ranked this step's labels BEFORE it saw them."""
    m = [
        ("aepo/active_labels", float(len(active.surrogate)), True),
        ("aepo/active_cold_start", float(active.cold), False),
        # the safety rule (issue 27), identical on every rank: a function of the shared tests
        ("aepo/active_follows", float(not active.cold), False),
    ]
    safety = active.safety.state()
    m.append(("aepo/active_prompts_tested", float(safety.prompts_tested), True))
    m.append(("aepo/active_safety_lower_bound", safety.lower_bound, True))
    if safety.prompts_tested:
        m.append(("aepo/active_safety_accuracy", safety.accuracy, True))
    for name in ("spearman", "pairwise_accuracy"):
        values = [getattr(q, name) for q in qualities if not math.isnan(getattr(q, name))]
        if values:
            m.append((f"aepo/active_{name}", sum(values) / len(values), False))
    return m
