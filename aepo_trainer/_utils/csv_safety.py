"""CSV cells that a spreadsheet will not execute (formula / CSV injection), and that read back unchanged.

A completion sampled from a model, or a prompt from the web, may start with `=`, `+`, `-`, `@`, a tab or a carriage
return; a spreadsheet opening the CSV (the human-annotation queue is made to be opened in one) evaluates such a cell
as a formula — `=HYPERLINK(...)`, `=cmd|' /C calc'!A0` — on the labeller's machine. Following OWASP's advice, such a
text cell is written with a leading apostrophe, which spreadsheets display as text and do not evaluate. So that this
is a lossless encoding (the value read back equals the original), a text that itself starts with an apostrophe gets
one too, and reading removes exactly one apostrophe when it is followed by a trigger character or another apostrophe.
Only text is escaped: numbers are written as numbers.
"""

from __future__ import annotations

__all__ = ["FORMULA_TRIGGERS", "escape_cell", "unescape_cell"]

#: First characters that make a spreadsheet treat a cell as a formula (or that hide one behind a control character).
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")
_QUOTE = "'"
_ESCAPED = (*FORMULA_TRIGGERS, _QUOTE)


def escape_cell(value):
    """The value to write in a CSV cell: text starting with a formula trigger (or an apostrophe) gets a leading
    apostrophe; anything else is returned unchanged."""
    if isinstance(value, str) and value.startswith(_ESCAPED):
        return _QUOTE + value
    return value


def unescape_cell(value):
    """The inverse of `escape_cell` on a cell read back from a CSV file."""
    if isinstance(value, str) and value.startswith(_QUOTE) and value[1:].startswith(_ESCAPED):
        return value[1:]
    return value
