"""The stages `aepo select` and `aepo stats` share: validating pools, embedding them (sharded across processes),
laying out a batch for the reducer, and a read-only view of an annotation store.

`PoolEmbedder` embeds a chunk of pools in fixed work units ("shards" of about `shard_texts` texts, the same whatever
the number of processes). Each unit is cached by the `datasets` library under the data's fingerprint and the
embedder's identity, so a rerun after an interruption does not embed the finished units again; under `accelerate
launch` / `torchrun` each rank embeds every `world_size`-th unit and the main process gathers them, in order. Since a
unit is embedded in one call whatever the number of processes, the embeddings (and so the selections) of a run of
several processes are those of one process.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

from .errors import InputError


def check_pools(
    rows: list[dict], config, source: str, need_scores: bool, annotator=None, judge_model=None, paid: bool = True
) -> None:
    """The validation pass of `aepo_trainer.data.validation` (every row and column, the embedder's model and, when the
    command pays for annotations (`paid`), the annotator's model and the budget) before anything is embedded or paid;
    its problems become one `InputError` (exit code 2)."""
    check_pool_rows(rows, config, source, need_scores=need_scores)
    check_pool_settings(
        config,
        need_embedder=not all(row.get(config.embeddings_column) is not None for row in rows),
        pool_sizes=[len(row[config.completions_column]) for row in rows],
        annotator=annotator,
        judge_model=judge_model,
        paid=paid,
    )


def check_pool_rows(rows: list[dict], config, source: str, need_scores: bool, row_offset: int = 0) -> None:
    """Every row and column of `rows` (rows `row_offset`... of `source`: problems name the row in the whole input,
    so a streamed input is checked chunk by chunk with the messages of a whole one)."""
    import dataclasses

    from aepo_trainer.data import validation

    try:
        validation.dataset_kind(rows, config, source)
        validation.validate_pool_dataset(rows, config, dataset_name=source, need_scores=need_scores)
    except validation.InputValidationError as error:
        if row_offset:
            shifted = [
                dataclasses.replace(p, row=p.row + row_offset) if p.row is not None else p for p in error.problems
            ]
            error = validation.InputValidationError(error.where, shifted)
        raise InputError(str(error)) from None


def check_pool_settings(
    config, *, need_embedder: bool, pool_sizes, annotator=None, judge_model=None, paid: bool = True
) -> None:
    """The settings half of `check_pools`: the embedder's model and, when the command pays (`paid`), the annotator's
    model, the budget (against the pools' sizes) and the annotation store."""
    from aepo_trainer.data import validation

    if not paid:
        problems = validation.annotator_problems(config, None, need_embedder=need_embedder, check_annotator=False)
    else:
        problems = validation.annotator_problems(config, annotator, need_embedder=need_embedder)
        if config.annotator == "judge" and isinstance(judge_model, str):
            problem = validation.pretrained_problem(judge_model, "judge_model")
            problems += [problem] if problem is not None else []
        problems += validation.budget_problems(config, pool_sizes)
        problems += validation.store_problems(config)
    if problems:
        raise InputError(str(validation.InputValidationError("settings", problems)))


class PoolEmbedder:
    """`[N_b, D]` float32 embeddings of the candidates of each row: the rows' `embeddings` column when every row has
    one, else the embedder's (loaded once, on first use).

    Args:
        config: the `AEPOConfig` (embedding model, batch size, column names).
        device: where the embedder runs (default: CUDA when available).
        processes: a `processes.Processes`; with several, the work units are shared out and gathered on the main
            process (`embed` returns None on the other ranks).
        total_texts: the size of the progress bar (texts of the whole run), when known.
        shard_texts: texts per work unit (of caching, resuming and sharing out).
    """

    def __init__(self, config, device=None, processes=None, total_texts: int | None = None, shard_texts: int = 1024):
        self.config = config
        self.device = device
        self.processes = processes
        self.shard_texts = shard_texts
        self.total_texts = total_texts
        self._embedder = None
        self._bar = None
        self._texts_done = 0

    @property
    def embedder(self):
        if self._embedder is None:
            from aepo_trainer.embedding.embedder import Embedder

            self._embedder = Embedder.from_config(self.config, device=self.device, show_progress=False)
        return self._embedder

    def _progress(self, texts: int):
        is_main = self.processes is None or self.processes.is_main
        if self._bar is None and is_main:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total_texts or texts, unit="text", desc="embed", dynamic_ncols=True)
        return self._bar

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def embed(self, rows: list[dict]):
        """One float32 tensor per row (on the main process; None on the others in a run of several processes)."""
        import numpy as np
        import torch

        column, ccol = self.config.embeddings_column, self.config.completions_column
        is_main = self.processes is None or self.processes.is_main
        if all(row.get(column) is not None for row in rows):
            if not is_main:
                return None
            return [torch.as_tensor(np.asarray(row[column], dtype=np.float32)) for row in rows]
        import datasets

        texts = sum(len(row[ccol]) for row in rows)
        bar = self._progress(texts)
        shard_rows = max(1, self.shard_texts // max(len(row[ccol]) for row in rows))
        units = list(range(0, len(rows), shard_rows))
        mine = units if self.processes is None else self.processes.mine(units)
        world = 1 if self.processes is None else self.processes.world_size
        done = {}
        datasets.disable_progress_bars()  # the bar above covers every unit
        try:
            for start in mine:
                shard = rows[start : start + shard_rows]
                done[start] = self._embed_unit(shard, shard_rows)
                if bar is not None:  # other ranks embed about as much at the same time
                    bar.update(sum(len(row[ccol]) for row in shard) * world)
        finally:
            datasets.enable_progress_bars()
        if self.processes is not None and self.processes.distributed:
            gathered = self.processes.gather_on_main(done)
            if not is_main:
                return None
            done = {start: unit for part in gathered for start, unit in part.items()}
        if bar is not None:
            self._texts_done += texts
            bar.n = self._texts_done
            bar.refresh()
        return [torch.as_tensor(e) for start in units for e in done[start]]

    def _embed_unit(self, rows: list[dict], shard_rows: int) -> list:
        import datasets
        import numpy as np

        from aepo_trainer.embedding.embedder import embed_pools

        column, ccol = self.config.embeddings_column, self.config.completions_column
        data = datasets.Dataset.from_list([{ccol: row[ccol]} for row in rows])
        try:
            embedded = embed_pools(
                data,
                ccol,
                self.embedder,
                column,
                batch_size=self.config.embedding_batch_size,
                rows_per_batch=shard_rows,
            )
        except RuntimeError as error:
            if self.embedder._model is None:  # the model could not be loaded: a bad --embedding_model
                raise InputError(f"--embedding_model {self.config.embedding_model!r}: {error}") from None
            raise
        return [np.asarray(e, dtype=np.float32) for e in embedded.with_format("numpy")[column]]


def pool_embeddings(rows: list[dict], config, device=None):
    """One `[N_b, D]` float32 tensor per row, in one process (what `aepo stats` uses)."""
    embedder = PoolEmbedder(config, device=device)
    try:
        return embedder.embed(rows)
    finally:
        embedder.close()


@contextmanager
def read_only_store(path: str):
    """An `AnnotationStore` holding what the store at `path` holds, that writes nothing at `path`: a private copy
    (SQLite's online backup, read through a read-only connection), or an empty one when there is no store yet."""
    import shutil
    import sqlite3
    import tempfile

    from aepo_trainer.annotation import AnnotationStore
    from aepo_trainer.storage.annotations import connect_read_only

    folder = tempfile.mkdtemp(prefix="aepo-dry-run-")
    copy = os.path.join(folder, "annotations.sqlite")
    store = None
    try:
        if os.path.exists(path) and os.path.getsize(path) > 0:
            source = connect_read_only(path)
            target = sqlite3.connect(copy)
            try:
                source.backup(target)
            finally:
                source.close()
                target.close()
        store = AnnotationStore(copy)
        yield store
    finally:
        if store is not None:
            store.close()
        shutil.rmtree(folder, ignore_errors=True)


def prompts_covered(costs: list[int], budget: int) -> int:
    """How many prompts a budget pays for, in order, each whole or not at all (as `AnnotationService` skips them)."""
    covered = 0
    for cost in costs:
        if cost <= budget:
            budget -= cost
            covered += 1
    return covered
