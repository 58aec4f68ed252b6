"""Bad input, reported before any paid or slow work: `Problem` (one bad value, where it is) and
`InputValidationError` (every problem of a dataset or of the settings, in one message).

Every problem names the column, the row index and a short excerpt of the value; up to `MAX_LISTED_PROBLEMS` are
listed in one `InputValidationError`, followed by the count of the others, so a user fixes a file in one round rather
than one error per run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MAX_LISTED_PROBLEMS", "InputValidationError", "Problem", "excerpt"]

#: How many problems one error lists before it only counts the rest.
MAX_LISTED_PROBLEMS = 20
_EXCERPT_CHARS = 60


@dataclass(frozen=True)
class Problem:
    """One bad value: where it is (`column`, `row`; None when it concerns the whole dataset or a setting), what is
    wrong, and a short excerpt of the value."""

    column: str | None
    row: int | None
    message: str
    excerpt: str | None = None

    def describe(self, where: str) -> str:
        parts = [where]
        if self.row is not None:
            parts.append(f"row {self.row}")
        if self.column is not None:
            parts.append(f"field {_field(self.column)}" if self.row is not None else repr(self.column))
        text = ", ".join(parts) + f": {self.message}"
        return text + (f" (value: {self.excerpt})" if self.excerpt else "")


def _field(column: str) -> str:
    """'completions[3]' -> "'completions'[3]" (the column, then the position in its list)."""
    match = re.fullmatch(r"(.*)\[(\d+)\]", column)
    return f"{match.group(1)!r}[{match.group(2)}]" if match else repr(column)


class InputValidationError(ValueError):
    """Bad input found before any paid or slow work. `problems` holds every problem found (the message lists the
    first `MAX_LISTED_PROBLEMS`). The `aepo` CLI reports it without a traceback, with exit code 2."""

    is_user_error = True  # read by `aepo_trainer.cli.main` (no import needed there)

    def __init__(self, where: str, problems: list[Problem]):
        self.where = where
        self.problems = list(problems)
        lines = [p.describe(where) for p in self.problems[:MAX_LISTED_PROBLEMS]]
        if len(self.problems) == 1:
            message = lines[0]
        else:
            header = f"{where}: {len(self.problems)} problems found (nothing was annotated or paid for):"
            message = header + "\n  " + "\n  ".join(lines)
            if len(self.problems) > MAX_LISTED_PROBLEMS:
                message += f"\n  ... and {len(self.problems) - MAX_LISTED_PROBLEMS} more problem(s)"
        super().__init__(message)


def excerpt(value) -> str:
    """A short, printable excerpt of a value (surrogates escaped, long text cut)."""
    text = repr(value)
    if len(text) > _EXCERPT_CHARS:
        text = text[: _EXCERPT_CHARS - 3] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
