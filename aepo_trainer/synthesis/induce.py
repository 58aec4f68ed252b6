"""Stage 2, instruction induction: the reversed model writes the instruction each raw text answers.

For every cleaned text (`texts.prepare_texts`) the reversed model is sampled `num_instructions` times on the reversal
prompt. Each distinct, non-empty candidate becomes one row, so several candidates per text can all go to the judge
(who keeps the good ones). A candidate is cut at the first line starting with "###" (a model that did not learn to
stop starts the next template section there); empty candidates are counted as `empty_instruction`, repeats of an
earlier candidate of the same text as `duplicate_instruction`.
"""

from __future__ import annotations

import re

from .checkpoint import StageCheckpoint
from .generators import SamplingConfig, TextGenerator
from .reverse import reverse_prompt
from .stage import SynthesisReport, check_text_columns, row_key, run_resumable
from .templates import REVERSE_TEMPLATE, template_hash

__all__ = ["DEFAULT_INDUCE_SAMPLING", "clean_instruction", "induce_instructions"]

STAGE = "induce"
DEFAULT_INDUCE_SAMPLING = SamplingConfig(temperature=0.7, top_p=0.95, max_new_tokens=128)
_NEXT_SECTION = re.compile(r"\n\s*###")


def clean_instruction(text: str) -> str:
    """A sampled instruction without surrounding whitespace and without anything from the first "###" line on."""
    return _NEXT_SECTION.split("\n" + text.strip(), maxsplit=1)[0].strip() if text.strip() else ""


def induce_settings(identity: str, template: str, sampling: SamplingConfig, num_instructions: int) -> dict:
    """What determines an induction output besides the text (recorded as `provenance["induce"]`)."""
    return {
        "model": identity,
        "template_sha256": template_hash(template),
        "sampling": sampling.to_dict(),
        "num_instructions": num_instructions,
    }


def induce_key(settings: dict, row: dict) -> str:
    return row_key(STAGE, settings, row["text"])


def induce_instructions(
    texts,
    generator: TextGenerator,
    *,
    template: str = REVERSE_TEMPLATE,
    num_instructions: int = 1,
    sampling: SamplingConfig = DEFAULT_INDUCE_SAMPLING,
    checkpoint: StageCheckpoint | None = None,
    batch_size: int = 8,
    report: SynthesisReport | None = None,
    progress: bool = True,
):
    """One row per (text, distinct induced instruction), with the induction settings in `provenance["induce"]`.

    Args:
        texts: a `datasets.Dataset` from `prepare_texts` (columns `text`, `source_id`, `text_sha256`, `truncated`).
        generator: the reversed model (`TransformersGenerator`, `VLLMGenerator`, or any `TextGenerator`).
        num_instructions: candidates sampled per text.
        checkpoint: where finished texts are kept (default: in memory, i.e. not resumable).
        batch_size: texts per generator call and per checkpoint commit.
    """
    import datasets

    if num_instructions < 1:
        raise ValueError(f"num_instructions must be >= 1, got {num_instructions}")
    checkpoint = checkpoint if checkpoint is not None else StageCheckpoint()
    report = report if report is not None else SynthesisReport()
    settings = induce_settings(generator.identity, template, sampling, num_instructions)
    rows = list(texts)
    check_text_columns(rows, ["text", "source_id", "text_sha256"], STAGE)
    keys = [induce_key(settings, row) for row in rows]

    def work(batch: list[dict]) -> list[list[str]]:
        prompts = [reverse_prompt(row["text"], template) for row in batch]
        return generator.generate(prompts, num_instructions, sampling)

    outputs = run_resumable(
        STAGE, rows, keys, work, checkpoint=checkpoint, batch_size=batch_size, generators=[generator],
        report=report, progress=progress,
    )  # fmt: skip
    out = []
    for row, candidates in zip(rows, outputs):
        seen = set()
        for index, raw in enumerate(candidates):
            instruction = clean_instruction(raw)
            if not instruction:
                report.skip("empty_instruction")
                continue
            if instruction in seen:
                report.skip("duplicate_instruction")
                continue
            seen.add(instruction)
            provenance = {
                "source_id": row["source_id"],
                "text_sha256": row["text_sha256"],
                "truncated": bool(row["truncated"]),
                STAGE: settings,
            }
            out.append({**row, "instruction": instruction, "instruction_index": index, "provenance": provenance})
    report.rows["instructions_induced"] = len(out)
    return datasets.Dataset.from_list(out)
