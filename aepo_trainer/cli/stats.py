"""`aepo stats`: what each selection strategy and k would cost on a pool file, and what its selections look like.

For every strategy (AEPO at several diversity weights λ, random, West-of-N, representativeness only, k-medoids) and
every k: the annotations needed for the whole file, the prompts a budget covers, the mean representativeness and
diversity of the selected subsets and, when the file has a scores column, the mean best/worst/gap of the selected
candidates' scores. Selections are made by `PoolReducer.select`, exactly as `aepo select` and the trainer make them.
Nothing is annotated; the scores column is only read.

The active strategies (which learn from paid labels) are simulated with the scores column as the annotator, in
batches of `--active_batch_size`: the table adds the surrogate's pairwise accuracy on each batch BEFORE it saw the
batch's labels, and `--plot` adds that learning curve.

`--labels STORE` also (or, without `--input`, only) reports the labelling page's answers in a store: items answered
and finished, and the labellers' agreement (Krippendorff's alpha overall and per labeller, see
`aepo_trainer.labelling.agreement`).

With `--annotation_store`, also the money: the tokens and dollars every LLM API call recorded in that store cost,
per run and model (the `usage` ledger the API judge and `aepo generate --backend openai` write); `--input` may then
be left out.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field

from aepo_trainer.choices import ACTIVE_STRATEGIES, POLICY_STRATEGIES
from aepo_trainer.choices import SELECTION_STRATEGIES as STRATEGIES

from .args import CommandParser, aepo_settings_arguments, build_config, parse_with_yaml
from .errors import EXIT_OK, InputError
from .stats_comparison import compute, format_table

DESCRIPTION = (
    "Annotation cost, budget coverage and representativeness/diversity (and selected scores, when the "
    "file has them) of each selection strategy and k on a pool file; prints a table, draws a plot."
)

EPILOG = """\
examples:
  aepo stats --input pools.jsonl.gz --plot stats.png
  aepo stats --input pools.jsonl --num_annotations 2 3 4 8 --annotation_budget 1000 --json stats.json
  aepo stats --input pools.jsonl --strategies aepo random --diversity_weight 0.5 1
  aepo stats --input pools.jsonl --strategies random delta_ucb ucb_random --num_annotations 2 --plot curve.png
  aepo stats --labels pairs.jsonl.annotations.sqlite     # the labelling page's answers and agreement
  aepo stats --annotation_store out/annotations.sqlite          # tokens and cost of the API calls
"""


_SELECTION_FIELDS = {
    "num_annotations",
    "diversity_weight",
    "selection_search",
    "local_search_rounds",
    "selection_seed",
    "seed",
    "embedding_model",
    "embedding_batch_size",
    "embedding_backend",
    "embedding_quantized",
    "embedding_max_length",
    "completions_column",
    "scores_column",
    "embeddings_column",
    "empty_completions",
    "annotation_budget",
    "annotation_store",
    "active_warmup_annotations",
    "active_cold_start",
    "active_exploration",
    "active_quality_weight",
    "active_batch_size",
    "active_prior_precision",
    "active_noise_precision",
}


@dataclass
class StatsDataArguments:
    """What `aepo stats` reads and where it writes its table and plots."""

    _argument_group_name = "data"

    input: str | None = field(
        default=None,
        metadata={
            "help": "Pool dataset (same formats as `aepo select --input`); required unless --labels or "
            "--annotation_store."
        },
    )
    labels: str | None = field(
        default=None,
        metadata={
            "help": "Annotation store a labelling page (`aepo label`) wrote to: print its answers and the labellers' "
            "agreement (Krippendorff's alpha overall and per labeller).",
            "metavar": "STORE",
        },
    )
    split: str = field(default="train", metadata={"help": "Split to read when the input is a Hub dataset or folder."})
    max_prompts: int | None = field(default=None, metadata={"help": "Only use the first M prompts of the input."})
    plot: str | None = field(
        default=None, metadata={"help": "Write the plot to this image file.", "metavar": "FILE.png"}
    )
    json: str | None = field(
        default=None,
        metadata={
            "help": "Write everything the report prints as one JSON document: the strategy table and learning curves, "
            "the budget, the empty completions found, the API usage per run and model (--annotation_store) and the "
            "labelling summary (--labels). Schema: docs/cli.md.",
            "metavar": "FILE.json",
        },
    )
    diagnostics_plot: str | None = field(
        default=None,
        metadata={
            "help": "Write the selection diagnostics: per-prompt score distributions of the chosen (best selected) "
            "and rejected (worst selected) candidates and the diversity of the selections, AEPO against random "
            "selection at the same k, and the budget burn-down (annotations left as prompts are annotated in order).",
            "metavar": "FILE.png",
        },
    )


@dataclass
class StatsStrategyArguments:
    """Which strategies `aepo stats` compares, and how."""

    _argument_group_name = "strategies"

    strategies: list[str] = field(
        default_factory=lambda: [s for s in STRATEGIES if s not in ACTIVE_STRATEGIES and s not in POLICY_STRATEGIES],
        metadata={
            "help": f"Strategies to compare, among {', '.join(s for s in STRATEGIES if s not in POLICY_STRATEGIES)} "
            f"(the active ones — {', '.join(ACTIVE_STRATEGIES)} — are simulated with the scores column as annotator; "
            f"{', '.join(POLICY_STRATEGIES)} needs the policy being trained: `aepo train` only).",
            "choices": [s for s in STRATEGIES if s not in POLICY_STRATEGIES],
            "metavar": "STRATEGY",
        },
    )
    batch_size: int = field(default=256, metadata={"help": "Prompts per selection call."})
    device: str | None = field(
        default=None, metadata={"help": "Device for embedding and selection (default: cuda if available, else cpu)."}
    )


def build_parser(prog: str = "aepo stats") -> CommandParser:
    settings = aepo_settings_arguments(
        "StatsAEPOSettings",
        names=_SELECTION_FIELDS,
        overrides={
            "num_annotations": dict(
                type=list[int],
                default=[2, 4, 8],
                metadata={"metavar": "K"},
                help="The values of k to compare (annotations per prompt).",
            ),
            "diversity_weight": dict(
                type=list[float],
                default=[0.0, 0.5, 1.0, 2.0],
                metadata={"metavar": "LAMBDA"},
                help="The diversity weights λ of the 'aepo' strategy to compare (the paper ablates 0, 0.5, 1, 2).",
            ),
            "annotation_budget": dict(
                help="Report how many prompts this many annotations cover, per strategy and k "
                "(prompts are covered whole, in file order)."
            ),
            "annotation_store": dict(
                help="Report the tokens and dollars of the LLM API calls recorded in this annotation store, per run "
                "and model (completed calls, failed and unknown-outcome attempts)."
            ),
        },
    )
    return CommandParser(
        (StatsDataArguments, StatsStrategyArguments, settings), prog=prog, description=DESCRIPTION, epilog=EPILOG
    )


def main(argv: list[str]) -> int:
    args = parse_with_yaml(build_parser(), argv)
    if args.input is None and args.labels is None and args.annotation_store is None:
        raise InputError("pass --input (a pool dataset), --labels or --annotation_store (an annotation store), or both")
    report = {"schema_version": JSON_SCHEMA_VERSION, "input": args.input, "api_usage": None, "labels": None}
    if args.annotation_store is not None:
        report["api_usage"] = usage_summary(args.annotation_store)
        print(format_usage(report["api_usage"]))
    if args.labels is not None:
        from aepo_trainer.labelling.summary import format_labelling_summary, labelling_summary

        if not os.path.exists(args.labels):
            raise InputError(f"--labels {args.labels}: no such file")
        labelled = labelling_summary(args.labels)
        print(format_labelling_summary(labelled, args.labels))
        report["labels"] = {"store": args.labels, **_labels_record(labelled)}
    if args.input is None:
        if args.json:
            write_json(report, args.json)
        return EXIT_OK
    ks = sorted(set(args.num_annotations))
    if min(ks) < 2 or args.batch_size < 1 or any(w < 0 or not math.isfinite(w) for w in args.diversity_weight):
        raise InputError(
            "--num_annotations values must be >= 2, --diversity_weight values finite and >= 0, --batch_size >= 1"
        )
    import tempfile

    from .io import read_rows
    from .pool_stages import check_pools, pool_embeddings

    config = build_config(
        args, output_dir=tempfile.gettempdir(), num_annotations=ks[0], diversity_weight=args.diversity_weight[0]
    )  # each comparison sets its own k and λ
    rows = read_rows(args.input, split=args.split)
    if args.max_prompts is not None:
        rows = rows[: args.max_prompts]
    check_pools(rows, config, args.input, need_scores=False, paid=False)
    from aepo_trainer.data.empty_completions import EmptyCompletionReport

    empty = EmptyCompletionReport(config.empty_completions)  # as `aepo select` and the trainer treat them
    rows = empty.apply(rows, config, mark_positions=False)
    if empty.warning(args.input, config.completions_column):
        print(f"aepo stats: warning: {empty.warning(args.input, config.completions_column)}", file=sys.stderr)
    if not rows:
        raise InputError(f"{args.input}: every pool was skipped by --empty_completions drop (none left to compare)")
    has_scores = all(isinstance(r.get(config.scores_column), list) for r in rows)
    active = [s for s in args.strategies if s in ACTIVE_STRATEGIES]
    if active and not has_scores:
        raise InputError(
            f"--strategies {' '.join(active)}: these strategies learn from labels; `aepo stats` simulates them with "
            f"the {config.scores_column!r} column as the annotator, which {args.input} does not have in every row "
            "(run `aepo select` with your annotator instead)"
        )
    pool_sizes = [len(r[config.completions_column]) for r in rows]

    embeddings = pool_embeddings(rows, config, device=args.device)
    records = compute(rows, embeddings, config, args, ks, has_scores, pool_sizes)
    print(format_table(records, args.annotation_budget, len(rows), has_scores))
    for record in records:
        for q in record.get("learning_curve", []):
            if q["pairs_evaluated"]:
                print(
                    f"{record['strategy']} k={record['k']} batch {q['batch']}: trained on {q['labels_before']} labels, "
                    f"pairwise accuracy {q['pairwise_accuracy']:.3f}, Spearman {q['spearman']:.3f} on its new labels"
                )
    per_prompt = {(r["strategy"], r["k"]): r.pop("_per_prompt") for r in records}
    report.update(
        prompts=len(rows),
        pool_size={"min": min(pool_sizes), "max": max(pool_sizes)},
        annotation_budget=args.annotation_budget,
        has_scores=has_scores,
        k_left_out=[k for k in ks if k >= min(pool_sizes)],
        empty_completions={
            "rule": empty.rule,
            "empty": empty.empty,
            "pools_with_empty": empty.pools_with_empty,
            "first": [{"row": r, "index": j} for r, j in empty.named],
            "pools_skipped": empty.skipped,
        },
        strategies=records,
    )
    if args.json:
        write_json(report, args.json)
    if args.diagnostics_plot:
        from .diagnostics import plot_diagnostics

        plot_diagnostics(per_prompt, args.diagnostics_plot, args.input, len(rows), args.annotation_budget, has_scores)
        print(f"diagnostics plot written to {args.diagnostics_plot}", file=sys.stderr)
    if args.plot:
        from .stats_plots import plot  # lazy: matplotlib

        plot(records, args.plot, args.input, len(rows), max(pool_sizes), args.annotation_budget, has_scores)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return EXIT_OK


#: The version of the `--json` document (docs/cli.md, "aepo stats --json"); raised when a key changes meaning.
JSON_SCHEMA_VERSION = 1


def write_json(report: dict, path: str) -> None:
    """The `--json` document: standard JSON (a NaN, e.g. no pairwise accuracy yet, is written as null)."""

    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    with open(path, "w", encoding="utf-8") as f:
        json.dump(clean(report), f, indent=1, allow_nan=False)


def _labels_record(summary: dict | None) -> dict:
    """The labelling summary `--labels` prints, as JSON values (None: no labelling page ran on the store)."""
    if summary is None:
        return {"settings": None, "items": 0, "final": 0, "read_by_run": 0, "agreement": None}
    import dataclasses

    settings = summary["settings"]
    return {**summary, "settings": dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else settings}


def usage_summary(path: str) -> dict:
    """The API usage of an annotation store: `{"store", "runs": [per (run, model)], "total"}` (`total` is None when
    no call was recorded). Each entry: calls, failed, unknown, prompt_tokens, completion_tokens, cost (dollars)."""
    import os

    from aepo_trainer.storage.usage import summary

    if not os.path.exists(path):
        raise InputError(f"--annotation_store {path!r}: no such file")
    rows = summary(path)
    total = None
    if rows:
        names = ("calls", "failed", "unknown", "prompt_tokens", "completion_tokens")
        total = {k: sum(r[k] for r in rows) for k in names}
        total["cost"] = sum(r["cost"] for r in rows)
    return {"store": str(path), "runs": rows, "total": total}


def usage_report(path: str) -> str:
    """The API usage table of an annotation store: calls, tokens and dollars per (run, model), and the total."""
    return format_usage(usage_summary(path))


def format_usage(usage: dict) -> str:
    """The table of `usage_summary`."""
    path = usage["store"]
    if not usage["runs"]:
        return f"{path}: no API calls recorded"
    rows = usage["runs"] + [{"run_id": "total", "model": "", **usage["total"]}]
    header = ("run", "model", "calls", "failed", "unknown", "prompt tokens", "completion tokens", "cost ($)")
    cells = [
        (
            r["run_id"],
            r["model"],
            str(r["calls"]),
            str(r["failed"]),
            str(r["unknown"]),
            str(r["prompt_tokens"]),
            str(r["completion_tokens"]),
            f"{r['cost']:.6f}",
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]

    def line(c):
        return "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths)))

    lines = [f"API usage recorded in {path} (unknown = timed out / dropped: charged at its upper bound)", line(header)]
    lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines + [line(c) for c in cells])
