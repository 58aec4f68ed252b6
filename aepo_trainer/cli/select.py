"""`aepo select`: pools -> embed -> select k -> annotate -> pair -> a prompt/chosen/rejected dataset.

Each chunk of `--batch_size` prompts (`--active_batch_size` for the active strategies, whose reward surrogate learns
from each chunk's labels before the next chunk is selected) goes through `PoolReducer.reduce`, the same function the trainer's collator calls
on every batch, so the pairs written here are exactly those `AEPOTrainer` would form on the fly for the same seed and
settings. Every annotation is saved in the annotation store (default `<output>.annotations.sqlite`) before it is
used; an interrupted run is resumed by running the same command again, and nothing in the store is paid twice. The
output is written once, at the end, atomically.
"""

from __future__ import annotations

import math
import os
import sys
import time
from contextlib import contextmanager

from .args import ArgumentParser, HelpFormatter, add_config_flags, add_yaml_flag, build_config, parse_with_yaml
from .errors import EXIT_ANNOTATIONS_PENDING, EXIT_BUDGET_EXHAUSTED, EXIT_OK, InputError

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

Resume: rerun the same command after an interruption; annotations in the store are reused for free. Active
strategies replay the stored labels batch by batch, so a resumed run selects (and writes) exactly the same pairs;
their learning curve (the surrogate's accuracy on each batch before it saw its labels) goes to
<output>.surrogate.jsonl.
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


def build_parser(prog: str = "aepo select") -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter)
    add_yaml_flag(parser)
    io = parser.add_argument_group("data")
    io.add_argument(
        "--input",
        required=True,
        help="Pool dataset: .jsonl(.gz)/.json/.csv/.parquet file, "
        "`save_to_disk` folder or Hub dataset id; one row per prompt with 'prompt' and a list of "
        "completions.",
    )
    io.add_argument("--split", default="train", help="Split to read when the input is a Hub dataset or folder.")
    io.add_argument(
        "--output",
        required=True,
        help="Preference dataset to write: .jsonl(.gz)/.json, .parquet, "
        ".csv, or any other path for a `save_to_disk` folder.",
    )
    io.add_argument(
        "--push_to_hub",
        metavar="REPO_ID",
        default=None,
        help="Also push the preference dataset to this Hub dataset repository.",
    )
    io.add_argument("--hub_private", action="store_true", help="Make the pushed repository private.")
    io.add_argument("--max_prompts", type=int, default=None, help="Only use the first M prompts of the input.")
    run = parser.add_argument_group("run")
    run.add_argument(
        "--batch_size",
        type=int,
        default=64,
        help="Prompts per `PoolReducer.reduce` call (selection + annotation + pairing chunk).",
    )
    run.add_argument(
        "--dry-run",
        "--dry_run",
        dest="dry_run",
        action="store_true",
        help="Embed and select, then print how many annotations the run would pay for (minus those "
        "already in the store) against the budget; no annotator is called, nothing is written.",
    )
    run.add_argument(
        "--run_id",
        default=None,
        help="Budget ledger in the store (default: derived from the output path, so rerunning the same "
        "command resumes the same budget).",
    )
    run.add_argument(
        "--device", default=None, help="Device for embedding and selection (default: cuda if available, else cpu)."
    )
    run.add_argument(
        "--wait",
        nargs="?",
        type=float,
        const=float("inf"),
        default=None,
        metavar="SECONDS",
        help="With --annotator human: instead of stopping with exit code 4, wait (at most SECONDS; no value: as long "
        "as it takes) while people label the queued items (`aepo label`), then go on by itself. Shorthand for "
        "--annotation_wait.",
    )
    add_config_flags(
        parser,
        exclude={"reward_scale"},
        notes={  # reward_scale: a loss setting, training only
            "annotation_budget": "In `aepo select`: when it is spent, the pairs of the prompts annotated so far are "
            "written and the exit code is 3; rerun with a larger budget to continue.",
            "annotation_store": "In `aepo select`: defaults to `<output>.annotations.sqlite`.",
            "annotation_queue": "In `aepo select`: defaults to `<output>.annotation_queue.jsonl`.",
            "judge_model": "In `aepo select --annotator judge`: the causal LM (path or Hub id) judging pairs "
            "(SELF-JUDGE: the frozen starting policy).",
        },
    )
    return parser


def main(argv: list[str]) -> int:
    args = parse_with_yaml(build_parser(), argv)
    if args.batch_size < 1:
        raise InputError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.max_prompts is not None and args.max_prompts < 1:
        raise InputError(f"--max_prompts must be >= 1, got {args.max_prompts}")
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
    from aepo_trainer.annotation import AnnotationService, build_annotator
    from aepo_trainer.generation import ApiConfigError
    from aepo_trainer.reduction import PoolReducer

    run_id = args.run_id or f"aepo-select:{output}"
    try:  # models are loaded lazily, on the first annotation; an API judge is probed now (free)
        annotator = build_annotator(
            config, model=config.judge_model if config.annotator == "judge" else None, run_id=run_id
        )
    except (ValueError, ApiConfigError) as error:
        raise InputError(
            f"{error} (with --annotator judge, pass --judge_model)" if config.annotator == "judge" else str(error)
        ) from None

    from .io import read_rows

    rows = read_rows(args.input, split=args.split)
    if args.max_prompts is not None:
        rows = rows[: args.max_prompts]
    check_pools(
        rows,
        config,
        args.input,
        need_scores=config.annotator == "dataset_scores",
        annotator=annotator,
        judge_model=args.judge_model,
    )
    timings["read"] = time.perf_counter() - started
    run_id = args.run_id or f"aepo-select:{output}"
    if args.dry_run:  # writes nothing: the store is read from a private copy, deleted afterwards
        from aepo_trainer.annotation.service import apply_annotator_version

        apply_annotator_version(annotator, config.annotator_version)  # the keys a real run would look up
        with read_only_store(config.annotation_store) as store:
            service = AnnotationService(
                annotator,
                store,
                budget=config.annotation_budget,
                run_id=run_id,
                batch_size=config.annotation_batch_size,
            )
            reducer = PoolReducer(config, service, device=args.device, catch_pending=True)
            embeddings = pool_embeddings(rows, config, device=args.device)
            report_dry_run(rows, embeddings, reducer, service, args.batch_size, store_path=config.annotation_store)
        return EXIT_OK
    service = AnnotationService.from_config(config, annotator, run_id=run_id)
    reducer = PoolReducer(config, service, device=args.device, catch_pending=True)

    t = time.perf_counter()
    embeddings = pool_embeddings(rows, config, device=args.device)
    timings["embed"] = time.perf_counter() - t

    t = time.perf_counter()
    size = config.active_batch_size if config.uses_active_selection else args.batch_size
    pairs, totals, pending = reduce_all(rows, embeddings, reducer, size)
    timings["select+annotate+pair"] = time.perf_counter() - t
    if reducer.active is not None:
        write_learning_curve(reducer.active, f"{output}.surrogate.jsonl")

    t = time.perf_counter()
    from aepo_trainer.provenance import write_dataset_card

    from .io import push_to_hub, write_rows

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
        return EXIT_ANNOTATIONS_PENDING
    write_rows(pairs, output)
    card = pairs_card(args, config, service, totals, len(rows), len(pairs))
    write_dataset_card(output, card)
    timings["write"] = time.perf_counter() - t
    if args.push_to_hub:
        push_to_hub(pairs, args.push_to_hub, private=args.hub_private, card=card)
    print(summary(totals, service, timings, started, written=f"{len(pairs)} pairs -> {args.output}"), file=sys.stderr)
    if reducer.active is not None:
        print(active_summary(reducer.active, f"{output}.surrogate.jsonl"), file=sys.stderr)
    if totals["prompts_skipped"]:
        print(f"aepo select: {service.budget_message(int(totals['prompts_skipped']))}", file=sys.stderr)
        return EXIT_BUDGET_EXHAUSTED
    return EXIT_OK


def pairs_card(args, config, service, totals: dict, prompts: int, pairs: int):
    """The dataset card of the written pairs: source, strategy, λ, k, seed, annotator identity, budget spent."""
    from aepo_trainer.provenance import dataset_card, provenance

    settings = config.aepo_settings()
    settings.pop("loss_type", None)  # a training setting
    settings.pop("reward_scale", None)
    record = provenance(
        "preference pairs",
        args.input,
        settings,
        annotator_identity=service.identity,
        annotations_paid_this_run=int(totals["annotations_paid"]),
        annotations_reused=int(totals["annotations_reused"]),
        annotations_spent_by_run=service.spent,
        run_id=service.run_id,
        prompts=prompts,
        pairs=pairs,
        prompts_skipped_for_budget=int(totals["prompts_skipped"]),
        ties_dropped=int(totals["ties_dropped"]),
    )
    k = "every candidate (west_of_n)" if config.selection_strategy == "west_of_n" else f"k = {config.num_annotations}"
    description = (
        f"{pairs} preference pairs (prompt/chosen/rejected, with the annotated scores and the selected indices) from "
        f"{prompts} candidate pools of `{args.input}`: {k} candidates per prompt selected with "
        f"`{config.selection_strategy}` (λ = {config.diversity_weight:g}), annotated by `{service.identity}`, paired "
        f"`{config.pairing_rule}`."
    )
    return dataset_card(record, "AEPO preference pairs", description)


def check_pools(
    rows: list[dict], config, source: str, need_scores: bool, annotator=None, judge_model=None, paid: bool = True
) -> None:
    """The validation pass of `aepo_trainer.validation` (every row and column, the embedder's model and, when the
    command pays for annotations (`paid`), the annotator's model and the budget) before anything is embedded or paid;
    its problems become one `InputError` (exit code 2)."""
    from aepo_trainer import validation

    try:
        validation.dataset_kind(rows, config, source)
        validation.validate_pool_dataset(rows, config, dataset_name=source, need_scores=need_scores)
    except validation.InputValidationError as error:
        raise InputError(str(error)) from None
    need_embedder = not all(row.get(config.embeddings_column) is not None for row in rows)
    if not paid:
        problems = validation.annotator_problems(config, None, need_embedder=need_embedder, check_annotator=False)
    else:
        problems = validation.annotator_problems(config, annotator, need_embedder=need_embedder)
        if config.annotator == "judge" and isinstance(judge_model, str):
            problem = validation.pretrained_problem(judge_model, "judge_model")
            problems += [problem] if problem is not None else []
        problems += validation.budget_problems(config, [len(row[config.completions_column]) for row in rows])
        problems += validation.store_problems(config)
    if problems:
        raise InputError(str(validation.InputValidationError("settings", problems)))


# ------------------------------------------------------------------------------------------------------- stages
def pool_embeddings(rows: list[dict], config, device=None, shard_texts: int = 1024):
    """One `[N_b, D]` float32 tensor per row: the `embeddings` column when every row has one, else the embedder's.

    Embedding goes through `embedding.embed_pools` (what the trainer uses), shard by shard: each shard's result is
    cached by the datasets library under the data's fingerprint and the embedder's identity, so a rerun after an
    interruption (or `aepo stats` then `aepo select` on the same file) does not embed the finished shards again.
    """
    import numpy as np
    import torch

    column, ccol = config.embeddings_column, config.completions_column
    if all(row.get(column) is not None for row in rows):
        return [torch.as_tensor(np.asarray(row[column], dtype=np.float32)) for row in rows]
    import datasets
    from tqdm.auto import tqdm

    from aepo_trainer.embedding import Embedder, embed_pools

    embedder = Embedder.from_config(config, device=device, show_progress=False)
    data = datasets.Dataset.from_list([{ccol: row[ccol]} for row in rows])
    datasets.disable_progress_bars()  # one bar below, over all shards
    texts = sum(len(row[ccol]) for row in rows)
    shard_rows = max(1, shard_texts // max(len(row[ccol]) for row in rows))  # the unit of caching and resuming
    out = []
    bar = tqdm(total=texts, unit="text", desc="embed", dynamic_ncols=True)
    try:
        for start in range(0, len(rows), shard_rows):
            shard = data.select(range(start, min(start + shard_rows, len(rows))))
            try:
                embedded = embed_pools(
                    shard, ccol, embedder, column, batch_size=config.embedding_batch_size, rows_per_batch=shard_rows
                )
            except RuntimeError as error:
                if embedder._model is None:  # the model could not be loaded: a bad --embedding_model
                    raise InputError(f"--embedding_model {config.embedding_model!r}: {error}") from None
                raise
            out.extend(torch.as_tensor(np.asarray(e, dtype=np.float32)) for e in embedded.with_format("numpy")[column])
            bar.update(sum(len(c) for c in shard[ccol]))
    finally:
        bar.close()
        datasets.enable_progress_bars()
    return out


def batch_inputs(rows: list[dict], embeddings: list, start: int, stop: int, drop: str):
    """The reducer's input for rows[start:stop]: the rows (without the embeddings column), `[B, N, D]`, `[B, N]`."""
    from aepo_trainer.embedding import stack_pool_embeddings

    tensor, mask = stack_pool_embeddings(embeddings[start:stop])
    return [{k: v for k, v in row.items() if k != drop} for row in rows[start:stop]], tensor, mask


def reduce_all(rows, embeddings, reducer, size: int):
    """Run `PoolReducer.reduce` over chunks of rows; returns (output rows, summed stats, `AnnotationsPending`s)."""
    from tqdm.auto import tqdm

    from aepo_trainer.reduction import STATS_FIELDS

    config = reducer.args
    totals = dict.fromkeys(STATS_FIELDS, 0.0)
    out, pending = [], []
    bar = tqdm(total=len(rows), unit="prompt", desc="select+annotate+pair", dynamic_ncols=True)
    for start in range(0, len(rows), size):
        batch_rows, tensor, mask = batch_inputs(rows, embeddings, start, start + size, config.embeddings_column)
        reduced = reducer.reduce(batch_rows, tensor, mask)
        for name in STATS_FIELDS:
            value = reduced.stats.get(name, 0.0)
            if name in ("annotations_spent", "budget_left"):
                totals[name] = value
            elif not (isinstance(value, float) and math.isnan(value)):
                totals[name] += value
        if reduced.pending is not None:
            pending.append(reduced.pending)
        out.extend(pair_rows(batch_rows, reduced, config))
        if reduced.active is not None and reduced.active.pairs_evaluated:
            q = reduced.active
            bar.write(
                f"batch {q.batch}: surrogate before its labels: Spearman {q.spearman:.3f}, pairwise accuracy "
                f"{q.pairwise_accuracy:.3f} ({q.pairs_evaluated} pairs); now fitted on {q.labels_after} labels",
                file=sys.stderr,
            )
        bar.set_postfix(
            paid=int(totals["annotations_paid"]),
            reused=int(totals["annotations_reused"]),
            pairs=len(out),
            refresh=False,
        )
        bar.update(len(batch_rows))
        if reduced.pending is not None and reducer.active is not None:
            break  # the next batch's selection needs these labels: selecting it now would queue the wrong items
    bar.close()
    return out, totals, pending


def write_learning_curve(selector, path: str) -> None:
    """One JSON line per batch: the surrogate's quality on the batch's labels before it saw them (atomic write)."""
    import json

    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for quality in selector.history:
            f.write(json.dumps(quality.to_dict(), allow_nan=True) + "\n")
    os.replace(tmp, path)


def active_summary(selector, path: str) -> str:
    """The learning curve in two lines: labels learned from, and the pooled accuracy on batches before their labels."""
    scored = [q for q in selector.history if q.pairs_evaluated]
    pairs = sum(q.pairs_evaluated for q in scored)
    accuracy = sum(q.pairwise_accuracy * q.pairs_evaluated for q in scored) / pairs if pairs else float("nan")
    cold = sum(q.cold_start for q in selector.history)
    return (
        f"active selection ({selector.strategy}): surrogate fitted on {len(selector.surrogate)} labels "
        f"({selector.invalid_labels} invalid, never used); {cold} of {len(selector.history)} batches selected by the "
        f"cold start ({selector.cold_start}); pairwise accuracy on new batches before their labels {accuracy:.3f} "
        f"over {pairs} pairs; learning curve -> {path}"
    )


def pair_rows(rows: list[dict], reduced, config) -> list[dict]:
    """The output rows of one reduced batch: one per pair, plus the row's scalar columns."""
    ccol, scol, ecol = config.completions_column, config.scores_column, config.embeddings_column
    out = []
    for pair in reduced.pairs:
        row = rows[pair.row]
        subset = reduced.subsets[pair.row]
        chosen, rejected = subset[pair.chosen], subset[pair.rejected]
        pool = row[ccol]
        record = {
            "prompt": row["prompt"],
            "chosen": pool[chosen],
            "rejected": pool[rejected],
            "chosen_score": pair.chosen_score,
            "rejected_score": pair.rejected_score,
            "chosen_index": chosen,
            "rejected_index": rejected,
            "selected_indices": list(subset),
            "selected_scores": list(reduced.scores[pair.row]),
        }
        for name, value in row.items():  # keep per-prompt columns; drop per-candidate ones (one entry per completion)
            if name in record or name in (ccol, scol, ecol):
                continue
            if isinstance(value, list) and len(value) == len(pool):
                continue
            record[name] = value
        out.append(record)
    return out


@contextmanager
def read_only_store(path: str):
    """An `AnnotationStore` holding what the store at `path` holds, that writes nothing at `path`: a private copy
    (SQLite's online backup, read through a read-only connection), or an empty one when there is no store yet."""
    import shutil
    import sqlite3
    import tempfile

    from aepo_trainer.annotation import AnnotationStore

    folder = tempfile.mkdtemp(prefix="aepo-dry-run-")
    copy = os.path.join(folder, "annotations.sqlite")
    store = None
    try:
        if os.path.exists(path) and os.path.getsize(path) > 0:
            source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            target = sqlite3.connect(copy)
            try:
                source.backup(target)
            finally:
                source.close()
                target.close()
        store = AnnotationStore(copy)
        yield store
    finally:
        if store is not None:
            store.close()
        shutil.rmtree(folder, ignore_errors=True)


def report_dry_run(rows, embeddings, reducer, service, size: int, store_path: str | None = None) -> None:
    """Print what the run would pay for: selected items minus those in the store, against the budget."""
    config = reducer.args
    needed = stored = 0
    per_prompt_cost = []
    for start in range(0, len(rows), size):
        batch_rows, tensor, mask = batch_inputs(rows, embeddings, start, start + size, config.embeddings_column)
        for request in reducer.requests(batch_rows, reducer.select(batch_rows, tensor, mask)):
            prompt_needed, prompt_stored = service.cost(request)
            needed += prompt_needed
            stored += prompt_stored
            per_prompt_cost.append(prompt_needed - prompt_stored)
    to_pay = needed - stored
    remaining = service.remaining
    if reducer.active is not None:
        print(
            f"note: --selection_strategy {config.selection_strategy} chooses each batch from the labels of the "
            f"earlier ones; without labels this dry run selects every batch by the cold start "
            f"({config.active_cold_start}), so 'already in the store' is an estimate (the counts per prompt are exact)."
        )
    per_prompt = "N" if config.selection_strategy == "west_of_n" else config.num_annotations
    lines = [
        f"dry run: {len(rows)} prompts, annotator {service.identity}, store {store_path or service.store.path} "
        "(nothing is written)",
        f"  annotations needed        {needed:>10}  ({per_prompt} per prompt)",
        f"  already in the store      {stored:>10}  (free)",
        f"  would be paid             {to_pay:>10}",
    ]
    if remaining is None:
        lines.append(
            f"  budget                    unlimited  (spent so far by run '{service.run_id}': {service.spent})"
        )
    else:
        covered = prompts_covered(per_prompt_cost, remaining)
        lines += [
            f"  budget                    {config.annotation_budget:>10}  (spent so far: {service.spent}, "
            f"left: {remaining})",
            f"  prompts covered           {covered:>10}  of {len(rows)}"
            + ("" if covered == len(rows) else "  (the rest would be skipped: budget exhausted)"),
        ]
    print("\n".join(lines))


def prompts_covered(costs: list[int], budget: int) -> int:
    """How many prompts a budget pays for, in order, each whole or not at all (as `AnnotationService` skips them)."""
    covered = 0
    for cost in costs:
        if cost <= budget:
            budget -= cost
            covered += 1
    return covered


def summary(totals: dict, service, timings: dict, started: float, written: str | None) -> str:
    prompts = int(totals["prompts"])
    pairs = int(totals["pairs"])
    mean = (lambda name: totals[name] / prompts) if prompts else (lambda name: float("nan"))
    budget = "unlimited" if service.budget is None else f"{service.budget} (left {service.remaining})"
    stages = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in timings.items())
    lines = [
        f"prompts {prompts}  pairs {pairs}  skipped (budget) {int(totals['prompts_skipped'])}  "
        f"ties dropped {int(totals['ties_dropped'])}  invalid scores {int(totals['invalid_dropped'])}",
        f"annotations: paid {int(totals['annotations_paid'])}  reused from store {int(totals['annotations_reused'])}"
        f"  spent by run {service.spent}  budget {budget}  store {service.store.path}",
        f"selection: mean representativeness {mean('representativeness_sum'):.4f}  mean diversity "
        f"{mean('diversity_sum'):.4f}",
        f"wall time {time.perf_counter() - started:.1f}s ({stages})" + (f"; wrote {written}" if written else ""),
    ]
    return "\n".join(lines)
