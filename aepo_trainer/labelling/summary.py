"""A store's labelling in numbers — answers, finished items and agreement — for `aepo stats --labels STORE`."""

from __future__ import annotations

import os

from aepo_trainer.storage.annotations import AnnotationStore

from ..storage.label_book import Answer, final_labels, labeller_counts, read_answers, read_reviews
from .agreement import agreement
from .gold import gold_accuracy

__all__ = ["format_labelling_summary", "labelling_summary", "position_bias"]


def position_bias(answers: dict[str, list[Answer]]) -> dict:
    """How often the candidate shown first wins, against chance.

    Over every submission of two or more scored candidates that recorded positions (ties and "all bad" answers
    excluded): the first-shown candidate wins when it has the highest score; shared highest scores count
    1/(number sharing). Chance is the mean of 1/k. `{"answers": n, "first_shown_wins": rate, "chance": rate}` (rates
    None when n = 0). A rate well above chance means labellers favour what they read first — the shuffled order
    (`LabellingSettings.shuffle_seed`) keeps that from favouring the same candidate for everybody.
    """
    by_submission: dict[str, list[Answer]] = {}
    for rows in answers.values():
        for a in rows:
            by_submission.setdefault(a.submission, []).append(a)
    n, wins, chance = 0, 0.0, 0.0
    for rows in by_submission.values():
        if len(rows) < 2 or any(a.score is None or "position" not in a.raw for a in rows):
            continue
        if any(a.raw.get("tie") or a.raw.get("all_bad") for a in rows):
            continue
        top = max(a.score for a in rows)
        winners = [a for a in rows if a.score == top]
        n += 1
        chance += 1 / len(rows)
        wins += sum(1 / len(winners) for a in winners if a.raw["position"] == 0)
    return {"answers": n, "first_shown_wins": wins / n if n else None, "chance": chance / n if n else None}


def labelling_summary(store: AnnotationStore | str | os.PathLike) -> dict | None:
    """`{"settings", "items", "final", "read_by_run", "agreement", "position_bias", "labellers", "reviewed"}` of the
    page's answers in `store`, or None when no labelling page ever ran on it. Reads only."""
    store = store if isinstance(store, AnnotationStore) else AnnotationStore(store)
    found = read_answers(store)
    if found is None:
        return None
    settings, answers = found
    reviews, gold = read_reviews(store), gold_accuracy(store)
    final = final_labels(answers, settings, reviews)
    read = sum(1 for key in final if key in store)
    level = "interval" if settings.question == "score" else "ordinal"
    by_item = {key: {a.labeller: a.score for a in rows} for key, rows in answers.items()}
    return {
        "settings": settings,
        "items": len(answers),
        "final": len(final),
        "read_by_run": read,
        "agreement": agreement(by_item, level=level),
        "position_bias": position_bias(answers),
        "labellers": {name: {**row, **gold.get(name, {})} for name, row in labeller_counts(store).items()},
        "reviewed": len(reviews),
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
        _bias_line(summary["position_bias"]),
        f"  reviewed {summary['reviewed']}" + ("  (only reviewed items are final)" if s.require_review else ""),
        "",
        f"{'labeller':<20} {'items':>6} {'shared':>7} {'mean |diff|':>12} {'alpha without':>14} {'median s/item':>14}"
        f" {'gold accuracy':>14}",
    ]
    for name, row in a["labellers"].items():
        own = summary["labellers"].get(name, {})
        pace, gold = own.get("median_seconds_per_item"), own.get("gold_accuracy")
        gold_text = "-" if gold is None else f"{gold:.2f} ({own['gold_answered']})"
        lines.append(
            f"{name:<20} {row['items']:>6} {row['shared']:>7} {fmt(row['mean_abs_diff']):>12} "
            f"{fmt(row['alpha_without']):>14} {'-' if pace is None else f'{pace:.1f}':>14} {gold_text:>14}"
        )
    return "\n".join(lines)


def _bias_line(bias: dict) -> str:
    if not bias["answers"]:
        return "  position bias: no answer with recorded positions yet"
    return (
        f"  position bias: the first-shown candidate won {bias['first_shown_wins']:.1%} of {bias['answers']} "
        f"answer(s) (chance {bias['chance']:.1%})"
    )
