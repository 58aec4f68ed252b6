"""Reading and writing the CLI's datasets: JSONL (also .gz), JSON, CSV, Parquet, `save_to_disk` folders, Hub ids.

Inputs are read into a list of row dicts. JSON Lines are parsed here (not through `datasets`) so that a broken line is
reported with its file and line number. CSV cells that hold JSON lists/objects (how lists are stored in CSV) are
decoded. Anything that is not an existing local file or folder is handed to `datasets.load_dataset` (a Hub id).

Outputs are written atomically (a temporary file renamed into place), so an interrupted run never leaves a
half-written dataset behind. The output format follows the suffix: `.jsonl`/`.jsonl.gz`/`.json`, `.parquet`, `.csv`;
a path without one of these suffixes becomes a `Dataset.save_to_disk` folder.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from pathlib import Path

from .._utils.csv_safety import escape_cell, unescape_cell
from ..errors import storage_guard
from .errors import InputError

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson")
TABLE_SUFFIXES = (".parquet", ".csv")


def file_suffix(path: str) -> str:
    name = os.path.basename(str(path)).lower()
    for suffix in JSONL_SUFFIXES + TABLE_SUFFIXES + (".csv.gz",):
        if name.endswith(suffix):
            return suffix
    return ""


def is_jsonl(path: str) -> bool:
    return file_suffix(path) in JSONL_SUFFIXES


def open_text(path: str, mode: str = "rt", newline: str | None = None):
    """`newline=""` for CSV: the csv module handles line ends itself, so a carriage return inside a cell survives."""
    if str(path).lower().endswith(".gz"):
        return gzip.open(path, mode, encoding="utf-8", newline=newline)
    return open(path, mode, encoding="utf-8", newline=newline)


# --------------------------------------------------------------------------------------------------- reading
def read_rows(source: str, *, split: str = "train", name: str | None = None) -> list[dict]:
    """Rows of a local file/folder or a Hub dataset, as a list of dicts. Raises `InputError` naming the problem."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_folder(path, split, name)
    if path.is_file():
        suffix = file_suffix(source)
        if suffix in JSONL_SUFFIXES:
            return read_jsonl(str(path))
        if suffix == ".parquet":
            return _read_parquet(str(path))
        if suffix in (".csv", ".csv.gz"):
            return _read_csv(str(path))
        raise InputError(
            f"{source}: unsupported file type; use .jsonl (or .jsonl.gz), .json, .csv or .parquet, "
            "a `save_to_disk` folder, or a Hub dataset id"
        )
    if file_suffix(source) or source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise InputError(f"{source}: no such file or folder")
    return _load_dataset(source, split, name)  # a Hub dataset id


_BUILDERS = {".jsonl": "json", ".jsonl.gz": "json", ".json": "json", ".json.gz": "json", ".ndjson": "json"}
_BUILDERS.update({".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet"})


def load_dataset_any(source: str, *, name: str | None = None, args=None):
    """A `datasets.Dataset` (local file) or `DatasetDict` (`save_to_disk` folder, Hub id, data folder) through the
    `datasets` loaders (`load_dataset("json" | "csv" | "parquet", ...)`, `load_from_disk`, `load_dataset(hub_id)`),
    memory-mapped and fingerprinted, so training prepares (tokenizes, embeds) it once and reads it from the cache
    afterwards. When Arrow refuses a JSON Lines file (one cell of another type than the rest of its column), the rows
    are read as plain JSON and validated (with the `AEPOConfig` `args`), so the error names the row and the field
    instead of Arrow's column."""
    import datasets

    path = Path(source).expanduser()
    try:
        if path.is_dir():
            if any((path / f).exists() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
                return datasets.load_from_disk(str(path))
            return datasets.load_dataset(str(path), name)
        if path.is_file():
            builder = _BUILDERS.get(file_suffix(source))
            if builder is None:
                raise InputError(
                    f"{source}: unsupported file type; use .jsonl (or .jsonl.gz), .json, .csv or .parquet, "
                    "a `save_to_disk` folder, or a Hub dataset id"
                )
            return datasets.load_dataset(builder, data_files=str(path), split="train")
        if file_suffix(source) or source.startswith((".", "/", "~")) or source.count("/") > 1:
            raise InputError(f"{source}: no such file or folder")
        return datasets.load_dataset(source, name)
    except InputError:
        raise
    except Exception as error:  # offline, missing repo, a file Arrow cannot type: input errors for the user
        if path.is_file() and _BUILDERS.get(file_suffix(source)) == "json":
            _explain_untypeable_json(str(path), args)
        raise InputError(f"{source}: could not be loaded with `datasets` ({type(error).__name__}: {error})") from None


def _explain_untypeable_json(path: str, args) -> None:
    """Raise the validation error naming the bad rows and fields of a JSON Lines file Arrow could not load."""
    from aepo_trainer.data import validation

    rows = read_jsonl(path)
    if args is not None and rows and args.completions_column in rows[0]:
        problems = validation.pool_problems(rows, args, need_scores=args.annotator == "dataset_scores")
        if problems:
            raise validation.InputValidationError(path, problems)


def read_jsonl(path: str, *, tolerate_truncated_tail: bool = False) -> list[dict]:
    """Parse a JSON Lines (or JSON array) file; errors name the line. A truncated last line (a crash while
    appending) is dropped when `tolerate_truncated_tail`."""
    try:
        with open_text(path) as f:
            text = f.read()
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot be read ({error})") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(stripped)
        except json.JSONDecodeError as error:
            raise InputError(f"{path}: not valid JSON ({error})") from None
        _check_objects(rows, path)
        return rows
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(parse_jsonl_line(path, number, line))
        except InputError:
            if tolerate_truncated_tail and number == len(lines) and not text.endswith("\n"):
                break
            raise
    return rows


def parse_jsonl_line(path: str, number: int, line: str) -> dict:
    """One row of a JSON Lines file; an `InputError` naming the file and the line when it is not a JSON object."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: line {number} is not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(row, dict):
        raise InputError(f"{path}: line {number} holds a {type(row).__name__}, expected a JSON object (one row)")
    return row


def _check_objects(rows, path):
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InputError(f"{path}: element {index} holds a {type(row).__name__}, expected a JSON object (one row)")


def _read_parquet(path: str) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as error:  # pyarrow raises several types for corrupt files
        raise InputError(f"{path}: not a readable Parquet file ({error})") from None


def _read_csv(path: str) -> list[dict]:
    try:
        with open_text(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{path}: not a readable CSV file ({error})") from None
    for row in rows:
        for key, value in row.items():
            value = row[key] = unescape_cell(value)
            if isinstance(value, str) and value[:1] in "[{":
                try:
                    row[key] = json.loads(value)
                except json.JSONDecodeError:
                    pass
    return rows


def is_saved_dataset(path: Path) -> bool:
    """True for a `Dataset.save_to_disk` / `DatasetDict.save_to_disk` folder."""
    return any((path / name).exists() for name in ("dataset_info.json", "dataset_dict.json", "state.json"))


def load_saved_dataset(path: Path, split: str):
    """The `split` of a `save_to_disk` folder as a memory-mapped `datasets.Dataset` (slicing reads only the slice)."""
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except Exception as error:
        raise InputError(f"{path}: not a readable `save_to_disk` folder ({error})") from None
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise InputError(f"{path}: has no split {split!r} (splits: {', '.join(data)}); pass --split")
        data = data[split]
    return data


def _read_folder(path: Path, split: str, name: str | None) -> list[dict]:
    if is_saved_dataset(path):
        return load_saved_dataset(path, split).to_list()
    return _load_dataset(str(path), split, name)


def _load_dataset(source: str, split: str, name: str | None) -> list[dict]:
    import datasets

    try:
        return datasets.load_dataset(source, name, split=split).to_list()
    except Exception as error:  # offline, missing repo, bad split: all are input errors for the user
        raise InputError(
            f"{source}: could not be loaded with datasets.load_dataset ({type(error).__name__}: {error})"
        ) from None


# --------------------------------------------------------------------------------------------------- writing
def write_rows(rows: list[dict], destination: str) -> str:
    """Write `rows` atomically in the format the suffix of `destination` names; returns what was written."""
    destination = str(Path(destination).expanduser())
    with storage_guard(destination):  # a full disk or a read-only place: StorageWriteError naming the output
        _write_rows(rows, destination)
    return destination


def _write_rows(rows: list[dict], destination: str) -> None:
    parent = os.path.dirname(os.path.abspath(destination))
    os.makedirs(parent, exist_ok=True)
    suffix = file_suffix(destination)
    if suffix in JSONL_SUFFIXES:
        atomic_write(
            destination,
            lambda tmp: _write_jsonl(
                rows, tmp, gz=destination.lower().endswith(".gz"), array=suffix in (".json", ".json.gz")
            ),
        )
    elif suffix == ".parquet":
        atomic_write(destination, lambda tmp: _write_parquet(rows, tmp))
    elif suffix in (".csv", ".csv.gz"):
        atomic_write(destination, lambda tmp: write_csv(rows, tmp))
    else:
        _save_to_disk(rows, destination)


def write_json_atomic(path: str, value) -> None:
    """A small JSON file (settings, metadata), replaced atomically."""

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(value, f, indent=1, sort_keys=True)
            f.write("\n")

    atomic_write(path, write)


def atomic_write(destination: str, write) -> None:
    """`write(tmp)` then rename over `destination`; the temporary file is removed if anything fails (on a full disk
    that frees its space), and a refused write raises `StorageWriteError` naming `destination`."""
    tmp = f"{destination}.tmp-{os.getpid()}"
    with storage_guard(destination):
        try:
            write(tmp)
            os.replace(tmp, destination)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def _write_jsonl(rows, path, *, gz: bool, array: bool) -> None:
    with gzip.open(path, "wt", encoding="utf-8") if gz else open(path, "w", encoding="utf-8") as f:
        if array:
            json.dump(rows, f, ensure_ascii=False)
            f.write("\n")
        else:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _write_parquet(rows, path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise InputError(
            f"the rows cannot be stored as Parquet ({error}): a column mixes types (e.g. string and "
            "chat-message prompts); write .jsonl instead"
        ) from None
    pq.write_table(table, path)


def write_csv(rows, path, columns: list[str] | None = None) -> None:
    """`rows`: any iterable of dicts (read once when `columns`, the union of their keys in order, is given)."""
    if columns is None:
        rows = list(rows)
        columns = list(dict.fromkeys(key for row in rows for key in row))
    with open_text(path, "wt", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    k: json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else escape_cell(v)
                    for k, v in row.items()
                }
            )


def to_dataset(rows: list[dict]):
    import datasets

    return datasets.Dataset.from_list(rows)


def _save_to_disk(rows, destination: str) -> None:
    import shutil

    tmp = f"{destination.rstrip('/')}.tmp-{os.getpid()}"
    try:
        to_dataset(rows).save_to_disk(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written folder would hold the space a rerun needs
        raise
    if os.path.isdir(destination):
        shutil.rmtree(destination)
    os.replace(tmp, destination)


def push_to_hub(rows: list[dict], repo_id: str, *, private: bool = False, card=None) -> None:
    """Push `rows` as a Hub dataset, then its dataset card (`aepo_trainer._utils.provenance`) as the repository README."""
    try:
        to_dataset(rows).push_to_hub(repo_id, private=private)
        if card is not None:
            card.push_to_hub(repo_id, repo_type="dataset")
    except Exception as error:
        raise InputError(
            f"push_to_hub({repo_id!r}) failed ({type(error).__name__}: {error}); the local output was written"
        ) from None


# --------------------------------------------------------------------------------------------------- appending
def append_jsonl(path: str, rows: list[dict]) -> None:
    """Append rows to a JSON Lines file and flush them to disk (the unit of resumption of `aepo generate`). A refused
    write (full disk, read-only) cuts the file back to its earlier rows and raises `StorageWriteError`."""
    with storage_guard(path):
        size = os.path.getsize(path) if os.path.exists(path) else 0
        try:
            with open(path, "a", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            if os.path.exists(path) and os.path.getsize(path) > size:
                os.truncate(path, size)  # whole batches only: the rerun samples this one again
            raise


def finished_rows(path: str, what: str = "row") -> dict[str, str]:
    """What a refused write leaves safe of an append-only JSON Lines work file (for `StorageWriteError.kept`)."""
    if not os.path.isfile(path):
        return {}
    with open(path, "rb") as f:
        count = sum(1 for line in f if line.endswith(b"\n"))
    return {what: f"{count} finished {what}(s) in {path}"}


def repair_jsonl_tail(path: str) -> int:
    """Cut a truncated last line (left by a crash mid-append); returns the number of bytes removed."""
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
        return len(data) - keep
