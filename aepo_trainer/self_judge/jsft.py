"""JSFT — judge-augmented supervised fine-tuning data (SELF-JUDGE, arXiv 2402.11253).

SELF-JUDGE trains one model to be both the policy and its own judge: supervised fine-tuning on ordinary chat data
mixed with *judgment* examples — the pairwise judge question about two responses, answered with the letter of the
better one. `build_jsft_examples` turns a preference dataset (prompt, chosen, rejected) into that mixture:

* two judgment examples per preference pair, one per order — (chosen as A, rejected as B) answered "A", and
  (rejected as A, chosen as B) answered "B" — so the judge learns the preference, not a position;
* one ordinary SFT example per distinct (prompt, chosen response);
* mixed at `judge_fraction` (the share of judgment examples in the output), using as many examples as the ratio
  allows; both orders of a pair are always kept together.

The judge question is rendered by `render_judge_prompt` with the template `PairwiseJudgeAnnotator` asks at judging
time (`DEFAULT_JUDGE_TEMPLATE`), so the trained model is asked exactly what it was trained on. The output is TRL's
prompt-completion format, ready for `trl.SFTTrainer` (`aepo jsft --config ...` trains it):

* `chat=True` (default): conversational — `prompt=[{"role": "user", ...}]`, `completion=[{"role": "assistant",
  "content": "A"}]`; the judge then reads the first token of the assistant turn, as `PairwiseJudgeAnnotator` does with
  a chat template.
* `chat=False`: plain text — `prompt=<question> + answer_prefix`, `completion=" A"`, as the judge reads it without a
  chat template.

Each example also has a `kind` column: `"judge"` or `"sft"`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ..annotation.base import as_messages, canonical_json, to_text
from ..annotation.judge import DEFAULT_JUDGE_TEMPLATE, render_judge_prompt

__all__ = ["build_jsft_dataset", "build_jsft_examples"]


def build_jsft_examples(
    rows: Sequence[dict],
    *,
    judge_fraction: float = 0.5,
    template: str = DEFAULT_JUDGE_TEMPLATE,
    choices: tuple[str, str] = ("A", "B"),
    chat: bool = True,
    answer_prefix: str = "\nAnswer:",
    shuffle: bool = True,
    seed: int = 0,
    prompt_column: str = "prompt",
    chosen_column: str = "chosen",
    rejected_column: str = "rejected",
) -> list[dict]:
    """Judge-augmented SFT examples (`prompt`, `completion`, `kind`) from preference rows; see the module docstring.

    Args:
        rows: preference rows with a prompt, a chosen and a rejected response (strings or chat messages; the
            implicit-prompt format — the prompt inside `chosen`/`rejected` — is not supported: split it first).
        judge_fraction: share of judgment examples in the output, in [0, 1] (0 = plain SFT on the chosen responses,
            1 = judgment examples only).
        template, choices, answer_prefix: the judge question and answers (those of `PairwiseJudgeAnnotator`).
        chat: conversational output (True) or plain text (False; conversational rows are then an error).
        shuffle: shuffle the mixture (seeded). False keeps a documented order: each pair's two judgment examples in
            row order, then the SFT examples in row order.
        seed: seed of the subsampling and the shuffle.
    """
    if not (isinstance(judge_fraction, (int, float)) and 0 <= judge_fraction <= 1):
        raise ValueError(f"judge_fraction must be in [0, 1], got {judge_fraction!r}")
    if len(choices) != 2 or choices[0] == choices[1]:
        raise ValueError(f"choices must be two different strings, got {choices!r}")
    for placeholder in ("{prompt}", "{response_a}", "{response_b}"):
        if placeholder not in template:
            raise ValueError(f"the judge template must contain {placeholder}")
    pairs = []
    for number, row in enumerate(rows):
        for column in (prompt_column, chosen_column, rejected_column):
            if column not in row:
                raise ValueError(
                    f"row {number} has no {column!r} column (columns: {', '.join(map(repr, row))}); "
                    "JSFT needs prompt, chosen and rejected"
                )
            value = row[column]
            if not chat and not isinstance(value, str):
                raise ValueError(f"row {number}, column {column!r}: chat=False needs strings, got chat messages")
            if not (isinstance(value, str) and value.strip()) and not (isinstance(value, list) and value):
                raise ValueError(f"row {number}, column {column!r}: expected a non-empty string or chat messages")
        pairs.append((row[prompt_column], row[chosen_column], row[rejected_column]))

    judge = []  # per pair: (chosen as A -> "A", chosen as B -> "B")
    for p, c, r in pairs:
        judge.append(
            [
                _judgment(p, c, r, choices[0], template, chat, answer_prefix),
                _judgment(p, r, c, choices[1], template, chat, answer_prefix),
            ]
        )
    sft, seen = [], set()
    for p, c, _ in pairs:
        key = canonical_json([p, c])
        if key not in seen:
            seen.add(key)
            sft.append(_sft(p, c, chat))

    n_judge_pairs, n_sft = _mix_counts(len(judge), len(sft), judge_fraction)
    rng = random.Random(seed)
    kept_pairs = (
        sorted(rng.sample(range(len(judge)), n_judge_pairs)) if n_judge_pairs < len(judge) else range(len(judge))
    )
    kept_sft = sorted(rng.sample(range(len(sft)), n_sft)) if n_sft < len(sft) else range(len(sft))
    examples = [e for i in kept_pairs for e in judge[i]] + [sft[i] for i in kept_sft]
    if shuffle:
        rng.shuffle(examples)
    return examples


def build_jsft_dataset(dataset, **kwargs):
    """`build_jsft_examples` over a `datasets.Dataset` (or a list of rows), returned as a `datasets.Dataset`."""
    from datasets import Dataset

    rows = dataset.to_list() if hasattr(dataset, "to_list") else list(dataset)
    return Dataset.from_list(build_jsft_examples(rows, **kwargs))


def _mix_counts(judge_pairs: int, sft: int, fraction: float) -> tuple[int, int]:
    """(judgment pairs, SFT examples) to keep: the largest mixture with `2·pairs / (2·pairs + sft) ≈ fraction`."""
    if judge_pairs == 0 or fraction == 0:
        return 0, sft
    if sft == 0 or fraction == 1:
        return judge_pairs, 0
    sft_needed = 2 * judge_pairs * (1 - fraction) / fraction
    if sft_needed <= sft:
        return judge_pairs, round(sft_needed)
    return max(1, min(judge_pairs, round(sft * fraction / (2 * (1 - fraction))))), sft


def _judgment(prompt, a, b, letter: str, template, chat: bool, answer_prefix: str) -> dict:
    question = render_judge_prompt(template, prompt, a, b)
    if chat:
        return {
            "prompt": [{"role": "user", "content": question}],
            "completion": [{"role": "assistant", "content": letter}],
            "kind": "judge",
        }
    return {"prompt": question + answer_prefix, "completion": " " + letter, "kind": "judge"}


def _sft(prompt, chosen, chat: bool) -> dict:
    if chat:
        return {"prompt": as_messages(prompt, "user"), "completion": as_messages(chosen, "assistant"), "kind": "sft"}
    return {"prompt": to_text(prompt), "completion": to_text(chosen), "kind": "sft"}
