"""`aepo select`: pools -> embed -> select k -> annotate -> pair -> a prompt/chosen/rejected dataset.

Each batch of `--batch_size` prompts (`--active_batch_size` for the active strategies, whose reward surrogate learns
from each batch's labels before the next batch is selected) goes through `PoolReducer.reduce` (`reduction.rows.reduce_rows`), the function the
trainer calls in its training step, so the pairs written here are exactly those `AEPOTrainer` would form on the fly
for the same seed and settings. Every annotation is saved in the annotation store (default
`<output>.annotations.sqlite`) before it is used; nothing in the store is paid twice.

Big inputs: the input is read, embedded, reduced and written `--chunk_size` prompts at a time (`streaming`), so memory
does not grow with the input; a killed run, rerun with the same command, resumes at the first unfinished chunk. Under
`accelerate launch` or `torchrun` every rank embeds its share of each chunk and the main process alone selects,
annotates, pays and writes (`processes`): the output is the one a single process writes. The output is assembled from
the chunks at the end, atomically.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field

from aepo_trainer.data.empty_completions import EmptyCompletionReport
from aepo_trainer.reduction.reducer import RUNNING_TOTALS
from aepo_trainer.reduction.rows import reduce_rows

from .args import CommandParser, aepo_settings_arguments, build_config, parse_with_yaml
from .errors import EXIT_ANNOTATIONS_PENDING, EXIT_BUDGET_EXHAUSTED, EXIT_OK, InputError
from .select_report import active_summary, dry_run_costs, pairs_card, report_dry_run, summary, write_learning_curve

DESCRIPTION = (
    "Select k of N candidates per prompt, annotate only those, and write preference pairs "
    "(prompt/chosen/rejected, with scores and selected indices) that any DPO trainer reads."
)

EPILOG = """\
examples:
  aepo select --input pools.jsonl.gz --output pairs.jsonl
  aepo select --input pools.jsonl --output pairs.parquet --num_annotations 4 --pairing_rule all_pairs
  aepo select --input pools.jsonl --output pairs.jsonl --annotator reward_model \\
      --reward_model_name_or_path OpenAssistant/reward-model-deberta-v3-large-v2 --annotation_budget 2000
  aepo select --input pools.jsonl --output pairs.jsonl --annotation_budget 500 --dry-run
  aepo select --config select.yaml --output pairs.jsonl   # YAML keys = flag names

  aepo select --input pools.jsonl --output pairs.jsonl --selection_strategy delta_ucb --annotation_budget 800

Resume: rerun the same command after an interruption; annotations in the store are reused for free and finished
chunks are skipped. Active strategies restore their surrogate from the labels of the finished chunks in one fit, so a
resumed run selects (and writes) exactly the same pairs; their learning curve (the surrogate's accuracy on each batch
before it saw its labels) goes to <output>.surrogate.jsonl.
Exit codes: 0 ok, 2 bad input, 3 budget exhausted (pairs annotated so far written), 4 human labels pending.
"""

_OUTPUT_COLUMNS = (
    "prompt",
    "chosen",
    "rejected",
    "chosen_score",
    "rejected_score",
    "chosen_index",
    "rejected_index",
    "selected_indices",
    "selected_scores",
)


@dataclass(kw_only=True)
class SelectDataArguments:
    """Where `aepo select` reads the pools and writes the pairs."""

    _argument_group_name = "data"

    input: str = field(
        metadata={
            "help": "Pool dataset: .jsonl(.gz)/.json/.csv/.parquet file, `save_to_disk` folder or Hub dataset id; one "
            "row per prompt with 'prompt' and a list of completions."
        }
    )
    split: str = field(default="train", metadata={"help": "Split to read when the input is a Hub dataset or folder."})
    output: str = field(
        metadata={
            "help": "Preference dataset to write: .jsonl(.gz)/.json, .parquet, .csv, or any other path for a "
            "`save_to_disk` folder."
        }
    )
    push_to_hub: str | None = field(
        default=None,
        metadata={"help": "Also push the preference dataset to this Hub dataset repository.", "metavar": "REPO_ID"},
    )
    hub_private: bool = field(default=False, metadata={"help": "Make the pushed repository private."})
    max_prompts: int | None = field(default=None, metadata={"help": "Only use the first M prompts of the input."})


@dataclass
class SelectRunArguments:
    """How `aepo select` runs: chunk size, dry run, budget ledger, device, waiting for human labels."""

    _argument_group_name = "run"

    batch_size: int = field(
        default=64, metadata={"help": "Prompts per `PoolReducer.reduce` call (selection + annotation + pairing chunk)."}
    )
    chunk_size: int = field(
        default=4096,
        metadata={
            "help": "Prompts held in memory at a time (rounded up to a multiple of the batch size): the input is "
            "read, embedded, reduced and written chunk by chunk, so memory does not grow with the input; a killed run "
            "resumes at the first unfinished chunk."
        },
    )
    dry_run: bool = field(
        default=False,
        metadata={
            "help": "Embed and select, then print how many annotations the run would pay for (minus those already in "
            "the store) against the budget; no annotator is called, nothing is written."
        },
    )
    run_id: str | None = field(
        default=None,
        metadata={
            "help": "Budget ledger in the store (default: derived from the output path, so rerunning the same command "
            "resumes the same budget)."
        },
    )
    device: str | None = field(
        default=None, metadata={"help": "Device for embedding and selection (default: cuda if available, else cpu)."}
    )
    wait: float | None = field(
        default=None,
        metadata={
            "help": "With --annotator human: instead of stopping with exit code 4, wait (at most SECONDS; no value: as "
            "long as it takes) while people label the queued items (`aepo label`), then go on by itself. Shorthand "
            "for --annotation_wait.",
            "nargs": "?",
            "const": float("inf"),
            "metavar": "SECONDS",
        },
    )


def build_parser(prog: str = "aepo select") -> CommandParser:
    settings = aepo_settings_arguments(
        "SelectAEPOSettings",
        exclude={"reward_scale"},  # a loss setting, training only
        notes={
            "annotation_budget": "In `aepo select`: when it is spent, the pairs of the prompts annotated so far are "
            "written and the exit code is 3; rerun with a larger budget to continue.",
            "annotation_store": "In `aepo select`: defaults to `<output>.annotations.sqlite`.",
            "annotation_queue": "In `aepo select`: defaults to `<output>.annotation_queue.jsonl`.",
            "judge_model": "In `aepo select --annotator judge`: the causal LM (path or Hub id) judging pairs "
            "(SELF-JUDGE: the frozen starting policy).",
        },
    )
    return CommandParser(
        (SelectDataArguments, SelectRunArguments, settings), prog=prog, description=DESCRIPTION, epilog=EPILOG
    )


def main(argv: list[str]) -> int:
    from .processes import run_in_processes

    return run_in_processes(run, argv)  # one process, or the ranks of `accelerate launch` / `torchrun`


def run(argv: list[str], processes) -> int:
    args = parse_with_yaml(build_parser(), argv)
    for name in ("batch_size", "chunk_size", "max_prompts"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"--{name} must be >= 1, got {value}")
    timings = {}
    started = time.perf_counter()
    output = os.path.abspath(os.path.expanduser(args.output))
    config = build_config(  # first: a bad setting fails before any reading or embedding
        args,
        output_dir=os.path.dirname(output),
        annotation_store=args.annotation_store or f"{output}.annotations.sqlite",
        annotation_queue=args.annotation_queue
        or (f"{output}.annotation_queue.jsonl" if args.annotator == "human" else None),
        annotation_wait=args.wait if args.wait is not None else args.annotation_wait,
    )
    from aepo_trainer.data import validation

    refused = validation.policy_signal_problems(config, "aepo select")
    if refused:  # before the annotator is built, the pools read or anything embedded or paid
        raise InputError(str(validation.InputValidationError("aepo select", refused)))
    if config.active_feature_model and config.uses_active_selection:  # loaded and probed now (memoised for later)
        from aepo_trainer.selection.feature_model import FeatureModel, FeatureModelError

        def load_feature_model():
            try:
                return FeatureModel.load(config.active_feature_model, args.device)
            except FeatureModelError as error:
                raise InputError(str(error)) from error

        processes.on_main(load_feature_model)
    run_id = args.run_id or f"aepo-select:{output}"
    annotator = processes.on_main(lambda: _build_annotator(config, run_id))  # loaded lazily; an API judge is probed
    size = config.active_batch_size if config.uses_active_selection else args.batch_size
    chunk_rows = math.ceil(args.chunk_size / size) * size  # chunks hold whole batches: the same batches as one pass

    def raw_chunks():
        from .streaming import iter_row_chunks

        return iter_row_chunks(
            args.input,
            chunk_rows=chunk_rows,
            split=args.split,
            max_rows=args.max_prompts,
            embeddings_column=config.embeddings_column,
        )

    def chunks():  # the rows every stage sees: the empty-completions rule applied (`empty_completions`)
        report, offset = EmptyCompletionReport(config.empty_completions), 0
        for chunk in raw_chunks():
            yield report.apply(chunk, config, row_offset=offset)
            offset += len(chunk)

    prompts, texts = check_input(raw_chunks(), config, args, annotator, processes)  # streamed: only counts kept
    timings["check"] = time.perf_counter() - started
    from aepo_trainer.errors import storage_guard
    from aepo_trainer.storage.annotations import kept_annotations

    from .pool_stages import PoolEmbedder
    from .streaming import finished_chunks

    embedder = PoolEmbedder(config, device=args.device or processes.device, processes=processes, total_texts=texts)
    try:  # a full disk or a read-only place: one message naming what is kept (annotations, finished chunks)
        with storage_guard(kept=lambda: {**kept_annotations(config.annotation_store), **finished_chunks(output)}):
            if args.dry_run:
                return dry_run(chunks(), embedder, annotator, config, args, run_id, processes, size, prompts)
            return select_chunks(
                chunks(), embedder, annotator, config, args, run_id, processes, size, prompts, timings, started
            )
    finally:
        embedder.close()


def _build_annotator(config, run_id: str):
    from aepo_trainer.annotation import build_annotator
    from aepo_trainer.generation import ApiConfigError

    try:  # models are loaded lazily, on the first annotation; an API judge is probed now (free)
        return build_annotator(config, model=config.judge_model if config.annotator == "judge" else None, run_id=run_id)
    except (ValueError, ApiConfigError) as error:
        raise InputError(
            f"{error} (with --annotator judge, pass --judge_model)" if config.annotator == "judge" else str(error)
        ) from None


def check_input(chunks, config, args, annotator, processes) -> tuple[int, int]:
    """Validate every row (chunk by chunk, rows numbered in the whole input) and the settings before anything is
    embedded or paid; returns (prompts, candidate texts). Every rank checks the rows; the main process also checks
    what it alone uses (annotator, budget, store)."""
    from .pool_stages import check_pool_rows, check_pool_settings

    ccol = config.completions_column
    rows_read = prompts = texts = 0
    need_embedder = False
    smallest_pool = None
    empty = EmptyCompletionReport(config.empty_completions)
    for chunk in chunks:
        check_pool_rows(
            chunk, config, args.input, need_scores=config.annotator == "dataset_scores", row_offset=rows_read
        )
        kept = empty.apply(chunk, config, row_offset=rows_read)
        rows_read += len(chunk)
        sizes = [len(row[ccol]) for row in kept]
        prompts += len(kept)
        texts += sum(sizes)
        smallest_pool = min([*sizes, smallest_pool] if smallest_pool is not None else sizes) if sizes else smallest_pool
        need_embedder = need_embedder or any(row.get(config.embeddings_column) is None for row in kept)
    if not rows_read:
        raise InputError(f"{args.input}: the dataset is empty (no rows)")
    warning = empty.warning(args.input, ccol)
    if warning and processes.is_main:
        print(f"aepo select: warning: {warning}", file=sys.stderr)
    if not prompts:
        raise InputError(f"{args.input}: every pool was skipped by --empty_completions drop (none left to select from)")

    def settings():
        check_pool_settings(
            config,
            need_embedder=need_embedder,
            pool_sizes=[smallest_pool],
            annotator=annotator,
            judge_model=args.judge_model,
            paid=not args.dry_run,
        )

    processes.on_main(settings)
    return prompts, texts


def select_chunks(chunks, embedder, annotator, config, args, run_id, processes, size, prompts, timings, started):
    """Embed (every rank its share), then on the main process select, annotate, pair and write, chunk by chunk."""
    from aepo_trainer._utils.provenance import write_dataset_card
    from aepo_trainer.reduction.reducer import STATS_FIELDS

    from .io import push_to_hub
    from .streaming import ChunkedOutput, input_identity

    output = os.path.abspath(os.path.expanduser(args.output))
    reducer = service = written = bar = None
    try:  # the store's connection is closed when the command ends (its WAL is checkpointed now, not at GC)
        if processes.is_main:
            from tqdm.auto import tqdm

            from aepo_trainer.annotation import AnnotationService
            from aepo_trainer.reduction.reducer import PoolReducer

            service = AnnotationService.from_config(config, annotator, run_id=run_id)
            reducer = PoolReducer(config, service, device=args.device, catch_pending=True)
            written = ChunkedOutput(
                output,
                {
                    "input": input_identity(args.input),
                    "split": args.split,
                    "max_prompts": args.max_prompts,
                    "chunk_size": args.chunk_size,
                    "batch_size": size,
                    "settings": config.aepo_settings(),
                    "run_id": run_id,
                },
            )
            if written.restarted:
                print(f"aepo select: {written.folder} held chunks of other settings; starting over", file=sys.stderr)
            bar = tqdm(total=prompts, unit="prompt", desc="select+annotate+pair", dynamic_ncols=True, position=1)
        # An active surrogate learns from every chunk's labels: a finished chunk keeps what it taught it (the labels with
        # their features, the learning-curve points) and a resumed run relearns that in one fit (`ActiveSelector.relearn`)
        # instead of selecting the finished chunks again. Only a prefix of finished chunks can be skipped that way.
        active = reducer.active if processes.is_main else None
        restored: list[dict] = []
        totals = dict.fromkeys(STATS_FIELDS, 0.0)
        resumed = pairs_written = chunks_done = 0
        pending = []
        embed_seconds = 0.0
        prefix = True
        for index, chunk in enumerate(chunks):
            chunks_done = index + 1
            finished = written.finished(index) if processes.is_main else None
            if active is not None and (not prefix or finished is None or "active" not in finished):
                finished = None
            prefix = prefix and finished is not None
            finished = processes.broadcast(finished)
            if finished is not None:  # done by an earlier run: its rows are in its chunk file
                if processes.is_main:
                    _add_totals(totals, finished, resumed=True)
                    resumed += len(chunk)
                    pairs_written += finished["rows"]
                    bar.update(len(chunk))
                    if active is not None:
                        restored.append(finished["active"])
                continue
            if restored:
                active.relearn(restored)
                restored = []
            t = time.perf_counter()
            embeddings = embedder.embed(chunk)
            embed_seconds += time.perf_counter() - t
            stop = False
            if processes.is_main:
                if config.prompt_selection != "all":  # the budget goes to the chunk's most informative prompts
                    chunk, embeddings, left_out = _informative_part(chunk, embeddings, reducer, size, prompts)
                    totals["prompts_unselected"] = totals.get("prompts_unselected", 0.0) + left_out
                    bar.update(left_out)
                mark = active.mark() if active is not None else None
                pairs, chunk_totals, chunk_pending = reduce_rows(chunk, embeddings, reducer, size, bar=bar)
                _add_totals(totals, chunk_totals)
                pending.extend(chunk_pending)
                if not chunk_pending:  # a chunk waiting for human labels is redone once they are in
                    if active is not None:
                        chunk_totals = {**chunk_totals, "active": active.lessons_since(mark)}
                    written.write(index, pairs, chunk_totals, complete=not chunk_totals["prompts_skipped"])
                    pairs_written += len(pairs)
                stop = bool(chunk_pending) and reducer.active is not None
            del embeddings
            if processes.broadcast(stop):
                break
        if restored:  # every chunk was finished: the learning curve and the summary still describe the whole run
            active.relearn(restored)
        timings["embed"] = embed_seconds
        timings["select+annotate+pair"] = time.perf_counter() - started - timings["check"] - embed_seconds
        if not processes.is_main:
            return processes.broadcast()
        bar.close()
        if resumed:
            print(
                f"aepo select: resumed: {resumed} prompts were finished by an earlier run ({written.folder})",
                file=sys.stderr,
            )
        if reducer.active is not None:
            write_learning_curve(reducer.active, f"{output}.surrogate.jsonl")
        if pending:  # a human queue: every batch queued its items; nothing is written until all labels are in
            print(summary(totals, service, timings, started, written=None), file=sys.stderr)
            if reducer.active is not None:
                print(
                    f"aepo select: --selection_strategy {config.selection_strategy} learns from the labels of each batch "
                    f"before selecting the next, so it stopped at the first batch whose labels are pending "
                    f"({int(totals['prompts'])} prompts selected so far); later batches are selected once these labels "
                    "are in.",
                    file=sys.stderr,
                )
            print(
                f"aepo select: {sum(p.pending for p in pending)} annotation(s) are waiting for labels in "
                f'{pending[0].queue_path}; write them to {pending[0].labels_path} (lines {{"id": ..., "score": '
                f"...}}) or label them in a browser (`aepo label --store {service.store.path}`), and rerun the same "
                f"command (or add --wait). Labels already given are saved in {service.store.path}.",
                file=sys.stderr,
            )
            return processes.broadcast(EXIT_ANNOTATIONS_PENDING)
        t = time.perf_counter()
        if args.push_to_hub:
            import datasets

            rows = datasets.Dataset.from_generator(lambda: written.rows(chunks_done))
        written.assemble(chunks_done)
        card = pairs_card(args, config, service, totals, prompts, pairs_written)
        write_dataset_card(output, card)
        timings["write"] = time.perf_counter() - t
        if args.push_to_hub:
            push_to_hub(rows, args.push_to_hub, private=args.hub_private, card=card)
        print(
            summary(totals, service, timings, started, written=f"{pairs_written} pairs -> {args.output}"),
            file=sys.stderr,
        )
        if reducer.active is not None:
            print(active_summary(reducer.active, f"{output}.surrogate.jsonl"), file=sys.stderr)
        if totals.get("prompts_unselected"):
            print(
                f"aepo select: prompt selection ({config.prompt_selection}) left {int(totals['prompts_unselected'])} "
                "prompts unannotated (not paid for)",
                file=sys.stderr,
            )
        code = EXIT_OK
        if totals["prompts_skipped"]:
            print(f"aepo select: {service.budget_message(int(totals['prompts_skipped']))}", file=sys.stderr)
            code = EXIT_BUDGET_EXHAUSTED
        return processes.broadcast(code)
    finally:
        if service is not None:
            service.store.close()


def _informative_part(chunk, embeddings, reducer, size: int, prompts: int):
    """Prompt-level selection on one chunk (`selection.prompts.informative_rows`): the rows kept, their embeddings,
    and how many were left out (never annotated, never paid for)."""
    from aepo_trainer.selection.prompts import informative_rows, prompt_ratio

    kept = informative_rows(reducer, chunk, embeddings, ratio=prompt_ratio(reducer.args, prompts), batch_size=size)
    return [chunk[i] for i in kept], [embeddings[i] for i in kept], len(chunk) - len(kept)


def _add_totals(totals: dict, stats: dict, resumed: bool = False) -> None:
    """Add one chunk's statistics. Spent and budget left are the latest values, not sums; a chunk finished by an
    earlier run adds its prompts and pairs but nothing to what this run paid or reused."""
    for name in totals:
        value = stats.get(name, 0.0)
        if name in RUNNING_TOTALS:
            if not resumed:
                totals[name] = value
        elif resumed and name in ("annotations_paid", "annotations_reused", "annotations_recovered"):
            continue
        elif not (isinstance(value, float) and math.isnan(value)):
            totals[name] += value


def dry_run(chunks, embedder, annotator, config, args, run_id, processes, size, prompts) -> int:
    """Embed and select every chunk; print what the run would pay for. Writes nothing: the store is read from a private
    copy, deleted afterwards. With `prompt_selection`, each chunk's prompts are chosen as the run would choose them
    (`_informative_part`), and only the kept ones are costed."""
    if not processes.is_main:
        for chunk in chunks:
            embedder.embed(chunk)
        return processes.broadcast()
    from aepo_trainer.annotation import AnnotationService
    from aepo_trainer.annotation.service import apply_annotator_version
    from aepo_trainer.reduction.reducer import PoolReducer

    from .pool_stages import read_only_store

    apply_annotator_version(annotator, config.annotator_version)  # the keys a real run would look up
    with read_only_store(config.annotation_store) as store:
        service = AnnotationService(
            annotator, store, budget=config.annotation_budget, run_id=run_id, batch_size=config.annotation_batch_size
        )
        reducer = PoolReducer(config, service, device=args.device, catch_pending=True)
        costs, unselected = [], 0
        for chunk in chunks:
            embeddings = embedder.embed(chunk)
            if config.prompt_selection != "all":  # as the run: the budget goes to the chunk's most informative prompts
                chunk, embeddings, left_out = _informative_part(chunk, embeddings, reducer, size, prompts)
                unselected += left_out
            costs.append(dry_run_costs(chunk, embeddings, reducer, service, size))
        report_dry_run(costs, reducer, service, store_path=config.annotation_store, unselected=unselected)
    return processes.broadcast(EXIT_OK)
