"""`AEPOTrainer`: TRL's `DPOTrainer`, plus on-the-fly reduction of candidate pools.

Given prompt/chosen/rejected data (standard, conversational or implicit-prompt), the trainer *is* `DPOTrainer`: no
hook changes what it computes, so the logged losses and final weights are bitwise equal to DPOTrainer's for the same
seed. Given candidate pools (`{"prompt", "completions": [...]}`), the pools are prepared once (`aepo_trainer.pools`),
each batch is reduced on the fly by `AEPODataCollator` (select k of N -> annotate the selected -> pair), and the loss
of the resulting group batch is computed by `aepo_trainer._pool_loss` (TRL's loss types on the pairs, plus the
reward-aware `rpo_*` losses over all ordered pairs of each prompt's responses).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import os
import textwrap

from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer
from trl.trainer.utils import global_then_local_main_first

from . import pools, validation
from .config import AEPOConfig

logger = logging.getLogger(__name__)

__all__ = ["AEPOTrainer", "default_run_id"]


def default_run_id(args) -> str:
    """The annotation ledger of a run: derived from its `output_dir`, so a resumed run (same `output_dir`) keeps
    counting against the same budget and reuses every annotation already paid for."""
    path = os.path.abspath(os.path.expanduser(str(args.output_dir)))
    return f"{os.path.basename(path.rstrip(os.sep)) or 'run'}-{hashlib.sha256(path.encode()).hexdigest()[:12]}"


class _AEPOControlCallback(TrainerCallback):
    """Stops training cleanly (with a checkpoint) when the annotation budget is spent or labels are pending."""

    def __init__(self, trainer: AEPOTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer.aepo_stop_reason is not None and not control.should_training_stop:
            control.should_training_stop = True
            control.should_save = True
            logger.warning("AEPO: stopping training at step %d. %s", state.global_step, self.trainer.aepo_stop_reason)
        return control


class AEPOTrainer(DPOTrainer):
    """Annotation-Efficient Preference Optimization trainer; a drop-in replacement for TRL's `DPOTrainer`.

    Every argument of `trl.DPOTrainer` is accepted, by keyword and with the same meaning: `model`, `ref_model`,
    `data_collator`, `train_dataset`, `eval_dataset`, `processing_class`, `compute_metrics`, `callbacks`,
    `optimizers`, `quantization_config` and `peft_config`. On prompt/chosen/rejected datasets the trainer computes
    exactly what `DPOTrainer` computes. On candidate-pool datasets (`{"prompt", "completions": [...]}`) each batch is
    reduced on the fly: select k of N, annotate only those, pair, then DPO (and/or the `rpo_*` losses).

    Args:
        args (`AEPOConfig` or `DPOConfig`, *optional*):
            The configuration. A plain `DPOConfig` is upgraded to an `AEPOConfig` whose AEPO fields take their
            defaults.
        annotator (`Annotator`, callable or list of callables, *optional*):
            Who scores the selected candidates of pool datasets: an `Annotator` object, or a TRL/GRPO-style reward
            function `f(prompts=..., completions=..., **columns) -> list[float]` (or a list of them). Defaults to
            the annotator `args.annotator` names (`build_annotator`). Unused on pair datasets.
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
        annotator=None,
    ):
        if args is None:
            model_name = model if isinstance(model, str) else model.config._name_or_path
            args = AEPOConfig(f"{(model_name or 'model').split('/')[-1]}-AEPO")
        elif not isinstance(args, AEPOConfig):
            args = _as_aepo_config(args)

        validation.validate_training_inputs(  # before anything slow or paid: every row, the annotator, the budget
            args,
            train_dataset,
            eval_dataset,
            annotator,
            judge_available=ref_model is not None or peft_config is not None or hasattr(model, "peft_config"),
        )
        eval_sets = list(eval_dataset.values()) if isinstance(eval_dataset, dict) else [eval_dataset]
        self._aepo_uses_pools = any(pools.is_pool_dataset(d, args) for d in [train_dataset, *eval_sets])
        self._aepo_pool_columns: list[str] = []
        self._aepo_embedder = None
        self._aepo_seen_prompt_keys: list[int] = []
        self.aepo_stop_reason: str | None = None
        self.annotation_service = None
        self.pool_reducer = None
        if self._aepo_uses_pools and args.precompute_ref_log_probs:
            raise ValueError(
                "`precompute_ref_log_probs=True` cannot be used with candidate-pool datasets: the preference pairs are "
                "formed on the fly during training, so they do not exist before it. Set "
                "`precompute_ref_log_probs=False` (the reference log-probs are then computed once per response in "
                "each batch), or run `aepo select` first and train on the resulting pair dataset."
            )
        if args.rpo_loss_types and not self._aepo_uses_pools:
            raise ValueError(
                f"loss_type {args.rpo_loss_types} (reward-aware losses) needs annotated scores, which only candidate-"
                "pool datasets ({'prompt', 'completions', ...}) provide. Train on pools, or use TRL's loss types on "
                "prompt/chosen/rejected data."
            )

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
        self._aepo_embedder = None  # only needed while preparing datasets: free its memory
        if self._aepo_uses_pools:
            self._aepo_setup(annotator, user_collator=data_collator is not None)

    # ------------------------------------------------------------------------------------------------ pool setup

    def _aepo_setup(self, annotator, user_collator: bool) -> None:
        from accelerate.utils import is_peft_model

        from .annotation.service import AnnotationService
        from .collator import AEPODataCollator
        from .reduction import PoolReducer

        args = self.args
        if annotator is None:
            from .annotation import build_annotator

            judge_model = None
            if args.annotator == "judge":
                judge_model = self.model if is_peft_model(self.model) else self.ref_model
                if judge_model is None:
                    raise ValueError(
                        "annotator='judge' uses the frozen starting model as judge: pass `ref_model` (or train a PEFT "
                        "adapter, judged with the adapter disabled)."
                    )
            annotator = build_annotator(
                args, model=judge_model if judge_model is not None else self.model, tokenizer=self._tokenizer
            )
        elif not (hasattr(annotator, "score") and hasattr(annotator, "identity")):
            from .annotation.reward_function import RewardFunctionAnnotator

            if not (callable(annotator) or isinstance(annotator, (list, tuple))):
                raise TypeError(
                    f"`annotator` must be an Annotator (with `identity` and `score`) or a reward function, got "
                    f"{type(annotator).__name__}."
                )
            annotator = RewardFunctionAnnotator(annotator, tokenizer=self._tokenizer)
        with self.accelerator.main_process_first():  # one process creates the SQLite store file
            self.annotation_service = AnnotationService.from_config(args, annotator, run_id=default_run_id(args))
        device = self.accelerator.device if args.dataloader_num_workers == 0 else None
        self.pool_reducer = PoolReducer(args, self.annotation_service, device=device, catch_pending=True)
        if not user_collator:
            self.data_collator = AEPODataCollator(
                pad_token_id=self._tokenizer.pad_token_id,
                reducer=self.pool_reducer,
                max_length=args.max_length,
                truncation_mode=args.truncation_mode,
                pad_to_multiple_of=args.pad_to_multiple_of,
                device=device,
            )
        self.add_callback(_AEPOControlCallback(self))

    def _aepo_embed(self, dataset, args):
        """Sentence embeddings of every candidate, computed once and cached by the dataset fingerprint."""
        from .embedding import Embedder, embed_pools

        if self._aepo_embedder is None:
            self._aepo_embedder = Embedder(
                args.embedding_model, device=args.device, batch_size=args.embedding_batch_size
            )
        with global_then_local_main_first():
            return embed_pools(
                dataset,
                completions_column=args.completions_column,
                embedder=self._aepo_embedder,
                embeddings_column=args.embeddings_column,
            )

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if not pools.is_pool_dataset(dataset, args):
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

        def tokenize_pairs(pair_dataset, pair_args):
            return DPOTrainer._prepare_dataset(self, pair_dataset, processing_class, pair_args, dataset_name)

        prepared = pools.prepare_pool_dataset(dataset, args, tokenize_pairs, dataset_name, embed=self._aepo_embed)
        # The collator stacks the embeddings into one tensor: read them from Arrow as tensors, not Python lists.
        prepared = prepared.with_format("torch", columns=[args.embeddings_column], output_all_columns=True)
        columns = getattr(self, "_aepo_pool_columns", [])
        self._aepo_pool_columns = list(dict.fromkeys([*columns, *prepared.column_names]))
        if getattr(self, "_signature_columns", None) is not None:  # a pool dataset given to `evaluate()` later
            self._signature_columns = None
        return prepared

    def _set_signature_columns_if_needed(self):
        # TRL keeps only the token columns; a pool batch also needs the texts, scores, embeddings and any other
        # column an annotator reads (reward functions get them as keyword arguments).
        super()._set_signature_columns_if_needed()
        extra = [c for c in getattr(self, "_aepo_pool_columns", []) if c not in self._signature_columns]
        if extra:
            self._signature_columns = [*self._signature_columns, *extra]

    # ------------------------------------------------------------------------------------------------ loss

    def _compute_loss(self, model, inputs, return_outputs):
        if "pair_chosen_rows" not in inputs:
            return super()._compute_loss(model, inputs, return_outputs)
        from ._pool_loss import compute_pool_loss

        return compute_pool_loss(self, model, inputs, return_outputs)

    def _aepo_on_batch(self, summary: dict) -> None:
        """Called after each training batch of pools with the statistics gathered from every process."""
        if self.aepo_stop_reason is not None:
            return
        if summary["pending"]:
            pending = None
            if self.pool_reducer is not None:
                pending = getattr(self.pool_reducer, "last_pending", None)
            self.aepo_stop_reason = (
                f"Annotations pending: {pending}"
                if pending is not None
                else "Annotations pending: the human annotator is waiting for labels. Fill in the labels file next to the "
                "annotation queue, then resume training from the last checkpoint (nothing is queued or paid twice)."
            )
        elif summary["budget_exhausted"]:
            service = self.annotation_service
            self.aepo_stop_reason = (
                service.budget_message()
                if service is not None
                else f"Annotation budget exhausted ({summary['spent']:.0f} spent)."
            )

    # ------------------------------------------------------------------------------------------------ reporting

    @property
    def recent_pairs(self) -> list[dict]:
        """A few recently formed pairs (prompt, chosen, rejected, scores) — filled when the DataLoader has no worker
        processes (the default)."""
        return list(getattr(self.data_collator, "recent_pairs", []) or [])

    def save_model(self, output_dir=None, _internal_call=False):
        super().save_model(output_dir, _internal_call)
        # TRL writes the card only with checkpoints: with save_strategy="no" the saved model would have none.
        if not _internal_call and os.path.abspath(output_dir or self.args.output_dir) == os.path.abspath(
            self.args.output_dir
        ):
            self.create_model_card(model_name=os.path.basename(os.path.abspath(self.args.output_dir)))

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if not self.is_world_process_zero():
            return
        path = os.path.join(self.args.output_dir, "README.md")
        if not os.path.exists(path):
            return
        lines = ["", "## AEPO", ""]
        if self._aepo_uses_pools:
            lines.append(
                "This model was trained with **AEPO** (Annotation-Efficient Preference Optimization, "
                "[arXiv:2405.13541](https://huggingface.co/papers/2405.13541)) using "
                "aepo-trainer: for each prompt, k of the N candidate "
                "completions were selected (representativeness + diversity), only those were annotated, and the "
                "preference pairs were formed on the fly during DPO training."
            )
        else:
            lines.append(
                "This model was trained with aepo-trainer's `AEPOTrainer` on preference pairs (DPO; no pool "
                "reduction was needed)."
            )
        lines += ["", "| setting | value |", "|---|---|"]
        lines += [f"| `{name}` | `{value}` |" for name, value in self.args.aepo_settings().items()]
        if self.annotation_service is not None:
            service = self.annotation_service
            budget = "unlimited" if service.budget is None else service.budget
            lines += [f"| annotator | `{service.identity}` |", f"| annotations spent | {service.spent} |"]
            lines += [f"| annotation budget | {budget} |", f"| annotation store | `{service.store.path}` |"]
        with open(path, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


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
            setattr(
                upgraded, f.name, f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            )
    return upgraded
