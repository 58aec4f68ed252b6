"""The rule for empty candidates in pools (`AEPOConfig.empty_completions`: 'keep' | 'drop' | 'error').

Real preference data holds empty answers: a model produced nothing, and it was scored like any other answer (the
AlpacaEval pools hold 8 answers that are a single zero-width space, each with a judge score near 0). One rule, read
by `aepo select`, `aepo stats` and `AEPOTrainer` alike:

* **empty** means the text shows nothing: the empty string, whitespace only, or only characters that render as
  nothing (`data.rows.is_blank`: Unicode whitespace and separators (Zs, Zl, Zp), control and format characters
  (Cc, Cf: zero-width space U+200B, joiners, BOM, bidi marks), lone combining marks (Mn, Me) and a few blank
  letters such as the Hangul fillers). A chat-format candidate is empty when every message's content is.
* **keep** (default): an empty candidate is a candidate like any other; it can be selected, annotated and be either
  side of a pair. One warning counts them and names the first rows.
* **drop**: removed from its pool before anything is embedded or selected, together with its entries in every
  per-candidate column (scores, embeddings, and any other list as long as the pool, e.g. `generators`). A pool left
  with fewer candidates than a selection needs (`num_annotations`; 2 for 'west_of_n') is skipped, and reported.
* **error**: refused before any paid or slow work, each empty candidate named by row and field.

Every other check of a pool stays as strict under every setting. On-policy pools keep empty samples whatever the
setting: a policy that stops at once produced a real sample (the EOS-only response).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .rows import is_blank

__all__ = [
    "KEPT_POSITIONS_KEY",
    "EmptyCompletionReport",
    "apply_to_dataset",
    "drop_empty_completions",
    "empty_positions",
    "is_empty_completion",
]

#: How many rows a warning names before it only counts.
NAMED_ROWS = 10
#: The key a trimmed row carries under 'drop' (`aepo select`): the original positions of the candidates it kept.
KEPT_POSITIONS_KEY = "_kept_positions"


def is_empty_completion(completion) -> bool:
    """True for a candidate that shows nothing (module docstring): a blank string, or chat messages all blank."""
    if isinstance(completion, str):
        return is_blank(completion)
    if isinstance(completion, list) and completion and all(isinstance(m, dict) for m in completion):
        return all(is_blank(m.get("content") if isinstance(m.get("content"), str) else "") for m in completion)
    return False


def empty_positions(row: dict, completions_column: str) -> list[int]:
    """Positions of the empty candidates of one pool row (none when the row has no list of candidates)."""
    pool = row.get(completions_column)
    if not isinstance(pool, list):
        return []
    return [j for j, completion in enumerate(pool) if is_empty_completion(completion)]


def smallest_pool(config) -> int:
    """The fewest candidates a pool needs for a selection: k, or a pair for West-of-N."""
    return 2 if config.selection_strategy == "west_of_n" else max(2, int(config.num_annotations))


def drop_empty_completions(row: dict, config, positions: list[int]) -> dict:
    """`row` without the candidates at `positions`: the pool and every per-candidate column (the scores, the
    embeddings, any other list as long as the pool, e.g. `generators`) lose the same entries, so they stay aligned."""
    size = len(row[config.completions_column])
    kept = [j for j in range(size) if j not in set(positions)]
    out = {}
    for name, value in row.items():
        if isinstance(value, list) and len(value) == size:
            value = [value[j] for j in kept]
        elif hasattr(value, "shape") and len(getattr(value, "shape", ())) >= 1 and value.shape[0] == size:
            value = value[kept]  # an [N, D] embeddings array read from Arrow
        out[name] = value
    return out


@dataclass
class EmptyCompletionReport:
    """What the rule found and did over a whole input (fed chunk by chunk), and the one warning that says it."""

    rule: str
    pools: int = 0
    empty: int = 0
    pools_with_empty: int = 0
    named: list[tuple[int, int]] = field(default_factory=list)  # (row, position) of the first empty candidates
    skipped: list[int] = field(default_factory=list)  # rows of the pools skipped under 'drop'

    def apply(self, rows: list[dict], config, row_offset: int = 0, mark_positions: bool = True) -> list[dict]:
        """Count the empty candidates of `rows` (rows `row_offset`... of the input) and, under 'drop', return the
        rows without them (pools too small to select from are left out); otherwise `rows` as they are.
        Under 'drop' with `mark_positions`, a kept row that lost candidates carries `KEPT_POSITIONS_KEY`: the original
        positions of its candidates, so a pair names them as they are in the file."""
        out = []
        minimum = smallest_pool(config)
        for index, row in enumerate(rows):
            self.pools += 1
            positions = empty_positions(row, config.completions_column)
            if positions:
                self.empty += len(positions)
                self.pools_with_empty += 1
                for j in positions:
                    if len(self.named) < NAMED_ROWS:
                        self.named.append((row_offset + index, j))
            if self.rule != "drop" or not positions:
                out.append(row)
                continue
            kept = [j for j in range(len(row[config.completions_column])) if j not in set(positions)]
            if len(kept) < minimum:
                self.skipped.append(row_offset + index)
                continue
            trimmed = drop_empty_completions(row, config, positions)
            if mark_positions:
                trimmed[KEPT_POSITIONS_KEY] = kept
            out.append(trimmed)
        return out

    def warning(self, source: str, completions_column: str = "completions") -> str | None:
        """One line: how many empty candidates, in how many pools, what was done, the first rows; None if none."""
        if not self.empty:
            return None
        first = ", ".join(f"row {r} {completions_column!r}[{j}]" for r, j in self.named)
        first += ", ..." if self.empty > len(self.named) else ""
        if self.rule == "drop":
            done = "dropped from their pools before selection (empty_completions='drop')"
            if self.skipped:
                rows = ", ".join(map(str, self.skipped[:NAMED_ROWS])) + (
                    ", ..." if len(self.skipped) > NAMED_ROWS else ""
                )
                done += f"; {len(self.skipped)} pool(s) left too small to select from were skipped (row(s) {rows})"
        else:
            done = "kept as candidates (empty_completions='keep'; 'drop' removes them, 'error' refuses them)"
        return (
            f"{source}: {self.empty} empty completion(s) (blank or invisible characters only) in "
            f"{self.pools_with_empty} of {self.pools} pools ({first}), {done}"
        )


def apply_to_dataset(dataset, config, dataset_name: str = "train"):
    """The rule on a `datasets.Dataset` of pools (the trainer's): a warning for the empty candidates found and, under
    'drop', the dataset without them (pools too small to select from are left out)."""
    ccol = config.completions_column
    report = EmptyCompletionReport(config.empty_completions)
    report.apply([{ccol: pool} for pool in dataset[ccol]], config, mark_positions=False)
    message = report.warning(f"{dataset_name} pool dataset", ccol)
    if message is None:
        return dataset
    logging.getLogger(__name__).warning(message)
    if report.rule != "drop":
        return dataset
    skipped = set(report.skipped)
    if skipped:
        dataset = dataset.select([i for i in range(len(dataset)) if i not in skipped])
    if len(dataset) == 0:
        raise ValueError(
            f"Every {dataset_name} pool was skipped by empty_completions='drop': none has enough non-empty candidates "
            "to select from."
        )
    return dataset.map(
        lambda row: drop_empty_completions(row, config, empty_positions(row, ccol)),
        desc=f"Dropping empty candidates from the {dataset_name} pools",
    )
