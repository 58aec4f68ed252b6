"""`AEPOTrainer`: TRL's `DPOTrainer`, plus on-the-fly reduction of candidate pools.

Given prompt/chosen/rejected data (standard, conversational or implicit-prompt), the trainer *is* `DPOTrainer`: no
hook changes what it computes, so the logged losses and final weights are bitwise equal to DPOTrainer's for the same
seed. Given candidate pools (`{"prompt", "completions": [...]}`), see `aepo_trainer.pools` and `AEPODataCollator`.
"""

from __future__ import annotations

import copy
import dataclasses
import textwrap

from trl import DPOConfig, DPOTrainer

from .config import AEPOConfig


class AEPOTrainer(DPOTrainer):
    """Annotation-Efficient Preference Optimization trainer; a drop-in replacement for TRL's `DPOTrainer`.

    Args:
        model, ref_model, args, data_collator, train_dataset, eval_dataset, processing_class, compute_metrics,
        callbacks, optimizers, quantization_config, peft_config:
            As for `trl.DPOTrainer` (pass them by keyword). `args` may be an `AEPOConfig` or a plain `DPOConfig`
            (then the AEPO fields take their defaults).
    """

    _tag_names = ["trl", "dpo", "aepo", "aepo-trainer"]
    _name = "AEPO"
    _paper = {
        "title": "Annotation-Efficient Preference Optimization for Language Model Alignment",
        "id": "2405.13541",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{jinnai2024annotation,
                title        = {{Annotation-Efficient Preference Optimization for Language Model Alignment}},
                author       = {Yuu Jinnai and Ukyo Honda},
                year         = 2024,
                journal      = {arXiv preprint arXiv:2405.13541},
            }"""),
    }

    def __init__(
        self,
        model,
        ref_model=None,
        args: AEPOConfig | DPOConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
    ):
        if args is None:
            model_name = model if isinstance(model, str) else model.config._name_or_path
            args = AEPOConfig(f"{(model_name or 'model').split('/')[-1]}-AEPO")
        elif not isinstance(args, AEPOConfig):
            args = _as_aepo_config(args)
        super().__init__(
            model=model,
            ref_model=ref_model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            quantization_config=quantization_config,
            peft_config=peft_config,
        )


def _as_aepo_config(args: DPOConfig) -> AEPOConfig:
    """Upgrade a plain `DPOConfig` to an `AEPOConfig` with default AEPO fields, keeping every DPO/Trainer value.

    The values were already post-processed by `DPOConfig.__post_init__` (devices, logging dirs, deprecations), so
    they are copied as they are rather than run through `__post_init__` a second time.
    """
    if not isinstance(args, DPOConfig):
        raise TypeError(f"`args` must be an AEPOConfig or a DPOConfig, got {type(args).__name__}.")
    upgraded = copy.copy(args)
    upgraded.__class__ = AEPOConfig
    dpo_fields = {f.name for f in dataclasses.fields(DPOConfig)}
    for f in dataclasses.fields(AEPOConfig):
        if f.name not in dpo_fields:
            setattr(upgraded, f.name, f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
    return upgraded
