"""`aepo best-of-n`: self-rejection at inference (SELF-JUDGE) — sample N responses per prompt, let a judge pick one.

A thin loop over `aepo_trainer.self_judge.best_of_n`: the sampling flags and backends are `aepo generate`'s; the judge
is the sampling model itself by default (self-rejection, ideally a JSFT-trained model: `aepo jsft`), another causal LM
(`--judge_model`), or a reward model (`--reward_model`). Each output row keeps the input columns and adds the N
responses, the winner (`best`, `best_index`), the judge's scores and its confidence.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from .args import CommandParser, parse_with_yaml
from .errors import EXIT_OK, InputError
from .generate import generate_arguments
from .sampling import check_prompts, check_sampling_args, make_generator

DESCRIPTION = "Sample N responses per prompt and return the one a judge picks (tournament), with its confidence."

EPILOG = """\
examples:
  aepo best-of-n --model ./my-jsft-model --input prompts.jsonl --output best.jsonl --num_completions 8
  aepo best-of-n --model Qwen/Qwen2.5-0.5B-Instruct --judge_model ./judge --input prompts.jsonl --output best.jsonl
  aepo best-of-n --model ./policy --reward_model OpenAssistant/reward-model-deberta-v3-large-v2 \\
      --input prompts.jsonl --output best.jsonl

Output columns: the input's, plus <completions_column> (the N responses), best, best_index, judge_scores, confidence.
"""


@dataclass
class BestOfNJudgeArguments:
    """Who picks the best of the N responses."""

    _argument_group_name = "judge"

    judge_model: str | None = field(
        default=None,
        metadata={"help": "Causal LM judging pairs (default: the sampling model itself: self-rejection)."},
    )
    reward_model: str | None = field(
        default=None, metadata={"help": "Score with this sequence-classification reward model instead."}
    )
    judge_batch_size: int = field(default=8, metadata={"help": "Judge prompts per forward pass."})


def build_parser(prog: str = "aepo best-of-n"):
    parser = CommandParser(
        (*generate_arguments(), BestOfNJudgeArguments), prog=prog, description=DESCRIPTION, epilog=EPILOG
    )
    parser.set_defaults(num_completions=8)
    return parser


def main(argv: list[str]) -> int:
    from .io import read_rows, write_rows

    args = parse_with_yaml(build_parser(), argv)
    check_sampling_args(args)
    if args.judge_model and args.reward_model:
        raise InputError("pass --judge_model or --reward_model, not both")
    rows = read_rows(args.input, split=args.split)
    if args.max_prompts is not None:
        rows = rows[: args.max_prompts]
    check_prompts(rows, args)

    from tqdm.auto import tqdm

    from aepo_trainer.generation import GenerationInputError
    from aepo_trainer.self_judge.best_of_n import best_of_n

    generator = make_generator(args)
    judge = _judge(args, generator)
    out = []
    for start in tqdm(range(0, len(rows), args.batch_size), desc="best-of-n", unit="batch", dynamic_ncols=True):
        batch = rows[start : start + args.batch_size]
        try:
            results = best_of_n([r[args.prompt_column] for r in batch], generator, judge, seed=args.seed, rows=batch)
        except GenerationInputError as error:
            raise InputError(str(error)) from None
        for row, result in zip(batch, results):
            out.append(
                {
                    **row,
                    args.completions_column: result.completions,
                    "best": result.best,
                    "best_index": result.index,
                    "judge_scores": result.scores,
                    "confidence": result.confidence,
                }
            )
    write_rows(out, args.output)
    print(f"wrote {len(out)} best-of-{args.num_completions} responses to {args.output}", file=sys.stderr)
    return EXIT_OK


def _judge(args, generator):
    from aepo_trainer.annotation import PairwiseJudgeAnnotator, RewardModelAnnotator

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
