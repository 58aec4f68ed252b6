"""One batch of candidate pools -> selected subsets -> annotations -> preference pairs.

`PoolReducer.reduce` is the single implementation of the AEPO data step. The training collator (`AEPODataCollator`)
calls it on every batch, and the offline `aepo select` command calls it on chunks of a dataset; because selection and
pairing randomness are keyed by a stable per-prompt key (`prompt_key`) rather than by the batch position, both produce
exactly the same subsets and pairs for the same seed and configuration, whatever the batching.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .annotation.base import AnnotationRequest, BudgetExhausted
from .selection.keys import prompt_key

logger = logging.getLogger(__name__)

__all__ = ["STATS_FIELDS", "PoolReducer", "ReducedBatch"]

# Fixed layout of the per-batch statistics (sums and counts, so that they add up across batches and processes).
STATS_FIELDS = (
    "prompts",  # pool rows in the batch
    "representativeness_sum",  # Σ over rows of the selected subset's representativeness
    "diversity_sum",  # Σ over rows of the selected subset's diversity
    "pairs",  # preference pairs formed
    "reward_chosen_sum",  # Σ annotated score of the chosen responses
    "reward_rejected_sum",  # Σ annotated score of the rejected responses
    "annotations_paid",  # annotations charged to the budget by this batch
    "annotations_reused",  # annotations served from the store for free
    "annotations_spent",  # total charged to the run so far (store ledger, all processes and restarts)
    "budget_left",  # what is left of annotation_budget (NaN when unlimited)
    "prompts_skipped",  # prompts skipped because their annotations did not fit in the budget
    "ties_dropped",  # candidate pairs dropped because the scores were tied (or within pairing_margin)
    "invalid_dropped",  # responses with an invalid (None/NaN/inf) score, never paired
    "budget_exhausted",  # 1.0 when the budget ran out in this batch
    "annotations_pending",  # 1.0 when a human annotator is waiting for labels
)


@dataclass
class ReducedBatch:
    """What `PoolReducer.reduce` made of a batch of pools.

    Attributes:
        selection: the `SelectionResult` of `select_subsets` (indices/valid on the selection device).
        subsets: selected pool indices per row (ascending).
        scores: annotated scores per row, aligned with `subsets` (`None` entries are invalid scores); `None` for a
            prompt skipped because the budget ran out.
        pairs: the preference pairs (`Pair.row` = batch row, `chosen`/`rejected` = positions inside the subset).
        rankings: per row, the valid subset positions ordered from best to worst annotated score; `[]` for skipped
            prompts.
        stats: the batch statistics, keyed by `STATS_FIELDS`.
        budget_exhausted: True when at least one prompt was skipped for budget.
        pending: an `AnnotationsPending` raised by a human annotator (its labels are not there yet), else None.
        active: active strategies only: the surrogate's `BatchQuality` on this batch (measured before learning it).
    """

    selection: Any
    subsets: list[list[int]]
    scores: list[list[float | None] | None]
    pairs: list
    rankings: list[list[int]] | None
    stats: dict[str, float]
    budget_exhausted: bool
    prompt_keys: list[int] = field(default_factory=list)
    pending: Exception | None = None
    # active strategies: the surrogate's `BatchQuality` on this batch's labels (measured before it learned them)
    active: Any = None

    def stats_vector(self) -> torch.Tensor:
        return torch.tensor([float(self.stats.get(name, 0.0)) for name in STATS_FIELDS], dtype=torch.float32)


class PoolReducer:
    """Reduces batches of pools to preference pairs: select k of N -> annotate the selected -> pair.

    Args:
        args: the `AEPOConfig` (selection, pairing and column settings).
        service: the `AnnotationService` (annotator + store + budget).
        device: where selection runs (the training device); defaults to the embeddings' device.
        catch_pending: return `AnnotationsPending` in `ReducedBatch.pending` (the trainer stops cleanly) instead of
            raising it (the CLI reports it).
    """

    def __init__(self, args, service, device: torch.device | str | None = None, catch_pending: bool = False):
        self.args = args
        self.service = service
        self.device = None if device is None else torch.device(device)
        self.catch_pending = catch_pending
        self.last_pending = None  # the last AnnotationsPending caught (catch_pending=True)
        self.active = None  # an ActiveSelector when the strategy learns from the paid labels (issue 15)
        if getattr(args, "uses_active_selection", False):
            from .selection.active import ActiveSelector

            self.active = ActiveSelector.from_config(args)

    @property
    def seed(self) -> int:
        return int(self.args.effective_selection_seed)

    def select(self, rows: list[dict], embeddings: torch.Tensor, mask: torch.Tensor | None = None):
        from .selection import select_subsets

        args = self.args
        device = self.device or embeddings.device
        keys = [prompt_key(row["prompt"]) for row in rows]
        if self.active is not None:
            selection = self.active.select(
                rows, embeddings.to(device), None if mask is None else mask.to(device), row_keys=keys
            )
        else:
            selection = select_subsets(
                embeddings.to(device),
                args.num_annotations,
                diversity_weight=args.diversity_weight,
                mask=None if mask is None else mask.to(device),
                strategy=args.selection_strategy,
                seed=self.seed,
                row_keys=torch.tensor(keys, dtype=torch.long, device=device),
                search=args.selection_search,
                local_search_rounds=args.local_search_rounds,
            )
        indices = selection.indices.detach().cpu().tolist()
        valid = selection.valid.detach().cpu().tolist()
        subsets = [
            [int(i) for i, ok in zip(row_indices, row_valid) if ok and i >= 0]
            for row_indices, row_valid in zip(indices, valid)
        ]
        return selection, subsets, keys

    def reduce(self, rows: list[dict], embeddings: torch.Tensor, mask: torch.Tensor | None = None) -> ReducedBatch:
        """Select, annotate and pair one batch of pools (`rows` with their `[B, N, D]` embeddings and `[B, N]` mask)."""
        from .annotation.base import AnnotationsPending
        from .pairing import make_pairs

        args = self.args
        ccol = args.completions_column
        selection, subsets, keys = self.select(rows, embeddings, mask)

        requests = [
            AnnotationRequest(
                prompt=row["prompt"],
                completions=[row[ccol][i] for i in subset],
                indices=list(subset),
                row={name: value for name, value in row.items() if name not in ("prompt", ccol)},
            )
            for row, subset in zip(rows, subsets)
        ]
        pending = None
        paid = reused = 0
        skipped: list[int] = []
        try:
            outcome = self.service.annotate(requests)
            scores, paid, reused, skipped = outcome.scores, outcome.paid, outcome.reused, list(outcome.skipped)
        except BudgetExhausted as exc:  # on_budget_exhausted="raise": train on what was obtained
            outcome = exc.outcome
            scores = outcome.scores if outcome is not None else [None] * len(rows)
            if outcome is not None:
                paid, reused, skipped = outcome.paid, outcome.reused, list(outcome.skipped)
            else:
                skipped = list(range(len(rows)))
        except AnnotationsPending as exc:
            if not self.catch_pending:
                raise
            pending = self.last_pending = exc
            scores = [None] * len(rows)
            skipped = []

        quality = None
        if self.active is not None and pending is None:  # learn from this batch's labels before the next selection
            quality = self.active.observe(rows, embeddings, mask, keys, subsets, scores)

        # Invalid scores (None) are never paired: make_pairs counts them.
        pairing = make_pairs(scores, rule=args.pairing_rule, margin=args.pairing_margin, seed=self.seed, row_keys=keys)
        pairs = list(pairing.pairs)

        rankings = [list(r) for r in pairing.rankings] if pairing.rankings is not None else None

        budget = self.service.budget
        spent = self.service.spent  # one indexed SQLite query; the ledger is shared by processes and restarts
        rep = selection.representativeness.detach().float().cpu()
        div = selection.diversity.detach().float().cpu()
        stats = {
            "prompts": float(len(rows)),
            "representativeness_sum": float(torch.nan_to_num(rep).sum()),
            "diversity_sum": float(torch.nan_to_num(div).sum()),
            "pairs": float(len(pairs)),
            "reward_chosen_sum": float(sum(p.chosen_score for p in pairs)),
            "reward_rejected_sum": float(sum(p.rejected_score for p in pairs)),
            "annotations_paid": float(paid),
            "annotations_reused": float(reused),
            "annotations_spent": float(spent),
            "budget_left": float(max(0, budget - spent)) if budget is not None else math.nan,
            "prompts_skipped": float(len(skipped)),
            "ties_dropped": float(pairing.ties_dropped),
            "invalid_dropped": float(pairing.invalid_dropped),
            "budget_exhausted": float(bool(skipped)),
            "annotations_pending": float(pending is not None),
        }
        return ReducedBatch(
            selection=selection,
            subsets=subsets,
            scores=list(scores),
            pairs=pairs,
            rankings=rankings,
            stats=stats,
            budget_exhausted=bool(skipped),
            prompt_keys=keys,
            pending=pending,
            active=quality,
        )
