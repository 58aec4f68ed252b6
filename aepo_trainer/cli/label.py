"""`aepo label`: serve the labelling page over a run's human queue and annotation store (docs/labelling.md).

A thin command over `aepo_trainer.labelling`: it checks the flags (a bind beyond 127.0.0.1 needs `--auth`), reads the
labellers' tokens, records the question in the store and runs the server in the foreground until Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from dataclasses import dataclass, field

from aepo_trainer.choices import LABEL_QUESTIONS
from aepo_trainer.labelling.security import ServerLimits

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
  aepo label --store s.sqlite --auth team.txt --public_url https://label.example.org/ --trusted_proxies 127.0.0.1
  aepo label --store s.sqlite --export labels_dataset/

Token file: one `name:token` or `name:token:reviewer` per line (or --auth env:VARIABLE with entries separated by
commas); re-read when it changes or on SIGHUP. A bind beyond 127.0.0.1 requires --auth. Tokens are never logged.
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
    allow_tie: bool = field(
        default=False,
        metadata={"help": "Offer 'all equally good': every candidate gets the middle of the scale (no pair)."},
    )
    allow_all_bad: bool = field(
        default=False, metadata={"help": "Offer 'all bad': every candidate gets the bottom of the scale."}
    )
    rationale: bool = field(
        default=False, metadata={"help": "Offer an optional free-text rationale, stored with the answer."}
    )
    require_review: bool = field(
        default=False,
        metadata={
            "help": "An item is final only once a reviewer (token file role `reviewer`) accepted or overrode it."
        },
    )
    shuffle_seed: int = field(
        default=0,
        metadata={
            "help": "Seed of the order candidates are shown in, drawn per labeller and per prompt (stored with each "
            "answer). -1: queue order for everybody."
        },
    )
    guidelines: str | None = field(
        default=None, metadata={"help": "A Markdown file shown to labellers at /guidelines (linked from the page)."}
    )
    gold_items: str | None = field(
        default=None,
        metadata={
            "help": 'Honeypot tasks with a known answer: JSONL lines {"prompt", "completions", "best": index}. Each '
            "labeller gets one after every --gold_every submissions; their accuracy shows in `aepo stats --labels`."
        },
    )
    gold_every: int = field(default=5, metadata={"help": "Real submissions between two gold tasks of a labeller."})


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
    public_url: str | None = field(
        default=None,
        metadata={
            "help": "The address labellers open behind a reverse proxy (e.g. https://label.example.org/): POSTs must "
            "come from this origin, scheme included. Default: the request's own scheme and Host."
        },
    )
    trusted_proxies: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated addresses of reverse proxies whose X-Forwarded-For/-Proto headers are believed "
            "(e.g. 127.0.0.1 for nginx on this machine). Default: none."
        },
    )


@dataclass
class LabelLimitArguments:
    """Limits of the server (docs/labelling-team.md); the defaults are `ServerLimits`' own."""

    _argument_group_name = "limits"

    max_body_bytes: int = field(
        default=ServerLimits.max_body_bytes, metadata={"help": "Largest request body; bigger: 413."}
    )
    max_json_depth: int = field(
        default=ServerLimits.max_json_depth, metadata={"help": "Deepest nesting of a posted JSON body; deeper: 400."}
    )
    max_number_chars: int = field(
        default=ServerLimits.max_number_chars, metadata={"help": "Longest number in a posted JSON body; longer: 400."}
    )
    max_rationale_chars: int = field(
        default=ServerLimits.max_rationale_chars, metadata={"help": "Longest rationale text."}
    )
    login_attempts: int = field(
        default=ServerLimits.login_attempts,
        metadata={"help": "Failed sign-ins per client address within --login_window_seconds; then 429."},
    )
    login_window_seconds: float = field(
        default=ServerLimits.login_window_seconds, metadata={"help": "The window of --login_attempts."}
    )
    session_hours: float = field(default=ServerLimits.session_hours, metadata={"help": "How long a sign-in lasts."})


@dataclass
class LabelExportArguments:
    """Export instead of serving."""

    _argument_group_name = "export"

    export: str | None = field(
        default=None,
        metadata={
            "help": "Write the labels, labellers, order and agreement to this folder as a Hugging Face dataset "
            "(parquet + README dataset card) and exit; the page is not started.",
            "metavar": "DIR",
        },
    )
    push_to_hub: str | None = field(
        default=None, metadata={"help": "With --export: also upload the folder to this Hub dataset repository."}
    )


def build_parser(prog: str = "aepo label") -> CommandParser:
    return CommandParser(
        (LabelDataArguments, LabelQuestionArguments, LabelAccessArguments, LabelLimitArguments, LabelExportArguments),
        prog=prog,
        description=DESCRIPTION,
        epilog=EPILOG,
    )


def main(argv: list[str]) -> int:
    args = parse_with_yaml(build_parser(), argv)
    from aepo_trainer.labelling import (
        LabellerTokens,
        LabellingServer,
        LabellingSettings,
        ServerLimits,
        is_loopback,
        load_tokens,
    )

    if args.export is not None:
        return export(args)
    try:
        settings = LabellingSettings(
            args.question,
            args.scale_min,
            args.scale_max,
            args.labels_per_item,
            allow_tie=args.allow_tie,
            allow_all_bad=args.allow_all_bad,
            rationale=args.rationale,
            require_review=args.require_review,
            shuffle_seed=None if args.shuffle_seed == -1 else args.shuffle_seed,
        )
        limits = ServerLimits(
            max_body_bytes=args.max_body_bytes,
            max_json_depth=args.max_json_depth,
            max_number_chars=args.max_number_chars,
            max_rationale_chars=args.max_rationale_chars,
            login_attempts=args.login_attempts,
            login_window_seconds=args.login_window_seconds,
            session_hours=args.session_hours,
        )
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
    if args.public_url is not None and args.auth is None:
        raise InputError("--public_url puts the page behind a proxy others can reach: pass --auth (labellers' tokens)")
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
            loopback_only=loopback and tokens is None and args.public_url is None,
            limits=limits,
            public_url=args.public_url,
            guidelines=args.guidelines,
            gold_items=args.gold_items,
            gold_every=args.gold_every,
        )
        server = LabellingServer(app, args.host, args.port, trusted_proxies=args.trusted_proxies)
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
    if tokens is not None and tokens.source is not None and hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: app.state.context.sessions.revoke(tokens.refresh(force=True)))
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # uvicorn finished the requests in flight, then re-raised Ctrl-C: the normal way out
        pass
    print("aepo label: stopped; every answer given is saved in the store.", file=sys.stderr)
    return EXIT_OK


def export(args) -> int:
    """`aepo label --export DIR`: the store's labels as a Hugging Face dataset folder with a card."""
    from aepo_trainer.labelling.app import default_queue
    from aepo_trainer.labelling.export import export_labels

    if not os.path.exists(args.store):
        raise InputError(f"--store {args.store}: no such file")
    queue = args.queue or str(default_queue(args.store))
    try:
        out = export_labels(args.store, queue, args.export, labels_path=args.labels, push_to_hub=args.push_to_hub)
    except ValueError as error:
        raise InputError(str(error)) from None
    print(f"aepo label: wrote the labels to {out} (load with datasets.load_dataset({str(out)!r}, 'answers'))")
    return EXIT_OK
