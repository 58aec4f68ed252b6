"""Old module paths of 0.1 that moved into the stage folders: they keep importing, with a `DeprecationWarning`.

Why a finder instead of stub files at the old paths: a stub file would make every old path a live module again
(git would no longer see the moves as renames), and each stub would be one more module to keep in sync. Here one
table says where each old path lives now; importing the old path returns the *same* module object as the new one
(so `monkeypatch.setattr` on either affects both) and warns once per import. The aliases go away in the next release.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: old dotted path -> new dotted path (the one table of moved modules).
MOVED_MODULES = {
    "aepo_trainer.pools": "aepo_trainer.data.pools",
    "aepo_trainer.validation": "aepo_trainer.data.validation",
    "aepo_trainer.collator": "aepo_trainer.data.collator",
    "aepo_trainer.pairing": "aepo_trainer.reduction.pairing",
    "aepo_trainer.losses": "aepo_trainer.trainer.losses",
    "aepo_trainer.on_policy": "aepo_trainer.trainer.on_policy",
    "aepo_trainer.run_control": "aepo_trainer.trainer.run_control",
    "aepo_trainer.group_batch": "aepo_trainer.trainer.group_batch",
    "aepo_trainer.embedding_backends": "aepo_trainer.embedding.backends",
    "aepo_trainer.jsft": "aepo_trainer.self_judge.jsft",
    "aepo_trainer.csv_safety": "aepo_trainer._utils.csv_safety",
    "aepo_trainer.provenance": "aepo_trainer._utils.provenance",
    "aepo_trainer.annotation.store": "aepo_trainer.storage.annotations",
    "aepo_trainer.generation.ledger": "aepo_trainer.storage.usage",
    "aepo_trainer.generation.best_of_n": "aepo_trainer.self_judge.best_of_n",
    "aepo_trainer.labelling.book": "aepo_trainer.storage.label_book",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old path of `MOVED_MODULES` to the module at its new path."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = MOVED_MODULES[spec.name]
        warnings.warn(
            f"`{spec.name}` moved to `{new}`; the old path still works in this release and will be removed in the "
            "next one.",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(new)

    def exec_module(self, module):
        """Nothing to run: the module was executed at its new path."""


def install() -> None:
    """Put the finder on `sys.meta_path` once (called by `aepo_trainer/__init__.py`)."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())
