"""Stage 1, reversed instruction tuning: teach a model P(instruction | response) with TRL's `SFTTrainer`.

`build_reversed_dataset` turns any instruction dataset into TRL's *prompt-completion* format:

    prompt     = REVERSE_TEMPLATE with the response filled in   (ends with "### Instruction:")
    completion = " " + instruction                               (SFTTrainer appends the EOS token)

so that with `completion_only_loss` only the instruction is trained and the response is context. The separator is a
space rather than a newline because byte-level BPE tokenizers (Qwen, Llama 3, GPT-2) merge ":\n" into one token: a
completion starting with "\n" would cross the prompt/completion token boundary (TRL then warns that the tokenized
prompt is not a prefix of prompt+completion). ":" followed by " Word" never merges.

Accepted inputs: `instruction` / `output` columns (plus an optional Alpaca-style `input` column, appended to the
instruction after a blank line), or a `messages` column (the first user turn is the instruction, the first assistant
turn after it the response; later turns depend on earlier context and are not used).
"""

from __future__ import annotations

from .stage import SynthesisReport
from .templates import REVERSE_TEMPLATE, fill

__all__ = ["build_reversed_dataset", "make_reverse_sft_trainer", "reverse_prompt"]

INSTRUCTION_SEPARATOR = " "


def reverse_prompt(response: str, template: str = REVERSE_TEMPLATE) -> str:
    """The reversal prompt for one response: what the reversed model is trained on and sampled from."""
    return fill(template, response=response.strip())


def _pair_from_messages(messages) -> tuple[str, str] | None:
    if not isinstance(messages, list):
        return None
    for i, message in enumerate(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            for reply in messages[i + 1 :]:
                if isinstance(reply, dict) and reply.get("role") == "assistant":
                    return str(message.get("content") or ""), str(reply.get("content") or "")
            return None
    return None


def build_reversed_dataset(
    dataset,
    *,
    template: str = REVERSE_TEMPLATE,
    instruction_column: str = "instruction",
    output_column: str = "output",
    input_column: str | None = "input",
    messages_column: str = "messages",
    tokenizer=None,
    max_length: int | None = None,
    report: SynthesisReport | None = None,
):
    """Reversed examples (`prompt`, `completion`) for `SFTTrainer` from an instruction dataset.

    Rows with an empty instruction or response are dropped and counted in `report` as `sft_empty`; duplicated
    (response, instruction) pairs as `sft_duplicate`. Raises `ValueError` naming the columns when the dataset has
    neither `instruction_column`/`output_column` nor `messages_column`.

    With `tokenizer` and `max_length` (the `SFTConfig.max_length`), a long *response* is cut so that the whole
    example fits: `SFTTrainer` truncates from the end, which here would cut the instruction — the only trained part —
    and drop the example. Cut responses are counted (`sft_truncated` in the report's notes); an example whose
    instruction alone does not fit is dropped (`sft_too_long`).
    """
    import datasets

    if "{response}" not in template:
        raise ValueError(f"the reversal template needs a {{response}} placeholder: {template[:80]!r}")
    columns = dataset.column_names
    use_messages = not (instruction_column in columns and output_column in columns)
    if use_messages and messages_column not in columns:
        raise ValueError(
            f"the instruction dataset needs {instruction_column!r} and {output_column!r} columns, or a "
            f"{messages_column!r} column of chat messages (columns: {columns})"
        )
    report = report if report is not None else SynthesisReport()
    seen, rows, truncated = set(), [], 0
    for row in dataset:
        if use_messages:
            pair = _pair_from_messages(row[messages_column])
            instruction, response = pair if pair is not None else ("", "")
        else:
            instruction, response = str(row[instruction_column] or ""), str(row[output_column] or "")
            extra = str(row.get(input_column) or "").strip() if input_column else ""
            if extra:
                instruction = f"{instruction.strip()}\n\n{extra}"
        instruction, response = instruction.strip(), response.strip()
        if not instruction or not response:
            report.skip("sft_empty")
            continue
        if (instruction, response) in seen:
            report.skip("sft_duplicate")
            continue
        seen.add((instruction, response))
        if tokenizer is not None and max_length is not None:
            response, cut = _fit_response(tokenizer, template, response, instruction, max_length)
            if response is None:
                report.skip("sft_too_long")
                continue
            truncated += cut
        rows.append({"prompt": reverse_prompt(response, template), "completion": INSTRUCTION_SEPARATOR + instruction})
    report.rows["sft_examples"] = len(rows)
    if truncated:
        report.note(f"reverse-sft: cut {truncated} long response(s) to fit max_length={max_length}")
    if not rows:
        raise ValueError("no usable (instruction, response) pair in the instruction dataset")
    return datasets.Dataset.from_list(rows)


def _fit_response(tokenizer, template, response, instruction, max_length) -> tuple[str | None, bool]:
    """The response cut (at its end) so that reversal prompt + instruction + EOS fit in `max_length` tokens."""
    fixed = len(tokenizer(reverse_prompt("", template) + INSTRUCTION_SEPARATOR + instruction)["input_ids"]) + 2
    budget = max_length - fixed
    if budget < 1:
        return None, False
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if len(ids) <= budget:
        return response, False
    return tokenizer.decode(ids[:budget], skip_special_tokens=True).strip(), True


def make_reverse_sft_trainer(
    model,
    train_dataset,
    args=None,
    *,
    processing_class=None,
    eval_dataset=None,
    peft_config=None,
    quantization_config=None,
    callbacks=None,
):
    """An `SFTTrainer` for the reversed dataset, with completion-only loss (only the instruction is trained).

    Everything else is TRL's: pass LoRA through `peft_config` and 4-bit loading (QLoRA) through
    `quantization_config`, exactly as for `SFTTrainer`. `args` is an `SFTConfig`; its `completion_only_loss` must be
    None (TRL then infers True from the prompt-completion format) or True.
    """
    from trl import SFTConfig, SFTTrainer

    if args is None:
        args = SFTConfig(output_dir="reverse-model")
    if args.completion_only_loss is False:
        raise ValueError(
            "reverse SFT trains only the instruction: SFTConfig.completion_only_loss must be None or True, not False"
        )
    if args.completion_only_loss is None:
        args.completion_only_loss = True
    columns = train_dataset.column_names
    if "prompt" not in columns or "completion" not in columns:
        raise ValueError(f"the reversed dataset needs 'prompt' and 'completion' columns (columns: {columns})")
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processing_class,
        peft_config=peft_config,
        quantization_config=quantization_config,
        callbacks=callbacks,
    )
