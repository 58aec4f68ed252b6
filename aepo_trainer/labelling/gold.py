"""Honeypot ("gold") items: prompts with a known best answer, mixed into a labeller's tasks to measure them.

`aepo label --gold_items FILE` reads JSONL lines `{"prompt": ..., "completions": [...], "best": i}` (`i`: the index of
the known best completion). Every labeller gets each gold task once, one after every `gold_every` of their real
submissions, shown exactly like a real task (same page, same shuffled order), so it cannot be told apart. Their
answers never reach a run: they are kept in their own table (`storage.label_gold`, in the run's store file), and give each labeller's **accuracy**: the share of
gold tasks where they put the known best first — the strictly highest score, rank 1, or "best". A skip does not
count; a tie or "all bad" counts as a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from aepo_trainer._utils.hashing import canonical_json
from aepo_trainer.storage.annotations import AnnotationStore
from aepo_trainer.storage.label_gold import GoldAnswers, gold_accuracy

from .tasks import Task

__all__ = ["GoldBook", "GoldItem", "gold_accuracy", "load_gold_items"]


@dataclass(frozen=True)
class GoldItem:
    """One honeypot task: its id, the prompt, the candidates' keys and texts, and the key of the known best."""

    task: Task
    best: str


def load_gold_items(path: str | os.PathLike) -> list[GoldItem]:
    """The gold tasks of a JSONL file. Raises ValueError naming the line and the field."""
    items: list[GoldItem] = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as error:
        raise ValueError(f"--gold_items {path}: cannot read the file ({error.strerror})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"--gold_items {path}, line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{where}: not valid JSON") from None
        if not isinstance(row, dict) or "prompt" not in row:
            raise ValueError(f"{where}: expected an object with 'prompt', 'completions' and 'best'")
        completions = row.get("completions")
        if not isinstance(completions, list) or len(completions) < 2:
            raise ValueError(f"{where}: 'completions' must be a list of two or more completions")
        best = row.get("best")
        if isinstance(best, bool) or not isinstance(best, int) or not 0 <= best < len(completions):
            raise ValueError(f"{where}: 'best' must be the index (0..{len(completions) - 1}) of the best completion")
        digest = hashlib.sha256(canonical_json([row["prompt"], completions]).encode()).hexdigest()[:16]
        keys = [f"gold:{digest}:{i}" for i in range(len(completions))]
        task = Task(
            id=f"gold-{digest}",
            prompt=row["prompt"],
            items=[{"id": k, "completion": c, "pool_index": i} for i, (k, c) in enumerate(zip(keys, completions))],
        )
        items.append(GoldItem(task, keys[best]))
    if not items:
        raise ValueError(f"--gold_items {path}: no gold item in the file")
    if len({g.task.id for g in items}) != len(items):
        raise ValueError(f"--gold_items {path}: the same prompt and completions are listed twice")
    return items


class GoldBook:
    """The gold tasks of a page and the labellers' answers to them (`storage.label_gold.GoldAnswers`)."""

    def __init__(self, store: AnnotationStore, items: list[GoldItem], every: int):
        if every < 1:
            raise ValueError(f"gold_every must be >= 1, got {every}")
        self.items, self.every = items, every
        self.by_id = {g.task.id: g for g in items}
        self.answers = GoldAnswers(store)

    def answered(self, labeller: str) -> set[str]:
        return self.answers.answered(labeller)

    def due(self, labeller: str, submissions: int) -> GoldItem | None:
        """The gold task to show `labeller` now: after every `every` real submissions, the next one not answered."""
        done = self.answered(labeller)
        if submissions < (len(done) + 1) * self.every:
            return None
        return next((g for g in self.items if g.task.id not in done), None)

    def record(self, labeller: str, gold: GoldItem, rows: dict[str, tuple[float | None, dict]]) -> bool | None:
        """Store a labeller's answer to a gold task; returns whether it was correct (None: skipped)."""
        correct = _correct(gold.best, rows)
        self.answers.record(gold.task.id, labeller, correct, {k: [s, r] for k, (s, r) in rows.items()})
        return correct


def _correct(best: str, rows: dict[str, tuple[float | None, dict]]) -> bool | None:
    scores = {key: score for key, (score, raw) in rows.items()}
    if any(s is None for s in scores.values()):
        return None  # "cannot judge": not counted
    if any(raw.get("tie") or raw.get("all_bad") for _, raw in rows.values()):
        return False
    top = max(scores.values())
    return scores[best] == top and sum(s == top for s in scores.values()) == 1
