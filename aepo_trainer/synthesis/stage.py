"""What every model-calling stage shares: content-hash keys, the resumable batch loop, and the run report.

`run_resumable` is the one loop that calls a model. For each row it computes a key; rows whose key is in the
checkpoint are served from it; the others are processed `batch_size` at a time by `work(rows) -> outputs`, and each
batch's outputs are committed to the checkpoint (with the usage the batch cost) before the next batch starts. A tqdm bar
counts rows, the already finished ones included.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .checkpoint import StageCheckpoint
from .generators import Usage

__all__ = ["SynthesisReport", "check_text_columns", "row_key", "run_resumable"]


def row_key(*parts) -> str:
    """sha256 over the canonical JSON of `parts` (sorted keys, UTF-8 kept): the identity of one unit of work."""
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def check_text_columns(rows: Sequence[dict], columns: Sequence[str], stage: str) -> None:
    """Raise `ValueError` naming the stage, row and field of the first value that is not a non-empty string, before
    any model is called."""
    for index, row in enumerate(rows):
        for column in columns:
            value = row.get(column)
            if not isinstance(value, str) or not value.strip():
                got = "missing" if column not in row else f"{type(value).__name__} {value!r:.40}"
                raise ValueError(f"{stage}: row {index}, field {column!r}: expected a non-empty string, got {got}")


@dataclass
class SynthesisReport:
    """Counts of one pipeline run: rows in and out of each stage, every skip by reason, model calls and their cost.

    Stages add to it when one is passed (`report=`); `summary()` is the text the CLI prints at the end, and the dataset
    card embeds it.
    """

    rows: dict[str, int] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    new: Counter = field(default_factory=Counter)
    reused: Counter = field(default_factory=Counter)
    usage: dict[str, Usage] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def skip(self, reason: str, count: int = 1) -> None:
        if count:
            self.skipped[reason] += count

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def add_usage(self, stage: str, usage: Usage) -> None:
        self.usage.setdefault(stage, Usage()).add(usage)

    def summary(self) -> str:
        lines = []
        if self.rows:
            lines.append("rows: " + ", ".join(f"{name} {n}" for name, n in self.rows.items()))
        for stage in dict.fromkeys([*self.reused, *self.new]):  # the order the stages ran in
            usage = self.usage.get(stage, Usage())
            lines.append(
                f"{stage}: {self.new[stage]} rows computed, {self.reused[stage]} served from the checkpoint; "
                f"{usage.calls} model calls, {usage.prompt_tokens} prompt + {usage.completion_tokens} completion "
                f"tokens, ${usage.cost_usd:.4f}"
            )
        total = sum(self.skipped.values())
        if total:
            lines.append(
                f"skipped {total}: " + ", ".join(f"{reason} {n}" for reason, n in sorted(self.skipped.items()))
            )
        else:
            lines.append("skipped 0")
        lines.extend(self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "rows": dict(self.rows),
            "skipped": dict(self.skipped),
            "computed": dict(self.new),
            "reused": dict(self.reused),
            "usage": {stage: usage.to_dict() for stage, usage in self.usage.items()},
        }


def run_resumable(
    stage: str,
    rows: Sequence[dict],
    keys: Sequence[str],
    work: Callable[[list[dict]], list],
    *,
    checkpoint: StageCheckpoint,
    batch_size: int,
    generators: Sequence = (),
    report: SynthesisReport | None = None,
    progress: bool = True,
) -> list:
    """Outputs for `rows` (one per row, in order): served from `checkpoint` or computed by `work`, batch by batch.

    Rows sharing a key are computed once. `generators`: the text generators `work` calls; the usage they report during
    a batch is stored with that batch (and added to `report`).
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    done = checkpoint.get(stage, keys)
    todo: dict[str, int] = {}
    for index, key in enumerate(keys):
        if key not in done and key not in todo:
            todo[key] = index
    unique = len(set(keys))
    if report is not None:
        report.reused[stage] += unique - len(todo)
    bar = tqdm(
        total=unique, initial=unique - len(todo), desc=stage, unit="row", disable=not progress, dynamic_ncols=True
    )
    pending = list(todo.items())
    try:
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            before = [g.usage.copy() for g in generators]
            outputs = work([rows[index] for _, index in batch])
            if len(outputs) != len(batch):
                raise RuntimeError(f"{stage}: work returned {len(outputs)} outputs for {len(batch)} rows")
            spent = Usage()
            for generator, usage in zip(generators, before):
                spent.add(generator.usage.minus(usage))
            checkpoint.put(stage, [(key, output) for (key, _), output in zip(batch, outputs)], spent)
            done.update({key: output for (key, _), output in zip(batch, outputs)})
            if report is not None:
                report.new[stage] += len(batch)
                report.add_usage(stage, spent)
            bar.update(len(batch))
    finally:
        bar.close()
    return [done[key] for key in keys]
