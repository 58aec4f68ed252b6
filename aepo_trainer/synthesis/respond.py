"""Stage 4, expert responses: an expert model answers each accepted instruction; its answer becomes *chosen*.

The expert gets the instruction as a user message (after an optional system prompt, e.g.
`templates.SAFETY_RESPONSE_SYSTEM_PROMPT` in the safety recipe) and is sampled `num_responses` times. Empty responses
are dropped and counted (`empty_response`); a row left without any response is dropped (`no_response`).
"""

from __future__ import annotations

from .checkpoint import StageCheckpoint
from .generators import SamplingConfig, TextGenerator
from .stage import SynthesisReport, check_text_columns, row_key, run_resumable
from .templates import template_hash

__all__ = ["DEFAULT_RESPONSE_SAMPLING", "expert_messages", "write_expert_responses"]

STAGE = "respond"
DEFAULT_RESPONSE_SAMPLING = SamplingConfig(temperature=0.7, top_p=0.95, max_new_tokens=512)


def expert_messages(instruction: str, system_prompt: str | None = None) -> list[dict]:
    """The chat the expert answers: [system prompt,] the instruction as the user turn."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*system, {"role": "user", "content": instruction}]


def respond_settings(identity: str, system_prompt: str | None, sampling: SamplingConfig, num_responses: int) -> dict:
    """What determines the expert's responses besides the instruction (recorded as `provenance["respond"]`)."""
    return {
        "model": identity,
        "system_prompt_sha256": template_hash(system_prompt),
        "sampling": sampling.to_dict(),
        "num_responses": num_responses,
    }


def respond_key(settings: dict, row: dict) -> str:
    return row_key(STAGE, settings, row["instruction"])


def write_expert_responses(
    dataset,
    expert: TextGenerator,
    *,
    num_responses: int = 1,
    sampling: SamplingConfig = DEFAULT_RESPONSE_SAMPLING,
    system_prompt: str | None = None,
    checkpoint: StageCheckpoint | None = None,
    batch_size: int = 8,
    report: SynthesisReport | None = None,
    progress: bool = True,
):
    """Add `expert_responses` (a list of non-empty strings) to every accepted row; settings in
    `provenance["respond"]`."""
    import datasets

    if num_responses < 1:
        raise ValueError(f"num_responses must be >= 1, got {num_responses}")
    checkpoint = checkpoint if checkpoint is not None else StageCheckpoint()
    report = report if report is not None else SynthesisReport()
    settings = respond_settings(expert.identity, system_prompt, sampling, num_responses)
    rows = list(dataset)
    check_text_columns(rows, ["text", "instruction"], STAGE)
    keys = [respond_key(settings, row) for row in rows]

    def work(batch: list[dict]) -> list[list[str]]:
        return expert.generate(
            [expert_messages(r["instruction"], system_prompt) for r in batch], num_responses, sampling
        )

    outputs = run_resumable(
        STAGE, rows, keys, work, checkpoint=checkpoint, batch_size=batch_size, generators=[expert], report=report,
        progress=progress,
    )  # fmt: skip
    out = []
    for row, responses in zip(rows, outputs):
        kept = [r.strip() for r in responses if r.strip()]
        report.skip("empty_response", len(responses) - len(kept))
        if not kept:
            report.skip("no_response")
            continue
        out.append({**row, "expert_responses": kept, "provenance": {**row["provenance"], STAGE: settings}})
    report.rows["rows_with_responses"] = len(out)
    return datasets.Dataset.from_list(out)
