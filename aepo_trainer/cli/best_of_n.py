"""`aepo best-of-n`: self-rejection at inference (SELF-JUDGE) — sample N responses per prompt, let a judge pick one.

A thin loop over `aepo_trainer.self_judge.best_of_n`: the sampling flags and backends are `aepo generate`'s; the judge
is the sampling model itself by default (self-rejection, ideally a JSFT-trained model: `aepo jsft`), another causal LM
(`--judge_model`), a reward model (`--reward_model`), or an LLM behind an OpenAI-compatible API (`--api_judge`). Each
output row keeps the input columns and adds the N responses, the winner (`best`, `best_index`), the judge's scores and
its confidence.

Paid work is tracked as in `aepo select`: every judgment goes through `AnnotationService` into the annotation store
(default `<output>.annotations.sqlite`) before it is used, counted against `--annotation_budget` (judge annotations:
N per prompt) in the run's ledger; API calls (`--api_judge`, `--backend openai`) are metered in the same file's usage
ledger against `--annotation_cost_budget` (dollars). Resumable like `aepo generate`: finished prompts are appended to
the output (`.jsonl`) or to `<output>.partial.jsonl` as each batch is judged, and a rerun skips them; the prompts of an
unfinished batch are sampled again with the same per-prompt seeds and their stored judgments are reused for free.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass, field

from .args import CommandParser, aepo_settings_arguments, build_config, parse_with_yaml
from .errors import EXIT_BUDGET_EXHAUSTED, EXIT_OK, InputError
from .generate import generate_arguments, is_direct
from .sampling import check_prompts, check_sampling_args, make_generator, prompt_id

DESCRIPTION = "Sample N responses per prompt and return the one a judge picks (tournament), with its confidence."

EPILOG = """\
examples:
  aepo best-of-n --model ./my-jsft-model --input prompts.jsonl --output best.jsonl --num_completions 8
  aepo best-of-n --model Qwen/Qwen2.5-0.5B-Instruct --judge_model ./judge --input prompts.jsonl --output best.jsonl
  aepo best-of-n --model ./policy --reward_model OpenAssistant/reward-model-deberta-v3-large-v2 \\
      --input prompts.jsonl --output best.jsonl --annotation_budget 4000
  aepo best-of-n --model ./policy --api_judge --judge_model gpt-4o-mini --api_prices prices.yaml \\
      --annotation_cost_budget 5 --input prompts.jsonl --output best.jsonl

Output columns: the input's, plus <completions_column> (the N responses), best, best_index, judge_scores, confidence.
Resume: rerun the same command; finished prompts are kept and stored judgments are not paid again.
Exit codes: 0 ok, 2 bad input, 3 budget exhausted (the prompts judged so far are written; raise it and rerun).
"""


@dataclass
class BestOfNJudgeArguments:
    """Who picks the best of the N responses."""

    _argument_group_name = "judge"

    judge_model: str | None = field(
        default=None,
        metadata={
            "help": "Causal LM judging pairs (default: the sampling model itself: self-rejection); with --api_judge "
            "the judge's model name on the server."
        },
    )
    reward_model: str | None = field(
        default=None, metadata={"help": "Score with this sequence-classification reward model instead."}
    )
    api_judge: bool = field(
        default=False,
        metadata={
            "help": "Judge with --judge_model behind the OpenAI-compatible API at --judge_api_base (pairwise or "
            "rubric: --judge_mode); every call is metered in the store against --annotation_cost_budget."
        },
    )
    judge_batch_size: int = field(default=8, metadata={"help": "Judge prompts per forward pass."})
    run_id: str | None = field(
        default=None,
        metadata={
            "help": "Budget ledger in the store (default: derived from the output path, so rerunning the same "
            "command resumes the same budget)."
        },
    )


def build_parser(prog: str = "aepo best-of-n"):
    judge_settings = aepo_settings_arguments(
        "BestOfNJudgeSettings",
        names={
            "annotation_budget",
            "annotator_version",
            "judge_api_base",
            "judge_api_key_env",
            "judge_mode",
            "judge_max_tokens",
            "judge_parse_retries",
        },
        title="judge budget and API judge (AEPOConfig fields)",
        notes={
            "annotation_budget": "In `aepo best-of-n`: judge annotations (N per prompt); when it cannot pay for the "
            "next prompt, the prompts judged so far are written and the exit code is 3.",
        },
    )
    store_note = (
        "Here: the judgments and every API call's usage and response (a rerun pays nothing already there); default "
        "`<output>.annotations.sqlite`."
    )
    parser = CommandParser(
        (*generate_arguments(store_note), BestOfNJudgeArguments, judge_settings),
        prog=prog,
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    parser.set_defaults(num_completions=8)
    return parser


def main(argv: list[str]) -> int:
    from .io import read_rows

    args = parse_with_yaml(build_parser(), argv)
    check_sampling_args(args)
    if sum(map(bool, (args.judge_model and not args.api_judge, args.reward_model, args.api_judge))) > 1:
        raise InputError("pass one judge: --judge_model, --reward_model or --api_judge (with --judge_model)")
    if args.api_judge and not args.judge_model:
        raise InputError("--api_judge needs --judge_model: the judge's model name on the server")
    if args.judge_batch_size < 1:
        raise InputError(f"--judge_batch_size must be >= 1, got {args.judge_batch_size}")
    output = os.path.abspath(os.path.expanduser(args.output))
    args.annotation_store = args.annotation_store or f"{output}.annotations.sqlite"  # the sampler's ledger too
    run_id = args.run_id or f"aepo-best-of-n:{output}"
    rows = read_rows(args.input, split=args.split)
    if args.max_prompts is not None:
        rows = rows[: args.max_prompts]
    check_prompts(rows, args)
    config = build_config(  # AEPOConfig's checks of the budget and judge settings, before anything is loaded or paid
        args,
        output_dir=os.path.dirname(output),
        annotator="api_judge" if args.api_judge else "dataset_scores",
        judge_model=args.judge_model if args.api_judge else None,
        annotation_batch_size=args.judge_batch_size,
    )
    work_path = args.output if is_direct(args.output) else f"{args.output}.partial.jsonl"
    todo, finished = _unfinished(rows, args, work_path)
    if todo:
        generator = make_generator(args, ledger_run_id=run_id)  # one dollar ledger for sampling and judging
        service = _service(config, _judge(args, config, generator, run_id), run_id)
        code = _judge_batches(rows, todo, args, generator, service, work_path, finished)
    else:
        service, code = None, EXIT_OK
    if code != EXIT_OK:
        return code
    from .io import read_jsonl, write_rows

    if work_path != args.output:
        write_rows(read_jsonl(work_path), args.output)
        os.remove(work_path)
    print(
        f"wrote {len(rows)} best-of-{args.num_completions} responses to {args.output}"
        + (f" ({finished} finished by an earlier run)" if finished else "")
        + (f"; {_spend(service)}" if service is not None else ""),
        file=sys.stderr,
    )
    return EXIT_OK


def _unfinished(rows: list[dict], args, work_path: str) -> tuple[list[int], int]:
    """The rows still to do (indices), and how many an earlier run finished (in the work file, matched by prompt)."""
    from .io import read_jsonl, repair_jsonl_tail

    os.makedirs(os.path.dirname(os.path.abspath(work_path)) or ".", exist_ok=True)
    done = Counter()
    if os.path.exists(work_path):
        if repair_jsonl_tail(work_path):
            print(f"{work_path}: removed a truncated last line left by an interrupted run", file=sys.stderr)
        done.update(prompt_id(r.get(args.prompt_column)) for r in read_jsonl(work_path))
    todo = []
    for index, row in enumerate(rows):
        key = prompt_id(row[args.prompt_column])
        if done[key] > 0:
            done[key] -= 1
        else:
            todo.append(index)
    finished = len(rows) - len(todo)
    if finished:
        print(f"resuming: {finished} of {len(rows)} prompts already in {work_path}", file=sys.stderr)
    return todo, finished


def _judge_batches(rows, todo, args, generator, service, work_path: str, finished: int) -> int:
    """Sample, judge (through the store) and append each batch; exit code 3 when a budget stops the run."""
    from tqdm.auto import tqdm

    from aepo_trainer.annotation.base import AnnotationRequest, BudgetExhausted
    from aepo_trainer.generation import GenerationInputError, prompt_seed
    from aepo_trainer.self_judge.best_of_n import pick_best

    from .io import append_jsonl

    bar = tqdm(total=len(rows), initial=finished, unit="prompt", desc="best-of-n", dynamic_ncols=True)
    try:
        for start in range(0, len(todo), args.batch_size):
            batch = [rows[i] for i in todo[start : start + args.batch_size]]
            prompts = [r[args.prompt_column] for r in batch]
            try:
                pools = generator.generate(prompts, [prompt_seed(args.seed, p) for p in prompts])
            except GenerationInputError as error:
                raise InputError(str(error)) from None
            requests = [AnnotationRequest(p.prompt, list(p.completions), row=r) for p, r in zip(pools, batch)]
            try:
                outcome = service.annotate(requests)
            except BudgetExhausted as error:  # a cost budget (dollars): what was obtained is in the store
                return _stop(str(error), service, bar)
            judged = []
            for request, row, scores in zip(requests, batch, outcome.scores):
                if scores is None:  # skipped for budget, and so is everything after it
                    break
                result = pick_best(service.annotator, request.prompt, request.completions, row, scores=scores)
                judged.append(
                    {
                        **row,
                        args.completions_column: result.completions,
                        "best": result.best,
                        "best_index": result.index,
                        "judge_scores": result.scores,
                        "confidence": result.confidence,
                    }
                )
            append_jsonl(work_path, judged)  # the unit of resuming: the batch's finished prompts
            bar.update(len(judged))
            bar.set_postfix(paid=outcome.paid, reused=outcome.reused, refresh=False)
            if len(judged) < len(batch):
                return _stop(service.budget_message(len(todo) - start - len(judged)), service, bar)
    finally:
        bar.close()
    return EXIT_OK


def _stop(message: str, service, bar) -> int:
    bar.close()
    print(
        f"aepo best-of-n: {message} The prompts judged so far are kept; raise the budget and rerun the same command "
        f"to continue ({_spend(service)}).",
        file=sys.stderr,
    )
    return EXIT_BUDGET_EXHAUSTED


def _spend(service) -> str:
    """What the run's ledger holds: judge annotations paid (all runs of this run id) and, for API calls, dollars."""
    text = f"judge annotations paid {int(service.spent)} (run {service.run_id!r}, store {service.store.path})"
    ledger = getattr(getattr(service.annotator, "client", None), "ledger", None)
    if ledger is not None:
        text += f", API cost ${ledger.spent:.6f}"
    return text


def _service(config, judge, run_id: str):
    from aepo_trainer.annotation import AnnotationService

    return AnnotationService.from_config(config, judge, run_id=run_id)


def _judge(args, config, generator, run_id: str):
    from aepo_trainer.annotation import PairwiseJudgeAnnotator, RewardModelAnnotator

    if args.api_judge:
        from aepo_trainer.annotation import build_annotator
        from aepo_trainer.generation import ApiConfigError

        try:  # the server is probed now (free): a bad key, model or URL fails before anything is paid
            return build_annotator(config, run_id=run_id)
        except (ValueError, ApiConfigError) as error:
            raise InputError(str(error)) from None
    if args.reward_model:
        return RewardModelAnnotator(args.reward_model, device=args.device)
    if args.judge_model:
        return PairwiseJudgeAnnotator(args.judge_model, batch_size=args.judge_batch_size)
    model = getattr(generator, "model", None)  # self-rejection: judge with the weights already loaded
    if model is None:
        return PairwiseJudgeAnnotator(args.model_name_or_path, batch_size=args.judge_batch_size)
    return PairwiseJudgeAnnotator(
        model, tokenizer=generator.tokenizer, batch_size=args.judge_batch_size, name=args.model_name_or_path
    )
