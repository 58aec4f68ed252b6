"""`HumanQueueAnnotator`: people (or any external system) label exactly the selected items.

Workflow (see docs/annotation.md):

1. a run asks for scores; the items without a label are appended to the queue file (JSONL or CSV, one line per
   (prompt, completion), `id` = the store key) — once: rerunning never duplicates a line;
2. the run stops with `AnnotationsPending` ("N items are waiting in <queue>");
3. the labelling team writes `{"id": ..., "score": ...}` lines to the labels file (JSONL), or `id,score` rows (CSV) —
   or fills the `score` field of the queue file itself;
4. rerun the same command: labelled items are read back, saved in the annotation store, and training goes on.

Instead of step 3, people can label on a web page: `aepo label --store STORE --queue QUEUE` (docs/labelling.md). Its
answers are kept in the store file; given `store`, this annotator reads the page's finished labels too, and with
`wait_timeout` it polls for them instead of stopping (step 2), so the run goes on by itself.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from pathlib import Path

from .._utils.csv_safety import escape_cell, unescape_cell
from ..errors import storage_guard
from ..storage.annotations import AnnotationStore
from .base import PENDING, AnnotationError, AnnotationRequest, AnnotationsPending, Annotator, make_key

logger = logging.getLogger(__name__)

__all__ = ["HumanQueueAnnotator", "default_labels_path"]

_INVALID_WORDS = {"nan", "none", "null", "skip", "invalid", "n/a", "na"}
_CSV_FIELDS = ["id", "prompt", "completion", "pool_index", "score"]


def default_labels_path(queue_path: str | os.PathLike) -> Path:
    """`queue.jsonl` → `queue.labels.jsonl`; `queue.csv` → `queue.labels.csv`."""
    q = Path(queue_path)
    return q.with_name(q.stem + ".labels" + q.suffix)


class HumanQueueAnnotator(Annotator):
    """Writes the selected items to a queue file and reads labels back.

    Args:
        queue_path: `.jsonl` or `.csv` file the pending items are appended to.
        labels_path: where labels are read from (default `default_labels_path(queue_path)`); `.jsonl` lines
            `{"id": ..., "score": ...}` or a `.csv` with columns `id,score`. Both formats are accepted whatever the
            queue's format, and a `score` filled in the queue file itself counts as a label too.
        name: identity name (`human:<name>`): keep it stable, it is part of every item id.
        extra_columns: row columns copied into each queue line (e.g. an example id or a source name).
        store: the annotation store (or its path) the labelling page (`aepo label`) writes its answers to; its
            finished labels are read like the labels file's (the labels file wins when both label an item).
        wait_timeout: seconds `score` waits for missing labels, re-reading them every `poll_interval` seconds, before
            it stops with `AnnotationsPending` (0, the default: stop at once; `math.inf`: wait as long as it takes).
        poll_interval: seconds between two reads of the labels while waiting.

    A score is a number. `skip`, `nan`, `none`, `invalid` or `n/a` mark an item the labeller could not score: it is
    stored as an invalid annotation (never paired, never queued again). An empty score means "not labelled yet".
    If an id appears several times in the labels file, the last line wins — until the label has been read by a run:
    stored annotations are final.
    """

    single_call = True

    def __init__(
        self,
        queue_path: str | os.PathLike,
        labels_path: str | os.PathLike | None = None,
        name: str = "default",
        extra_columns: tuple[str, ...] | list[str] = (),
        store=None,
        wait_timeout: float = 0.0,
        poll_interval: float = 5.0,
    ):
        self.queue_path = Path(queue_path)
        if self.queue_path.suffix.lower() not in (".jsonl", ".csv"):
            raise ValueError(f"The annotation queue must be a .jsonl or .csv file, got {str(queue_path)!r}.")
        self.labels_path = Path(labels_path) if labels_path is not None else default_labels_path(self.queue_path)
        if self.labels_path.suffix.lower() not in (".jsonl", ".csv"):
            raise ValueError(f"The labels file must be a .jsonl or .csv file, got {str(self.labels_path)!r}.")
        self.name = name
        self.extra_columns = tuple(extra_columns)
        self.identity = f"human:{name}"
        self.store = store
        if not (wait_timeout >= 0 and poll_interval > 0):
            raise ValueError(
                f"wait_timeout must be >= 0 and poll_interval > 0, got {wait_timeout!r}, {poll_interval!r}."
            )
        self.wait_timeout = float(wait_timeout)
        self.poll_interval = float(poll_interval)

    # ------------------------------------------------------------------------------------------- scoring

    def score(self, requests: list[AnnotationRequest]) -> list[list[float | None]]:
        labels = self.read_labels()
        queued = self.queued_ids()
        results, new_items, pending = [], [], 0
        for req in requests:
            row_scores = []
            for completion, index in zip(req.completions, req.indices):
                key = make_key(self.identity, req.prompt, completion)
                if key in labels:
                    row_scores.append(labels[key])
                    continue
                row_scores.append(PENDING)
                pending += 1
                if key not in queued:
                    queued.add(key)
                    new_items.append(self._item(key, req, completion, index))
            results.append(row_scores)
        if new_items:
            self._append(new_items)
            logger.info("Queued %d item(s) for labelling in %s.", len(new_items), self.queue_path)
        if pending and self.wait_timeout > 0:
            pending = self._wait(requests, results, pending)
        if pending:
            raise AnnotationsPending(
                f"{pending} annotation(s) are waiting for labels in {self.queue_path} "
                f"({len(new_items)} newly queued); write them to {self.labels_path} and run again.",
                pending=pending,
                partial_scores=results,
                queue_path=str(self.queue_path),
                labels_path=str(self.labels_path),
            )
        return results

    def _wait(self, requests: list[AnnotationRequest], results: list[list], pending: int) -> int:
        """Poll the labels until every PENDING entry of `results` is labelled (filled in place) or time runs out."""
        logger.warning(
            "Waiting up to %s s for %d label(s) of %s (label them with `aepo label --queue %s`).",
            "unlimited" if math.isinf(self.wait_timeout) else f"{self.wait_timeout:.0f}",
            pending,
            self.queue_path,
            self.queue_path,
        )
        deadline = time.monotonic() + self.wait_timeout
        while pending and time.monotonic() < deadline:
            time.sleep(min(self.poll_interval, max(0.0, deadline - time.monotonic())))
            labels = self.read_labels()
            pending = 0
            for req, row_scores in zip(requests, results):
                for j, completion in enumerate(req.completions):
                    if row_scores[j] is PENDING:
                        key = make_key(self.identity, req.prompt, completion)
                        if key in labels:
                            row_scores[j] = labels[key]
                        else:
                            pending += 1
        return pending

    # ------------------------------------------------------------------------------------------- queue file

    def _item(self, key: str, req: AnnotationRequest, completion, index: int) -> dict:
        item = {"id": key, "prompt": req.prompt, "completion": completion, "pool_index": index}
        for column in self.extra_columns:
            item[column] = (req.row or {}).get(column)
        return item

    def queued_ids(self) -> set[str]:
        """Ids already written to the queue file."""
        return {row.get("id") for _, row in _read_rows(self.queue_path, strict=False) if row.get("id")}

    def queue_items(self) -> list[dict]:
        """Every queue line, in queue order (what the labelling page groups into tasks)."""
        return [row for _, row in _read_rows(self.queue_path, strict=False) if row.get("id")]

    def pending_items(self) -> list[dict]:
        """Queue lines that have no label yet (what the labelling team still has to do)."""
        labels = self.read_labels()
        return [
            row for _, row in _read_rows(self.queue_path, strict=False) if row.get("id") and row["id"] not in labels
        ]

    def _append(self, items: list[dict]) -> None:
        with storage_guard(self.queue_path):  # a full disk or a read-only place: StorageWriteError naming the queue
            self._append_locked(items)

    def _append_locked(self, items: list[dict]) -> None:
        self.queue_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.queue_path, "a+", encoding="utf-8", newline="") as f:
            _lock(f)
            try:
                f.seek(0, os.SEEK_END)
                empty = f.tell() == 0
                if not empty:  # a previous writer killed mid-line must not glue its fragment to our first line
                    f.seek(f.tell() - 1)
                    last = f.read(1)
                    f.seek(0, os.SEEK_END)
                    if last != "\n":
                        f.write("\n")
                if self.queue_path.suffix.lower() == ".csv":
                    fields = _CSV_FIELDS + [c for c in self.extra_columns if c not in _CSV_FIELDS]
                    writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
                    if empty:
                        writer.writeheader()
                    for item in items:
                        writer.writerow({k: _cell(item.get(k)) for k in fields})
                else:
                    for item in items:
                        f.write(json.dumps(item, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            finally:
                _unlock(f)

    # ------------------------------------------------------------------------------------------- labels

    def read_labels(self, include_page: bool = True) -> dict[str, float | None]:
        """`{id: score}` from the labels file and from scores filled in the queue file (labels file wins), and, when
        `include_page` and a `store` is set, the labelling page's finished labels (for items the files do not label).

        A `None` value is a label saying "could not score" (stored as invalid).
        """
        labels: dict[str, float | None] = {}
        for path, strict in ((self.queue_path, False), (self.labels_path, True)):
            for line_no, row in _read_rows(path, strict):
                key = row.get("id")
                if not key:
                    if path == self.labels_path:
                        raise AnnotationError(f"{path}, line {line_no}: a label needs an 'id' (the queue line's id).")
                    continue
                parsed = _parse_score(row.get("score"), path, line_no)
                if parsed is not _UNLABELLED:
                    labels[str(key)] = parsed
        if include_page and self.store is not None:
            from aepo_trainer.storage.label_book import read_final_labels  # the page's answers, in the store file

            if not isinstance(self.store, AnnotationStore):
                self.store = AnnotationStore(self.store)  # opened once, on first use

            for key, score in read_final_labels(self.store).items():
                labels.setdefault(key, score)
        return labels


_UNLABELLED = object()


def _parse_score(value, path, line_no):
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return _UNLABELLED
    if isinstance(value, bool):
        raise AnnotationError(f"{path}, line {line_no}: score {value!r} is not a number.")
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    text = str(value).strip()
    if text.lower() in _INVALID_WORDS:
        return None
    try:
        number = float(text)
    except ValueError:
        raise AnnotationError(
            f"{path}, line {line_no}: score {value!r} is not a number (use a number, or 'skip' for an item that "
            "cannot be scored)."
        ) from None
    return number if math.isfinite(number) else None


def _read_rows(path: Path, strict: bool = True):
    """(line number, dict) for each record of a JSONL or CSV file; a missing file has none.

    `strict=False` (our own queue file) skips unreadable lines with a warning: they can only be fragments of a write
    cut short by a crash, and the items they held are queued again.
    """
    if not path.exists():
        return
    if path.suffix.lower() == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            for line_no, row in enumerate(csv.DictReader(f), 2):  # line 1 is the header
                yield line_no, {k: unescape_cell(v) for k, v in row.items()}
        return
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if not strict or (i == len(lines) and not line.endswith("\n")):  # a write cut short by a crash
                logger.warning("%s, line %d: ignoring an incomplete line (its item is queued again).", path, i)
                continue
            raise AnnotationError(f"{path}, line {i}: not valid JSON.") from None
        if not isinstance(row, dict):
            if not strict:
                continue
            raise AnnotationError(f"{path}, line {i}: expected a JSON object with 'id' and 'score'.")
        yield i, row


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, (int, float)):
        return value
    return escape_cell(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))


def _lock(f) -> None:
    try:
        import fcntl

        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    except (ImportError, OSError):  # pragma: no cover - non-POSIX
        pass


def _unlock(f) -> None:
    try:
        import fcntl

        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    except (ImportError, OSError):  # pragma: no cover
        pass
