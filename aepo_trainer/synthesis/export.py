"""Outputs of Safer-Instruct: preference pairs for DPO, candidate pools for AEPO, and a dataset card.

* **Pairs** (`to_preference_pairs`): `prompt` = the induced instruction, `chosen` = the expert's response, `rejected`
  = the original text. A TRL preference dataset: `DPOTrainer` and `AEPOTrainer` train on it directly.
* **Pools** (`to_candidate_pools`): `prompt` = the instruction, `completions` = [original text, expert responses...,
  any other samples], with `completion_sources` naming where each candidate came from. A pool dataset in the sense of
  `aepo_trainer.data.pools` (docs/data-formats.md): `AEPOTrainer` and `aepo select` select k of them, annotate only
  those, and pair them, so the Safer-Instruct data is spent with AEPO's annotation budget.

Every row keeps `source_id` and `provenance` (the source text's hash and, per stage, the model, template hash and
sampling settings), plus the judge's `verdict` and `verdict_reason`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import storage_guard
from .stage import SynthesisReport
from .templates import REVERSE_TEMPLATE

__all__ = ["build_dataset_card", "save_outputs", "to_candidate_pools", "to_preference_pairs"]

_KEPT = ("source_id", "verdict", "verdict_reason", "harmful", "provenance")


def _wrap(text: str, role: str) -> list[dict]:
    return [{"role": role, "content": text}]


def to_preference_pairs(dataset, *, conversational: bool = False, all_responses: bool = False):
    """Pairs (`prompt`, `chosen` = expert response, `rejected` = original text) from rows of
    `write_expert_responses`. `all_responses` makes one pair per expert response (default: the first only);
    `conversational` writes TRL's conversational format (lists of messages)."""
    import datasets

    out = []
    for row in dataset:
        for response in row["expert_responses"] if all_responses else row["expert_responses"][:1]:
            prompt, chosen, rejected = row["instruction"], response, row["text"]
            if conversational:
                prompt, chosen, rejected = (
                    _wrap(prompt, "user"),
                    _wrap(chosen, "assistant"),
                    _wrap(rejected, "assistant"),
                )
            out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, **{k: row.get(k) for k in _KEPT}})
    return datasets.Dataset.from_list(out)


def to_candidate_pools(dataset, *, extra_column: str | None = None, conversational: bool = False):
    """Pools (`prompt`, `completions` = [original, expert responses..., `extra_column`...], `completion_sources`)."""
    import datasets

    out = []
    for row in dataset:
        extra = list(row.get(extra_column) or []) if extra_column else []
        completions = [row["text"], *row["expert_responses"], *extra]
        sources = ["original"] + ["expert"] * len(row["expert_responses"]) + [extra_column or "other"] * len(extra)
        prompt = row["instruction"]
        if conversational:
            prompt, completions = _wrap(prompt, "user"), [_wrap(c, "assistant") for c in completions]
        out.append({"prompt": prompt, "completions": completions, "completion_sources": sources, **{k: row.get(k) for k in _KEPT}})  # fmt: skip
    return datasets.Dataset.from_list(out)


def build_dataset_card(report: SynthesisReport, settings: dict, *, reverse_template: str = REVERSE_TEMPLATE):
    """A `huggingface_hub.DatasetCard` saying how the data was made: models, templates, settings, counts, cost."""
    from huggingface_hub import DatasetCard, DatasetCardData

    data = DatasetCardData(
        tags=["synthetic", "preference", "safer-instruct", "aepo-trainer", "dpo"],
        task_categories=["text-generation"],
        pretty_name="Safer-Instruct preference data",
    )
    body = f"""
# Safer-Instruct preference data

Made with `aepo safer-instruct` (aepo-trainer; Safer-Instruct: Shi et al., 2023,
[arXiv:2311.08685](https://arxiv.org/abs/2311.08685)) from raw texts, without human labels:

1. **Reversed instruction tuning**: a model was fine-tuned to write the instruction a response answers.
2. **Instruction induction**: that model wrote an instruction for each raw text.
3. **Filtering**: an expert judge kept instructions that are coherent, self-contained and match their text.
4. **Expert responses**: an expert model answered each kept instruction. Its answer is `chosen`; the original text
   is `rejected` (pairs), or one candidate of a pool next to the expert's (pools).

## Files

- `pairs.jsonl`: `prompt`, `chosen`, `rejected` (+ `source_id`, `verdict`, `verdict_reason`, `harmful`, `provenance`).
- `pools.jsonl`: `prompt`, `completions` (original text first), `completion_sources` (+ the same columns).

## Settings

```json
{json.dumps(settings, indent=2, ensure_ascii=False, default=str)}
```

Reversal template:

```text
{reverse_template}
```

## Counts and cost

```text
{report.summary()}
```

## Caveats

The rejected responses are the original texts: in the safety recipe they are harmful by construction. The data
inherits the licenses of the source texts and the terms of use of the models named above.
"""
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n{body}")


def save_outputs(pairs, pools, card, directory: str | os.PathLike) -> dict[str, str]:
    """Write `pairs.jsonl`, `pools.jsonl` and `README.md` (the card) into `directory`, each atomically."""
    directory = Path(directory)
    with storage_guard(directory):
        directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, dataset in (("pairs.jsonl", pairs), ("pools.jsonl", pools)):
        path = directory / name
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        with storage_guard(path):  # a full disk: StorageWriteError naming the file; no temporary file left
            try:
                with open(tmp, "w", encoding="utf-8") as f:
                    for row in dataset:
                        f.write(json.dumps(row, ensure_ascii=False) + "\n")
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        written[name] = str(path)
    card_path = directory / "README.md"
    with storage_guard(card_path):
        card.save(str(card_path))
    written["README.md"] = str(card_path)
    return written
