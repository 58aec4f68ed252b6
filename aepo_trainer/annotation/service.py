"""`AnnotationService`: annotate selected candidates through the store, within the budget.

For each `annotate(requests)` call:

1. compute every item's store key (annotator identity + prompt + completion; relative annotators add the subset);
2. in one `BEGIN IMMEDIATE` transaction, per prompt and in order: serve stored keys for free, charge the missing ones
   to the run's ledger if *all* of them fit in what is left of the budget, otherwise skip the prompt whole;
3. call the annotator on the reserved items only, `batch_size` items per call, and persist each call's scores
   (and mark their charges paid) before anything else happens;
4. read every score back from the store and return them.

A process killed between 2 and 3 leaves charged-but-unscored keys: the next call re-annotates them without a new
charge. Only a kill *inside* an annotator call loses that call's results (at most one batch, never charged twice).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import StorageWriteError
from ..storage.annotations import AnnotationStore, default_store_path
from .base import (
    PENDING,
    AnnotationError,
    AnnotationRequest,
    AnnotationsPending,
    BudgetExhausted,
    canonical_json,
    describe,
    is_valid_score,
    make_key,
    subset_context,
)

logger = logging.getLogger(__name__)

__all__ = ["AnnotationOutcome", "AnnotationService", "apply_annotator_version"]

_VERSION_MARK = "|version="


def apply_annotator_version(annotator, version: str | None) -> None:
    """Append the user's `annotator_version` to the annotator's identity (once), so every store key changes with it
    and annotations made under another version are not reused."""
    if not version:
        return
    identity = str(annotator.identity)
    base = identity.split(_VERSION_MARK)[0]
    family = getattr(annotator, "identity_family", None)
    if family is None:
        annotator.identity_family = base
    annotator.identity = f"{base}{_VERSION_MARK}{version}"


@dataclass
class AnnotationOutcome:
    """What one `AnnotationService.annotate` call returned and cost.

    Attributes:
        scores: one entry per request: the list of scores of its completions (a `None` entry is an invalid score —
            None/NaN/inf from the annotator — never to be paired), or `None` for a prompt skipped for budget.
        paid: annotations newly charged to the budget by this call.
        reused: (prompt, completion) items served from the store at no cost (unique per prompt).
        skipped: indices of the requests skipped because their missing annotations did not fit in the budget.
        budget_exhausted: True when at least one prompt was skipped for budget.
        invalid: invalid scores among the returned ones (counted, logged, never paired).
        recovered: items re-annotated under a charge left by an earlier crashed or failed call (no new charge).
    """

    scores: list[list[float | None] | None]
    paid: int = 0
    reused: int = 0
    skipped: list[int] = field(default_factory=list)
    budget_exhausted: bool = False
    invalid: int = 0
    recovered: int = 0


class AnnotationService:
    """Annotates `AnnotationRequest`s with `annotator`, persisting every score in `store` before returning it.

    Args:
        annotator: any object with `identity` and `score(requests)` (see `Annotator`).
        store: an `AnnotationStore`, or a path to one.
        budget: most annotations `run_id` may be charged in total (None = unlimited). Counted in the store, so it
            holds across restarts and across processes sharing the store and the run id.
        run_id: the ledger the budget is counted in. Use the same id to resume a run.
        batch_size: items per annotator call (relative annotators get whole subsets; at least one per call).
        progress: show a tqdm bar over the items being annotated.
        on_invalid: "skip" (default: invalid scores are returned as None, counted and logged) or "raise"
            (`AnnotationError`, after the scores are saved).
        on_budget_exhausted: "skip" (default: skipped prompts get `None` and `budget_exhausted=True`) or "raise"
            (`BudgetExhausted`, after everything obtained is saved).
        poll_interval, wait_timeout: how often / how long to wait for keys another live process is annotating.
    """

    def __init__(
        self,
        annotator,
        store: AnnotationStore | str | os.PathLike,
        budget: int | None = None,
        run_id: str = "default",
        batch_size: int = 16,
        progress: bool = False,
        on_invalid: str = "skip",
        on_budget_exhausted: str = "skip",
        poll_interval: float = 0.2,
        wait_timeout: float = 3600.0,
    ):
        if not hasattr(annotator, "score") or not hasattr(annotator, "identity"):
            raise TypeError(f"{annotator!r} is not an annotator: it needs an `identity` and a `score(requests)`.")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
            raise ValueError(f"budget must be None (unlimited) or an integer >= 0, got {budget!r}.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
        if on_invalid not in ("skip", "raise"):
            raise ValueError(f"on_invalid must be 'skip' or 'raise', got {on_invalid!r}.")
        if on_budget_exhausted not in ("skip", "raise"):
            raise ValueError(f"on_budget_exhausted must be 'skip' or 'raise', got {on_budget_exhausted!r}.")
        self.annotator = annotator
        self.store = store if isinstance(store, AnnotationStore) else AnnotationStore(store)
        self.budget = budget
        self.run_id = str(run_id)
        self.batch_size = batch_size
        self.progress = progress
        self.on_invalid = on_invalid
        self.on_budget_exhausted = on_budget_exhausted
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout
        self._owner_token, self._owner_pid = uuid.uuid4().hex, os.getpid()
        self._warned_budget = False
        self.stale_identities = self._find_stale_identities()

    @classmethod
    def from_config(cls, args, annotator, run_id: str = "default", **kwargs) -> AnnotationService:
        """Service configured by an `AEPOConfig`: store `annotation_store` (default `<output_dir>/annotations.sqlite`),
        budget `annotation_budget`, batch size `annotation_batch_size`."""
        path = default_store_path(args)
        apply_annotator_version(annotator, getattr(args, "annotator_version", None))
        kwargs.setdefault("budget", getattr(args, "annotation_budget", None))
        kwargs.setdefault("batch_size", getattr(args, "annotation_batch_size", 16))
        return cls(annotator, AnnotationStore(path), run_id=run_id, **kwargs)

    @property
    def _owner(self) -> str:
        """Token of this service in the ledger; a forked child gets its own (it must not share reservations)."""
        if self._owner_pid != os.getpid():
            self._owner_token, self._owner_pid = uuid.uuid4().hex, os.getpid()
        return self._owner_token

    def _find_stale_identities(self) -> dict[str, int]:
        """Identities in the store of an older version of this annotator (same family: name without code hash and
        version label), with their annotation counts. Their scores are never reused, since the store key holds
        the identity; this only says so, once, so nobody wonders why labels are bought again."""
        identity = self.identity
        family = getattr(self.annotator, "identity_family", None) or identity.split(_VERSION_MARK)[0]
        try:  # a read-only scan of one column (no index: milliseconds for thousands of rows)
            rows = list(self.store.annotator_counts(family).items())
        except Exception:  # never fail a run over a diagnostic
            return {}
        stale = {
            name: int(n)
            for name, n in rows
            if name != identity and (name == family or name[len(family)] in "@|")  # not a longer name
        }
        if stale:
            logger.warning(
                "Annotator %s has changed since %s were stored (under %s): its code or `annotator_version` differs, "
                "so those scores are NOT reused and every selected item is annotated (and paid) again.",
                identity,
                f"{sum(stale.values())} annotation(s)",
                ", ".join(sorted(stale)),
            )
        return stale

    # ------------------------------------------------------------------------------------------- budget

    @property
    def identity(self) -> str:
        return str(self.annotator.identity)

    @property
    def spent(self) -> int:
        """Annotations charged to this run so far (all processes, all restarts)."""
        return self.store.spent(self.run_id)

    @property
    def remaining(self) -> int | None:
        """Annotations the run may still pay for (None when the budget is unlimited)."""
        return None if self.budget is None else max(0, self.budget - self.spent)

    def budget_message(self, skipped: int = 0) -> str:
        """Human-readable account of the budget, used when it runs out (an annotator with its own budget that ran
        out — the API judge's dollars — gives its own account through an optional `budget_message()`)."""
        own = getattr(self.annotator, "budget_message", None)
        if callable(own) and own():
            return own()
        if self.budget is None:
            return f"{self.spent} annotations spent for run '{self.run_id}' (no budget limit)."
        msg = (
            f"Annotation budget exhausted: {self.spent}/{self.budget} annotations spent for run '{self.run_id}' "
            f"(store: {self.store.path})"
        )
        if skipped:
            msg += f"; {skipped} prompt(s) did not fit and were skipped"
        return msg + (
            ". Every annotation paid for is saved in the store and will be reused for free; raise "
            "`annotation_budget` (same run id) to continue."
        )

    # ------------------------------------------------------------------------------------------- annotate

    def annotate(self, requests: Sequence[AnnotationRequest]) -> AnnotationOutcome:
        """Scores for `requests` (see `AnnotationOutcome`); pays only for keys the store does not hold."""
        requests = list(requests)
        for i, req in enumerate(requests):
            if not isinstance(req, AnnotationRequest):
                raise TypeError(f"requests[{i}] is a {type(req).__name__}, expected an AnnotationRequest.")
        relative = bool(getattr(self.annotator, "relative", False))
        keys = [self._keys(req, relative) for req in requests]
        outcome = AnnotationOutcome(scores=[None] * len(requests))
        todo = [i for i in range(len(requests)) if requests[i].completions]
        for i in range(len(requests)):
            if not requests[i].completions:
                outcome.scores[i] = []
        pending: list[AnnotationsPending] = []
        stop_message = None
        started = time.monotonic()
        while todo:
            decisions = self.store.reserve(self.run_id, [keys[i] for i in todo], self.budget, self._owner)
            waiting, jobs = [], []
            for i, d in zip(todo, decisions):
                if d.status == "skip":
                    outcome.skipped.append(i)
                elif d.status == "wait":
                    waiting.append(i)
                else:
                    outcome.paid += len(d.charged)
                    outcome.recovered += len(d.recovered)
                    outcome.reused += len(d.cached)
                    if d.to_annotate:
                        jobs.append((i, set(d.to_annotate)))
            if jobs:
                new_pending, stopped = self._run_jobs(requests, keys, jobs, relative)
                pending.extend(new_pending)
                if stopped is not None:  # the annotator's own (cost) budget ran out: skip everything left
                    blocked, stop_message = stopped
                    outcome.skipped.extend(blocked + waiting)
                    waiting = []
            todo = waiting
            if todo:
                if time.monotonic() - started > self.wait_timeout:
                    raise TimeoutError(
                        f"Waited {self.wait_timeout:.0f} s for another process to finish annotating "
                        f"{len(todo)} prompt(s) in store {self.store.path}."
                    )
                time.sleep(self.poll_interval)
        if pending:
            total = sum(p.pending for p in pending)
            raise AnnotationsPending(
                f"{total} annotation(s) are waiting for labels in {pending[0].queue_path}; write them to "
                f"{pending[0].labels_path} and run again (labels already given are saved in {self.store.path}; "
                f"nothing is queued or paid twice).",
                pending=total,
                queue_path=pending[0].queue_path,
                labels_path=pending[0].labels_path,
            )
        self._collect(requests, keys, outcome)
        outcome.skipped.sort()
        outcome.budget_exhausted = bool(outcome.skipped)
        if outcome.invalid:
            logger.warning(
                "Annotator %s returned %d invalid score(s) (None/NaN/inf): kept as None and never paired.",
                self.identity,
                outcome.invalid,
            )
        if outcome.budget_exhausted:
            message = stop_message or self.budget_message(len(outcome.skipped))
            # once per service at WARNING (a trainer stops there; a CLI keeps going through the remaining prompts)
            logger.log(logging.DEBUG if self._warned_budget else logging.WARNING, message)
            self._warned_budget = True
            if self.on_budget_exhausted == "raise":
                raise BudgetExhausted(
                    message, spent=self.spent, budget=self.budget, run_id=self.run_id, outcome=outcome
                )
        if outcome.invalid and self.on_invalid == "raise":
            raise AnnotationError(
                f"Annotator {self.identity} returned {outcome.invalid} invalid score(s) (None/NaN/inf); they are "
                f"saved in {self.store.path} and will not be paid again."
            )
        return outcome

    def cost(self, request: AnnotationRequest) -> tuple[int, int]:
        """What annotating `request` would take, without calling the annotator: `(needed, already_stored)`, counted
        in distinct store keys. `needed - already_stored` is what it would pay (the `--dry-run` of `aepo select`)."""
        keys = list(dict.fromkeys(self._keys(request, bool(getattr(self.annotator, "relative", False)))))
        return len(keys), len(self.store.get(keys))

    # ------------------------------------------------------------------------------------------- internals

    def _keys(self, req: AnnotationRequest, relative: bool) -> list[str]:
        context = subset_context(req.completions) if relative else None
        return [make_key(self.identity, req.prompt, c, context) for c in req.completions]

    def _batches(self, requests, keys, jobs, relative) -> list[list[tuple[int, list[int]]]]:
        """Split the jobs into annotator calls: lists of (request index, positions to score)."""
        if relative:  # whole subsets, packed greedily up to batch_size items (at least one subset per call)
            batches, current, size = [], [], 0
            for i, _ in jobs:
                n = len(keys[i])
                if current and size + n > self.batch_size:
                    batches.append(current)
                    current, size = [], 0
                current.append((i, list(range(n))))
                size += n
            return batches + ([current] if current else [])
        items = []  # (request index, position), one per distinct key to annotate
        for i, wanted in jobs:
            seen = set()
            for pos, k in enumerate(keys[i]):
                if k in wanted and k not in seen:
                    seen.add(k)
                    items.append((i, pos))
        size = len(items) if getattr(self.annotator, "single_call", False) else self.batch_size
        batches = []
        for start in range(0, len(items), max(1, size)):
            batch: list[tuple[int, list[int]]] = []
            for i, pos in items[start : start + size]:
                if batch and batch[-1][0] == i:
                    batch[-1][1].append(pos)
                else:
                    batch.append((i, [pos]))
            batches.append(batch)
        return batches

    def _run_jobs(self, requests, keys, jobs, relative):
        """Annotate the reserved jobs batch by batch: `(pending, stopped)`, where `stopped` is None or, when the
        annotator raised a `BudgetExhausted` carrying `partial_scores` (its own cost budget, e.g. the API judge's
        dollars), `(request indices left unscored, message)`: the scores it did obtain are saved, the rest of this
        call is not attempted (their charges stay in the ledger and are recovered for free later)."""
        mine = {k for _, wanted in jobs for k in wanted}  # reservations this call holds and must finish or release
        pending: list[AnnotationsPending] = []
        stopped = None
        batches = self._batches(requests, keys, jobs, relative)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=sum(len(p) for b in batches for _, p in b), desc=f"annotating ({self.identity})", unit="item"
            )
        try:
            for number, batch in enumerate(batches):
                sub = [
                    AnnotationRequest(
                        requests[i].prompt,
                        [requests[i].completions[p] for p in positions],
                        [requests[i].indices[p] for p in positions],
                        requests[i].row,
                    )
                    for i, positions in batch
                ]
                try:
                    result = self.annotator.score(sub)
                    waiting = None
                except AnnotationsPending as exc:
                    if exc.partial_scores is None:
                        raise
                    result, waiting = exc.partial_scores, exc
                except BudgetExhausted as exc:
                    if getattr(exc, "partial_scores", None) is None:
                        raise
                    result, waiting = list(exc.partial_scores), None
                    self._check_shape(result, sub, [i for i, _ in batch], partial=True)
                    kept = [(b, r, sc) for b, r, sc in zip(batch, sub, result) if sc is not None]
                    blocked = [i for (i, _), sc in zip(batch, result) if sc is None]
                    later = [i for b in batches[number + 1 :] for i, _ in b]
                    stopped = (blocked + later, str(exc))
                    batch, sub, result = [k[0] for k in kept], [k[1] for k in kept], [k[2] for k in kept]
                result = _as_lists(result)
                self._check_shape(result, sub, [i for i, _ in batch])
                rows, queued = [], []
                for (i, positions), scores in zip(batch, result):
                    for p, value in zip(positions, scores):
                        k = keys[i][p]
                        if value is PENDING:
                            queued.append(k)
                            continue
                        valid = is_valid_score(value)
                        rows.append(
                            (
                                k,
                                self.identity,
                                canonical_json(requests[i].prompt),
                                canonical_json(requests[i].completions[p]),
                                float(value) if valid else None,
                                int(valid),
                                None if valid else repr(value),
                            )
                        )
                self.store.write(self.run_id, rows)  # persisted before anything uses them
                mine.difference_update(r[0] for r in rows)
                if waiting is not None:
                    self.store.release(self.run_id, queued, self._owner, status="queued")
                    mine.difference_update(queued)
                    waiting.pending = len(queued)
                    pending.append(waiting)
                if bar is not None:
                    bar.update(sum(len(p) for _, p in batch))
                if stopped is not None:
                    break
        finally:
            failing = sys.exc_info()[1]
            if bar is not None:
                bar.close()
            if mine:  # failed or interrupted: keep the charges, let any later call recover them for free
                try:
                    self.store.release(self.run_id, mine, self._owner)
                except StorageWriteError:  # the full disk that stopped the call: report that first error, not this
                    if failing is None:  # (unreleased charges are recovered the same way once their process ends)
                        raise
        return pending, stopped

    def _check_shape(self, result, sub: list[AnnotationRequest], request_ids: list[int], partial=False) -> None:
        """One score list per request, one score per completion (`partial`: a None list = not scored)."""
        name = self.identity
        if isinstance(result, (str, bytes)) or not isinstance(result, Sequence) or len(result) != len(sub):
            got = len(result) if isinstance(result, Sequence) else type(result).__name__
            raise AnnotationError(
                f"Annotator {name} returned {got} score lists for {len(sub)} requests; `score` must return one list "
                "of scores per request."
            )
        for req, scores, i in zip(sub, result, request_ids):
            if partial and scores is None:
                continue
            if (
                isinstance(scores, (str, bytes))
                or not isinstance(scores, Sequence)
                or len(scores) != len(req.completions)
            ):
                got = len(scores) if isinstance(scores, Sequence) else type(scores).__name__
                raise AnnotationError(
                    f"Annotator {name} returned {got} scores for request {i} (prompt {describe(req.prompt)}) which "
                    f"has {len(req.completions)} completions to score; nothing from this call was used or saved."
                )

    def _collect(self, requests, keys, outcome: AnnotationOutcome) -> None:
        skipped = set(outcome.skipped)
        wanted = [k for i, ks in enumerate(keys) if i not in skipped for k in ks]
        stored = self.store.get(wanted)
        for i, ks in enumerate(keys):
            if i in skipped or not ks:
                continue
            missing = [k for k in ks if k not in stored]
            if missing:  # cannot happen unless the store file was modified underneath us
                raise AnnotationError(
                    f"{len(missing)} annotation(s) of request {i} (prompt {describe(requests[i].prompt)}) are not in "
                    f"the store {self.store.path} after annotation."
                )
            row = [stored[k].score if stored[k].valid else None for k in ks]
            outcome.invalid += sum(s is None for s in row)
            outcome.scores[i] = row


def _as_lists(result):
    """Accept numpy arrays / tensors from annotators: plain nested lists."""
    if hasattr(result, "tolist"):
        result = result.tolist()
    if isinstance(result, (list, tuple)):
        return [r.tolist() if hasattr(r, "tolist") else r for r in result]
    return result
