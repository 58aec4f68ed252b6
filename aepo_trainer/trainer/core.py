"""`AEPOTrainer`: TRL's `DPOTrainer`, plus on-the-fly reduction of candidate pools.

Given prompt/chosen/rejected data (standard, conversational or implicit-prompt), the trainer *is* `DPOTrainer`: no
hook changes what it computes, so the logged losses and final weights are bitwise equal to DPOTrainer's for the same
seed. Given candidate pools (`{"prompt", "completions": [...]}`), the pools are prepared once (`aepo_trainer.data.pools`),
the DataLoader only pads and stacks them (`AEPODataCollator`, a pure function), and each optimizer step's batches are
reduced in the step itself, like TRL's GRPOTrainer generates and scores in its step (`get_batch_samples` ->
`aepo_trainer.trainer.step`: select k of N on every rank -> annotate on the main process, one ledger -> pair -> lay
out). The loss of the resulting group batch is computed by `aepo_trainer.trainer.pool_loss` (TRL's loss types on the pairs,
plus the reward-aware `rpo_*` losses over all ordered pairs of each prompt's responses), as a mean over the pairs
actually formed.
"""

from __future__ import annotations

import collections
import logging
import os
import textwrap

import torch
from accelerate import PartialState
from transformers.trainer_utils import TrainOutput
from trl import DPOConfig, DPOTrainer

from .._utils.timing import PhaseTimer, phase
from ..annotation.factory import judge_available, refuse_annotator_as_feature_model
from ..config import AEPOConfig
from ..data import pools, validation
from ..data.collator import AEPODataCollator, is_pool_batch
from ..data.kinds import is_prompt_only_dataset
from ..errors import storage_guard
from .batch_keys import STEP_PAIRS
from .model_card import model_card_section
from .pool_loss import PairLossMeans, compute_pool_loss
from .run_control import (
    AEPOControlCallback,
    as_aepo_config,
    budget_already_spent,
    default_run_id,
    last_complete_checkpoint,
    refuse_options_pools_cannot_honour,
    restore_run_state,
)

logger = logging.getLogger(__name__)


__all__ = ["AEPOTrainer", "default_run_id", "last_complete_checkpoint"]


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
            args = as_aepo_config(args)

        validation.validate_training_inputs(  # before anything slow or paid: every row, the annotator, the budget
            args,
            train_dataset,
            eval_dataset,
            annotator,
            judge_available=judge_available(model, ref_model, peft_config),
        )
        eval_sets = list(eval_dataset.values()) if isinstance(eval_dataset, dict) else [eval_dataset]
        self._aepo_on_policy = is_prompt_only_dataset(train_dataset, args)  # pools sampled in the step (on_policy.py)
        self._aepo_trains_on_pools = pools.is_pool_dataset(train_dataset, args) or self._aepo_on_policy
        self._aepo_uses_pools = self._aepo_on_policy or any(
            pools.is_pool_dataset(d, args) for d in [train_dataset, *eval_sets]
        )
        self.aepo_on_policy = None
        self.aepo_phase_timer = None
        self._aepo_pool_columns: list[str] = []
        self._aepo_embedder = None
        self._aepo_seen_prompt_keys: list[int] = []
        self._aepo_recent_pairs: collections.deque = collections.deque(maxlen=8)
        self._aepo_empty_step_schedule = None
        self._aepo_losses = PairLossMeans()  # the logged losses: means over pairs
        self.aepo_stop_reason: str | None = None
        self.annotation_services: dict = {}
        self.pool_reducer = None
        if self._aepo_uses_pools:
            refuse_options_pools_cannot_honour(args)
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

    @property
    def annotation_service(self):
        """The training run's `AnnotationService` (budget ledger + store) — on the main process only, None elsewhere:
        every process's annotation requests are paid for there (see `annotation.ledger`)."""
        return self.annotation_services.get("train")

    @property
    def eval_annotation_service(self):
        """The evaluation ledger (its own run id and `eval_annotation_budget`), main process only."""
        return self.annotation_services.get("eval")

    def _aepo_setup(self, annotator, user_collator: bool) -> None:
        from ..reduction.reducer import PoolReducer

        args = self.args
        self.pad_token_id = self._tokenizer.pad_token_id
        refuse_annotator_as_feature_model(args, annotator)  # on every rank, before anything is loaded or paid
        if self.accelerator.is_main_process:  # one ledger and one store for the whole run, whatever the world size
            from ..annotation.factory import resolve_annotator
            from ..annotation.service import AnnotationService

            run_id = default_run_id(args)
            train_annotator = resolve_annotator(
                args, annotator, model=self.model, ref_model=self.ref_model, tokenizer=self._tokenizer
            )
            eval_annotator = train_annotator
            if annotator is None and args.annotator == "api_judge":
                # the judge meters its dollars under a run id: evaluation gets a ledger of its own there too
                from ..annotation import build_annotator

                eval_annotator = build_annotator(args, run_id=f"{run_id}-eval")
            self.annotation_services = {
                "train": AnnotationService.from_config(args, train_annotator, run_id=run_id),
                "eval": AnnotationService.from_config(
                    args, eval_annotator, run_id=f"{run_id}-eval", budget=args.eval_annotation_budget
                ),
            }
        # the labels are the dataset's own scores: agreement with them means nothing (see `reduction._gold_agreement`)
        self._aepo_labels_are_dataset_scores = annotator is None and args.annotator == "dataset_scores"
        self.pool_reducer = PoolReducer(args, device=self.accelerator.device)
        if not user_collator:
            self.data_collator = AEPODataCollator.from_config(args, pad_token_id=self.pad_token_id)
        from .on_policy import OnPolicyPools, PromptCollator

        self.aepo_phase_timer = PhaseTimer()
        if self._aepo_on_policy:
            self.aepo_on_policy = OnPolicyPools(self)
            if not user_collator:
                self.data_collator = PromptCollator(fallback=self.data_collator)
        if self._aepo_trains_on_pools:
            # The pool loss is already a mean over the step's pairs (see `pool_loss`): no division by the number of
            # accumulation steps on top of it.
            self.loss_is_scaled_for_ga = True
        self.add_callback(AEPOControlCallback(self))
        if args.needs_implicit_rewards:
            from .policy_signals import PolicySignalsCallback, check_policy_signals_setup

            check_policy_signals_setup(self)  # sharded weights, bf16 on a GPU without it: refused before paid work
            self.add_callback(PolicySignalsCallback(self))

    def _aepo_embed(self, dataset, args):
        """Sentence embeddings of every candidate, computed once and cached by the dataset fingerprint."""
        from ..embedding.embedder import Embedder, embed_pools

        if self._aepo_embedder is None:
            self._aepo_embedder = Embedder.from_config(args, device=args.device)
        state = PartialState()
        with state.main_process_first(), state.local_main_process_first():  # embed once, then read the cache
            return embed_pools(
                dataset,
                completions_column=args.completions_column,
                embedder=self._aepo_embedder,
                embeddings_column=args.embeddings_column,
            )

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        from .on_policy import validate_prompt_dataset

        if is_prompt_only_dataset(dataset, args):  # on-policy: the pools are generated in the training step
            if dataset_name != "train":
                raise ValueError(
                    f"The {dataset_name} dataset has only a prompt column: on-policy pools are sampled for training "
                    "only. Evaluate on candidate pools (`aepo generate`) or on prompt/chosen/rejected pairs."
                )
            validate_prompt_dataset(dataset, dataset_name)
            columns = getattr(self, "_aepo_pool_columns", [])
            self._aepo_pool_columns = list(dict.fromkeys([*columns, *dataset.column_names]))
            return dataset
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

    def get_train_dataloader(self):
        """With `prompt_selection_window` W on pools, W x the batch per micro-batch (the step keeps 1/W of it,
        `selection.prompts`): the Trainer's steps, schedule and resume skipping count windows, as trained."""
        window = self.args.prompt_selection_window if self._aepo_trains_on_pools else 1
        batch_size, self._train_batch_size = self._train_batch_size, self._train_batch_size * window
        try:
            return super().get_train_dataloader()
        finally:
            self._train_batch_size = batch_size

    # ------------------------------------------------------------------------------------------------ the step

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Fetch the step's micro-batches, then reduce the pool batches among them (select -> annotate -> pair).

        This is the one place where training pays for annotations: the batches fetched here are exactly those the
        coming optimizer step trains on (the Trainer fetches all its accumulation micro-batches here first).
        """
        if not self._aepo_trains_on_pools:
            return super().get_batch_samples(epoch_iterator, num_batches, device)
        if budget_already_spent(self):
            self.control.should_training_stop = True
            return [], None
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.aepo_on_policy is not None:  # prompt batches -> pools sampled from the current policy
            from .on_policy import ON_POLICY_ROWS

            prompt_batches = [b for b in batches if ON_POLICY_ROWS in b]
            if prompt_batches:
                generated = iter(self.aepo_on_policy.pool_batches(prompt_batches))
                batches = [next(generated) if ON_POLICY_ROWS in b else b for b in batches]
        self._aepo_name_policy_version()
        pool_batches = [b for b in batches if is_pool_batch(b)]
        if not pool_batches:
            return batches, None
        groups = self._aepo_reduce(pool_batches, "train")
        if groups and groups[0][STEP_PAIRS] == 0 and self.lr_scheduler is not None:
            # No prompt on any process formed a pair: the step will not touch the weights (see `training_step`);
            # remember the schedule so that the control callback can undo its advance after the step.
            self._aepo_empty_step_schedule = (
                self.lr_scheduler.state_dict(),
                [group["lr"] for group in self.optimizer.param_groups],
            )
        return groups, None

    def policy_signals_of_step(self):
        """The training step's policy-signals function, `batch -> PolicySignals | None` (`policy_signals`): a subclass
        may override it to observe or replace the signals the step's selection reads (an experiment's probe)."""
        from .policy_signals import policy_signals_of_step

        return policy_signals_of_step(self)

    def _aepo_reduce(self, pool_batches: list[dict], mode: str) -> list[dict]:
        """Run the step's reduction (`step.reduce_pool_batches`) and apply its result to this trainer's state."""
        from ..selection.prompts import dataset_size, planned_prompts
        from .step import GroupLayout, reduce_pool_batches

        args = self.args
        reducer = self.pool_reducer
        result = reduce_pool_batches(
            pool_batches,
            mode,
            reducer=reducer,
            service=self.annotation_services.get(mode) if self.annotation_services else None,
            accelerator=self.accelerator,
            layout=GroupLayout(self.pad_token_id, args.max_length, args.truncation_mode, args.pad_to_multiple_of),
            pairs_are_terms=any(t not in args.rpo_loss_types for t in self.loss_types),
            include_unpaired=bool(args.rpo_loss_types),
            completions_column=args.completions_column,
            policy_signals=self.policy_signals_of_step() if reducer.needed_signals else None,
            timer=self.aepo_phase_timer,
            gold_agreement=not self._aepo_labels_are_dataset_scores,
            planned_prompts=planned_prompts(args, dataset_size(self.train_dataset), self.accelerator.num_processes),
        )
        metrics = self._metrics[mode]
        for name, value, running_total in result.metrics:
            if running_total:
                metrics[name] = [value]
            else:
                metrics[name].append(value)
        if mode == "train":
            self._aepo_recent_pairs.extend(result.recent_pairs)
            self._aepo_after_annotation(result.reply, result.summary)
        return result.groups

    def training_step(self, model, inputs, num_items_in_batch=None):
        if STEP_PAIRS in inputs and inputs[STEP_PAIRS] == 0:
            # No pair on any process in this step: no forward, no backward, so the gradients stay unset and the
            # optimizer step leaves weights and optimizer state as they are.
            model.train()  # as `Trainer.training_step` would: the step's metrics are logged as training metrics
            return torch.zeros((), device=self.args.device)
        with phase(self.aepo_phase_timer, "train"):
            return super().training_step(model, inputs, num_items_in_batch)

    def _aepo_name_policy_version(self) -> None:
        """A judge that is the live policy (`annotator='self_judge'`) is named by the run and the step: the weights
        of step s are the same in a resumed run, so its judgments are reused; a later step is a new judge."""
        service = self.annotation_service
        annotator = getattr(service, "annotator", None)
        if getattr(annotator, "live", False) and hasattr(annotator, "set_policy_version"):
            annotator.set_policy_version(f"{default_run_id(self.args)}:step={self.state.global_step}")

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if is_pool_batch(inputs):
            inputs = self._aepo_reduce([inputs], "eval")[0]
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def _compute_loss(self, model, inputs, return_outputs):
        if "pair_chosen_rows" not in inputs:
            return super()._compute_loss(model, inputs, return_outputs)
        result = compute_pool_loss(self, model, inputs, return_outputs)
        mode = "train" if self.model.training else "eval"
        if result.prompt_keys is not None:
            self._aepo_seen_prompt_keys.extend(result.prompt_keys)
        self._aepo_losses.add(mode, result.batch_mean, result.terms)
        return (result.loss, result.outputs) if return_outputs else result.loss

    def _aepo_after_annotation(self, reply, summary: dict) -> None:
        """After a training step's annotation: decide (identically on every process) whether to stop after it."""
        if self.aepo_stop_reason is not None:
            return
        if reply.pending is not None:
            self.aepo_stop_reason = f"Annotations pending: {reply.pending}"
            return
        budget = self.args.annotation_budget
        no_more = budget is not None and summary["budget_left"] < self.args.num_annotations
        if summary["budget_exhausted"] or no_more:  # a prompt was skipped, or the next one cannot be paid for
            service = self.annotation_service
            self.aepo_stop_reason = (
                service.budget_message()
                if service is not None
                else f"Annotation budget exhausted: {summary['spent']:.0f}/{budget} annotations spent."
            )

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        self._aepo_losses.reset("eval")
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self._aepo_uses_pools and f"{metric_key_prefix}_loss" in output.metrics and self._aepo_losses.terms("eval"):
            output.metrics[f"{metric_key_prefix}_loss"] = self._aepo_losses.mean(self.accelerator, "eval", reset=True)
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._aepo_trains_on_pools and self.model.training:
            # The Trainer's loss averages steps (a step without pairs would count as 0): report means over pairs.
            if "loss" in logs:
                logs["loss"] = self._aepo_losses.mean(self.accelerator, "train", reset=True)
            if "train_loss" in logs:
                logs["train_loss"] = self._aepo_losses.mean(self.accelerator, "train_total", reset=False)
            if "loss" in logs and self.aepo_phase_timer is not None:
                logs.update(self.aepo_phase_timer.report(accelerator=self.accelerator))
        super().log(logs, start_time)

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """`Trainer.train`, where `resume_from_checkpoint=True` takes the last *complete* checkpoint of `output_dir`
        (a checkpoint folder cut short by a kill during its save is skipped) and starts afresh when there is none, so
        that "rerun the same command" always works; the run's loss is the mean over pairs."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                logger.warning("AEPO: no complete checkpoint in %s: training from the start.", self.args.output_dir)
        self._aepo_losses.reset("train_total")
        if resume_from_checkpoint:  # an active strategy's labels, the on-policy counters
            restore_run_state(self, resume_from_checkpoint)
        if self._aepo_trains_on_pools and self.args.needs_implicit_rewards:
            from .policy_signals import prepare_reference_cache

            prepare_reference_cache(self, resume_from_checkpoint)
        output = super().train(
            resume_from_checkpoint=resume_from_checkpoint,
            trial=trial,
            ignore_keys_for_eval=ignore_keys_for_eval,
            **kwargs,
        )
        if self._aepo_trains_on_pools:
            loss = self._aepo_losses.mean(self.accelerator, "train_total", reset=False)
            output = TrainOutput(output.global_step, loss, {**output.metrics, "train_loss": loss})
        return output

    # ------------------------------------------------------------------------------------------------ reporting

    @property
    def seen_prompt_keys(self) -> list[int]:
        """The keys (`prompt_key`) of the prompts trained on so far by this process, in order (one per trained pool
        row; for reports and for the tests of exact pay)."""
        return list(self._aepo_seen_prompt_keys)

    def restore_schedule_after_empty_step(self) -> None:
        """After a step that formed no pair on any process (its optimizer step changed nothing), put the
        learning-rate schedule back where it was before the step (called by `AEPOControlCallback.on_step_end`)."""
        saved = self._aepo_empty_step_schedule
        if saved is None:
            return
        self._aepo_empty_step_schedule = None
        scheduler_state, lrs = saved
        if self.lr_scheduler is not None:
            self.lr_scheduler.load_state_dict(scheduler_state)
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr

    @property
    def recent_pairs(self) -> list[dict]:
        """The last pairs formed in training on this process (prompt, chosen, rejected, scores), for reports."""
        return list(self._aepo_recent_pairs)

    def save_model(self, output_dir=None, _internal_call=False):
        super().save_model(output_dir, _internal_call)
        # TRL writes the card only with checkpoints: with save_strategy="no" the saved model would have none.
        if not _internal_call and os.path.abspath(output_dir or self.args.output_dir) == os.path.abspath(
            self.args.output_dir
        ):
            self.create_model_card(model_name=os.path.basename(os.path.abspath(self.args.output_dir)))

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        path = os.path.join(self.args.output_dir, "README.md")
        with storage_guard(path):  # a full disk or a read-only place: StorageWriteError naming the card
            super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if not self.is_world_process_zero():
            return
        if not os.path.exists(path):
            return
        with storage_guard(path), open(path, "a", encoding="utf-8") as f:
            f.write(model_card_section(self.args, self._aepo_uses_pools, self.annotation_service))
