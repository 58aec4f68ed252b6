"""The loss of a pool (group) batch: one policy and one reference pass over every response, then TRL's own loss types
on the gathered pairs and the reward-aware (RPO) losses on all ordered pairs of each prompt's responses. When the
step's policy-signals pass already has the responses' reference log-probs (`aepo_ref_logps`, `policy_signals`), the
reference pass is skipped and TRL's precomputed-reference path takes them.

TRL's loss code is *called*, not copied: `DPOTrainer._compute_loss` runs on the gathered `[chosen; rejected]` rows
with a proxy policy and a proxy reference that hand back the rows of the single passes made here. Everything TRL does
on pairs (15 loss types with `loss_weights`, `ld_alpha`, f-divergences, WPO weighting, MoE aux loss, its metrics)
therefore applies unchanged to the pairs formed on the fly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from accelerate.utils import pad_across_processes
from trl import DPOTrainer

from .._trl_compat import FusedCausalLMOutput
from .batch_keys import REF_LOGPS, STEP_PAIRS, TERMS
from .losses import RPO_LOSS_TYPES, mean_multi_response_reward_aware_loss
from .reference import reference_outputs

_PER_TOKEN_FIELDS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask")


class PairLossMeans:
    """The trainer's logged losses as means over pairs: `Σ loss × terms` and `terms` per accumulator ("train" since
    the last log, "train_total" for the run, "eval" for one evaluation), summed over processes when read."""

    def __init__(self):
        self.sums = {"train": [0.0, 0], "train_total": [0.0, 0], "eval": [0.0, 0]}

    def add(self, mode: str, loss: torch.Tensor, terms: int) -> None:
        """Add one batch's mean loss (over its `terms` pairs)."""
        if terms <= 0:
            return
        value = float(loss) * terms
        for key in ("train", "train_total") if mode == "train" else ("eval",):
            self.sums[key][0] += value
            self.sums[key][1] += terms

    def reset(self, key: str) -> None:
        self.sums[key] = [0.0, 0]

    def terms(self, key: str) -> int:
        return self.sums[key][1]

    def mean(self, accelerator, key: str, reset: bool) -> float:
        """Mean loss over the pairs of every process since `key` was last reset (NaN: no pair)."""
        total = torch.tensor(self.sums[key], dtype=torch.float64, device=accelerator.device)
        if accelerator.num_processes > 1:
            total = accelerator.reduce(total, "sum")
        if reset:
            self.reset(key)
        return float(total[0] / total[1]) if total[1] > 0 else math.nan


class _GatheredModel:
    """Stands in for a model inside `DPOTrainer._compute_loss`: a fused-head call returns the rows `index` of a pass
    already made; any other call (TRL's deprecated `return_outputs` logits) goes to the real model."""

    def __init__(self, outputs, index: torch.Tensor, model=None):
        self._outputs, self._index, self._model = outputs, index, model

    def __call__(self, *args, fused_lm_head: bool = False, **kwargs):
        if not fused_lm_head:
            if self._model is None:  # pragma: no cover - TRL only calls the reference with the fused head
                raise RuntimeError("The reference proxy only serves fused-head log-probabilities.")
            return self._model(*args, **kwargs)
        fields = {
            name: (None if getattr(self._outputs, name, None) is None else getattr(self._outputs, name)[self._index])
            for name in _PER_TOKEN_FIELDS
        }
        return FusedCausalLMOutput(loss=self._outputs.loss, aux_loss=getattr(self._outputs, "aux_loss", None), **fields)


def _varlen_gather(accelerator):
    """`accelerator.gather` for tensors whose first dimension differs between processes.

    TRL's `_compute_loss` gathers per-pair tensors for its metrics; the number of pairs of a batch depends on ties and
    on the budget, so it differs between processes. The rows are padded with accelerate's `pad_across_processes`,
    gathered, and the padding is removed using the gathered sizes."""
    gather = accelerator.gather

    def varlen(tensor):
        if not isinstance(tensor, torch.Tensor) or tensor.ndim == 0:
            return gather(tensor)
        sizes = gather(torch.tensor([tensor.shape[0]], device=tensor.device)).tolist()
        padded = pad_across_processes(tensor.contiguous(), dim=0)
        gathered = gather(padded).view(len(sizes), max(sizes), *tensor.shape[1:])
        return torch.cat([gathered[r, : sizes[r]] for r in range(len(sizes))])

    return varlen


class _VarlenAccelerator:
    """The trainer's accelerator as TRL's `_compute_loss` sees it for the duration of one pool loss: every attribute
    is the real accelerator's, except `gather`/`gather_for_metrics` of per-pair tensors, which accept a different
    number of rows per process. Installed on the trainer for one call and removed in a `finally`."""

    def __init__(self, accelerator):
        self._accelerator = accelerator
        self.gather = _varlen_gather(accelerator)
        self.gather_for_metrics = self.gather

    def __getattr__(self, name):
        return getattr(self._accelerator, name)


def _drop_nan_entries(metrics: dict, lengths: dict) -> None:
    """Remove the metric entries TRL appended for a step without any pair on any process (means of nothing)."""
    for key, values in list(metrics.items()):
        start = lengths.get(key, 0)
        if isinstance(values, list) and len(values) > start:
            kept = [v for v in values[start:] if not (isinstance(v, float) and math.isnan(v))]
            del values[start:]
            values.extend(kept)
        if isinstance(values, list) and not values:  # TRL's `log` averages every key: no empty lists
            del metrics[key]


@dataclass
class PoolLoss:
    """What the loss of one group batch gives the trainer.

    Attributes:
        loss: the value to back-propagate (in training, weighted by the batch's share of the step's terms).
        batch_mean: the batch's unweighted mean loss over its own terms, detached (for the logged means over pairs).
        terms: the batch's loss terms on this process (pairs; for `rpo_*` alone: prompts with >= 2 responses).
        prompt_keys: the keys of the prompts the batch trains on (training only; None otherwise).
        outputs: the model's plain outputs when `return_outputs` was asked (TRL's deprecated logits), else None.
    """

    loss: torch.Tensor
    batch_mean: torch.Tensor
    terms: int
    prompt_keys: list[int] | None = None
    outputs: object = None


def compute_pool_loss(trainer, model, inputs: dict, return_outputs: bool = False) -> PoolLoss:
    """Loss of a group batch (`group_batch.build_group_batch`); called by `AEPOTrainer._compute_loss`.

    The batch's loss is the mean over its own pairs (TRL's loss types) plus the reward-aware terms. In training it is
    returned weighted by the batch's share of the step's pairs (all micro-batches, all processes), so that the
    gradient of the optimizer step is that of the mean over every pair the step formed: a batch without pairs adds
    nothing, and a batch with one pair weighs half as much as a batch with two. The unweighted mean and the pair
    count are returned too: the trainer adds them to its loss accumulators (the logged `loss`/`eval_loss` are means
    over pairs)."""
    mode = "train" if trainer.model.training else "eval"
    inputs = dict(inputs)
    chosen_rows = inputs.pop("pair_chosen_rows")
    rejected_rows = inputs.pop("pair_rejected_rows")
    scores = inputs.pop("response_scores")
    groups = inputs.pop("response_groups")
    inputs.pop("response_candidates", None)
    # The reference log-probs of the rows, when the policy-signals pass of this step already has them
    # (`policy_signals`): the step then makes no reference pass. Per-token values (`ld_alpha`) still need one.
    cached_ref = inputs.pop(REF_LOGPS, None)
    if trainer.ld_alpha is not None:
        cached_ref = None
    terms = int(inputs.pop(TERMS))
    step_terms = int(inputs.pop(STEP_PAIRS))
    prompt_keys = inputs.pop("aepo_prompt_keys", None)
    trained_keys = [int(k) for k in prompt_keys.tolist()] if prompt_keys is not None and mode == "train" else None

    input_ids, attention_mask, completion_mask = (
        inputs["input_ids"],
        inputs["attention_mask"],
        inputs["completion_mask"],
    )
    model_kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    if trainer.aux_loss_enabled:
        model_kwargs["output_router_logits"] = True
    labels = input_ids.masked_fill(completion_mask == 0, -100)

    # One policy pass and one reference pass over every response of the batch.
    outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
    ref_outputs = reference_outputs(trainer, model_kwargs, labels) if cached_ref is None else None
    seq_len = completion_mask.size(1) - 1
    # A zero attached to the whole graph: keeps empty batches differentiable and every parameter used (DDP).
    loss = outputs.log_probs.sum() * 0.0

    # TRL's loss types on the gathered pairs. Every process runs this (also with no pair) so that TRL's collective
    # metric gathers line up across processes.
    trl_types = [(t, w) for t, w in zip(trainer.loss_types, trainer.loss_weights) if t not in RPO_LOSS_TYPES]
    rpo_types = [(t, w) for t, w in zip(trainer.loss_types, trainer.loss_weights) if t in RPO_LOSS_TYPES]
    pair_index = torch.cat([chosen_rows, rejected_rows]).to(input_ids.device)
    num_pairs = int(chosen_rows.numel())
    pair_inputs = {
        "input_ids": input_ids[pair_index],
        "attention_mask": attention_mask[pair_index],
        "completion_mask": completion_mask[pair_index],
    }
    saved = (trainer.loss_types, trainer.loss_weights, trainer.ref_model, trainer.precompute_ref_logps)
    tokens_before = trainer._total_train_tokens
    accelerator = trainer.accelerator
    metric_lengths = {key: len(v) for key, v in trainer._metrics[mode].items() if isinstance(v, list)}
    try:
        trainer.loss_types = [t for t, _ in trl_types]
        trainer.loss_weights = [w for _, w in trl_types]
        if cached_ref is None:
            trainer.ref_model = _GatheredModel(ref_outputs, pair_index)
            trainer.precompute_ref_logps = False
        else:  # TRL's own precomputed-reference path, on the gathered pairs
            trainer.precompute_ref_logps = True
            pair_inputs["ref_chosen_logps"] = cached_ref[chosen_rows.to(cached_ref.device)]
            pair_inputs["ref_rejected_logps"] = cached_ref[rejected_rows.to(cached_ref.device)]
        if accelerator.num_processes > 1:
            trainer.accelerator = _VarlenAccelerator(accelerator)
        trl_loss = DPOTrainer._compute_loss(trainer, _GatheredModel(outputs, pair_index, model), pair_inputs, False)
    finally:
        trainer.loss_types, trainer.loss_weights, trainer.ref_model, trainer.precompute_ref_logps = saved
        trainer.accelerator = accelerator
    if num_pairs > 0 and isinstance(trl_loss, torch.Tensor):
        loss = loss + trl_loss

    # Reward-aware losses over all ordered pairs of each prompt's annotated responses.
    rpo_values = []
    if rpo_types:
        shift_mask = completion_mask[:, 1:].to(outputs.log_probs.dtype)
        policy_logps = (outputs.log_probs[:, -seq_len:] * shift_mask).sum(dim=1)
        if cached_ref is None:
            ref_logps = (ref_outputs.log_probs[:, -seq_len:] * shift_mask).sum(dim=1)
        else:
            ref_logps = cached_ref.to(policy_logps.dtype)
        valid = groups.to(input_ids.device) >= 0
        logratios = (policy_logps - ref_logps)[valid]
        for kind, weight in rpo_types:
            value = mean_multi_response_reward_aware_loss(
                logratios,
                scores.to(input_ids.device)[valid],
                groups.to(input_ids.device)[valid],
                kind,
                beta=trainer.beta,
                reward_scale=trainer.args.reward_scale,
            )
            loss = loss + weight * value
            rpo_values.append((kind, value))

    # Token count: each response once (TRL counted the gathered pairs, where a response can repeat).
    if mode == "train":
        tokens = accelerator.gather_for_metrics(attention_mask[groups.to(attention_mask.device) >= 0].sum()).sum()
        trainer._total_train_tokens = tokens_before + int(tokens.item()) // trainer.get_tp_size()
        trainer._metrics[mode]["num_tokens"] = [trainer._total_train_tokens]
    for name, value in rpo_values:
        trainer._metrics[mode][f"aepo/{name}"].append(float(accelerator.gather(value.detach().reshape(1)).mean()))
    _drop_nan_entries(trainer._metrics[mode], metric_lengths)

    batch_mean = loss.detach()
    if mode == "train" and step_terms > 0:
        loss = loss * (terms * accelerator.num_processes / step_terms)

    plain_outputs = None
    if return_outputs:  # TRL's deprecated logits for `compute_metrics`: an extra plain forward, as TRL does
        with torch.no_grad():
            plain_outputs = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return PoolLoss(loss, batch_mean, terms, trained_keys, plain_outputs)
