"""One ledger for the whole run: every rank's annotation requests are paid for by the main process.

Budget reservation and the annotation store belong to the main process only. In a run of several processes (one
machine or several nodes), each rank selects its own candidates on its own device, sends the requests to the main
process (`accelerate.utils.gather_object`), the main process annotates them all in one `AnnotationService.annotate`
call — so the budget is exact across ranks and nodes, and no shared filesystem is needed for the store — and sends
each rank its part of the result back (`accelerate.utils.broadcast_object_list`). With one process no collective runs.

`annotate_requests` is the single-process core, also used by `aepo select`: it turns the service's outcome and its
two stop conditions (budget exhausted, labels pending from people) into an `AnnotationReply`, a plain picklable
object.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .base import AnnotationsPending, BudgetExhausted

__all__ = ["AnnotationReply", "annotate_on_main_process", "annotate_requests", "split_reply"]


@dataclass
class AnnotationReply:
    """What annotating a list of requests gave and cost (one entry of `scores` per request).

    Attributes:
        scores: per request, its completions' scores (`None` entries are invalid scores, never paired), or `None`
            for a prompt skipped because its annotations did not fit in the budget (or because labels are pending).
        paid: annotations newly charged to the budget.
        reused: items served from the store for free.
        recovered: items whose annotation arrived under a charge made earlier (human labels read back from the queue
            or the labelling page, or a crashed call's items): stored now, no new charge.
        skipped: indices of the requests skipped for budget.
        spent: what the run has spent so far (all processes, all restarts).
        budget_left: what is left of the budget (NaN when unlimited).
        budget_exhausted: True when some request (on any rank) was skipped for budget.
        pending: the `AnnotationsPending` raised while labels are awaited from people, else None.
    """

    scores: list = field(default_factory=list)
    paid: int = 0
    reused: int = 0
    skipped: list[int] = field(default_factory=list)
    spent: int = 0
    recovered: int = 0
    budget_left: float = math.nan
    budget_exhausted: bool = False
    pending: AnnotationsPending | None = None

    def part(self, start: int, stop: int, *, first: bool) -> AnnotationReply:
        """The reply restricted to requests `start:stop`. `paid`/`reused` are totals of the whole call, not per
        request: they go to the `first` part only, so that summing the parts' statistics gives the call's."""
        return AnnotationReply(
            scores=self.scores[start:stop],
            paid=self.paid if first else 0,
            reused=self.reused if first else 0,
            recovered=self.recovered if first else 0,
            skipped=[i - start for i in self.skipped if start <= i < stop],
            spent=self.spent,
            budget_left=self.budget_left,
            budget_exhausted=self.budget_exhausted,
            pending=self.pending,
        )


def annotate_requests(service, requests: list, *, catch_pending: bool = True) -> AnnotationReply:
    """Annotate `requests` with `service` in this process.

    A budget that runs out skips whole prompts (never half-annotates one); labels pending from people end the call
    with every prompt unscored and `pending` set when `catch_pending` (a trainer stops cleanly), else the
    `AnnotationsPending` propagates (the CLI reports it).
    """
    reply = AnnotationReply(scores=[None] * len(requests))
    try:
        outcome = service.annotate(requests)
    except BudgetExhausted as exc:  # on_budget_exhausted="raise": keep what was obtained
        outcome = exc.outcome
        if outcome is None:
            reply.skipped = list(range(len(requests)))
    except AnnotationsPending as exc:
        if not catch_pending:
            raise
        outcome, reply.pending = None, exc
    if outcome is not None:
        reply.scores, reply.paid, reply.reused = list(outcome.scores), outcome.paid, outcome.reused
        reply.recovered = outcome.recovered
        reply.skipped = list(outcome.skipped)
    reply.budget_exhausted = bool(reply.skipped)
    reply.spent = service.spent  # one indexed SQLite query
    reply.budget_left = float(max(0, service.budget - reply.spent)) if service.budget is not None else math.nan
    return reply


def annotate_on_main_process(accelerator, service, requests: list) -> AnnotationReply:
    """Annotate every rank's `requests` on the main process; each rank gets its own part of the reply back.

    `service` exists on the main process only (None elsewhere). An error raised by the annotator on the main process
    is re-raised there and reported on every other rank, so that no process waits forever in a collective.
    """
    if accelerator.num_processes == 1:
        return annotate_requests(service, requests)
    from accelerate.utils import broadcast_object_list, gather_object

    per_rank = gather_object([list(requests)])  # one list per rank, in rank order
    message: list = [None]
    error = None
    if accelerator.is_main_process:
        flat = [request for part in per_rank for request in part]
        try:
            whole = annotate_requests(service, flat)
            message = [("ok", split_reply(whole, [len(part) for part in per_rank]))]
        except Exception as exc:
            error = exc
            message = [("error", f"{type(exc).__name__}: {exc}")]
    broadcast_object_list(message, from_process=0)
    status, payload = message[0]
    if status == "error":
        if error is not None:
            raise error
        raise RuntimeError(f"Annotation failed on the main process: {payload}")
    return payload[accelerator.process_index]


def split_reply(reply: AnnotationReply, sizes: list[int]) -> list[AnnotationReply]:
    """`reply` cut into consecutive parts of `sizes` requests (the call's paid/reused totals go to the first)."""
    parts, start = [], 0
    for i, size in enumerate(sizes):
        parts.append(reply.part(start, start + size, first=i == 0))
        start += size
    return parts
