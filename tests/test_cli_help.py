"""`--help` works for `aepo`, every subcommand and every `aepo safer-instruct` step: exit 0, the usage printed.

A help text with a bare `%` once crashed `aepo train --help` (argparse treats `%` as a format directive); this runs
every command's help in one process (the same `aepo_trainer.cli.main` the `aepo` script calls), so a new command or
flag whose help breaks argparse fails here.
"""

from __future__ import annotations

import dataclasses

import pytest

from aepo_trainer.choices import SYNTHESIS_STEPS
from aepo_trainer.cli import COMMANDS, main


def _help(capsys, argv: list[str]) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, (argv, captured.err[-2000:])
    assert len(captured.out.strip()) > 100, (argv, captured.out, captured.err[-2000:])
    return captured.out


def test_top_level_help(capsys):
    out = _help(capsys, ["--help"])
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_help_exits_zero(capsys, command):
    out = _help(capsys, [command, "--help"])
    assert "usage" in out.lower()


@pytest.mark.parametrize("step", list(SYNTHESIS_STEPS))
def test_every_safer_instruct_step_help_exits_zero(capsys, step):
    out = _help(capsys, ["safer-instruct", step, "--help"])
    assert "--work_dir" in out


def test_a_percent_sign_in_a_config_help_is_printed_literally(capsys):
    """The help texts keep their plain `%` (the dataclass field is not changed); `--help` prints it once."""
    from aepo_trainer.config import AEPOConfig

    assert "98% of selections" in AEPOConfig.__dataclass_fields__["embedding_backend"].metadata["help"]
    out = " ".join(_help(capsys, ["train", "--help"]).split())
    assert "98% of selections" in out and "%%" not in out  # transformers' pre-escaped "~20%%" is printed "~20%" too
    assert "~20% slower" in out


def test_the_parser_escapes_a_new_dataclass_help_with_percent(capsys):
    """Any dataclass parsed by the commands' parser class, not only AEPOConfig's fields."""
    from aepo_trainer.cli.args import LiteralHelpTrlParser

    @dataclasses.dataclass
    class Arguments:
        share: float = dataclasses.field(default=0.5, metadata={"help": "Keep 50% of rows (100% = all, 0%% = none)."})

    parser = LiteralHelpTrlParser((Arguments,), prog="demo")
    text = " ".join(parser.format_help().split())
    assert "Keep 50% of rows (100% = all, 0% = none)." in text
    assert Arguments.__dataclass_fields__["share"].metadata["help"] == "Keep 50% of rows (100% = all, 0%% = none)."
