"""`--dry-run`: what each step would do and what it would cost, from the inputs and the checkpoint, writing nothing.

Token counts of texts not generated yet are forecasts: prompts at 4 characters per token (`estimate_tokens`),
completions at their `max_new_tokens` ceiling (an upper bound), unknown instructions at `INSTRUCTION_TOKENS`. Rows
already in the checkpoint cost nothing and are reported as such. The checkpoint is opened read-only, so a dry run
never creates one.
"""

from __future__ import annotations

import math

from .checkpoint import StageCheckpoint
from .filtering import judge_key, judge_settings
from .generators import estimate_tokens
from .induce import induce_key, induce_settings
from .respond import expert_messages, respond_key, respond_settings
from .reverse import reverse_prompt
from .settings import sampling, system_prompt
from .templates import JUDGE_TEMPLATES, fill

__all__ = ["forecast_filter", "forecast_induce", "forecast_respond", "forecast_sft"]

INSTRUCTION_TOKENS = 32


def _say(text: str) -> None:
    print(f"[dry run] {text}")


def _cost(prompt_tokens: float, completion_tokens: float, price_in: float, price_out: float) -> float:
    return (prompt_tokens * price_in + completion_tokens * price_out) / 1e6


def forecast_sft(reversed_ds, args, sft_args, model_args) -> None:
    tokens = sum(
        estimate_tokens(p) + estimate_tokens(c) for p, c in zip(reversed_ds["prompt"], reversed_ds["completion"])
    )
    per_step = sft_args.per_device_train_batch_size * sft_args.gradient_accumulation_steps
    steps = sft_args.max_steps if sft_args.max_steps > 0 else math.ceil(len(reversed_ds) / per_step) * math.ceil(sft_args.num_train_epochs)  # fmt: skip
    how = f"LoRA r={model_args.lora_r}" if model_args.use_peft else "full fine-tuning"
    how += ", 4-bit (QLoRA)" if model_args.load_in_4bit else ""
    _say(
        f"reverse-sft: would fine-tune {model_args.model_name_or_path} ({how}) on {len(reversed_ds)} reversed "
        f"examples (~{tokens} tokens per epoch), about {steps} optimizer steps, into {sft_args.output_dir}; "
        "completion-only loss (the instruction). Local compute only: no API cost."
    )


def _finished(work, stage: str, keys: list[str]) -> int:
    checkpoint = StageCheckpoint(work.checkpoint, read_only=True)
    try:
        return len(checkpoint.get(stage, keys))
    finally:
        checkpoint.close()


def forecast_induce(texts, args, identity: str, work, report) -> None:
    settings = induce_settings(identity, args.reverse_template, sampling(args, "induce"), args.num_instructions)
    rows = list(texts)
    keys = [induce_key(settings, row) for row in rows]
    checkpoint = StageCheckpoint(work.checkpoint, read_only=True)
    finished = checkpoint.get("induce", keys)
    checkpoint.close()
    done = len(finished)
    todo = [row for row, key in zip(rows, keys) if key not in finished]

    n = args.num_instructions
    prompt_tokens = sum(estimate_tokens(reverse_prompt(r["text"], args.reverse_template)) for r in todo) * n
    completion_tokens = len(todo) * n * args.induce_max_new_tokens
    _say(
        f"induce: {len(rows)} usable texts ({sum(report.skipped.values())} skipped: {dict(report.skipped)}); "
        f"{done} already in {work.checkpoint}; would sample {len(todo)} x {n} instruction(s) from {identity} "
        f"(~{prompt_tokens} prompt tokens, <= {completion_tokens} completion tokens, local: no API cost)"
    )
    report.rows["forecast_instructions"] = len(rows) * n


def forecast_filter(induced, args, identity: str, work, report) -> None:
    template = args.judge_template or JUDGE_TEMPLATES[args.judge_rubric]
    settings = judge_settings(identity, args.judge_rubric, template, sampling(args, "filter"), args.judge_retries)
    if induced is None:
        rows_n = report.rows.get("forecast_instructions")
        if rows_n is None:
            _say(f"filter: {work.induced} does not exist yet: run `aepo safer-instruct induce` first")
            return
        done, prompt_tokens = 0, rows_n * (estimate_tokens(template) + INSTRUCTION_TOKENS + args.induce_max_new_tokens)
        todo_n = rows_n
    else:
        rows = list(induced)
        done = _finished(work, "filter", [judge_key(settings, row) for row in rows])
        todo_n = len(rows) - done
        prompt_tokens = (
            sum(estimate_tokens(fill(template, text=r["text"], instruction=r["instruction"])) for r in rows)
            * todo_n
            / max(1, len(rows))
        )
    completion_tokens = todo_n * args.judge_max_new_tokens
    cost = _cost(prompt_tokens, completion_tokens, args.judge_price_input_per_1m, args.judge_price_output_per_1m)
    worst = cost * (1 + args.judge_retries)
    _say(
        f"filter: {todo_n} instruction(s) to judge with {identity} (rubric {args.judge_rubric}), {done} already "
        f"judged; ~{prompt_tokens:.0f} prompt + <= {completion_tokens} completion tokens: ~${cost:.4f} "
        f"(<= ${worst:.4f} if every verdict needed all {args.judge_retries} retries)"
    )
    report.rows["forecast_accepted"] = todo_n + done


def forecast_respond(accepted, args, identity: str, work, report) -> None:
    settings = respond_settings(identity, system_prompt(args), sampling(args, "respond"), args.num_responses)
    n = args.num_responses
    if accepted is None:
        rows_n = report.rows.get("forecast_accepted")
        if rows_n is None:
            _say(f"respond: {work.judged} does not exist yet: run `aepo safer-instruct filter` first")
            return
        done, todo_n = 0, rows_n
        prompt_tokens = rows_n * n * (INSTRUCTION_TOKENS + estimate_tokens(system_prompt(args) or ""))
    else:
        rows = list(accepted)
        done = _finished(work, "respond", [respond_key(settings, row) for row in rows])
        todo_n = len(rows) - done
        per_row = [estimate_tokens(expert_messages(r["instruction"], system_prompt(args))) for r in rows]
        prompt_tokens = sum(per_row) * n * todo_n / max(1, len(rows))
    completion_tokens = todo_n * n * args.response_max_new_tokens
    cost = _cost(prompt_tokens, completion_tokens, args.expert_price_input_per_1m, args.expert_price_output_per_1m)
    _say(
        f"respond: {todo_n} accepted instruction(s) x {n} response(s) from {identity}, {done} already answered; "
        f"~{prompt_tokens:.0f} prompt + <= {completion_tokens} completion tokens: <= ${cost:.4f}; then would write "
        f"pairs.jsonl, pools.jsonl and README.md into {work.root}"
    )
