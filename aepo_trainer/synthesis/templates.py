"""The prompts of the Safer-Instruct pipeline, and the hashes that record which prompt made which row.

Every template is a plain string with `{placeholder}` fields filled by plain substitution (`fill`), not
`str.format`: user texts and user templates may hold other braces (code, JSON), which are kept as they are. The
sha256 of each template goes into every row's provenance, so a dataset says exactly which prompt produced it.
"""

from __future__ import annotations

import hashlib
import re

__all__ = [
    "JUDGE_TEMPLATES",
    "QUALITY_JUDGE_TEMPLATE",
    "REVERSE_TEMPLATE",
    "SAFETY_JUDGE_TEMPLATE",
    "SAFETY_RESPONSE_SYSTEM_PROMPT",
    "fill",
    "template_hash",
]

#: The reversal prompt of Safer-Instruct (arXiv 2311.08685): the model reads a response and writes its instruction.
REVERSE_TEMPLATE = (
    "Below is a response to a certain instruction. Write the instruction that the response is trying to complete."
    "\n\n### Response:\n{response}\n\n### Instruction:"
)

#: Rubric "quality": is the induced instruction usable at all? Asked of the expert judge for every induced row.
QUALITY_JUDGE_TEMPLATE = """\
You are checking automatically generated training data. A model read the TEXT below and wrote the INSTRUCTION that \
the text is supposed to be a response to.

### Text:
{text}

### Instruction:
{instruction}

Judge the instruction by three criteria:
1. Coherent: it is fluent, well formed, and asks for one clear thing.
2. Self-contained: it can be understood and answered without seeing the text or any other context.
3. Matches the text: the text is a plausible, on-topic response to it.

Reply in exactly this format and nothing else:
Verdict: PASS or FAIL (PASS only if all three criteria hold)
Reason: one sentence"""

#: Rubric "safety": the quality criteria, plus whether the TEXT (the future rejected response) is harmful.
SAFETY_JUDGE_TEMPLATE = """\
You are checking automatically generated safety training data. A model read the TEXT below and wrote the \
INSTRUCTION that the text is supposed to be a response to.

### Text:
{text}

### Instruction:
{instruction}

Judge the instruction by three criteria:
1. Coherent: it is fluent, well formed, and asks for one clear thing.
2. Self-contained: it can be understood and answered without seeing the text or any other context.
3. Matches the text: the text is a plausible, on-topic response to it.
Separately, say whether the TEXT itself is harmful: offensive, hateful, harassing, dangerous, illegal, sexually \
explicit or otherwise unethical content.

Reply in exactly this format and nothing else:
Verdict: PASS or FAIL (PASS only if all three criteria hold)
Harmful: YES or NO
Reason: one sentence"""

#: Rubric name -> judge template (the names are `aepo_trainer.choices.JUDGE_RUBRICS`).
JUDGE_TEMPLATES = {"quality": QUALITY_JUDGE_TEMPLATE, "safety": SAFETY_JUDGE_TEMPLATE}

#: Appended to the judge prompt when its previous reply could not be parsed (see `filtering.parse_verdict`).
RETRY_SUFFIX = (
    "\n\nYour previous reply could not be read. Reply with exactly the lines of the format above "
    "('Verdict: PASS' or 'Verdict: FAIL'{harmful}, then 'Reason: ...') and nothing else."
)

#: A system prompt for the expert in the safety recipe: the preferred response to a harmful request is a safe one.
SAFETY_RESPONSE_SYSTEM_PROMPT = (
    "You are a helpful, honest and harmless assistant. If a request is harmful, unethical or dangerous, do not "
    "comply: explain briefly why, and offer a safe, constructive alternative. Otherwise answer helpfully."
)


def fill(template: str, **fields: str) -> str:
    """Substitute `{name}` for each field (plain replacement: other braces in the template or the values are kept)."""
    for name in fields:
        if "{" + name + "}" not in template:
            raise ValueError(f"template has no {{{name}}} placeholder: {template[:80]!r}")
    # One pass, so that a value holding "{instruction}" (say) is never substituted again.
    pattern = re.compile("|".join(re.escape("{" + name + "}") for name in fields))
    return pattern.sub(lambda match: fields[match.group(0)[1:-1]], template)


def template_hash(template: str | None) -> str | None:
    """The first 16 hex digits of the template's sha256 (recorded in each row's provenance)."""
    if template is None:
        return None
    return hashlib.sha256(template.encode("utf-8")).hexdigest()[:16]
