"""The flags of the `aepo` commands: dataclasses parsed by TRL's `TrlParser`, as `trl dpo` and `aepo train` do.

Each command declares its own arguments as dataclasses whose fields carry `metadata={"help": ...}` (and `aliases`,
`choices`, `metavar`, ...: `HfArgumentParser` passes the metadata to `add_argument`); one dataclass is one group of
`--help`. The AEPO settings are a dataclass derived from `AEPOConfig` by `aepo_settings_arguments`: every field that
`AEPOConfig` adds to `DPOConfig` (the single source of truth: same name, type, default, help and choices) plus
`--seed`. Training arguments are not exposed: these commands never train.

`--config file.yaml` is `TrlParser`'s: its keys (flag names) become the defaults, flags on the command line override
them, and an `env:` mapping is exported. `CommandParser` adds what `TrlParser` leaves out and the CLI promises: each
YAML value is checked like the same text on the command line (type, choices), keys of TRL's training configs
(`AEPOConfig`/`DPOConfig`, `ScriptArguments`, `ModelConfig`) are ignored so one YAML file can drive both `aepo select`
and training, any other unknown key is an error (most likely a typo), and every usage error exits with code 2.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import re
import sys
import types
import typing
import warnings

from trl import TrlParser

from .errors import InputError

CONFIG_FLAG = "--config"
_LONE_PERCENT = re.compile(r"(?<!%)%(?!%)")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """`HfArgumentParser`'s default (`ArgumentDefaultsHelpFormatter`) rewraps the hand-wrapped examples epilog and
    prints "(default: None)" after required and unset flags: this keeps the epilog's layout and shows only real
    defaults. `HfArgumentParser` gives every `--a_b` flag a `--a-b` alias; the value is shown once, after both
    (`--a_b, --a-b VALUE`, as Python 3.13's argparse does), not once per spelling."""

    def _format_action_invocation(self, action):
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        return (
            ", ".join(action.option_strings)
            + " "
            + self._format_args(action, self._get_default_metavar_for_optional(action))
        )

    def _get_help_string(self, action):
        text = action.help or ""
        if action.required or action.default in (None, argparse.SUPPRESS) or action.nargs == 0 or "%(default)" in text:
            return text
        return text + " (default: %(default)s)"


class LiteralHelpTrlParser(TrlParser):
    """`TrlParser` for every `aepo` command built from dataclasses: the one place where a field's
    `metadata["help"]` reaches argparse. argparse formats help text with `%` (`"%(default)s"`), so a bare `%` in a
    help string ("98% of selections") crashes `--help`; here every lone `%` of a dataclass help text is escaped, so help
    texts are plain prose and no command can ship that crash again. A `%%` is left as it is: `transformers` writes
    some `TrainingArguments` help texts already escaped ("~20%% slower")."""

    @staticmethod
    def _parse_dataclass_field(parser, field: dataclasses.Field):
        text = field.metadata.get("help")
        if isinstance(text, str) and "%" in text:
            field = copy.copy(field)  # the dataclass's own field keeps its text (docs read it)
            field.metadata = types.MappingProxyType({**field.metadata, "help": _LONE_PERCENT.sub("%%", text)})
        return TrlParser._parse_dataclass_field(parser, field)


def aepo_fields() -> list[dataclasses.Field]:
    """The dataclass fields `AEPOConfig` adds to `DPOConfig`, in declaration order."""
    from trl import DPOConfig

    from aepo_trainer.config import AEPOConfig

    inherited = {f.name for f in dataclasses.fields(DPOConfig)}
    return [f for f in dataclasses.fields(AEPOConfig) if f.name not in inherited and f.init]


def aepo_settings_arguments(
    class_name: str,
    names=None,
    *,
    exclude=(),
    title="AEPO settings (AEPOConfig fields)",
    overrides: dict | None = None,
    notes: dict | None = None,
) -> type:
    """A dataclass of the AEPO fields of `AEPOConfig` (those in `names`, default all but `TRAINING_ONLY_FIELDS`, minus
    `exclude`) and `seed`, with `AEPOConfig`'s types, defaults, help and choices: one `--help` group titled `title`.

    `overrides` maps a field name to a replacement of its type / default / help / metadata (e.g. `list[int]` for
    `aepo stats`, which compares several values); `notes` maps a field name to a sentence appended to its help (what
    the field means for this command).
    """
    from trl import DPOConfig

    from aepo_trainer.config import TRAINING_ONLY_FIELDS, AEPOConfig

    overrides, notes = overrides or {}, notes or {}
    hints = typing.get_type_hints(AEPOConfig)
    seed = next(f for f in dataclasses.fields(DPOConfig) if f.name == "seed")
    chosen = [
        f
        for f in aepo_fields()
        if (f.name in names if names is not None else f.name not in TRAINING_ONLY_FIELDS) and f.name not in exclude
    ]
    specs = []
    for f in chosen + ([seed] if names is None or "seed" in names else []):
        override = dict(overrides.get(f.name, {}))
        if f is seed:
            override.setdefault("help", "Seed of the run; also the selection seed unless `--selection_seed` is given.")
        text = override.pop("help", f.metadata.get("help", ""))
        metadata = {k: v for k, v in f.metadata.items() if k != "help"}
        if "choices" in metadata:
            metadata["choices"] = list(metadata["choices"])
        metadata.update(override.pop("metadata", {}))
        metadata["help"] = " ".join(f"{text} {notes.get(f.name, '')}".split())
        default = override.pop("default", f.default)
        value = (
            dataclasses.field(default_factory=lambda d=default: list(d), metadata=metadata)
            if isinstance(default, list)
            else dataclasses.field(default=default, metadata=metadata)
        )
        specs.append((f.name, override.pop("type", hints[f.name]), value))
        if override:
            raise TypeError(f"unknown override(s) of {f.name}: {', '.join(override)}")
    return dataclasses.make_dataclass(class_name, specs, namespace={"_argument_group_name": title})


def _trl_training_keys() -> set[str]:
    import trl

    from aepo_trainer.config import AEPOConfig

    keys = set()
    for cls in (AEPOConfig, trl.ScriptArguments, trl.ModelConfig):
        keys.update(f.name for f in dataclasses.fields(cls))
    return keys


class CommandParser(LiteralHelpTrlParser):
    """The parser of one `aepo` command: `TrlParser` over its dataclasses, with a `--config` flag in `--help`, the
    checks of YAML values described in the module docstring, exit code 2 for every usage error, and `parse`."""

    def __init__(self, dataclass_types, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(dataclass_types, **kwargs)
        self._config_path = None
        self.add_argument(  # TrlParser reads `--config FILE` itself; this entry documents it in --help
            CONFIG_FLAG,
            metavar="FILE.yaml",
            default=None,
            help="YAML file whose keys (the flag names, without dashes) set this command's defaults, "
            "like TRL's `--config`; flags on the command line override it. An `env:` mapping is "
            "exported. Keys of TRL's training configs are ignored.",
        )

    def error(self, message):
        """argparse's exit code 2, plus where to look."""
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n(run `{self.prog} --help` for every flag)\n")

    def parse(self, argv: list[str]) -> argparse.Namespace:
        """All the dataclasses' fields in one namespace (the commands read `args.<flag>`); a bad config file is an
        `InputError` (exit code 2)."""
        import yaml

        argv = list(argv)
        for i, arg in enumerate(argv):  # TrlParser only reads `--config FILE`
            if arg.startswith(CONFIG_FLAG + "="):
                argv[i : i + 1] = [CONFIG_FLAG, arg.split("=", 1)[1]]
                break
        if argv and argv[-1] == CONFIG_FLAG:
            self.error(f"argument {CONFIG_FLAG}: expected one argument")
        self._config_path = argv[argv.index(CONFIG_FLAG) + 1] if CONFIG_FLAG in argv else None
        where = f"config file {self._config_path!r}"
        try:
            *outputs, remaining = self.parse_args_and_config(argv, return_remaining_strings=True)
        except FileNotFoundError:
            raise InputError(f"{where} does not exist") from None
        except yaml.YAMLError as error:
            raise InputError(f"{where} is not valid YAML: {error}") from None
        except ValueError as error:  # TrlParser: the file is not a mapping, or its `env` is not
            raise InputError(f"{where}: {error}" if self._config_path else str(error)) from None
        if remaining:
            self.error(f"unrecognized arguments: {' '.join(remaining)}")
        values = {}
        for output in outputs:
            values.update(vars(output))
        values["config"] = self._config_path
        return argparse.Namespace(**values)

    def set_defaults_with_config(self, **kwargs) -> list[str]:
        """TrlParser's, after checking each value as the command line would and dropping training keys."""
        where = f"config file {self._config_path!r}"
        actions = {a.dest: a for a in self._actions if a.dest not in ("help", "config")}
        defaults, unknown, training_keys = {}, [], None
        for key, value in kwargs.items():
            key = str(key).replace("-", "_")
            action = actions.get(key)
            if action is None:
                training_keys = training_keys if training_keys is not None else _trl_training_keys()
                if key not in training_keys:
                    unknown.append(key)
                continue
            defaults[key] = _coerce(action, value, f"{where}: {key}")
        if unknown:
            raise InputError(
                f"{where}: unknown key(s) {', '.join(map(repr, unknown))} for "
                f"`{self.prog}`; valid keys are the flag names of `{self.prog} --help`"
            )
        return super().set_defaults_with_config(**defaults)


def parse_with_yaml(parser, argv: list[str]) -> argparse.Namespace:
    """`parser.parse(argv)`: the flags, with the defaults first taken from the YAML file named by `--config`."""
    return parser.parse(argv)


def _coerce(action: argparse.Action, value, key: str):
    """Check a YAML value the way argparse would check the same text on the command line."""

    def one(item):
        if item is None or action.type is None:
            return item
        try:
            return action.type(str(item))  # the same check as the same text on the command line
        except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
            raise InputError(f"{key}={item!r} is invalid ({error})") from None

    many = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    if many:
        values = [one(v) for v in (value if isinstance(value, list) else [value])]
    else:
        if isinstance(value, (list, dict)):
            raise InputError(f"{key} takes a single value, got {value!r}")
        values = [one(value)]
    for v in values:
        if action.choices is not None and v not in action.choices:
            raise InputError(f"{key}={v!r} is invalid: expected one of {', '.join(map(repr, action.choices))}")
    return values if many else values[0]


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
