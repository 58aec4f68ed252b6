"""One batch of candidate pools -> selected subsets -> annotations -> preference pairs, as three stages.

`PoolReducer` is the single implementation of the AEPO data step, in the order data flows:

1. `select(rows, embeddings, mask)` — k of N per prompt, batched on the device (`selection.select_subsets`; the
   active strategies' `ActiveSelector`; `implicit_reward_gap` from the policy signals the trainer passes in);
2. `requests(rows, subsets)` — what to annotate: the selected completions only;
3. `finish(rows, selected, reply)` — pairs (`pairing.make_pairs`) and the batch statistics, from the annotations.

Annotation sits between 2 and 3 and is the caller's: `AEPOTrainer` pays for every rank's requests on the main process
inside the training step (`annotation.ledger.annotate_on_main_process`); `aepo select` and `reduce` annotate in this
process (`annotation.ledger.annotate_requests`). Because selection and pairing randomness are keyed by `prompt_key`
rather than by the batch position, the trainer and `aepo select` produce exactly the same subsets and pairs for the
same seed and configuration, whatever the batching.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..annotation.base import AnnotationRequest
from ..choices import POLICY_PROMPT_SELECTIONS, POLICY_STRATEGIES
from ..selection.keys import prompt_key

logger = logging.getLogger(__name__)

__all__ = ["RUNNING_TOTALS", "STATS_FIELDS", "PoolReducer", "ReducedBatch", "Selected", "add_stats"]

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
    "gold_pairs",  # pairs whose two responses both have a (different) score in the dataset's scores column
    "gold_agreements",  # ... of which the paid labels order the same way as those dataset scores
    "annotations_recovered",  # annotations read under an earlier charge (e.g. human labels): stored, no new charge
)

#: The statistics that are running totals of the ledger (the same in every batch of one annotation call): added up
#: over batches they are taken as they are (the latest), never summed. The one statement of this rule.
RUNNING_TOTALS = ("annotations_spent", "budget_left")


def add_stats(totals: dict, stats: dict) -> None:
    """Add one batch's statistics to `totals`: sums, except the `RUNNING_TOTALS` (the latest value); NaN adds
    nothing."""
    for name in totals:
        value = stats.get(name, 0.0)
        if name in RUNNING_TOTALS:
            totals[name] = value
        elif not (isinstance(value, float) and math.isnan(value)):
            totals[name] += value


@dataclass
class Selected:
    """The selection stage's output: the kernel's result, the selected pool indices per row, the rows' keys."""

    selection: Any
    subsets: list[list[int]]
    keys: list[int]
    # active strategies: the batch's (embeddings, mask), from which `finish` lets the surrogate learn its labels
    pools: Any = None
    # policy signals of the batch (`{"implicit_rewards": [B, N]}`), computed by the trainer before selection
    signals: dict | None = None
    # `implicit_reward_gap`: [B] bool, False where a prompt had no implicit-reward spread and fell back
    informative: Any = None


@dataclass
class ReducedBatch:
    """What `PoolReducer` made of a batch of pools.

    Attributes:
        selection: the `SelectionResult` of `select_subsets` (indices/valid on the selection device).
        subsets: selected pool indices per row (ascending).
        scores: annotated scores per row, aligned with `subsets` (`None` entries are invalid scores); `None` for a
            prompt skipped because the budget ran out (or whose labels are pending).
        pairs: the preference pairs (`Pair.row` = batch row, `chosen`/`rejected` = positions inside the subset).
        stats: the batch statistics, keyed by `STATS_FIELDS`.
        budget_exhausted: True when at least one prompt was skipped for budget.
        prompt_keys: `prompt_key` of every row.
        pending: an `AnnotationsPending` raised by a human annotator (its labels are not there yet), else None.
        active: active strategies only: the surrogate's `BatchQuality` on this batch (measured before learning it).
    """

    selection: Any
    subsets: list[list[int]]
    scores: list[list[float | None] | None]
    pairs: list
    stats: dict[str, float]
    budget_exhausted: bool
    prompt_keys: list[int] = field(default_factory=list)
    pending: Exception | None = None
    active: Any = None

    def stats_vector(self) -> torch.Tensor:
        return torch.tensor([float(self.stats.get(name, 0.0)) for name in STATS_FIELDS], dtype=torch.float32)


class PoolReducer:
    """Reduces batches of pools to preference pairs: select k of N -> (annotate the selected) -> pair.

    Args:
        args: the `AEPOConfig` (selection, pairing and column settings).
        service: the `AnnotationService` used by `reduce` (annotation in this process); None where the caller
            annotates (the trainer's ranks other than the main process hold no service).
        device: where selection runs (the training device); defaults to the embeddings' device.
        catch_pending: `reduce` returns labels pending from people in `ReducedBatch.pending` instead of raising.
    """

    def __init__(self, args, service=None, device: torch.device | str | None = None, catch_pending: bool = False):
        self.args = args
        self.service = service
        self.device = None if device is None else torch.device(device)
        self.catch_pending = catch_pending
        self.active = None  # an ActiveSelector when the strategy learns from the paid labels (issue 15)
        self.feature_model = None  # the surrogate's feature model (`active_feature_model`, issue 27)
        if getattr(args, "uses_active_selection", False):
            from ..selection.active import ActiveSelector

            self.active = ActiveSelector.from_config(args)
            if getattr(args, "active_feature_model", None):
                from ..selection.feature_model import FeatureModel

                self.feature_model = FeatureModel.load(args.active_feature_model, self.device)  # refused here if bad

    @property
    def seed(self) -> int:
        return int(self.args.effective_selection_seed)

    # ------------------------------------------------------------------------------------------------ 1. select

    @property
    def needed_signals(self) -> tuple[str, ...]:
        """The policy signals `select` needs in training (`("implicit_rewards",)` for `implicit_reward_gap` or the
        surrogate's implicit-reward feature, or `prompt_selection='implicit_reward_spread'`; empty otherwise): the
        trainer computes them before selecting."""
        if self.active is not None:  # less the feature model's hidden states, which `select` computes itself
            own = ("hidden_states",) if self.feature_model is not None else ()
            needed = tuple(name for name in self.active.needed_signals if name not in own)
        else:
            needed = ("implicit_rewards",) if self.args.selection_strategy in POLICY_STRATEGIES else ()
        if (
            getattr(self.args, "prompt_selection", "all") in POLICY_PROMPT_SELECTIONS
            and "implicit_rewards" not in needed
        ):
            needed += ("implicit_rewards",)
        return needed

    def select(
        self,
        rows: list[dict],
        embeddings: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        learn: bool = True,
        signals: dict | None = None,
    ) -> Selected:
        """k of N per row, batched on `self.device` (or the embeddings' device).

        With an active strategy, `learn=False` selects with its embedding-only cold-start strategy and `finish` then
        teaches the surrogate nothing: evaluation uses it, so that every evaluation selects the same candidates. A
        policy-aware strategy (`implicit_reward_gap`) likewise selects with `active_cold_start` when `learn=False`,
        and needs `signals={"implicit_rewards": [B, N]}` otherwise.
        """
        from ..selection import select_subsets

        args = self.args
        device = self.device or embeddings.device
        keys = [prompt_key(row["prompt"]) for row in rows]
        policy_aware = args.selection_strategy in POLICY_STRATEGIES
        plain = self.active is None and not policy_aware
        strategy = args.selection_strategy if plain else args.active_cold_start
        mask = None if mask is None else mask.to(device)
        informative = None

        def embedding_only():
            return select_subsets(
                embeddings.to(device),
                args.num_annotations,
                diversity_weight=args.diversity_weight,
                mask=mask,
                strategy=strategy,
                seed=self.seed,
                row_keys=torch.tensor(keys, dtype=torch.long, device=device),
                search=args.selection_search,
                local_search_rounds=args.local_search_rounds,
            )

        if self.active is not None and learn:
            pools = (embeddings.to(device), mask)
            if self.feature_model is not None:
                hidden = self.feature_model.encode_pools(rows, "prompt", args.completions_column, embeddings.shape[1])
                signals = {**(signals or {}), "hidden_states": hidden.to(device)}
            selection = self.active.select(rows, *pools, row_keys=keys, signals=signals)
        elif policy_aware and learn:
            from ..selection.implicit_reward import select_implicit_reward_gap

            pools = None
            rewards = (signals or {}).get("implicit_rewards")
            if rewards is None:
                raise ValueError(
                    f"selection_strategy={args.selection_strategy!r} ranks candidates by the implicit reward of the "
                    "policy being trained, which only AEPOTrainer computes (in the training step)."
                )
            selection, informative = select_implicit_reward_gap(
                embeddings.to(device), rewards.to(device), args.num_annotations, mask=mask, fallback=embedding_only()
            )
        else:
            pools = None
            selection = embedding_only()
        indices = selection.indices.detach().cpu().tolist()
        valid = selection.valid.detach().cpu().tolist()
        subsets = [
            [int(i) for i, ok in zip(row_indices, row_valid) if ok and i >= 0]
            for row_indices, row_valid in zip(indices, valid)
        ]
        return Selected(selection, subsets, keys, pools, signals, informative)

    # ------------------------------------------------------------------------------------------------ 2. requests

    def requests(self, rows: list[dict], selected: Selected) -> list[AnnotationRequest]:
        """One request per row: the selected completions (never the whole pool) and the row's other columns."""
        ccol = self.args.completions_column
        return [
            AnnotationRequest(
                prompt=row["prompt"],
                completions=[row[ccol][i] for i in subset],
                indices=list(subset),
                row={name: value for name, value in row.items() if name not in ("prompt", ccol)},
            )
            for row, subset in zip(rows, selected.subsets)
        ]

    # ------------------------------------------------------------------------------------------------ 3. pair

    def finish(self, rows: list[dict], selected: Selected, reply) -> ReducedBatch:
        """Pairs and statistics of a batch from its annotations (`reply`: an `annotation.ledger.AnnotationReply`)."""
        from .pairing import make_pairs

        args = self.args
        scores = list(reply.scores) if reply.pending is None else [None] * len(rows)
        quality = None
        if self.active is not None and selected.pools is not None and reply.pending is None:  # learn them now
            quality = self.active.observe(
                rows, *selected.pools, selected.keys, selected.subsets, scores, signals=selected.signals
            )
        # Invalid scores (None) are never paired: make_pairs counts them.
        pairing = make_pairs(
            scores, rule=args.pairing_rule, margin=args.pairing_margin, seed=self.seed, row_keys=selected.keys
        )
        pairs = list(pairing.pairs)
        rep = selected.selection.representativeness.detach().float().cpu()
        div = selected.selection.diversity.detach().float().cpu()
        stats = {
            "prompts": float(len(rows)),
            "representativeness_sum": float(torch.nan_to_num(rep).sum()),
            "diversity_sum": float(torch.nan_to_num(div).sum()),
            "pairs": float(len(pairs)),
            "reward_chosen_sum": float(sum(p.chosen_score for p in pairs)),
            "reward_rejected_sum": float(sum(p.rejected_score for p in pairs)),
            "annotations_paid": float(reply.paid),
            "annotations_reused": float(reply.reused),
            "annotations_recovered": float(reply.recovered),
            "annotations_spent": float(reply.spent),
            "budget_left": float(reply.budget_left),
            "prompts_skipped": float(len(reply.skipped)),
            "ties_dropped": float(pairing.ties_dropped),
            "invalid_dropped": float(pairing.invalid_dropped),
            "budget_exhausted": float(bool(reply.skipped)),
            "annotations_pending": float(reply.pending is not None),
            **_gold_agreement(rows, selected.subsets, pairs, args.scores_column),
        }
        return ReducedBatch(
            selection=selected.selection,
            subsets=selected.subsets,
            scores=scores,
            pairs=pairs,
            stats=stats,
            budget_exhausted=bool(reply.skipped),
            prompt_keys=selected.keys,
            pending=reply.pending,
            active=quality,
        )

    # ------------------------------------------------------------------------------------------------ all three

    def reduce(self, rows: list[dict], embeddings: torch.Tensor, mask: torch.Tensor | None = None) -> ReducedBatch:
        """Select, annotate (in this process, with `self.service`) and pair one batch of pools (`aepo select`)."""
        from ..annotation.ledger import annotate_requests

        if self.service is None:
            raise ValueError("PoolReducer.reduce annotates in this process: it needs a `service`.")
        selected = self.select(rows, embeddings, mask)
        reply = annotate_requests(self.service, self.requests(rows, selected), catch_pending=self.catch_pending)
        return self.finish(rows, selected, reply)


def _gold_agreement(rows: list[dict], subsets: list[list[int]], pairs: list, scores_column: str) -> dict[str, float]:
    """How often the paid labels agree with gold scores shipped in the dataset (where both exist and differ): the
    judge's (or reward model's, or people's) agreement with gold, e.g. a judge checked against known scores. With
    `annotator='dataset_scores'` the labels *are* those scores, so the trainer does not log it then."""
    agree = total = 0
    for pair in pairs:
        gold = rows[pair.row].get(scores_column)
        if not isinstance(gold, (list, tuple)):
            continue
        subset = subsets[pair.row]
        chosen, rejected = gold[subset[pair.chosen]], gold[subset[pair.rejected]]
        if not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (chosen, rejected)
        ):
            continue
        if chosen != rejected:
            total += 1
            agree += chosen > rejected
    return {"gold_pairs": float(total), "gold_agreements": float(agree)}
