"""`aepo label`: serve the labelling page over a run's human queue and annotation store (docs/labelling.md).

A thin command over `aepo_trainer.labelling`: it checks the flags (a bind beyond 127.0.0.1 needs `--auth`), reads the
labellers' tokens, records the question in the store and runs the server in the foreground until Ctrl-C.
"""

from __future__ import annotations

import os
import sys
import textwrap
from dataclasses import dataclass, field

from aepo_trainer.choices import LABEL_QUESTIONS

from .args import CommandParser, parse_with_yaml
from .errors import EXIT_OK, InputError

DESCRIPTION = textwrap.fill(
    "Serve a web page where people label the pending items of a human annotation queue: one prompt at a time with "
    "its selected candidates side by side. Every answer is committed to the run's annotation store before the next "
    "item shows; the run (or `aepo select --annotator human`) reads the labels on its next start, or at once with "
    "--wait / annotation_wait.",
    width=100,
)

EPILOG = """\
examples:
  aepo label --store pairs.jsonl.annotations.sqlite      # queue: pairs.jsonl.annotation_queue.jsonl
  aepo label --store out/annotations.sqlite --queue out/annotation_queue.jsonl --question ranking
  aepo label --store s.sqlite --host 0.0.0.0 --auth labellers.txt --labels_per_item 2

Token file: one `name:token` per line (or --auth env:VARIABLE with `name:token` entries separated by commas).
A bind beyond 127.0.0.1 requires --auth. Tokens are never logged.
"""


@dataclass(kw_only=True)
class LabelDataArguments:
    """The run whose queue is labelled."""

    _argument_group_name = "data"

    store: str = field(metadata={"help": "The run's annotation store (SQLite file)."})
    queue: str | None = field(
        default=None,
        metadata={
            "help": "The run's queue file (.jsonl/.csv). Default: the one next to the store "
            "(`<out>.annotation_queue.jsonl` for `aepo select`, `annotation_queue.jsonl` for a training run)."
        },
    )
    labels: str | None = field(default=None, metadata={"help": "The run's labels file, if not `<queue>.labels.jsonl`."})


@dataclass
class LabelQuestionArguments:
    """What the labellers are asked."""

    _argument_group_name = "question"

    question: str = field(
        default="score",
        metadata={
            "help": "score: a 1-10 (--scale_min..--scale_max) score per candidate; ranking: order all candidates; "
            "best_worst: pick the best and the worst. Rankings become Borda points (best of k: k-1, worst: 0).",
            "choices": list(LABEL_QUESTIONS),
        },
    )
    scale_min: int = field(default=1, metadata={"help": "Lowest score of --question score."})
    scale_max: int = field(default=10, metadata={"help": "Highest score of --question score."})
    instructions: str | None = field(
        default=None, metadata={"help": "The question shown above each prompt (default: one per --question)."}
    )
    labels_per_item: int = field(
        default=1,
        metadata={"help": "How many different labellers answer each item; its score is the mean of theirs."},
    )


@dataclass
class LabelAccessArguments:
    """Who can reach the page."""

    _argument_group_name = "access"

    host: str = field(default="127.0.0.1", metadata={"help": "Address to bind; beyond 127.0.0.1 --auth is required."})
    port: int = field(default=7860, metadata={"help": "Port to bind (0: any free port)."})
    auth: str | None = field(
        default=None,
        metadata={
            "help": "Labellers and their tokens: a file of `name:token` lines, or env:VARIABLE. Without it the page "
            "has one labeller (--labeller) and only binds to a loopback address.",
            "metavar": "FILE|env:VAR",
        },
    )
    labeller: str = field(default="local", metadata={"help": "The labeller's name when there is no --auth."})
    lease_minutes: float = field(
        default=10.0, metadata={"help": "How long a task shown to one labeller is kept from the others."}
    )


def build_parser(prog: str = "aepo label") -> CommandParser:
    return CommandParser(
        (LabelDataArguments, LabelQuestionArguments, LabelAccessArguments),
        prog=prog,
        description=DESCRIPTION,
        epilog=EPILOG,
    )


def main(argv: list[str]) -> int:
    args = parse_with_yaml(build_parser(), argv)
    from aepo_trainer.labelling import LabellerTokens, LabellingServer, LabellingSettings, is_loopback, load_tokens

    try:
        settings = LabellingSettings(args.question, args.scale_min, args.scale_max, args.labels_per_item)
    except ValueError as error:
        raise InputError(str(error)) from None
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be in 0..65535, got {args.port}")
    if not args.lease_minutes > 0:
        raise InputError(f"--lease_minutes must be > 0, got {args.lease_minutes}")
    loopback = is_loopback(args.host)
    if not loopback and args.auth is None:
        raise InputError(
            f"--host {args.host} makes the page reachable from other machines: pass --auth (labellers' tokens) too"
        )
    tokens: LabellerTokens | None = None
    if args.auth is not None:
        try:
            tokens = load_tokens(args.auth)
        except ValueError as error:
            raise InputError(str(error)) from None
    try:
        from aepo_trainer.labelling.app import create_app, default_queue
    except ImportError as error:
        raise InputError(f"the labelling page needs `pip install aepo-trainer[label]` ({error})") from None
    if not os.path.exists(args.store):
        raise InputError(f"--store {args.store}: no such file (run the training or `aepo select` first)")
    queue = args.queue or str(default_queue(args.store))
    if not os.path.exists(queue):
        print(
            f"aepo label: {queue} does not exist yet; the page shows its items once a run queues them.", file=sys.stderr
        )
    try:
        app = create_app(
            args.store,
            queue,
            args.labels,
            settings=settings,
            tokens=tokens,
            labeller=args.labeller,
            instructions=args.instructions,
            lease_seconds=args.lease_minutes * 60,
            loopback_only=loopback and tokens is None,
        )
        server = LabellingServer(app, args.host, args.port)
    except OSError as error:
        raise InputError(f"cannot listen on {args.host}:{args.port} ({error.strerror or error})") from None
    except ValueError as error:
        raise InputError(str(error)) from None
    who = f"labellers: {', '.join(tokens.names)}" if tokens else f"labeller: {args.labeller}, no sign-in"
    progress = app.state.view.progress(args.labeller)
    print(
        f"aepo label: {progress.pending} of {progress.items} item(s) of {queue} to label, on {server.url} ({who}, "
        f"question: {settings.question}, {settings.labels_per_item} label(s) per item). Ctrl-C stops it; every "
        "answer is already saved.",
        file=sys.stderr,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # uvicorn finished the requests in flight, then re-raised Ctrl-C: the normal way out
        pass
    print("aepo label: stopped; every answer given is saved in the store.", file=sys.stderr)
    return EXIT_OK
