"""The `aepo safer-instruct` steps: the four stages run from files in a work folder, resumable and cached.

    reverse-sft  instruction dataset -> reversed examples -> SFTTrainer -> `output_dir` (skipped when already trained
                 with the same settings; resumed from its last Trainer checkpoint when interrupted)
    induce       texts -> cleaned texts -> induced.jsonl
    filter       induced.jsonl -> judged.jsonl (every verdict kept) -> accepted rows
    respond      accepted rows -> responded.jsonl -> pairs.jsonl, pools.jsonl, README.md (dataset card)
    all          every step in order

Every model call goes through `stage.run_resumable` and the work folder's `checkpoint.sqlite`, so rerunning a step
skips its finished rows. With `dry_run`, each step prints what it would do and its cost forecast (`forecast`) and
writes nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from ..errors import storage_guard
from .arguments import SaferInstructArguments
from .checkpoint import StageCheckpoint
from .settings import sampling, system_prompt
from .stage import SynthesisReport, row_key
from .templates import template_hash

__all__ = ["STEP_ORDER", "run_steps"]

STEP_ORDER = ("reverse-sft", "induce", "filter", "respond")
SFT_MARKER = "safer_instruct_reverse_sft.json"


class WorkDir:
    def __init__(self, root: str):
        self.root = Path(root)
        self.checkpoint = self.root / "checkpoint.sqlite"
        self.induced = self.root / "induced.jsonl"
        self.judged = self.root / "judged.jsonl"
        self.responded = self.root / "responded.jsonl"
        self.reports = self.root / "reports.json"


# --------------------------------------------------------------------------------------------------- helpers
def _write_jsonl(dataset, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with storage_guard(path):  # a full disk or a read-only place: StorageWriteError naming the file
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                for row in dataset:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def _read_jsonl(path: Path, step: str, before: str):
    import datasets

    if not path.exists():
        raise FileNotFoundError(f"{step}: {path} does not exist; run `aepo safer-instruct {before}` first")
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return datasets.Dataset.from_list(rows)


def _load_sft_rows(args, report: SynthesisReport):
    """The instruction dataset; its non-UTF-8 lines and non-string responses are counted as `sft_non_utf8` /
    `sft_not_text`."""
    from .texts import read_texts

    read = SynthesisReport()
    data = read_texts(args.sft_dataset, text_column=args.output_column, report=read, split=args.sft_split)
    for reason, count in read.skipped.items():
        report.skip(f"sft_{reason}", count)
    limit = args.max_sft_examples
    return data.select(range(min(limit, len(data)))) if limit is not None else data


def _backend(args: SaferInstructArguments) -> str:
    if args.backend != "auto":
        return args.backend
    import importlib.util

    import torch

    return "vllm" if importlib.util.find_spec("vllm") and torch.cuda.is_available() else "transformers"


def generator_identity(args: SaferInstructArguments, model: str, remote: bool = False) -> str:
    """The identity a generator for `model` will have (known without loading it: cache keys for dry runs)."""
    if remote and args.expert_api_base:
        return f"openai:{args.expert_api_base}:{model}"
    return f"{_backend(args)}:{model}"


def _make_remote_generator(args, model: str, prices=(0.0, 0.0)):
    """The judge/expert on `expert_api_base`; the probe fails now on a bad key, URL or model, before any paid call."""
    from aepo_trainer.generation.openai_client import ChatClient

    from .generators import OpenAIChatGenerator

    client = ChatClient(
        base_url=args.expert_api_base,
        model=model,
        api_key_env=args.expert_api_key_env,
        concurrency=args.expert_api_concurrency,
        requests_per_minute=args.expert_api_requests_per_minute,
        progress=True,
    )
    client.probe()
    return OpenAIChatGenerator(client, *prices, identity=generator_identity(args, model, remote=True))


def _make_generator(args, model_args, model: str, prices=(0.0, 0.0), remote: bool = False):
    """The stage's text generator: local (`backend`), or, for the judge and the expert (`remote`), the API at
    `expert_api_base` when it is set."""
    from .generators import TransformersGenerator, VLLMGenerator

    if remote and args.expert_api_base:
        return _make_remote_generator(args, model, prices)

    if _backend(args) == "vllm":
        return VLLMGenerator(model, *prices, trust_remote_code=model_args.trust_remote_code, seed=args.sampling_seed)
    return TransformersGenerator(
        model,
        device=args.device,
        dtype=model_args.dtype or "auto",
        batch_size=args.synthesis_batch_size,
        trust_remote_code=model_args.trust_remote_code,
        price_input_per_1m=prices[0],
        price_output_per_1m=prices[1],
    )


def _maybe_build_tiny(path: str | None) -> None:
    if path and not Path(path).exists() and (path.startswith((".", "/", "~")) or os.sep in path):
        from aepo_trainer.testing import build_tiny_causal_lm

        build_tiny_causal_lm(Path(path).expanduser())


def reverse_model_path(args, sft_args) -> str:
    return args.reverse_model or sft_args.output_dir


def _save_report(work: WorkDir, step: str, report: SynthesisReport) -> None:
    work.root.mkdir(parents=True, exist_ok=True)
    stored = json.loads(work.reports.read_text()) if work.reports.exists() else {}
    stored[step] = report.to_dict()
    with storage_guard(work.reports):
        work.reports.write_text(json.dumps(stored, indent=2))


# --------------------------------------------------------------------------------------------------- steps
def step_reverse_sft(args, sft_args, model_args, report: SynthesisReport) -> None:
    from trl import get_peft_config, get_quantization_config

    from .reverse import build_reversed_dataset, make_reverse_sft_trainer

    if not args.sft_dataset:
        raise ValueError("reverse-sft: --sft_dataset is required (an instruction dataset)")
    if not model_args.model_name_or_path:
        raise ValueError("reverse-sft: --model_name_or_path (the base model to reverse) is required")
    raw = _load_sft_rows(args, report)
    if args.build_tiny_models and not args.dry_run:
        _maybe_build_tiny(model_args.model_name_or_path)
    tokenizer = _tokenizer(model_args.model_name_or_path, dry_run=args.dry_run, report=report)
    reversed_ds = build_reversed_dataset(
        raw, template=args.reverse_template, instruction_column=args.instruction_column,
        output_column=args.output_column, input_column=args.input_column, messages_column=args.messages_column,
        tokenizer=tokenizer, max_length=sft_args.max_length, report=report,
    )  # fmt: skip
    training = {
        k: getattr(sft_args, k) for k in ("learning_rate", "num_train_epochs", "max_steps", "max_length", "seed")
    }
    settings = {
        "base_model": model_args.model_name_or_path,
        "template_sha256": template_hash(args.reverse_template),
        "data_sha256": row_key(reversed_ds["prompt"], reversed_ds["completion"]),
        "peft": {
            k: getattr(model_args, k) for k in ("use_peft", "lora_r", "lora_alpha", "load_in_4bit", "load_in_8bit")
        },
        "training": training,
    }
    marker = Path(sft_args.output_dir) / SFT_MARKER
    if marker.exists():
        if json.loads(marker.read_text()).get("settings") == settings:
            print(f"reverse-sft: {sft_args.output_dir} already holds this reversed model; skipping (cached)")
            report.note("reverse-sft: cached")
            return
        raise ValueError(
            f"reverse-sft: {sft_args.output_dir} holds a reversed model trained with other settings; pass another "
            f"--output_dir or delete it"
        )
    if args.dry_run:
        return _forecast_sft(reversed_ds, args, sft_args, model_args)
    from transformers.trainer_utils import get_last_checkpoint

    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=model_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )  # as TRL's own `trl sft` script does
    sft_args.model_init_kwargs = {**model_init_kwargs, **(sft_args.model_init_kwargs or {})}
    trainer = make_reverse_sft_trainer(
        model_args.model_name_or_path, reversed_ds, sft_args,
        peft_config=get_peft_config(model_args), quantization_config=get_quantization_config(model_args),
    )  # fmt: skip
    last = get_last_checkpoint(sft_args.output_dir) if Path(sft_args.output_dir).is_dir() else None
    trainer.train(resume_from_checkpoint=last)
    trainer.save_model(sft_args.output_dir)
    marker.write_text(json.dumps({"settings": settings}, indent=2))
    report.note(f"reverse-sft: trained on {len(reversed_ds)} examples into {sft_args.output_dir}")


def _tokenizer(model: str, *, dry_run: bool, report):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as error:
        if not dry_run:
            raise ValueError(f"cannot load the tokenizer of {model!r} ({error})") from None
        report.note(f"dry run: {model} is not there yet; lengths estimated at 4 characters per token")
        return None


def _config_source(model: str) -> str:
    """Where the model config lives: a LoRA output folder holds only the adapter and names its base model."""
    adapter = Path(model) / "adapter_config.json"
    if adapter.is_file():
        return json.loads(adapter.read_text())["base_model_name_or_path"]
    return model


def _texts(args, sft_args, report):
    from .texts import prepare_texts, read_texts

    if not args.texts:
        raise ValueError("induce: --texts is required (the raw texts to induce instructions for)")
    raw = read_texts(args.texts, text_column=args.text_column, report=report, split=args.texts_split)
    if args.max_texts is not None:
        raw = raw.select(range(min(args.max_texts, len(raw))))
    tokenizer, limit = None, args.max_text_tokens
    model = reverse_model_path(args, sft_args)
    try:
        from transformers import AutoConfig, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model)
        if limit is None:
            config = AutoConfig.from_pretrained(_config_source(model))
            context = getattr(config.get_text_config(), "max_position_embeddings", None)
            template_tokens = len(tokenizer(args.reverse_template)["input_ids"])
            limit = context - template_tokens - args.induce_max_new_tokens if context else None
    except (OSError, ValueError) as error:
        if not args.dry_run:
            raise ValueError(
                f"induce: cannot load the reversed model {model!r} ({error}); run `aepo safer-instruct reverse-sft` "
                "first or pass --reverse_model"
            ) from None
        report.note(f"dry run: {model} is not there yet; text lengths estimated at 4 characters per token")
    return prepare_texts(
        raw, text_column=args.text_column, id_column=args.id_column, tokenizer=tokenizer, max_text_tokens=limit,
        long_texts=args.long_texts, report=report,
    )  # fmt: skip


def step_induce(args, sft_args, model_args, work: WorkDir, report) -> None:
    from .induce import induce_instructions

    texts = _texts(args, sft_args, report)
    model = reverse_model_path(args, sft_args)
    if args.dry_run:
        from .forecast import forecast_induce

        return forecast_induce(texts, args, generator_identity(args, model), work, report)
    generator = _make_generator(args, model_args, model)
    checkpoint = StageCheckpoint(work.checkpoint)
    induced = induce_instructions(
        texts, generator, template=args.reverse_template, num_instructions=args.num_instructions,
        sampling=sampling(args, "induce"), checkpoint=checkpoint, batch_size=args.synthesis_batch_size, report=report,
    )  # fmt: skip
    if getattr(generator, "truncated_prompts", 0):
        report.note(f"induce: {generator.truncated_prompts} prompt(s) cut to the model's context")
    _write_jsonl(induced, work.induced)


def step_filter(args, sft_args, model_args, work: WorkDir, report) -> None:
    from .filtering import judge_instructions, keep_accepted

    if not args.judge_model:
        raise ValueError("filter: --judge_model is required (the expert judge)")
    if args.dry_run and not work.induced.exists():
        from .forecast import forecast_filter

        return forecast_filter(None, args, generator_identity(args, args.judge_model, remote=True), work, report)
    induced = _read_jsonl(work.induced, "filter", "induce")
    if args.dry_run:
        from .forecast import forecast_filter

        return forecast_filter(induced, args, generator_identity(args, args.judge_model, remote=True), work, report)
    if args.build_tiny_models:
        _maybe_build_tiny(args.judge_model)
    judge = _make_generator(
        args, model_args, args.judge_model, (args.judge_price_input_per_1m, args.judge_price_output_per_1m), remote=True
    )
    judged = judge_instructions(
        induced, judge, rubric=args.judge_rubric, template=args.judge_template, sampling=sampling(args, "filter"),
        retries=args.judge_retries, checkpoint=StageCheckpoint(work.checkpoint), batch_size=args.synthesis_batch_size,
        report=report,
    ) if len(induced) else induced  # fmt: skip
    _write_jsonl(judged, work.judged)
    if len(judged):
        kept = keep_accepted(
            judged, require_harmful=args.require_harmful, keep_unparsed=args.keep_unparsed, report=report
        )
        report.rows["instructions_accepted"] = len(kept)


def step_respond(args, sft_args, model_args, work: WorkDir, report) -> dict | None:
    from .export import build_dataset_card, save_outputs, to_candidate_pools, to_preference_pairs
    from .filtering import keep_accepted
    from .respond import write_expert_responses

    expert_model = args.expert_model or args.judge_model
    if not expert_model:
        raise ValueError("respond: --expert_model (or --judge_model) is required")
    if args.dry_run and not work.judged.exists():
        from .forecast import forecast_respond

        return forecast_respond(None, args, generator_identity(args, expert_model, remote=True), work, report)
    judged = _read_jsonl(work.judged, "respond", "filter")
    accepted = keep_accepted(judged, require_harmful=args.require_harmful, keep_unparsed=args.keep_unparsed, report=report) if len(judged) else judged  # fmt: skip
    if args.dry_run:
        from .forecast import forecast_respond

        return forecast_respond(accepted, args, generator_identity(args, expert_model, remote=True), work, report)
    if not len(accepted):
        raise ValueError(f"respond: no accepted instruction in {work.judged} ({dict(report.skipped)})")
    if args.build_tiny_models:
        _maybe_build_tiny(expert_model)
    expert = _make_generator(
        args, model_args, expert_model, (args.expert_price_input_per_1m, args.expert_price_output_per_1m), remote=True
    )
    responded = write_expert_responses(
        accepted, expert, num_responses=args.num_responses, sampling=sampling(args, "respond"),
        system_prompt=system_prompt(args), checkpoint=StageCheckpoint(work.checkpoint),
        batch_size=args.synthesis_batch_size, report=report,
    )  # fmt: skip
    _write_jsonl(responded, work.responded)
    pairs = to_preference_pairs(responded, conversational=args.conversational_output)
    pools = to_candidate_pools(responded, conversational=args.conversational_output)
    _save_report(work, "respond", report)
    earlier = json.loads(work.reports.read_text())
    settings = {"arguments": asdict(args), "reports": earlier}
    card = build_dataset_card(report, settings, reverse_template=args.reverse_template)
    return save_outputs(pairs, pools, card, work.root)


def _forecast_sft(reversed_ds, args, sft_args, model_args) -> None:
    from .forecast import forecast_sft

    forecast_sft(reversed_ds, args, sft_args, model_args)


def run_steps(step: str, args: SaferInstructArguments, sft_args, model_args) -> SynthesisReport:
    """Run one step (or "all"); returns the run's report (the CLI prints its summary)."""
    # TRL 1.16 keeps `trust_remote_code` on the training config; the generators read it from the model config.
    model_args.trust_remote_code = bool(getattr(sft_args, "trust_remote_code", False))
    steps = STEP_ORDER if step == "all" else (step,)
    work = WorkDir(args.work_dir)
    report = SynthesisReport()
    with storage_guard(kept=lambda: StageCheckpoint(work.checkpoint, read_only=True).kept()):  # a full disk
        _run(steps, args, sft_args, model_args, work, report)
    return report


def _run(steps, args, sft_args, model_args, work: WorkDir, report: SynthesisReport) -> None:
    for name in steps:
        if name == "reverse-sft":
            step_reverse_sft(args, sft_args, model_args, report)
        elif name == "induce":
            step_induce(args, sft_args, model_args, work, report)
        elif name == "filter":
            step_filter(args, sft_args, model_args, work, report)
        elif name == "respond":
            written = step_respond(args, sft_args, model_args, work, report)
            if written:
                report.note("wrote " + ", ".join(written.values()))
        if not args.dry_run and name != "respond":
            _save_report(work, name, report)
