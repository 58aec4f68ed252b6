"""Pool rows reduced batch by batch into preference-pair rows: the library loop of `aepo select` (and of its reports).

`reduce_rows` runs `PoolReducer.reduce` over batches of rows; `pair_rows` turns one reduced batch into output rows
(one per pair, with the row's per-prompt columns); `batch_inputs` lays out a slice of rows as the reducer's tensors.
"""

from __future__ import annotations

import sys

from ..data.empty_completions import KEPT_POSITIONS_KEY
from .reducer import STATS_FIELDS, add_stats

__all__ = ["batch_inputs", "pair_record", "pair_rows", "reduce_rows"]


def batch_inputs(rows: list[dict], embeddings: list, start: int, stop: int, drop: str):
    """The reducer's input for rows[start:stop]: the rows (without the embeddings column), `[B, N, D]`, `[B, N]`."""
    from ..embedding.embedder import stack_pool_embeddings  # lazy: torch

    tensor, mask = stack_pool_embeddings(embeddings[start:stop])
    return [{k: v for k, v in row.items() if k != drop} for row in rows[start:stop]], tensor, mask


def reduce_rows(rows, embeddings, reducer, size: int, bar=None):
    """Run `PoolReducer.reduce` over batches of rows; returns (output rows, summed stats, `AnnotationsPending`s).
    `bar`: a progress bar over prompts to advance (default: a bar of its own)."""
    from tqdm.auto import tqdm  # lazy: only a run that reduces draws a bar

    config = reducer.args
    totals = dict.fromkeys(STATS_FIELDS, 0.0)
    out, pending = [], []
    own_bar = bar is None
    if own_bar:
        bar = tqdm(total=len(rows), unit="prompt", desc="select+annotate+pair", dynamic_ncols=True)
    for start in range(0, len(rows), size):
        batch_rows, tensor, mask = batch_inputs(rows, embeddings, start, start + size, config.embeddings_column)
        visible = [{k: v for k, v in row.items() if k != KEPT_POSITIONS_KEY} for row in batch_rows]  # annotators'
        reduced = reducer.reduce(visible, tensor, mask)
        add_stats(totals, reduced.stats)
        if reduced.pending is not None:
            pending.append(reduced.pending)
        out.extend(pair_rows(batch_rows, reduced, config))
        if reduced.active is not None and reduced.active.pairs_evaluated:
            q = reduced.active
            bar.write(
                f"batch {q.batch}: surrogate before its labels: Spearman {q.spearman:.3f}, pairwise accuracy "
                f"{q.pairwise_accuracy:.3f} ({q.pairs_evaluated} pairs); now fitted on {q.labels_after} labels",
                file=sys.stderr,
            )
        bar.set_postfix(
            paid=int(totals["annotations_paid"]),
            reused=int(totals["annotations_reused"]),
            pairs=len(out),
            refresh=False,
        )
        bar.update(len(batch_rows))
        if reduced.pending is not None and reducer.active is not None:
            break  # the next batch's selection needs these labels: selecting it now would queue the wrong items
    if own_bar:
        bar.close()
    return out, totals, pending


def pair_record(row: dict, reduced, pair, completions_column: str = "completions") -> dict:
    """One pair of a reduced batch mapped back to its row's texts: the one place positions in a selected subset
    become texts (the trainer's recent pairs and `aepo select`'s output rows both come from here)."""
    subset = reduced.subsets[pair.row]
    chosen, rejected = subset[pair.chosen], subset[pair.rejected]
    pool = row[completions_column]
    return {
        "prompt": row.get("prompt"),
        "chosen": pool[chosen],
        "rejected": pool[rejected],
        "chosen_score": pair.chosen_score,
        "rejected_score": pair.rejected_score,
        "chosen_index": chosen,
        "rejected_index": rejected,
        "selected_indices": list(subset),
        "selected_scores": list(reduced.scores[pair.row]),
    }


def pair_rows(rows: list[dict], reduced, config) -> list[dict]:
    """The output rows of one reduced batch: one per pair, plus the row's scalar columns."""
    ccol, scol, ecol = config.completions_column, config.scores_column, config.embeddings_column
    out = []
    for pair in reduced.pairs:
        row = rows[pair.row]
        pool = row[ccol]
        record = pair_record(row, reduced, pair, ccol)
        kept = row.get(KEPT_POSITIONS_KEY)  # `empty_completions='drop'` trimmed the pool: name positions in the input
        if kept is not None:
            record["chosen_index"], record["rejected_index"] = (
                kept[record["chosen_index"]],
                kept[record["rejected_index"]],
            )
            record["selected_indices"] = [kept[i] for i in record["selected_indices"]]
        for name, value in row.items():  # keep per-prompt columns; drop per-candidate ones (one entry per completion)
            if name in record or name in (ccol, scol, ecol, KEPT_POSITIONS_KEY):
                continue
            if isinstance(value, list) and len(value) == len(pool):
                continue
            record[name] = value
        out.append(record)
    return out
