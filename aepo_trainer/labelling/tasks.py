"""What is left to label: the queue's items grouped into tasks (one prompt, its candidates), per labeller.

A *task* is every queued item of one prompt — the k candidates a run selected for it — shown side by side. An item is
*done* when a run has read its label (its key is in `annotations`), a labels file labels it, or it has
`labels_per_item` answers on the page; it is *open* for a labeller who has not answered it yet. The queue file is
re-read only when it changes (a run with `annotation_wait` appends to it while the page runs), so the page follows a
waiting run by itself.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from dataclasses import dataclass, field

from aepo_trainer._utils.file_stamp import file_stamp
from aepo_trainer._utils.hashing import canonical_json

from ..storage.label_book import LabelBook, LabellingSettings

__all__ = ["Progress", "QueueView", "Task"]


@dataclass
class Task:
    """One prompt and its queued candidates (`items`: queue lines, in queue order)."""

    id: str
    prompt: object
    items: list[dict] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        return [item["id"] for item in self.items]


@dataclass
class Progress:
    """Counts of the page's header and of `aepo stats --labels`."""

    items: int
    done: int
    read_by_run: int
    yours: int
    labellers: dict[str, dict]
    prompts: int = 0
    prompts_done: int = 0

    @property
    def pending(self) -> int:
        return self.items - self.done


class QueueView:
    """The tasks of `annotator`'s queue file and their state, from the files and the store.

    Args:
        annotator: the run's `HumanQueueAnnotator` (its queue and labels files).
        book: the `LabelBook` of the run's store.
        settings: the page's `LabellingSettings`.
        lease_seconds: how long a task shown to one labeller is kept from the others (so two people do not answer
            the same item when one answer is enough); after that, or once nothing else is open, anyone gets it.
    """

    def __init__(self, annotator, book: LabelBook, settings: LabellingSettings, lease_seconds: float = 600.0):
        self.annotator = annotator
        self.book = book
        self.settings = settings
        self.lease_seconds = lease_seconds
        self._lock = threading.Lock()
        self._cache: dict[str, tuple] = {}
        self._leases: dict[str, tuple[str, float]] = {}  # task id -> (labeller, expiry)
        self._current: dict[str, str] = {}  # labeller -> the task id they are looking at
        self._shown: dict[tuple[str, str], float] = {}  # (labeller, task id) -> when it was first shown (time.time)

    # ------------------------------------------------------------------------------------------- reading

    def tasks(self) -> list[Task]:
        """Every task of the queue, in queue order (an item queued twice counts once)."""
        return self._cached("queue", self.annotator.queue_path, self._read_tasks)

    def _read_tasks(self) -> list[Task]:
        tasks: dict[str, Task] = {}
        seen: set[str] = set()
        csv_queue = str(self.annotator.queue_path).lower().endswith(".csv")
        for item in self.annotator.queue_items():
            if item["id"] in seen:
                continue
            seen.add(item["id"])
            if csv_queue:  # a CSV queue holds chat messages JSON-encoded
                item = {
                    **item,
                    "prompt": _messages(item.get("prompt")),
                    "completion": _messages(item.get("completion")),
                }
            prompt = item.get("prompt")
            task_id = hashlib.sha256(canonical_json(prompt).encode("utf-8")).hexdigest()[:16]
            tasks.setdefault(task_id, Task(task_id, prompt)).items.append(item)
        return list(tasks.values())

    def file_labels(self) -> dict:
        """Labels given in the labels file or in the queue file's score column (not the page's)."""
        paths = (self.annotator.queue_path, self.annotator.labels_path)
        return self._cached("labels", paths, lambda: self.annotator.read_labels(include_page=False))

    def _cached(self, name, paths, compute):
        paths = paths if isinstance(paths, tuple) else (paths,)
        stamp = tuple(file_stamp(p) for p in paths)
        with self._lock:
            hit = self._cache.get(name)
            if hit is not None and hit[0] == stamp:
                return hit[1]
        value = compute()
        with self._lock:
            self._cache[name] = (stamp, value)
        return value

    def state(self) -> tuple[list[Task], set[str], dict[str, dict[str, float | None]]]:
        """(tasks, done keys, `{key: {labeller: score}}` for the queue's items)."""
        tasks = self.tasks()
        keys = [k for task in tasks for k in task.keys]
        read = self.book.store.annotated(keys)
        labelled = set(self.file_labels())
        answers = {k: {a.labeller: a.score for a in rows} for k, rows in self.book.answers(keys).items()}
        need = self.settings.labels_per_item
        done = {k for k in keys if k in read or k in labelled or len(answers.get(k, ())) >= need}
        return tasks, done, answers

    def open_keys(self, task: Task, labeller: str, done: set[str], answers) -> list[str]:
        """The task's items `labeller` may still answer."""
        return [k for k in task.keys if k not in done and labeller not in answers.get(k, {})]

    def progress(self, labeller: str) -> Progress:
        tasks, done, answers = self.state()
        keys = [k for task in tasks for k in task.keys]
        read = self.book.store.annotated(keys)
        counts = self.book.by_labeller()
        return Progress(
            items=len(keys),
            done=len(done),
            prompts=len(tasks),
            prompts_done=sum(all(k in done for k in task.keys) for task in tasks),
            read_by_run=len(read),
            yours=counts.get(labeller, {}).get("answered", 0),
            labellers=counts,
        )

    # ------------------------------------------------------------------------------------------- assigning

    def next_task(self, labeller: str) -> tuple[Task, list[str]] | None:
        """The task to show `labeller` now, with its open items; None when nothing is left for them.

        Their current task if it is still open, else the first open task nobody else holds, else the first open task.
        """
        tasks, done, answers = self.state()
        now = time.monotonic()
        with self._lock:
            candidates = [(t, self.open_keys(t, labeller, done, answers)) for t in tasks]
            candidates = [(t, keys) for t, keys in candidates if keys]
            if not candidates:
                self._current.pop(labeller, None)
                return None
            current = self._current.get(labeller)
            chosen = next((c for c in candidates if c[0].id == current), None)
            if chosen is None:
                free = [
                    c
                    for c in candidates
                    if c[0].id not in self._leases
                    or self._leases[c[0].id][0] == labeller
                    or self._leases[c[0].id][1] < now
                ]
                chosen = (free or candidates)[0]
            self._current[labeller] = chosen[0].id
            self._leases[chosen[0].id] = (labeller, now + self.lease_seconds)
            return chosen

    def order(self, labeller: str, task: Task, keys: list[str]) -> list[str]:
        """`keys` in the order `labeller` sees them: a permutation of the task's items drawn from
        (`shuffle_seed`, labeller, task id) — the same at every reload, different per labeller and per prompt, so a
        candidate's position cannot bias every label the same way. `shuffle_seed=None`: queue order."""
        if self.settings.shuffle_seed is None:
            return list(keys)
        seed = hashlib.sha256(f"{self.settings.shuffle_seed}\0{labeller}\0{task.id}".encode()).digest()
        order = list(task.keys)
        random.Random(seed).shuffle(order)
        wanted = set(keys)
        return [k for k in order if k in wanted]

    def mark_shown(self, labeller: str, task_id: str) -> None:
        """Remember that `labeller` was shown `task_id` (only shown tasks may be answered)."""
        with self._lock:
            self._shown.setdefault((labeller, task_id), time.time())

    def shown_at(self, labeller: str, task_id: str) -> float | None:
        """When `task_id` was first shown to `labeller` since the page started (None: never)."""
        with self._lock:
            return self._shown.get((labeller, task_id))

    def forget_shown(self, labeller: str, task_id: str) -> None:
        with self._lock:
            self._shown.pop((labeller, task_id), None)

    def show_next(self, labeller: str, task_id: str) -> None:
        """Make `task_id` the labeller's current task (after an undo: the task they just took back)."""
        with self._lock:
            self._current[labeller] = task_id

    def release(self, labeller: str, task_id: str) -> None:
        """The labeller is done with `task_id`: it no longer keeps it from the others."""
        with self._lock:
            if self._leases.get(task_id, ("",))[0] == labeller:
                del self._leases[task_id]
            if self._current.get(labeller) == task_id:
                del self._current[labeller]

    def task(self, task_id: str) -> Task | None:
        return next((t for t in self.tasks() if t.id == task_id), None)

    def task_of(self, key: str) -> Task | None:
        return next((t for t in self.tasks() if key in t.keys), None)


def _messages(cell):
    """A CSV cell back to its chat messages when it is a JSON list of messages; any other text stays as it is."""
    if isinstance(cell, str) and cell.startswith("["):
        try:
            value = json.loads(cell)
        except json.JSONDecodeError:
            return cell
        if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
            return value
    return cell
