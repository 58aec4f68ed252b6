"""Flags built from `AEPOConfig` (the single source of truth), YAML config files, and the config the pipeline needs.

Every AEPO-specific dataclass field of `AEPOConfig` (those that `DPOConfig` does not have) becomes a flag of the same
name, type, default, help (`metadata["help"]`) and choices (`metadata["choices"]`); `--seed` is added from
`DPOConfig`. Training arguments are not exposed: the CLI never trains.

`--config file.yaml` works like TRL's CLI: its keys (flag names) become the parser's defaults, flags given on the
command line override them, and an `env:` mapping is exported to the environment. Keys that belong to TRL's own
training configs (`AEPOConfig`/`DPOConfig`, `ScriptArguments`, `ModelConfig`) are ignored, so one YAML file can drive both
`aepo select` and training; any other unknown key is an error (it is most likely a typo).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import warnings

from .errors import InputError

CONFIG_FLAG = "--config"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows the default after each optional flag's help and keeps the hand-wrapped epilog/description layout."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.required or action.default in (None, argparse.SUPPRESS) or action.nargs == 0 or "%(default)" in text:
            return text
        return text + " (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with exit code 2 for every usage error (argparse's own convention) and a one-line hint."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n(run `{self.prog} --help` for every flag)\n")


def aepo_fields() -> list[dataclasses.Field]:
    """The dataclass fields `AEPOConfig` adds to `DPOConfig`, in declaration order."""
    from trl import DPOConfig

    from aepo_trainer.config import AEPOConfig

    inherited = {f.name for f in dataclasses.fields(DPOConfig)}
    return [f for f in dataclasses.fields(AEPOConfig) if f.name not in inherited and f.init]


def _optional(type_name: str) -> bool:
    return "None" in type_name or "Optional" in type_name


def _parse_type(type_name: str, optional: bool):
    """An argparse `type` for a dataclass annotation string ('int', 'float | None', ...)."""
    if "bool" in type_name:
        base = _str_to_bool
    elif "int" in type_name:
        base = int
    elif "float" in type_name:
        base = float
    else:
        base = str
    if not optional:
        return base

    def parse(text: str):
        return None if text.strip().lower() in ("none", "null", "") else base(text)

    parse.__name__ = base.__name__  # argparse prints it in "invalid int value" messages
    return parse


def _str_to_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {text!r}")


def add_config_flags(
    parser: argparse.ArgumentParser,
    names=None,
    *,
    exclude=(),
    title="AEPO settings (AEPOConfig fields)",
    overrides: dict | None = None,
    notes: dict | None = None,
) -> None:
    """Add one flag per AEPO field of `AEPOConfig` (those in `names`, default all, minus `exclude`) and `--seed`.

    `overrides` maps a field name to extra `add_argument` keywords (e.g. `nargs="+"` for `aepo stats`); `notes` maps
    a field name to a sentence appended to its help (what the field means for this command).
    """
    from trl import DPOConfig

    from aepo_trainer.config import TRAINING_ONLY_FIELDS

    overrides, notes = overrides or {}, notes or {}
    group = parser.add_argument_group(title)
    for f in aepo_fields():
        if (names is not None and f.name not in names) or f.name in exclude:
            continue
        if names is None and f.name in TRAINING_ONLY_FIELDS:  # on-policy generation: the trainer's, not a CLI's
            continue
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        optional = _optional(type_name)
        kwargs = dict(
            type=_parse_type(type_name, optional),
            default=f.default,
            help=" ".join((f.metadata.get("help", "") + " " + notes.get(f.name, "")).split()).replace("%", "%%"),
            metavar=f.name.upper(),
        )
        if "choices" in f.metadata:
            kwargs["choices"] = list(f.metadata["choices"])
            kwargs["metavar"] = "{" + ",".join(map(str, f.metadata["choices"])) + "}"
        kwargs.update(overrides.get(f.name, {}))
        group.add_argument(f"--{f.name}", **kwargs)
    if names is None or "seed" in names:
        seed = next(f for f in dataclasses.fields(DPOConfig) if f.name == "seed")
        group.add_argument(
            "--seed",
            type=int,
            default=seed.default,
            help="Seed of the run; also the selection seed unless `--selection_seed` is given.",
        )


def add_yaml_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        CONFIG_FLAG,
        metavar="FILE.yaml",
        default=None,
        help="YAML file whose keys (the flag names, without dashes) set this command's defaults, "
        "like TRL's `--config`; flags on the command line override it. An `env:` mapping is "
        "exported. Keys of TRL's training configs are ignored.",
    )


def _trl_training_keys() -> set[str]:
    import trl

    from aepo_trainer.config import AEPOConfig

    keys = set()
    for cls in (AEPOConfig, trl.ScriptArguments, trl.ModelConfig):
        keys.update(f.name for f in dataclasses.fields(cls))
    return keys


def parse_with_yaml(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """`parser.parse_args(argv)`, with the defaults first taken from the YAML file named by `--config`, if any."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument(CONFIG_FLAG, default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        apply_yaml_defaults(parser, known.config)
    return parser.parse_args(argv)


def apply_yaml_defaults(parser: argparse.ArgumentParser, path: str) -> None:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise InputError(f"config file {path!r} does not exist") from None
    except yaml.YAMLError as error:
        raise InputError(f"config file {path!r} is not valid YAML: {error}") from None
    if data is None:
        return
    if not isinstance(data, dict):
        raise InputError(
            f"config file {path!r} must hold a YAML mapping of flag names to values, not {type(data).__name__}"
        )
    env = data.pop("env", None) or {}
    if not isinstance(env, dict):
        raise InputError(f"config file {path!r}: `env` must be a mapping of variable names to values")
    for name, value in env.items():
        os.environ[str(name)] = str(value)

    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    defaults, unknown = {}, []
    training_keys = None
    for key, value in data.items():
        key = str(key).replace("-", "_")
        action = actions.get(key)
        if action is None:
            training_keys = training_keys if training_keys is not None else _trl_training_keys()
            if key not in training_keys:
                unknown.append(key)
            continue
        defaults[key] = _coerce(action, value, path, key)
    if unknown:
        raise InputError(
            f"config file {path!r}: unknown key(s) {', '.join(map(repr, unknown))} for "
            f"`{parser.prog}`; valid keys are the flag names of `{parser.prog} --help`"
        )
    parser.set_defaults(**defaults)
    # A YAML value satisfies a required flag.
    for key in defaults:
        actions[key].required = False


def _coerce(action: argparse.Action, value, path: str, key: str):
    """Check a YAML value the way argparse would check the same text on the command line."""

    def one(item):
        if item is None or action.type is None:
            return item
        try:
            return action.type(str(item))  # the same check as the same text on the command line
        except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
            raise InputError(f"config file {path!r}: {key}={item!r} is invalid ({error})") from None

    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise InputError(f"config file {path!r}: {key} must be true or false, got {value!r}")
        return value
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        values = [one(v) for v in (value if isinstance(value, list) else [value])]
    else:
        if isinstance(value, (list, dict)):
            raise InputError(f"config file {path!r}: {key} takes a single value, got {value!r}")
        values = [one(value)]
    for v in values:
        if action.choices is not None and v not in action.choices:
            raise InputError(
                f"config file {path!r}: {key}={v!r} is invalid: expected one of {', '.join(map(repr, action.choices))}"
            )
    return values if action.nargs in ("+", "*") or isinstance(action.nargs, int) else values[0]


def build_config(namespace: argparse.Namespace, output_dir: str, **extra):
    """The `AEPOConfig` the pipeline needs, from the parsed AEPO flags and `extra` values — not a training config.

    `output_dir` is only used for the config's own defaults (e.g. the annotation store); bf16 is off and reporting
    is disabled, since nothing is trained. A value `AEPOConfig` rejects becomes an `InputError` (exit code 2) whose
    message names the field and the allowed values.
    """
    from aepo_trainer.config import AEPOConfig

    names = [f.name for f in aepo_fields()] + ["seed"]
    values = {name: getattr(namespace, name) for name in names if hasattr(namespace, name)}
    values.update(extra)
    try:
        with warnings.catch_warnings():  # training-only deprecation notices of TrainingArguments
            warnings.simplefilter("ignore", FutureWarning)
            return AEPOConfig(output_dir=output_dir, bf16=False, report_to="none", disable_tqdm=True, **values)
    except ValueError as error:
        raise InputError(str(error)) from None
