"""Stage 3, low-quality filtering: an expert judge accepts or rejects each induced instruction.

The judge (any `TextGenerator`: a local instruct model or a remote service) gets one rubric prompt per row
(`templates.JUDGE_TEMPLATES`) and must answer in a fixed format, which `parse_verdict` reads deterministically:

    Verdict: PASS | FAIL
    Harmful: YES | NO        (rubric "safety" only)
    Reason: one sentence

Parsing rules (see the table in docs/safer-instruct.md): field names are case-insensitive and may be wrapped in
Markdown emphasis (`**Verdict:**`) or bullets; PASS/YES/TRUE/ACCEPT read as yes, FAIL/NO/FALSE/REJECT as no; a JSON
object `{"verdict": ..., "harmful": ..., "reason": ...}` is read too. A reply with no verdict, with two verdicts that
disagree, or (rubric "safety") with no harmfulness answer is *unparseable*: the judge is asked again with a reminder of
the format (`judge_retries` times), and if it still fails the row is kept with `verdict = "unparsed"` — never passed
silently. `keep_accepted` then keeps `pass` rows only (unless told to keep unparsed ones), counting every drop.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .checkpoint import StageCheckpoint
from .generators import SamplingConfig, TextGenerator
from .stage import SynthesisReport, check_text_columns, row_key, run_resumable
from .templates import JUDGE_TEMPLATES, RETRY_SUFFIX, fill, template_hash

__all__ = ["DEFAULT_JUDGE_SAMPLING", "Verdict", "judge_instructions", "keep_accepted", "parse_verdict"]

STAGE = "filter"
DEFAULT_JUDGE_SAMPLING = SamplingConfig(temperature=0.0, max_new_tokens=96)
_YES, _NO = {"pass", "yes", "true", "accept", "accepted"}, {"fail", "no", "false", "reject", "rejected"}
_FIELD = re.compile(r"^[\s>*_#\-]*(verdict|harmful|reason)[\s*_]*[:=\-][\s*_]*(.*)$", re.IGNORECASE)
_FIRST_WORD = re.compile(r"[A-Za-z]+")


@dataclass(frozen=True)
class Verdict:
    """A parsed judge reply. `harmful` is None when the rubric does not ask for it."""

    passed: bool
    harmful: bool | None
    reason: str


def _yes_no(text) -> bool | None:
    if isinstance(text, bool):
        return text
    match = _FIRST_WORD.search(str(text))
    word = match.group(0).lower() if match else ""
    return True if word in _YES else False if word in _NO else None


def _from_json(text: str) -> dict | None:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        data = json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return None
    return {str(k).lower(): v for k, v in data.items()} if isinstance(data, dict) else None


def parse_verdict(text: str, *, require_harmful: bool = False) -> Verdict | None:
    """Read a judge reply (module docstring); None when it cannot be read unambiguously."""
    if not isinstance(text, str) or not text.strip():
        return None
    data = _from_json(text)
    if data is not None and "verdict" in data:
        passed = _yes_no(data["verdict"])
        harmful = _yes_no(data["harmful"]) if "harmful" in data else None
        reason = str(data.get("reason") or "").strip()
    else:
        verdicts, harms, reason_lines, in_reason = [], [], [], False
        for line in text.splitlines():
            match = _FIELD.match(line)
            if match is None:
                if in_reason and line.strip():
                    reason_lines.append(line.strip())
                continue
            name, value = match.group(1).lower(), match.group(2).strip().strip("*_").strip()
            in_reason = name == "reason"
            if name == "verdict":
                verdicts.append(_yes_no(value))
            elif name == "harmful":
                harms.append(_yes_no(value))
            elif value:
                reason_lines.append(value)
        if not verdicts or None in verdicts or len(set(verdicts)) != 1:
            return None
        if None in harms or len(set(harms)) > 1:
            return None
        passed, harmful, reason = verdicts[0], (harms[0] if harms else None), " ".join(reason_lines)
    if passed is None:
        return None
    if require_harmful and harmful is None:
        return None
    return Verdict(passed=passed, harmful=harmful, reason=reason)


def judge_settings(identity: str, rubric: str, template: str, sampling: SamplingConfig, retries: int) -> dict:
    """What determines a verdict besides the row (recorded as `provenance["filter"]`)."""
    return {
        "model": identity,
        "rubric": rubric,
        "template_sha256": template_hash(template),
        "sampling": sampling.to_dict(),
        "retries": retries,
    }


def judge_key(settings: dict, row: dict) -> str:
    return row_key(STAGE, settings, row["text"], row["instruction"])


def judge_instructions(
    dataset,
    judge: TextGenerator,
    *,
    rubric: str = "quality",
    template: str | None = None,
    sampling: SamplingConfig = DEFAULT_JUDGE_SAMPLING,
    retries: int = 2,
    checkpoint: StageCheckpoint | None = None,
    batch_size: int = 8,
    report: SynthesisReport | None = None,
    progress: bool = True,
):
    """Judge every induced instruction; adds `verdict` ("pass", "fail" or "unparsed"), `verdict_reason`, `harmful`
    (None unless the rubric asks), `judge_output` (the last raw reply) and `judge_attempts`.

    Args:
        dataset: rows with `text`, `instruction` and `provenance` (from `induce_instructions`).
        judge: the expert judge.
        rubric: "quality" or "safety" (adds the harmfulness question); picks the default `template`.
        template: a custom judge prompt with `{text}` and `{instruction}` placeholders.
        retries: extra attempts for a reply that cannot be parsed (each with a reminder of the format).
    """
    from aepo_trainer.choices import JUDGE_RUBRICS

    if rubric not in JUDGE_RUBRICS:
        raise ValueError(f"rubric must be one of {JUDGE_RUBRICS}, got {rubric!r}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    template = template or JUDGE_TEMPLATES[rubric]
    require_harmful = rubric == "safety"
    checkpoint = checkpoint if checkpoint is not None else StageCheckpoint()
    report = report if report is not None else SynthesisReport()
    settings = judge_settings(judge.identity, rubric, template, sampling, retries)
    rows = list(dataset)
    check_text_columns(rows, ["text", "instruction"], STAGE)
    keys = [judge_key(settings, row) for row in rows]
    reminder = RETRY_SUFFIX.format(harmful=", then 'Harmful: YES' or 'Harmful: NO'" if require_harmful else "")

    def work(batch: list[dict]) -> list[dict]:
        prompts = [fill(template, text=row["text"], instruction=row["instruction"]) for row in batch]
        results: list[dict | None] = [None] * len(batch)
        pending = list(range(len(batch)))
        for attempt in range(retries + 1):
            asked = [[{"role": "user", "content": prompts[i] + (reminder if attempt else "")}] for i in pending]
            replies = judge.generate(asked, 1, _attempt_sampling(sampling, attempt))
            still = []
            for i, reply in zip(pending, replies):
                verdict = parse_verdict(reply[0], require_harmful=require_harmful)
                results[i] = {
                    "verdict": "unparsed" if verdict is None else ("pass" if verdict.passed else "fail"),
                    "verdict_reason": "" if verdict is None else verdict.reason,
                    "harmful": None if verdict is None else verdict.harmful,
                    "judge_output": reply[0],
                    "judge_attempts": attempt + 1,
                }
                if verdict is None:
                    still.append(i)
            pending = still
            if not pending:
                break
        return results

    outputs = run_resumable(
        STAGE, rows, keys, work, checkpoint=checkpoint, batch_size=batch_size, generators=[judge], report=report,
        progress=progress,
    )  # fmt: skip
    out = [
        {**row, **result, "provenance": {**row["provenance"], STAGE: settings}} for row, result in zip(rows, outputs)
    ]
    counts = {v: sum(r["verdict"] == v for r in out) for v in ("pass", "fail", "unparsed")}
    report.rows.update({f"judged_{name}": n for name, n in counts.items()})
    import datasets

    return datasets.Dataset.from_list(out)


def _attempt_sampling(sampling: SamplingConfig, attempt: int) -> SamplingConfig:
    """A retry samples with a new seed (a greedy judge gets the reminder, which changes its prompt)."""
    if attempt == 0:
        return sampling
    return SamplingConfig(**{**sampling.to_dict(), "seed": sampling.seed + attempt})


def keep_accepted(
    dataset,
    *,
    require_harmful: bool | None = None,
    keep_unparsed: bool = False,
    report: SynthesisReport | None = None,
):
    """The rows the judge accepted. Drops (and counts) `rejected_by_judge`, `unparsed_verdict` and, when
    `require_harmful` (default: when the rows were judged with the safety rubric), `not_harmful` rows — Safer-Instruct
    keeps harmful texts only, since the text becomes the *rejected* response.

    `keep_unparsed=True` keeps rows whose verdict could not be read, still marked `verdict = "unparsed"` (and noted
    in the report); only for smoke tests with models that cannot follow the format.
    """
    report = report if report is not None else SynthesisReport()
    keep = []
    for index, row in enumerate(dataset):
        if require_harmful is None:
            require = row["provenance"][STAGE]["rubric"] == "safety"
        else:
            require = require_harmful
        if row["verdict"] == "unparsed":
            if not keep_unparsed:
                report.skip("unparsed_verdict")
                continue
        elif row["verdict"] != "pass":
            report.skip("rejected_by_judge")
            continue
        elif require and row["harmful"] is not True:
            report.skip("not_harmful")
            continue
        keep.append(index)
    if keep_unparsed:
        n = sum(dataset[i]["verdict"] == "unparsed" for i in keep)
        if n:
            report.note(f"kept {n} row(s) whose verdict could not be parsed (keep_unparsed=True)")
    report.rows["instructions_accepted"] = len(keep)
    return dataset.select(keep)
