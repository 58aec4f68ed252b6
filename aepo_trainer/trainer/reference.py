"""The reference model's per-token log-probs of a batch of responses, exactly as `DPOTrainer._compute_loss` gets them
(used by the pool loss and by the implicit rewards of the candidates)."""

from __future__ import annotations

import torch
from accelerate.utils import is_peft_model

from .._trl_compat import disable_gradient_checkpointing, use_adapter

__all__ = ["reference_outputs"]


def reference_outputs(trainer, model_kwargs: dict, labels: torch.Tensor):
    """Reference per-token log-probs of every response, once: `ref_model`, or the policy with its PEFT adapter
    disabled (or the frozen "ref" adapter), exactly as `DPOTrainer._compute_loss` obtains them."""
    ref_kwargs = {k: v for k, v in model_kwargs.items() if k != "output_router_logits"}
    with torch.no_grad(), disable_gradient_checkpointing(trainer.model, trainer.args.gradient_checkpointing_kwargs):
        if trainer.ref_model is None and is_peft_model(trainer.model):
            unwrapped = trainer.accelerator.unwrap_model(trainer.model)
            with use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None):
                return trainer.model(**ref_kwargs, labels=labels, fused_lm_head=True)
        if trainer.ref_model is None:
            raise ValueError(
                "No reference model is available for the pool batch: pass `ref_model`, train a PEFT adapter, or load "
                "the policy from a path so that the reference can be re-loaded from it."
            )
        return trainer.ref_model(**ref_kwargs, labels=labels, fused_lm_head=True)
