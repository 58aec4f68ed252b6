"""A store's labelling in numbers — answers, finished items and agreement — for `aepo stats --labels STORE`."""

from __future__ import annotations

import os

from aepo_trainer.storage.annotations import AnnotationStore

from ..storage.label_book import final_labels, read_answers
from .agreement import agreement

__all__ = ["format_labelling_summary", "labelling_summary"]


def labelling_summary(store: AnnotationStore | str | os.PathLike) -> dict | None:
    """`{"settings", "items", "final", "read_by_run", "agreement"}` of the page's answers in `store`, or None when
    no labelling page ever ran on it. Reads only."""
    store = store if isinstance(store, AnnotationStore) else AnnotationStore(store)
    found = read_answers(store)
    if found is None:
        return None
    settings, answers = found
    final = final_labels(answers, settings)
    read = sum(1 for key in final if key in store)
    level = "interval" if settings.question == "score" else "ordinal"
    by_item = {key: {a.labeller: a.score for a in rows} for key, rows in answers.items()}
    return {
        "settings": settings,
        "items": len(answers),
        "final": len(final),
        "read_by_run": read,
        "agreement": agreement(by_item, level=level),
    }


def format_labelling_summary(summary: dict | None, store: str) -> str:
    """The summary as the table `aepo stats --labels` prints."""
    if summary is None:
        return f"{store}: no labelling page has run on this store (no answers)."
    s, a = summary["settings"], summary["agreement"]

    def fmt(x):
        return "-" if x is None else f"{x:.3f}"

    lines = [
        f"labelling in {store}: question {s.question}"
        + (f" ({s.scale_min}..{s.scale_max})" if s.question == "score" else " (Borda points)")
        + f", {s.labels_per_item} label(s) per item",
        f"  items answered {summary['items']}  finished {summary['final']}  read by a run {summary['read_by_run']}",
        f"  Krippendorff's alpha ({'interval' if s.question == 'score' else 'ordinal'}) {fmt(a['alpha'])} over "
        f"{a['items']} item(s) answered by two or more labellers",
        "",
        f"{'labeller':<20} {'items':>6} {'shared':>7} {'mean |diff|':>12} {'alpha without':>14}",
    ]
    for name, row in a["labellers"].items():
        lines.append(
            f"{name:<20} {row['items']:>6} {row['shared']:>7} {fmt(row['mean_abs_diff']):>12} "
            f"{fmt(row['alpha_without']):>14}"
        )
    return "\n".join(lines)
