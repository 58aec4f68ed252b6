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

import copy
import json
import math
import os
import sys
from dataclasses import dataclass, field

from aepo_trainer.choices import ACTIVE_STRATEGIES, POLICY_STRATEGIES
from aepo_trainer.choices import SELECTION_STRATEGIES as STRATEGIES

from .args import CommandParser, aepo_settings_arguments, build_config, parse_with_yaml
from .errors import EXIT_OK, InputError

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


def _variants(args, ks, pool_sizes):
    """(label, strategy, λ, k) for every comparison; West-of-N once (it annotates the whole pool)."""
    n_min = min(pool_sizes)
    skipped = [k for k in ks if k >= n_min]
    if skipped:
        print(
            f"k = {', '.join(map(str, skipped))} left out: not smaller than the smallest pool (N = {n_min}); "
            "selecting the whole pool is west_of_n",
            file=sys.stderr,
        )
    for strategy in args.strategies:
        if strategy == "west_of_n":
            yield "west_of_n", strategy, 0.0, None
            continue
        for k in ks:
            if k >= n_min:
                continue
            if strategy == "aepo":
                for weight in args.diversity_weight:
                    yield f"aepo λ={weight:g}", strategy, weight, k
            else:
                yield strategy, strategy, 0.0, k


def compute(rows, embeddings, config, args, ks, has_scores, pool_sizes) -> list[dict]:
    from tqdm.auto import tqdm

    from aepo_trainer.reduction.reducer import PoolReducer

    from .pool_stages import batch_inputs, prompts_covered

    variants = list(_variants(args, ks, pool_sizes))
    if not variants:
        raise InputError(
            f"no strategy/k to compare: no k in {ks} is smaller than the smallest pool (N = {min(pool_sizes)})"
        )
    records = []
    bar = tqdm(total=len(variants) * len(rows), unit="prompt", desc="selecting", dynamic_ncols=True)
    for label, strategy, weight, k in variants:
        variant = copy.copy(config)  # the same settings object `aepo select` builds, one strategy at a time
        variant.selection_strategy = strategy
        variant.diversity_weight = weight
        variant.num_annotations = k if k is not None else 2
        reducer = PoolReducer(variant, service=None, device=args.device)
        size = variant.active_batch_size if reducer.active is not None else args.batch_size
        subsets, rep, div = [], [], []
        for start in range(0, len(rows), size):
            batch_rows, tensor, mask = batch_inputs(rows, embeddings, start, start + size, config.embeddings_column)
            selected = reducer.select(batch_rows, tensor, mask)
            selection, batch_subsets, keys = selected.selection, selected.subsets, selected.keys
            if reducer.active is not None:  # the scores column plays the annotator
                labels = [[row[config.scores_column][i] for i in sub] for row, sub in zip(batch_rows, batch_subsets)]
                reducer.active.observe(batch_rows, tensor, mask, keys, batch_subsets, labels)
            subsets.extend(batch_subsets)
            rep.extend(selection.representativeness.float().cpu().tolist())
            div.extend(selection.diversity.float().cpu().tolist())
            bar.update(len(batch_rows))
        costs = [len(s) for s in subsets]
        record = {
            "strategy": label,
            "k": k if k is not None else "N",
            "annotations": sum(costs),
            "representativeness": _mean(rep),
            "diversity": _mean(div),
            "_per_prompt": {"diversity": div, "costs": costs},  # for --diagnostics_plot; not in the table
        }
        if args.annotation_budget is not None:
            record["prompts_covered"] = prompts_covered(costs, args.annotation_budget)
        if has_scores:
            best, worst = [], []
            for row, subset in zip(rows, subsets):
                values = [row[config.scores_column][i] for i in subset]
                values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
                if len(values) >= 1:
                    best.append(max(values))
                    worst.append(min(values))
            record.update(best=_mean(best), worst=_mean(worst), gap=_mean([b - w for b, w in zip(best, worst)]))
            record["_per_prompt"].update(best=best, worst=worst)
        if reducer.active is not None:
            curve = [q.to_dict() for q in reducer.active.history]
            pairs = sum(q["pairs_evaluated"] for q in curve)
            record["pairwise_accuracy"] = (
                sum(q["pairwise_accuracy"] * q["pairs_evaluated"] for q in curve if q["pairs_evaluated"]) / pairs
                if pairs
                else float("nan")
            )
            record["learning_curve"] = curve
        records.append(record)
    bar.close()
    return records


def _mean(values) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else float("nan")


def format_table(records: list[dict], budget, prompts: int, has_scores: bool) -> str:
    columns = [("strategy", "strategy", "{}"), ("k", "k", "{}"), ("annotations", "annotations", "{}")]
    if budget is not None:
        columns.append(("prompts_covered", f"covered/{prompts} (budget {budget})", "{}"))
    columns += [("representativeness", "representativeness", "{:.4f}"), ("diversity", "diversity", "{:.4f}")]
    if has_scores:
        columns += [("best", "best score", "{:.3f}"), ("worst", "worst score", "{:.3f}"), ("gap", "gap", "{:.3f}")]
    if any("pairwise_accuracy" in r for r in records):
        columns.append(("pairwise_accuracy", "pairwise acc.", "{:.3f}"))
    cells = [[fmt.format(r.get(key, float("nan"))) if key in r else "–" for key, _, fmt in columns] for r in records]
    widths = [max(len(title), *(len(c[i]) for c in cells)) for i, (_, title, _) in enumerate(columns)]
    lines = [
        "  ".join(
            title.ljust(w) if i == 0 else title.rjust(w) for i, ((_, title, _), w) in enumerate(zip(columns, widths))
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for c in cells:
        lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths))))
    return "\n".join(lines)


def plot(records, path, source, prompts, n_max, budget, has_scores) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [r for r in records if r.get("learning_curve")]
    panels = (3 if has_scores else 2) + bool(curves)
    fig, axes = plt.subplots(1, panels, figsize=(5.6 * panels, 5.6), constrained_layout=True)
    labels = list(dict.fromkeys(r["strategy"] for r in records if r["k"] != "N"))
    colors = {label: plt.cm.tab10(i % 10) for i, label in enumerate(labels)}
    west = next((r for r in records if r["k"] == "N"), None)

    # 1. cost: annotations needed (or prompts covered by the budget) against k
    ax = axes[0]
    key = "prompts_covered" if budget is not None else "annotations"
    by_k = {}
    for r in records:
        if r["k"] != "N":
            by_k[r["k"]] = r[key]
    ks = sorted(by_k)
    ax.plot(ks, [by_k[k] for k in ks], "o-", color="tab:blue", label="select k of N (any strategy)")
    if west is not None:
        ax.axhline(west[key], color="black", linestyle="--", label=f"West-of-N (annotate all N ≤ {n_max})")
    ax.set_xlabel("k = annotations per prompt")
    ax.set_xticks(ks)
    if budget is not None:
        ax.set_ylabel(f"prompts covered (of {prompts})")
        ax.set_title(f"Prompts a budget of {budget} annotations covers")
    else:
        ax.set_ylabel("annotations needed for the whole file")
        ax.set_title(f"Annotation cost ({prompts} prompts)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)

    # 2. the trade-off the AEPO objective controls
    ax = axes[1]
    markers = "osD^v<>p*h"
    for i, k in enumerate(ks):
        for r in records:
            if r["k"] == k:
                baseline = not r["strategy"].startswith("aepo")  # hollow: stays visible over an equal aepo point
                ax.scatter(
                    r["diversity"],
                    r["representativeness"],
                    marker=markers[i % len(markers)],
                    s=90 if baseline else 50,
                    linewidth=1.6 if baseline else 0.4,
                    facecolor="none" if baseline else colors[r["strategy"]],
                    edgecolor=colors[r["strategy"]] if baseline else "black",
                )
    if west is not None:
        ax.scatter(
            west["diversity"],
            west["representativeness"],
            color="black",
            marker="X",
            s=70,
            label="west_of_n (whole pool)",
        )
    for label in labels:
        baseline = not label.startswith("aepo")
        ax.scatter(
            [],
            [],
            marker="s",
            facecolor="none" if baseline else colors[label],
            edgecolor=colors[label],
            linewidth=1.6 if baseline else 0.4,
            label=label,
        )
    for i, k in enumerate(ks):
        ax.scatter([], [], color="white", edgecolor="black", marker=markers[i % len(markers)], label=f"k = {k}")
    ax.set_xlabel("mean diversity of the selection (1 − mean pairwise cosine)")
    ax.set_ylabel("mean representativeness (mean cosine to the pool)")
    ax.set_title("Selections: representativeness vs diversity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.14))  # below: never over a point

    # 3. what the annotator would see: score gap between the best and worst selected candidate
    if has_scores:
        ax = axes[2]
        for label in labels:
            points = sorted((r["k"], r["gap"]) for r in records if r["strategy"] == label)
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                "o-" if label.startswith("aepo") else "s--",
                color=colors[label],
                label=label,
                mfc="none" if not label.startswith("aepo") else None,
            )
        if west is not None:
            ax.axhline(west["gap"], color="black", linestyle="--", label="west_of_n (best − worst of pool)")
        ax.set_xlabel("k = annotations per prompt")
        ax.set_xticks(ks)
        ax.set_ylabel("mean score gap: best − worst selected")
        ax.set_title("Preference signal of the pairs (scores column)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    # 4. active strategies: the surrogate's accuracy on each new batch before it saw the batch's labels
    if curves:
        ax = axes[-1]
        for r in curves:
            points = [(q["labels_before"], q["pairwise_accuracy"]) for q in r["learning_curve"] if q["pairs_evaluated"]]
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=f"{r['strategy']} (k = {r['k']})")
        ax.axhline(0.5, color="gray", linestyle=":", label="chance")
        ax.set_xlabel("labels the surrogate was fitted on")
        ax.set_ylabel("pairwise accuracy on the next batch's labels")
        ax.set_title("Learning curve of the reward surrogate")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"aepo stats — {source} ({prompts} prompts, N ≤ {n_max})", fontsize=11)
    fig.savefig(path, dpi=120)
    plt.close(fig)
