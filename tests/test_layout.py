"""The package's layout rules, read from the source (AST): no import cycles, no reaching into privates, small modules.

Conventions these checks rely on (docs/architecture.md, "Layout rules"):

* An import inside a function counts as an edge of the import graph like any other, unless its line carries the
  comment `# lazy: <why>`: such an import is deferred to keep startup cheap (`aepo --help` must not import torch,
  FastAPI or `openai`), never to dodge a cycle. Imports under `if TYPE_CHECKING:` are not edges.
* Importing `a.b.c` runs `a/__init__.py` and `a/b/__init__.py` first: those packages are edges too. Package
  `__init__`s that export lazily (a module `__getattr__` with a table of names) add no edge.
* `_trl_compat` is the one module whose names may be private (TRL's), and `_utils` is a package name, not a private
  name.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import aepo_trainer

ROOT = Path(aepo_trainer.__file__).parent
PACKAGE = "aepo_trainer"
LAZY_MARK = "# lazy:"
MAX_LINES = 500

#: Modules allowed over MAX_LINES, with the reason (declarative content: field lists, tables).
DECLARATIVE = {
    "aepo_trainer.config": "AEPOConfig's dataclass fields with their help texts (the checks are config_checks.py)",
}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _parse(name: str) -> ast.Module:
    return ast.parse(MODULES[name].read_text(encoding="utf-8"), filename=str(MODULES[name]))


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes under `if TYPE_CHECKING:` blocks."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                skipped.update(id(n) for n in ast.walk(inner))
    return skipped


def _absolute_from(name: str, node: ast.ImportFrom) -> str | None:
    """The absolute module a `from X import ...` statement of module `name` reads from."""
    if node.level == 0:
        return node.module
    base = name.split(".") if _is_package(name) else name.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(name: str):
    """(imported module, imported names or None, node) for every import statement of module `name`."""
    tree = _parse(name)
    skipped = _type_checking_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, node
        elif isinstance(node, ast.ImportFrom):
            yield _absolute_from(name, node), [a.name for a in node.names], node


def _known(module: str) -> str | None:
    """The longest prefix of `module` that is a module of the package."""
    while module and module not in MODULES:
        module = module.rpartition(".")[0]
    return module or None


def _is_lazy(name: str, node: ast.stmt) -> bool:
    line = MODULES[name].read_text(encoding="utf-8").splitlines()[node.lineno - 1]
    return LAZY_MARK in line


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name in MODULES:
        for module, names, node in _imports(name):
            if not module or not module.startswith(PACKAGE) or _is_lazy(name, node):
                continue
            targets = [module]
            if names:  # `from pkg import submodule`
                targets += [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
            for target in targets:
                target = _known(target)
                parts = target.split(".")
                for i in range(2, len(parts) + 1):  # the packages on the way run first
                    step = ".".join(parts[:i])
                    if step in MODULES and step != name and not name.startswith(step + "."):
                        graph[name].add(step)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    described = [
        "\n".join(f"  {m} -> {sorted(graph[m] & set(c))}" for m in c) for c in cycles
    ]  # each module with its edges inside the cycle
    assert not cycles, "import cycles:\n" + "\n\n".join(described)


def test_cycle_finder_finds_a_cycle():
    """The checker itself: a two-module cycle and a self-contained chain."""
    assert find_cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_trainer_private_state_outside_the_trainer():
    """Nothing outside `AEPOTrainer` reads or writes a `trainer._aepo_*` attribute."""
    offenders = []
    for name in MODULES:
        if name == "aepo_trainer.trainer.core":
            continue
        for node in ast.walk(_parse(name)):
            attribute = node.attr if isinstance(node, ast.Attribute) else None
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                attribute = node.value  # getattr(trainer, "_aepo_...")
            if attribute and attribute.startswith("_aepo_"):
                offenders.append(f"{name}:{node.lineno} {attribute}")
    assert not offenders, offenders


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_private_name_imported_across_modules():
    """`from x import _y` only from `_trl_compat`; and no `module._y` on a module imported from the package."""
    offenders = []
    for name in MODULES:
        module_aliases = {}
        for module, names, node in _imports(name):
            if not module or not module.startswith(PACKAGE):
                continue
            if names is None:
                continue
            for alias in node.names:
                full = f"{module}.{alias.name}"
                if full in MODULES:
                    module_aliases[alias.asname or alias.name] = full
                elif _private(alias.name) and module != "aepo_trainer._trl_compat":
                    offenders.append(f"{name}:{node.lineno} imports {alias.name} from {module}")
        for node in ast.walk(_parse(name)):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in module_aliases
                and _private(node.attr)
            ):
                offenders.append(f"{name}:{node.lineno} reads {module_aliases[node.value.id]}.{node.attr}")
    assert not offenders, "\n".join(offenders)


def test_trl_names_trl_does_not_export_go_through_trl_compat():
    """Outside `_trl_compat.py`, TRL is imported only as `import trl` or `from trl import <exported name>`."""
    import trl

    exported = set(trl.__all__)
    offenders = []
    for name in MODULES:
        if name == "aepo_trainer._trl_compat":
            continue
        for module, names, node in _imports(name):
            if not module or not (module == "trl" or module.startswith("trl.")):
                continue
            if names is None:
                if module != "trl":
                    offenders.append(f"{name}:{node.lineno} import {module}")
            elif module != "trl" or any(n not in exported for n in names):
                offenders.append(f"{name}:{node.lineno} from {module} import {', '.join(names)}")
    assert not offenders, "\n".join(offenders)


def test_no_module_over_500_lines_unless_declarative():
    too_long = {}
    for name, path in MODULES.items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES and name not in DECLARATIVE:
            too_long[name] = lines
    assert not too_long, f"over {MAX_LINES} lines (split them, or list them in DECLARATIVE with the reason): {too_long}"


def test_moved_module_paths_still_import_with_a_deprecation_warning():
    import importlib

    from aepo_trainer._utils.moved import MOVED_MODULES

    for old, new in MOVED_MODULES.items():
        sys.modules.pop(old, None)
        with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
            module = importlib.import_module(old)
        assert module is importlib.import_module(new), old
        assert new in MODULES and old not in MODULES, (old, new)


#: The one module that reads and writes each table of the run's SQLite file (and of the candidate store).
TABLE_OWNERS = {
    "annotations": "aepo_trainer.storage.annotations",
    "ledger": "aepo_trainer.storage.annotations",
    "runs": "aepo_trainer.storage.annotations",
    "meta": "aepo_trainer.storage.annotations",
    "usage": "aepo_trainer.storage.usage",
    "label_answers": "aepo_trainer.storage.label_book",
    "label_gold_answers": "aepo_trainer.storage.label_gold",
    "label_sessions": "aepo_trainer.storage.label_sessions",
    "reference_logps": "aepo_trainer.storage.reference_logps",
    "pools": "aepo_trainer.generation.store",
}


def test_each_table_has_one_owner():
    """SQL that reads or writes a table (FROM, JOIN, INTO, UPDATE) appears only in the table's owner module; the
    others call the owner's public functions. (The schema itself, CREATE TABLE, is the store's migrations.)"""
    import re

    pattern = re.compile(r"\b(?:FROM|JOIN|INTO|UPDATE)\s+([a-z_]+)\b")
    offenders = []
    for name in MODULES:
        for node in ast.walk(_parse(name)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for table in pattern.findall(node.value):
                    owner = TABLE_OWNERS.get(table)
                    if owner is not None and owner != name:
                        offenders.append(f"{name}:{node.lineno} uses table {table!r} (owner: {owner})")
    assert not offenders, "\n".join(offenders)
