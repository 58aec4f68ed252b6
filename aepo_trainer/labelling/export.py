"""The labelling page's answers as a Hugging Face dataset folder, with a dataset card (`aepo label --export DIR`).

Three parquet tables under `DIR/data/` — `answers` (one row per labeller and item: the score, the position the
candidate was shown at, seconds, the rationale, ...), `items` (one row per queued item: its final score, review and
whether a run read it) and `labellers` (counts, pace, agreement) — and `DIR/README.md`, a dataset card whose YAML
header declares the three configs, so `datasets.load_dataset(DIR, "answers")` reads them and `--push_to_hub` uploads
a folder the Hub renders. Parquet written by `datasets` (`Dataset.to_parquet`): the ecosystem's format, no code of our
own to read it back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from aepo_trainer.annotation.human import HumanQueueAnnotator
from aepo_trainer.storage.annotations import AnnotationStore

from .summary import labelling_summary
from .tasks import QueueView

__all__ = ["export_labels"]

_CARD = """---
configs:
- config_name: answers
  data_files: data/answers.parquet
- config_name: items
  data_files: data/items.parquet
- config_name: labellers
  data_files: data/labellers.parquet
tags:
- preference
- human-feedback
- aepo
---

# Human labels from `aepo label`

{answers} answer(s) by {labellers} labeller(s) on {items} queued item(s) ({prompts} prompt(s)); {final} item(s) are
final. Question: `{question}`{scale}, {labels_per_item} label(s) per item{review}.

| config | one row per |
|---|---|
| `answers` | labeller × item: `score` (what the answer is worth: the score, or Borda points), `position` (0 = shown first), `shown` (candidates shown together), `seconds`, `skip` / `tie` / `all_bad`, `rationale` |
| `items` | queued item: `prompt`, `completion`, `pool_index`, `final_score` (the mean of the labellers', or a reviewer's override), `review`, `read_by_run` |
| `labellers` | labeller: `answered`, `skipped`, `median_seconds_per_item`, `gold_accuracy` (honeypots), `mean_abs_diff` to the others, `alpha_without` |

## Agreement and position bias

* Krippendorff's alpha ({level}): {alpha} over {alpha_items} item(s) answered by two or more labellers.
* The candidate shown first won {first_wins} of {bias_n} answer(s) (chance {chance}); candidates are shown in an order
  drawn per labeller and per prompt (seed {seed}).

Made with aepo-trainer (`aepo label --export`).
"""


def export_labels(
    store: AnnotationStore | str | os.PathLike,
    queue: str | os.PathLike,
    out_dir: str | os.PathLike,
    labels_path: str | os.PathLike | None = None,
    push_to_hub: str | None = None,
    private: bool = True,
) -> Path:
    """Write the page's answers in `store` (for the items of `queue`) to `out_dir` as a dataset folder with a card.

    Args:
        store, queue, labels_path: the run's annotation store, queue file and labels file.
        out_dir: the folder to write (created; existing files of the same names are replaced).
        push_to_hub: a Hub dataset repository id to upload the folder to (`huggingface_hub.upload_folder`).
        private: create the Hub repository private.

    Returns the folder. Raises ValueError when no labelling page ever ran on `store`.
    """
    from datasets import Dataset

    store = store if isinstance(store, AnnotationStore) else AnnotationStore(store)
    summary = labelling_summary(store)
    if summary is None:
        raise ValueError(f"{store.path}: no labelling page has run on this store (nothing to export)")
    settings = summary["settings"]
    from ..storage.label_book import LabelBook

    book = LabelBook(store)
    view = QueueView(HumanQueueAnnotator(queue, labels_path=labels_path, store=store), book, settings)
    tasks = view.tasks()
    items = {item["id"]: (task, item) for task in tasks for item in task.items}
    answers = book.answers()
    final = book.final_scores(settings)
    reviews = book.reviews()
    read = {key for key in items if key in store}

    def text(value) -> str:
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    answer_rows = []
    for key, rows in answers.items():
        task, item = items.get(key, (None, {}))
        for a in rows:
            answer_rows.append(
                {
                    "key": key,
                    "prompt_id": task.id if task else None,
                    "labeller": a.labeller,
                    "score": a.score,
                    "position": a.raw.get("position"),
                    "shown": a.raw.get("shown"),
                    "seconds": a.raw.get("seconds"),
                    "skip": bool(a.raw.get("skip")),
                    "tie": bool(a.raw.get("tie")),
                    "all_bad": bool(a.raw.get("all_bad")),
                    "rationale": a.raw.get("rationale"),
                    "submission": a.submission,
                    "created_at": a.created_at,
                    "raw": json.dumps(a.raw, sort_keys=True),
                }
            )
    item_rows = [
        {
            "key": key,
            "prompt_id": task.id,
            "prompt": text(task.prompt),
            "completion": text(item.get("completion", "")),
            "pool_index": item.get("pool_index"),
            "answers": len(answers.get(key, [])),
            "final": key in final,
            "final_score": final.get(key),
            "review": reviews[key].decision if key in reviews else None,
            "reviewer": reviews[key].reviewer if key in reviews else None,
            "read_by_run": key in read,
        }
        for key, (task, item) in items.items()
    ]
    agreement = summary["agreement"]
    labeller_rows = [
        {
            "labeller": name,
            **{k: row.get(k) for k in ("answered", "skipped", "median_seconds_per_item", "gold_accuracy")},
            "mean_abs_diff": agreement["labellers"].get(name, {}).get("mean_abs_diff"),
            "alpha_without": agreement["labellers"].get(name, {}).get("alpha_without"),
        }
        for name, row in summary["labellers"].items()
    ]
    out = Path(out_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    for name, rows in (("answers", answer_rows), ("items", item_rows), ("labellers", labeller_rows)):
        if not rows:
            raise ValueError(f"{store.path}: nothing to export (no {name})")
        Dataset.from_list(rows).to_parquet(str(out / "data" / f"{name}.parquet"))
    bias = summary["position_bias"]

    def fmt(x, spec=".3f"):
        return "not defined" if x is None else format(x, spec)

    card = _CARD.format(
        answers=len(answer_rows),
        labellers=len(labeller_rows),
        items=len(item_rows),
        prompts=len(tasks),
        final=sum(row["final"] for row in item_rows),
        question=settings.question,
        scale=f" ({settings.scale_min}..{settings.scale_max})" if settings.question == "score" else " (Borda points)",
        labels_per_item=settings.labels_per_item,
        review=", only reviewed items final" if settings.require_review else "",
        level="interval" if settings.question == "score" else "ordinal",
        alpha=fmt(agreement["alpha"]),
        alpha_items=agreement["items"],
        first_wins=fmt(bias["first_shown_wins"], ".1%"),
        bias_n=bias["answers"],
        chance=fmt(bias["chance"], ".1%"),
        seed=settings.shuffle_seed,
    )
    (out / "README.md").write_text(card, encoding="utf-8")
    if push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(push_to_hub, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(repo_id=push_to_hub, folder_path=str(out), repo_type="dataset")
    return out
