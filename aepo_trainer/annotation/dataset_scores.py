"""`DatasetScoresAnnotator`: scores that already sit in the dataset, read only for the selected candidates.

This is how users train on pre-annotated pools, and how experiments simulate a paid annotator: the budget, the store
and the pairing behave exactly as with a real annotator, but the "annotation" is a column look-up.
"""

from __future__ import annotations

import math

from .base import AnnotationError, AnnotationRequest, Annotator, describe

__all__ = ["DatasetScoresAnnotator"]


class DatasetScoresAnnotator(Annotator):
    """Reads `row[column][i]` for each selected pool position `i` (`AnnotationRequest.indices`), nothing else.

    A missing column, a position outside the list, or a None/NaN/inf value raises an `AnnotationError` naming the
    column, the pool position and the prompt: a pre-annotated pool with holes is a data bug, not a skip.
    """

    def __init__(self, column: str = "scores"):
        if not isinstance(column, str) or not column:
            raise ValueError(f"column must be a non-empty column name, got {column!r}.")
        self.column = column
        self.identity = f"dataset_scores:{column}"

    def score(self, requests: list[AnnotationRequest]) -> list[list[float]]:
        out = []
        for req in requests:
            row = req.row or {}
            if self.column not in row or row[self.column] is None:
                raise AnnotationError(
                    f"DatasetScoresAnnotator: the row of prompt {describe(req.prompt)} has no {self.column!r} column "
                    f"(columns: {sorted(row)}). Set `scores_column` to the column holding one score per candidate."
                )
            values = row[self.column]
            scores = []
            for i in req.indices:
                try:
                    value = values[i]
                except (IndexError, KeyError, TypeError):
                    raise AnnotationError(
                        f"DatasetScoresAnnotator: column {self.column!r} has no score at pool position {i} for prompt "
                        f"{describe(req.prompt)} (it holds {_len(values)} values)."
                    ) from None
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    number = math.nan
                if isinstance(value, bool) or not math.isfinite(number):
                    raise AnnotationError(
                        f"DatasetScoresAnnotator: column {self.column!r} holds {value!r} at pool position {i} for "
                        f"prompt {describe(req.prompt)}; every selected candidate needs a finite score."
                    )
                scores.append(number)
            out.append(scores)
        return out


def _len(values) -> str:
    try:
        return str(len(values))
    except TypeError:
        return "no list of"
