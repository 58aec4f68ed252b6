"""Griffe extension used by the docs build (mkdocs.yml): dataclass `field(metadata={"help": ...})` → attribute docs.

`AEPOConfig` documents each field the way TRL's configs do, in `metadata={"help": ...}`, so that `TrlParser` and the
`aepo` CLI show it as flag help. Griffe does not read that metadata; this extension copies the help string into the
attribute's docstring (only when the attribute has no docstring of its own), so the API reference shows the same text
as `aepo --help`. It reads the source statically: nothing is imported.
"""

from __future__ import annotations

import ast

import griffe


def _help_from_field_call(node: ast.AST) -> str | None:
    """The `help` text of `x: T = field(default=..., metadata={"help": ...})`, followed by the default value."""
    value = getattr(node, "value", None)
    if not isinstance(value, ast.Call):
        return None
    func = value.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    if name != "field":
        return None
    text, default = None, None
    for keyword in value.keywords:
        if keyword.arg == "default":
            default = ast.unparse(keyword.value)
        elif keyword.arg == "default_factory":
            default = f"{ast.unparse(keyword.value)}()"
        elif keyword.arg == "metadata" and isinstance(keyword.value, ast.Dict):
            for key, item in zip(keyword.value.keys, keyword.value.values):
                if isinstance(key, ast.Constant) and key.value == "help":
                    try:
                        help_text = ast.literal_eval(item)  # implicit string concatenation is one Constant
                    except ValueError:
                        continue
                    if isinstance(help_text, str):
                        text = help_text
    if text is None:
        return None
    return text if default is None else f"{text}\n\nDefault: `{default}`."


class FieldHelpExtension(griffe.Extension):
    """Use `field(metadata={"help": ...})` as the docstring of dataclass attributes that have none."""

    def on_attribute_instance(self, *, node, attr, agent, **kwargs) -> None:
        if attr.docstring is not None or not isinstance(node, ast.AST):
            return
        text = _help_from_field_call(node)
        if text:
            attr.docstring = griffe.Docstring(text, lineno=getattr(node, "lineno", None), parent=attr)
