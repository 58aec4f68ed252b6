"""The flags of the `aepo` commands are their dataclasses' fields, parsed by TRL's `TrlParser` (`cli/args.py`).

Covered: every flag of select / stats / generate / best-of-n / label is a dataclass field (and every field a flag);
every AEPO field of `AEPOConfig` is a flag of `aepo select` with `AEPOConfig`'s help, default and choices; the
command's notes are appended to the help; a YAML config of every flag round-trips to the same values, flags override
it, and bad YAML values, missing files and unknown flags exit with code 2. Fast: nothing is read, embedded or run.
"""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import yaml

from aepo_trainer.cli import best_of_n, generate, label, select, stats
from aepo_trainer.cli.args import aepo_fields
from aepo_trainer.cli.errors import InputError
from aepo_trainer.config import TRAINING_ONLY_FIELDS

COMMANDS = {"select": select, "stats": stats, "generate": generate, "best-of-n": best_of_n, "label": label}
REQUIRED = {
    "select": ["--input", "in.jsonl", "--output", "out.jsonl"],
    "stats": [],
    "generate": ["--model", "m", "--input", "in.jsonl", "--output", "out.jsonl"],
    "best-of-n": ["--model", "m", "--input", "in.jsonl", "--output", "out.jsonl"],
    "label": ["--store", "s.sqlite"],
}


def _type_name(action) -> str | None:
    return getattr(action.type, "__name__", None)  # TrlParser wraps `int | None` fields' types to accept "none"


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("command", list(COMMANDS))
def test_flags_are_exactly_the_dataclass_fields(command):
    parser = COMMANDS[command].build_parser()
    fields = {f.name for dtype in parser.dataclass_types for f in dataclasses.fields(dtype)}
    dests = {a.dest for a in parser._actions} - {"help", "config"}
    assert dests == fields
    for dtype in parser.dataclass_types:  # one --help group per dataclass
        assert dtype._argument_group_name in [g.title for g in parser._action_groups]
    for action in parser._actions:
        if action.dest in fields and "_" in action.dest:  # HfArgumentParser's dashed spelling of every flag
            assert f"--{action.dest}" in action.option_strings
            assert f"--{action.dest.replace('_', '-')}" in action.option_strings


def test_every_aepo_field_is_a_select_flag_with_its_help_default_and_choices():
    parser = select.build_parser()
    actions = {a.dest: a for a in parser._actions}
    expected = [f for f in aepo_fields() if f.name != "reward_scale" and f.name not in TRAINING_ONLY_FIELDS]
    assert len(expected) == 56  # the AEPO settings a CLI user can set (training-only ones excluded)
    for field in expected:
        action = actions[field.name]
        assert action.default == field.default, field.name
        assert _flat(action.help).startswith(_flat(field.metadata["help"]).replace("%", "%%")), field.name
        assert action.choices == (list(field.metadata["choices"]) if "choices" in field.metadata else None)
    assert "reward_scale" not in actions and not set(TRAINING_ONLY_FIELDS) & set(actions)
    assert actions["seed"].default == 42 and actions["seed"].type is int
    assert select.build_parser().parse(REQUIRED["select"] + ["--annotation_budget", "none"]).annotation_budget is None
    assert _flat(actions["annotation_budget"].help).endswith("rerun with a larger budget to continue.")  # the note
    assert actions["input"].required and actions["output"].required and not actions["split"].required
    assert {"--dry-run", "--dry_run"} <= set(actions["dry_run"].option_strings)


def test_stats_compares_several_k_and_lambda():
    args = stats.build_parser().parse(["--num_annotations", "3", "5", "--diversity-weight", "0", "0.25"])
    assert args.num_annotations == [3, 5] and args.diversity_weight == [0.0, 0.25]
    assert args.strategies == ["aepo", "random", "west_of_n", "representativeness", "kmedoids"]
    defaults = stats.build_parser().parse([])
    assert defaults.num_annotations == [2, 4, 8] and defaults.diversity_weight == [0.0, 0.5, 1.0, 2.0]


def test_aliases_and_optional_values():
    args = generate.build_parser().parse(REQUIRED["generate"] + ["--max_completion_length", "7", "--trust_remote_code"])
    assert args.model_name_or_path == "m" and args.max_new_tokens == 7 and args.trust_remote_code is True
    run = select.build_parser()
    assert run.parse(REQUIRED["select"]).wait is None
    assert run.parse(REQUIRED["select"] + ["--wait"]).wait == float("inf")
    assert run.parse(REQUIRED["select"] + ["--wait", "30"]).wait == 30.0
    assert run.parse(REQUIRED["select"] + ["--hub_private", "--dry-run"]).dry_run is True
    assert best_of_n.build_parser().parse(REQUIRED["best-of-n"]).num_completions == 8  # generate's default is 32
    assert generate.build_parser().parse(REQUIRED["generate"]).num_completions == 32


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_yaml_config_of_every_flag_round_trips(command, tmp_path):
    """Parse with non-default values on the command line, write them as YAML, parse the YAML alone: same values."""
    parser = COMMANDS[command].build_parser()
    argv = list(REQUIRED[command])
    booleans = 0
    for action in parser._actions:
        if action.dest in ("help", "config") or action.option_strings[0] in argv:
            continue
        if action.choices is not None:
            value = [str(c) for c in action.choices if c != action.default][-1:] or [str(action.default)]
            if action.nargs == "+":
                value = [str(c) for c in list(action.choices)[:2]]
        elif _type_name(action) == "int":
            value = ["3"] if action.nargs != "+" else ["3", "5"]
        elif _type_name(action) == "float":
            value = ["0.25"] if action.nargs != "+" else ["0.25", "4.0"]
        elif _type_name(action) == "string_to_bool":  # a boolean flag
            value = ["true"]
            booleans += 1
        else:
            value = [f"v-{action.dest}"]
        argv += [action.option_strings[0], *value]
    expected = vars(parser.parse(argv))
    assert sum(v is True for v in expected.values()) == booleans
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({k: v for k, v in expected.items() if k != "config"}))
    parsed = vars(COMMANDS[command].build_parser().parse(["--config", str(config)]))
    assert parsed == {**expected, "config": str(config)}
    first = next(
        a for a in parser._actions if _type_name(a) == "int" and a.nargs is None
    )  # a flag wins over the YAML value
    again = COMMANDS[command].build_parser().parse([f"--config={config}", first.option_strings[0], "11"])
    assert getattr(again, first.dest) == 11 and getattr(again, first.dest) != expected[first.dest]


@pytest.mark.parametrize(
    "text, message",
    [
        ("num_annotations: three\n", "num_annotations='three' is invalid (invalid literal for int()"),
        ("selection_strategy: greedy\n", "selection_strategy='greedy' is invalid: expected one of 'aepo'"),
        ("batch_size: [1, 2]\n", "batch_size takes a single value"),
        ("num_anotations: 3\n", "unknown key(s) 'num_anotations'"),
        ("- input\n", "must contain a YAML mapping"),
        ("input: [unclosed\n", "is not valid YAML"),
    ],
)
def test_bad_yaml_values_are_input_errors(tmp_path, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(InputError, match=None) as error:
        select.build_parser().parse(["--config", str(config), "--output", "o.jsonl", "--input", "i.jsonl"])
    assert message in str(error.value) and str(config) in str(error.value)
    assert InputError.exit_code == 2


def test_training_keys_in_yaml_are_ignored_and_env_is_exported(tmp_path, monkeypatch):
    monkeypatch.delenv("AEPO_ARGS_TEST", raising=False)
    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: 1.0e-6\nlora_r: 8\ninput: i.jsonl\nenv:\n  AEPO_ARGS_TEST: '1'\n")
    args = select.build_parser().parse(["--config", str(config), "--output", "o.jsonl"])
    assert args.input == "i.jsonl" and not hasattr(args, "learning_rate")
    import os

    assert os.environ["AEPO_ARGS_TEST"] == "1"


def test_usage_errors_exit_2_with_a_hint(capsys):
    from aepo_trainer.cli import main

    assert main(["select", "--input", "i", "--output", "o", "--frobnicate", "1"]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --frobnicate 1" in err and "run `aepo select --help`" in err
    assert main(["stats", "--batch_size", "many"]) == 2
    assert "argument --batch_size/--batch-size: invalid int value: 'many'" in capsys.readouterr().err
    assert main(["select", "--config", "/nonexistent/x.yaml", "--output", "o"]) == 2
    assert "config file '/nonexistent/x.yaml' does not exist" in capsys.readouterr().err
    assert main(["label", "--store", "s", "--config"]) == 2
    assert "argument --config: expected one argument" in capsys.readouterr().err


def test_help_keeps_the_examples_layout_and_shows_only_real_defaults(capsys):
    with pytest.raises(SystemExit):
        generate.build_parser().parse(["--help"])
    text = capsys.readouterr().out
    assert (
        "examples:\n  aepo generate --model Qwen/Qwen2.5-0.5B-Instruct --input prompts.jsonl --output pools.jsonl \\\n"
        in text
    )
    assert "(default: None)" not in text and "(default: 32)" in text
    assert "--num_completions, --num-completions NUM_COMPLETIONS" in text  # the value once, after both spellings
    assert isinstance(generate.build_parser(), argparse.ArgumentParser)
