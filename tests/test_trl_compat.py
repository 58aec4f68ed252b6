"""Every TRL name aepo-trainer relies on that TRL does not export from its top level still exists.

When a TRL release renames or removes one, this test names it, instead of a training run failing somewhere deep."""

from __future__ import annotations

import pytest
from trl import DPOConfig, DPOTrainer

from aepo_trainer import _trl_compat


def test_private_imports_resolve():
    for name in _trl_compat.__all__:
        assert getattr(_trl_compat, name) is not None, name


@pytest.mark.parametrize("hook", sorted(_trl_compat.TRAINER_HOOKS))
def test_overridden_and_called_trainer_methods_exist(hook):
    assert callable(getattr(DPOTrainer, hook, None)), (
        f"trl.DPOTrainer.{hook} is gone: {_trl_compat.TRAINER_HOOKS[hook]}"
    )


def test_trainer_attributes_exist(tiny_model_path, dpo_args):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
        ref_model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
        args=DPOConfig(**dpo_args),
        train_dataset=Dataset.from_dict({"prompt": ["a"], "chosen": [" b"], "rejected": [" c"]}),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_path),
    )
    missing = [name for name in _trl_compat.TRAINER_ATTRIBUTES if not hasattr(trainer, name)]
    assert not missing, f"trl.DPOTrainer instances lack {missing}: see aepo_trainer/_trl_compat.py"


def test_no_other_module_imports_trl_internals():
    """`_trl_compat` is the one place: every other `trl` import of the package names only what `trl` exports.

    The check itself (every `import trl...` / `from trl... import` of every module, function-level ones included)
    lives in tests/test_layout.py with the other layout rules; this runs it here too, next to the names it guards."""
    from test_layout import test_trl_names_trl_does_not_export_go_through_trl_compat

    test_trl_names_trl_does_not_export_go_through_trl_compat()
