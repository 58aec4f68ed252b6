"""The `aepo` command: `aepo generate`, `aepo select`, `aepo stats`, `aepo label`, `aepo train`.

Subcommand modules are imported only when their subcommand runs, so `aepo --help` does not import torch. Exit codes
are listed in `aepo_trainer.cli.errors` and in `aepo --help`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys

from aepo_trainer.errors import StorageWriteError, storage_error_of

from .errors import EXIT_BAD_INPUT, EXIT_ERROR, EXIT_INTERRUPTED, CLIError

COMMANDS = {
    "generate": "Sample N completions per prompt from a causal LM into a pool dataset (resumable).",
    "select": "Pools -> embed -> select k -> annotate -> pair: a prompt/chosen/rejected dataset (resumable).",
    "safer-instruct": "Safer-Instruct: preference pairs and pools from raw texts (reverse-sft, induce, filter, respond).",
    "stats": "Annotation cost, coverage and representativeness/diversity of each selection strategy; a plot.",
    "label": "Serve a web page where people label a human annotation queue (labellers, agreement, tokens).",
    "train": "Train a policy with AEPOTrainer from a YAML config, like `trl dpo --config` (TrlParser flags).",
    "best-of-n": "Self-rejection: sample N responses per prompt, a judge's tournament picks one (with its confidence).",
    "jsft": "Judge-augmented SFT (SELF-JUDGE): judgment examples in both orders + SFT on chosen, with TRL's SFTTrainer.",
}

EPILOG = """\
exit codes:
  0    success
  1    unexpected error (traceback printed)
  2    bad input: usage, missing/unreadable file, bad column or row, invalid setting; or the disk refused a
       write (full, read-only, no permission): free space and rerun the same command to resume (nothing is
       paid twice)
  3    annotation budget exhausted (select: the pairs annotated so far are written)
  4    annotations pending (select --annotator human: label the queue file, then rerun)
  130  interrupted: rerun the same command to resume (nothing annotated is paid twice)

Run `aepo <command> --help` for the flags of a command; `aepo --verbose <command> ...` logs at debug level and
prints the traceback of any error. Docs: docs/cli.md.
"""


def _top_parser() -> argparse.ArgumentParser:
    from aepo_trainer import __version__

    parser = argparse.ArgumentParser(
        prog="aepo",
        description="Annotation-Efficient Preference Optimization: build preference datasets from "
        "candidate pools while annotating only k of N candidates per prompt.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"aepo-trainer {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log at debug level; print the traceback of any error"
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>", title="commands")
    for name, summary in COMMANDS.items():
        sub.add_parser(name, help=summary, add_help=False)
    return parser


@contextlib.contextmanager
def tqdm_aware_logging(level: int = logging.INFO):
    """Log records of the package go through `tqdm.write` (tqdm's `logging_redirect_tqdm`), so a warning printed
    while a progress bar is drawn gets its own line instead of being glued to, or overwritten by, the bar."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    logger = logging.getLogger("aepo_trainer")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("aepo: %(levelname)s: %(message)s"))
    saved = (logger.level, logger.propagate, list(logger.handlers))
    logger.handlers = [handler]  # replaced by a tqdm handler with the same formatter just below
    logger.setLevel(level)
    logger.propagate = False
    try:
        with logging_redirect_tqdm(loggers=[logger]):
            yield
    finally:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers = saved[2]


def main(argv: list[str] | None = None) -> int:
    """Run the `aepo` command with `argv` (default: `sys.argv[1:]`); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = False
    while argv and argv[0] in ("-v", "--verbose") and len(argv) > 1:
        verbose, argv = True, argv[1:]
    if not argv or argv[0] not in COMMANDS:
        parser = _top_parser()
        if not argv:
            parser.print_help()
            return 0
        try:
            parser.parse_args(argv)  # --help / --version / an unknown command: argparse prints and exits
        except SystemExit as exit_:
            return int(exit_.code or 0)
        return 0
    command = argv[0]
    try:
        with tqdm_aware_logging(logging.DEBUG if verbose else logging.INFO):
            module = importlib.import_module(f"aepo_trainer.cli.{command.replace('-', '_')}")
            return module.main(argv[1:])
    except SystemExit as exit_:  # argparse: --help (0) and usage errors (2)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    except (CLIError, StorageWriteError) as error:  # a full disk, a read-only place: one paragraph, exit code 2
        _close_progress_bars()
        print(f"aepo {command}: error: {error}", file=sys.stderr)
        if verbose:
            _print_traceback()
        return error.exit_code
    except KeyboardInterrupt:
        print(f"\naepo {command}: interrupted; rerun the same command to resume.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `aepo stats ... | head`
        return 0
    except Exception as error:
        refused = storage_error_of(error)  # a write no writer wrapped (a library's own file): still no traceback
        if getattr(error, "is_user_error", False) or refused is not None:  # InputValidationError, AnnotationStoreError
            _close_progress_bars()
            print(f"aepo {command}: error: {refused or error}", file=sys.stderr)
            if verbose:
                _print_traceback()
            return EXIT_BAD_INPUT
        _print_traceback()
        return EXIT_ERROR


def _close_progress_bars() -> None:
    """End the bars an error interrupted, so that its message starts on a line of its own."""
    std = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(std, "tqdm", None), "_instances", ())):
        bar.close()


def _print_traceback() -> None:
    import traceback

    traceback.print_exc()
