"""`aepo generate`: sample N completions per prompt from a causal LM and write a pool dataset.

A thin loop over `aepo_trainer.generation` (batched `transformers` generation, vLLM with `--backend vllm`, or any
OpenAI-compatible server with `--backend openai`: `vllm serve`, Ollama, the OpenAI API — see docs/llm-services.md):
sampling options, chat templates for conversational prompts. Resumable: finished prompt batches are appended to a JSON
Lines file as they complete (the output itself when it is `.jsonl`, else `<output>.partial.jsonl`, converted at the
end); a rerun of the same command skips the prompts already there. Each prompt is sampled with its own seed, derived
from `--seed` and the prompt (`generation.prompt_seed`), so a resumed run writes the same pools as an uninterrupted
one, whatever `--batch_size`.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass, field

from aepo_trainer.choices import GENERATE_BACKENDS
from aepo_trainer.errors import storage_guard

from .args import CommandParser, aepo_settings_arguments, parse_with_yaml
from .errors import EXIT_OK, InputError
from .io import finished_rows
from .sampling import check_prompts, check_sampling_args, make_generator, prompt_id

DESCRIPTION = "Sample N completions per prompt from a causal LM and write a pool dataset (resumable)."

EPILOG = """\
examples:
  aepo generate --model Qwen/Qwen2.5-0.5B-Instruct --input prompts.jsonl --output pools.jsonl \\
      --num_completions 8 --temperature 0.8 --max_new_tokens 512
  aepo generate --model ./my-sft-model --input HuggingFaceH4/ultrafeedback_binarized --split train_prefs \\
      --output pools.jsonl --backend vllm
  aepo generate --backend openai --api_base http://localhost:8000/v1 --model Qwen/Qwen2.5-7B-Instruct \\
      --input prompts.jsonl --output pools.jsonl --num_completions 8 --batch_size 64 --api_concurrency 32

The input needs a prompt column (a string, or a list of chat messages). Every input column is kept; the
completions are added as a list. Rerun the same command after an interruption: finished prompts are skipped.
The sampling settings are recorded in `<output>.generate.json`: a rerun with other settings is refused (the existing
pools were sampled differently) unless --overwrite is given.
"""


@dataclass(kw_only=True)
class GenerateDataArguments:
    """The model `aepo generate` samples from, the prompts it reads and the pools it writes."""

    _argument_group_name = "data"

    model_name_or_path: str = field(
        metadata={"help": "Causal LM to sample from: a Hub id or a local folder.", "aliases": ["--model"]}
    )
    input: str = field(
        metadata={"help": "Prompts: .jsonl(.gz)/.json/.csv/.parquet file, `save_to_disk` folder or Hub dataset id."}
    )
    split: str = field(default="train", metadata={"help": "Split to read when the input is a Hub dataset or folder."})
    output: str = field(
        metadata={
            "help": "Pool dataset to write (.jsonl is appended to as batches finish; other formats are written at the "
            "end from `<output>.partial.jsonl`)."
        }
    )
    prompt_column: str = field(default="prompt", metadata={"help": "Input column holding the prompts."})
    max_prompts: int | None = field(default=None, metadata={"help": "Only use the first M prompts of the input."})


@dataclass
class GenerateSamplingArguments:
    """How `aepo generate` samples: N, the sampling settings, the backend and the model's device and dtype."""

    _argument_group_name = "sampling"

    num_completions: int = field(
        default=32,
        metadata={"help": "N: completions sampled per prompt (the AEPO reference uses 32; the paper up to 128)."},
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (0 = greedy)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling probability mass."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (0 = off)."})
    max_new_tokens: int = field(
        default=256,
        metadata={"help": "Maximum tokens generated per completion.", "aliases": ["--max_completion_length"]},
    )
    repetition_penalty: float = field(default=1.0, metadata={"help": "Penalty on tokens already present (1.0 = none)."})
    batch_size: int = field(
        default=2,
        metadata={"help": "Prompts per generate call; each call samples batch_size x num_completions sequences."},
    )
    use_chat_template: str = field(
        default="auto",
        metadata={
            "help": "Apply the tokenizer's chat template: 'auto' does so for conversational prompts (lists of "
            "messages); 'true' also wraps string prompts as one user message.",
            "choices": ["auto", "true", "false"],
        },
    )
    backend: str = field(
        default="auto",
        metadata={
            "help": "'auto' uses vLLM when it is installed and a GPU is present, else transformers. 'openai': an "
            "OpenAI-compatible server at --api_base (the model is the server's model name; --top_k is sent as an "
            "extra field, which vLLM understands and the OpenAI API refuses).",
            "choices": list(GENERATE_BACKENDS),
        },
    )
    device: str = field(default="auto", metadata={"help": "Device for transformers ('auto': cuda when available)."})
    dtype: str = field(
        default="auto",
        metadata={
            "help": "Model weights dtype ('auto': bfloat16 on GPU, float32 on CPU).",
            "choices": ["auto", "float32", "bfloat16", "float16"],
        },
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Discard an existing output (and its partial file) and sample again, e.g. after changing a "
            "sampling setting; without it a rerun with other settings than the recorded ones is refused."
        },
    )


@dataclass
class GenerateServerArguments:
    """The OpenAI-compatible server of `--backend openai`."""

    _argument_group_name = "OpenAI-compatible server (--backend openai)"

    api_base: str = field(
        default="http://localhost:8000/v1", metadata={"help": "Base URL of the server (usually ends in /v1)."}
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "Environment variable holding the API key (never logged)."}
    )
    api_endpoint: str = field(
        default="chat",
        metadata={
            "help": "'chat' (/chat/completions: the server applies the chat template) or 'completions' "
            "(/completions: plain-text prompts sent as they are).",
            "choices": ["chat", "completions"],
        },
    )


def generate_arguments(store_note: str | None = None) -> tuple[type, ...]:
    """The dataclasses of `aepo generate`'s flags, one per `--help` group (`aepo best-of-n` adds its own, and says
    what its store holds in `store_note`)."""
    columns = aepo_settings_arguments(
        "GenerateColumnArguments", names={"completions_column", "seed"}, title="columns and seed (AEPOConfig fields)"
    )
    api = aepo_settings_arguments(
        "GenerateAPIArguments",
        names={
            "api_concurrency",
            "api_requests_per_minute",
            "api_tokens_per_minute",
            "api_timeout",
            "api_max_retries",
            "api_prices",
            "annotation_cost_budget",
            "annotation_store",
        },
        title="API limits, prices and ledger (--backend openai; AEPOConfig fields)",
        notes={
            "annotation_store": store_note
            or "Here: where every call's usage and response is recorded (a rerun pays no completed call again); "
            "default `<output>.api.sqlite`."
        },
    )
    return (GenerateDataArguments, columns, GenerateSamplingArguments, GenerateServerArguments, api)


def build_parser(prog: str = "aepo generate") -> CommandParser:
    return CommandParser(generate_arguments(), prog=prog, description=DESCRIPTION, epilog=EPILOG)


#: The flags that change what is sampled: an existing output made with other values is not resumed or reused.
#: (--input, --split and --max_prompts only choose prompts, which are matched by content; --device does not count.)
SAMPLING_SETTINGS = (
    "model_name_or_path",
    "num_completions",
    "temperature",
    "top_p",
    "top_k",
    "max_new_tokens",
    "batch_size",  # each batch's seed depends on its position
    "seed",
    "use_chat_template",
    "backend",
    "dtype",
    "prompt_column",
    "completions_column",
)


def settings_path(output: str) -> str:
    return f"{output}.generate.json"


def _settings(args) -> dict:
    import json

    return json.loads(json.dumps({name: getattr(args, name) for name in SAMPLING_SETTINGS}))


def check_existing_output(args, work_path: str) -> None:
    """Refuse to resume or reuse pools sampled with other settings (or with unknown ones); `--overwrite` removes
    them. Records the current settings before anything is sampled."""
    import json

    from .io import write_json_atomic

    record = settings_path(args.output)
    existing = [p for p in dict.fromkeys((args.output, work_path)) if os.path.exists(p)]
    current = _settings(args)
    if args.overwrite:
        for path in [*existing, record]:
            if os.path.exists(path):
                os.remove(path)
        if existing:
            print(f"--overwrite: removed {', '.join(existing)}", file=sys.stderr)
    elif existing:
        try:
            with open(record, encoding="utf-8") as f:
                recorded = json.load(f)
        except FileNotFoundError:
            raise InputError(
                f"{existing[0]} already exists but {record} (the settings it was sampled with) does not, so it "
                "cannot be checked that resuming would sample the same way; pass --overwrite to sample again, or "
                "choose another --output"
            ) from None
        except (OSError, ValueError) as error:
            raise InputError(f"{record} is unreadable ({error}); pass --overwrite to sample again") from None
        changed = {name: (recorded.get(name), value) for name, value in current.items() if recorded.get(name) != value}
        if changed:
            details = ", ".join(f"--{name} {old!r} -> {new!r}" for name, (old, new) in changed.items())
            raise InputError(
                f"{existing[0]} was sampled with other settings ({details}); its pools would be mixed with "
                "differently sampled ones. Pass --overwrite to sample everything again, or choose another --output"
            )
    write_json_atomic(record, current)


def main(argv: list[str]) -> int:
    from .processes import run_in_processes

    return run_in_processes(run, argv)  # one process, or the ranks of `accelerate launch` / `torchrun`


def run(argv: list[str], processes) -> int:
    args = parse_with_yaml(build_parser(), argv)
    check_sampling_args(args)
    from .io import read_rows

    rows = read_rows(args.input, split=args.split)  # every rank reads the prompts (no shared filesystem needed)
    if args.max_prompts is not None:
        rows = rows[: args.max_prompts]
    check_prompts(rows, args)
    if processes.distributed and args.device == "auto" and processes.device is not None:
        args.device = str(processes.device)  # each rank samples on its own GPU

    direct = is_direct(args.output)
    work_path = args.output if direct else f"{args.output}.partial.jsonl"
    # the main process alone reads and writes the output: it plans what is left, every rank samples a share of it
    plan = processes.on_main(lambda: plan_batches(rows, args, work_path))
    plan = processes.broadcast(plan)
    batches, resumed = plan["batches"], plan["resumed"]
    remaining = sum(len(todo) for todo in batches)
    if not remaining and (direct or not plan["partial_exists"]) and plan["card_exists"]:
        if processes.is_main:
            print(
                f"{args.output}: all {len(rows)} pools are already there (same settings); nothing was sampled",
                file=sys.stderr,
            )
        return EXIT_OK
    with storage_guard(kept=lambda: finished_rows(work_path, "pool")):  # a full disk: say which pools are safe
        if remaining:
            sample_batches(rows, batches, args, work_path, processes, done=len(rows) - remaining)
        if not processes.is_main:
            return processes.broadcast()
        from .io import read_jsonl, write_rows

        if not direct and os.path.exists(work_path):
            write_rows(read_jsonl(work_path), args.output)
            os.remove(work_path)
        from aepo_trainer._utils.provenance import dataset_card, provenance, write_dataset_card

        record = provenance("candidate pools", args.input, _settings(args), prompts=len(rows))
        description = (
            f"{len(rows)} prompts of `{args.input}` with {args.num_completions} completions each, sampled from "
            f"`{args.model_name_or_path}` (temperature {args.temperature:g}, top_p {args.top_p:g}, top_k "
            f"{args.top_k}, max_new_tokens {args.max_new_tokens}, seed {args.seed}): the input of `aepo select` or "
            "`AEPOTrainer`."
        )
        write_dataset_card(args.output, dataset_card(record, "AEPO candidate pools", description))
    resumed_note = f" ({resumed} already there)" if resumed else ""
    print(
        f"sampled {remaining} new pools x {args.num_completions} completions; {args.output} holds the "
        f"{len(rows)} requested pools{resumed_note}",
        file=sys.stderr,
    )
    return processes.broadcast(EXIT_OK)


def is_direct(output: str) -> bool:
    """Finished batches are appended to the output itself when it is (uncompressed) JSON Lines."""
    from .io import is_jsonl

    return is_jsonl(output) and not output.endswith(".gz")


def plan_batches(rows: list[dict], args, work_path: str) -> dict:
    """On the main process: check the settings of what is already sampled, then list the batches left to sample,
    as (row index, seed) pairs. Each row is sampled with its own seed — (--seed, its prompt, how many earlier rows
    have the same prompt) — so the pools depend neither on batching nor on the number of processes, and a resumed
    run writes what an uninterrupted one writes."""
    from aepo_trainer.generation import prompt_seed

    from .io import append_jsonl, read_jsonl, read_rows, repair_jsonl_tail

    os.makedirs(os.path.dirname(os.path.abspath(work_path)), exist_ok=True)
    check_existing_output(args, work_path)
    done_rows = []
    if os.path.exists(work_path):
        if repair_jsonl_tail(work_path):
            print(f"{work_path}: removed a truncated last line left by an interrupted run", file=sys.stderr)
        done_rows = read_jsonl(work_path)
    elif os.path.exists(args.output):  # a finished non-JSONL output: resume from its rows
        done_rows = read_rows(args.output)
    done = Counter(prompt_id(r.get(args.prompt_column)) for r in done_rows)
    seen = Counter()
    batches = []
    for start in range(0, len(rows), args.batch_size):
        todo = []
        for index in range(start, min(start + args.batch_size, len(rows))):
            prompt = rows[index][args.prompt_column]
            key = prompt_id(prompt)
            occurrence = seen[key]
            seen[key] += 1
            if done[key] > 0:
                done[key] -= 1
            else:
                todo.append((index, prompt_seed(args.seed, prompt, step=occurrence)))
        if todo:
            batches.append(todo)
    remaining = sum(len(todo) for todo in batches)
    if done_rows:
        print(f"resuming: {len(rows) - remaining} of {len(rows)} prompts already in {work_path}", file=sys.stderr)
    partial_exists = os.path.exists(work_path)
    if remaining and not is_direct(args.output) and done_rows and not partial_exists:
        append_jsonl(work_path, done_rows)  # continue a finished output with the new prompts
    from aepo_trainer._utils.provenance import card_path  # a run stopped by a full disk may have missed only its card

    plan = {"batches": batches, "resumed": len(rows) - remaining, "partial_exists": partial_exists}
    return {**plan, "card_exists": os.path.exists(card_path(args.output))}


def sample_batches(rows, batches, args, work_path: str, processes, done: int) -> None:
    """Sample every batch: each rank its share of the batch's prompts; the main process appends the batch (in input
    order) to the work file once every share is in — the unit of resuming."""
    from tqdm.auto import tqdm

    from aepo_trainer.generation import GenerationInputError

    from .io import append_jsonl

    generator = make_generator(args)
    bar = None
    if processes.is_main:
        bar = tqdm(total=len(rows), initial=done, unit="prompt", desc="generate", dynamic_ncols=True)
    tokens = 0
    for todo in batches:
        mine = processes.mine(todo)
        error = None
        try:
            pools = generator.generate([rows[i][args.prompt_column] for i, _ in mine], [seed for _, seed in mine])
            sampled = {i: (pool.completions, pool.num_tokens) for (i, _), pool in zip(mine, pools)}
        except GenerationInputError as raised:
            error, sampled = str(raised), {}
        shares = processes.gather_on_main((error, sampled))
        errors = processes.broadcast([e for e, _ in shares if e] if processes.is_main else None)
        if errors:
            raise InputError(errors[0])
        if not processes.is_main:
            continue
        merged = {i: value for _, part in shares for i, value in part.items()}
        tokens += sum(merged[i][1] for i, _ in todo)
        append_jsonl(work_path, [{**rows[i], args.completions_column: merged[i][0]} for i, _ in todo])
        bar.update(len(todo))
        elapsed = bar.format_dict.get("elapsed") or 0
        if elapsed:
            bar.set_postfix(tok_s=f"{tokens / elapsed:.0f}", refresh=False)
    if bar is not None:
        bar.close()
