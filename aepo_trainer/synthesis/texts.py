"""Raw texts in: reading them safely and cleaning them before any model sees them.

Safer-Instruct starts from texts scraped from the web, which are messy. Every row that cannot be used is dropped
*before* any model call, with its reason counted in the `SynthesisReport` (the CLI prints the counts at the end):

| reason | what |
|---|---|
| `non_utf8` | a line of the input file, or a value, that is not valid UTF-8 (lone surrogates, undecodable bytes) |
| `not_text` | the text column holds something other than a string (a number, a list, None) |
| `empty` | an empty or whitespace-only text |
| `duplicate` | the same text (after stripping) as an earlier row: dropped by its sha256 |
| `too_long` | with `long_texts="skip"`: longer than `max_text_tokens` |

With `long_texts="truncate"` (the default) a long text keeps its first `max_text_tokens` tokens and is flagged
`truncated=True` in its row (and counted as `truncated` in the report's notes), so nothing silently changes meaning.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from aepo_trainer.choices import LONG_TEXT_POLICIES

from .stage import SynthesisReport

__all__ = ["prepare_texts", "read_texts", "text_sha256"]


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_texts(path: str, *, text_column: str = "text", report: SynthesisReport | None = None, split: str = "train"):
    """Read a text corpus into a `datasets.Dataset`, dropping (and counting) lines that are not valid UTF-8.

    `.jsonl`/`.ndjson` files are decoded line by line (one JSON object per line; a row whose `text_column` is not a
    string is dropped and counted as `not_text`, since one Arrow column cannot mix types); `.txt` files hold one
    text per line (column `text`). Anything else (`.json`, `.csv`, `.parquet`, a `save_to_disk` folder, a Hub id) is read with
    `datasets`, whose strings are checked by `prepare_texts`.
    """
    import datasets

    source = Path(path).expanduser()
    suffix = source.name.lower()
    if source.is_file() and suffix.endswith((".jsonl", ".ndjson", ".txt")):
        rows, bad, not_text = [], 0, 0
        with open(source, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    bad += 1
                    continue
                if suffix.endswith(".txt"):
                    rows.append({"text": line.rstrip("\r\n")})
                    continue
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}: line {number} is not valid JSON ({error.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}: line {number} holds a {type(row).__name__}, expected a JSON object")
                if text_column in row and not isinstance(row[text_column], str):
                    not_text += 1
                    continue
                rows.append(row)
        if report is not None:
            report.skip("non_utf8", bad)
            report.skip("not_text", not_text)
        if not rows:
            raise ValueError(f"{path}: no rows")
        return datasets.Dataset.from_list(rows)
    if source.is_dir():
        data = datasets.load_from_disk(str(source))
        return data[split] if isinstance(data, datasets.DatasetDict) else data
    if source.is_file():
        kind = {".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(source.suffix.lower())
        if kind is None:
            raise ValueError(f"{path}: unsupported file type (.jsonl, .txt, .json, .csv, .parquet or a folder)")
        return datasets.load_dataset(kind, data_files=str(source), split="train")
    return datasets.load_dataset(path, split=split)


def _as_utf8(value):
    """The value as a valid UTF-8 string, `None` if it is text that is not valid UTF-8, or `...` if it is not text."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str):
        return ...
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, e.g. from errors="surrogateescape" decoding
        return None
    return value


def prepare_texts(
    dataset,
    *,
    text_column: str = "text",
    id_column: str | None = None,
    tokenizer=None,
    max_text_tokens: int | None = None,
    long_texts: str = "truncate",
    report: SynthesisReport | None = None,
):
    """Clean a dataset of raw texts: one row per usable, distinct text, with `source_id`, `text_sha256`, `truncated`.

    Args:
        dataset: a `datasets.Dataset` with `text_column`, or a list of row dicts (which, unlike Arrow, can hold
            `bytes` and strings with lone surrogates: both are counted as `non_utf8`).
        id_column: a column that identifies each source row (kept as `source_id`); default: the row's index in the
            input ("row-<i>"), so a source id always points back to the input file.
        tokenizer: measures `max_text_tokens` (the reversed model's tokenizer); without one, 4 characters count as a
            token.
        max_text_tokens: longest text kept whole; `None` = no limit.
        long_texts: "truncate" (keep the first `max_text_tokens` tokens, flag `truncated`) or "skip".
        report: receives the skip counts (see the module docstring).

    Returns:
        A `datasets.Dataset` with the input's other columns, `text` (the cleaned text), `source_id`, `text_sha256` and
        `truncated`.
    """
    import datasets

    if long_texts not in LONG_TEXT_POLICIES:
        raise ValueError(f"long_texts must be one of {LONG_TEXT_POLICIES}, got {long_texts!r}")
    columns = getattr(dataset, "column_names", None)
    if columns is None:  # a list of row dicts (may hold bytes or lone surrogates, which Arrow cannot store)
        columns = list(dict.fromkeys(key for row in dataset for key in row))
    if text_column not in columns:
        raise ValueError(f"the texts have no {text_column!r} column (columns: {columns})")
    if id_column is not None and id_column not in columns:
        raise ValueError(f"the texts have no {id_column!r} id column (columns: {columns})")
    report = report if report is not None else SynthesisReport()
    seen: set[str] = set()
    rows, truncated = [], 0
    for index, row in enumerate(dataset):
        text = _as_utf8(row.get(text_column))
        if text is None:
            report.skip("non_utf8")
            continue
        if text is ...:
            report.skip("not_text")
            continue
        text = text.strip()
        if not text:
            report.skip("empty")
            continue
        digest = text_sha256(text)
        if digest in seen:
            report.skip("duplicate")
            continue
        seen.add(digest)
        was_truncated = False
        if max_text_tokens is not None:
            text, was_truncated = _limit(text, tokenizer, max_text_tokens)
            if was_truncated and long_texts == "skip":
                report.skip("too_long")
                continue
            truncated += was_truncated
        source_id = str(row[id_column]) if id_column is not None else f"row-{index}"
        rows.append(
            {
                **{k: v for k, v in row.items() if k != text_column},
                "text": text,
                "source_id": source_id,
                "text_sha256": digest,
                "truncated": was_truncated,
            }
        )
    report.rows["texts_in"] = len(dataset)
    report.rows["texts_kept"] = len(rows)
    if truncated:
        report.note(f"truncated {truncated} long text(s) to {max_text_tokens} tokens (flagged `truncated`)")
    if not rows:
        raise ValueError(f"no usable text left after cleaning ({dict(report.skipped)})")
    return datasets.Dataset.from_list(rows)


def _limit(text: str, tokenizer, max_tokens: int) -> tuple[str, bool]:
    if tokenizer is None:
        limit = 4 * max_tokens
        return (text, False) if len(text) <= limit else (text[:limit], True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text, False
    return tokenizer.decode(ids[:max_tokens], skip_special_tokens=True).strip(), True
