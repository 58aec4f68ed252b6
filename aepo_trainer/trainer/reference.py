"""The reference model's per-token log-probs of a batch of responses, exactly as `DPOTrainer._compute_loss` gets them
(used by the pool loss and by the implicit rewards of the candidates)."""

from __future__ import annotations

import torch
from accelerate.utils import is_peft_model

from .._trl_compat import disable_gradient_checkpointing, use_adapter

__all__ = ["reference_outputs", "reference_source"]


def reference_source(trainer) -> str | None:
    """Which model is the reference, by `DPOTrainer`'s rule (one place for every pass that needs it): "ref_model" when
    one was given; for a PEFT policy without one, "ref_adapter" (its frozen "ref" adapter) or "adapter_disabled" (the
    policy with its adapter off); None when there is no reference (callers say what to pass)."""
    if trainer.ref_model is not None:
        return "ref_model"
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    if is_peft_model(unwrapped):
        return "ref_adapter" if "ref" in unwrapped.peft_config else "adapter_disabled"
    return None


def reference_outputs(trainer, model_kwargs: dict, labels: torch.Tensor):
    """Reference per-token log-probs of every response, once: `ref_model`, or the policy with its PEFT adapter
    disabled (or the frozen "ref" adapter), exactly as `DPOTrainer._compute_loss` obtains them."""
    ref_kwargs = {k: v for k, v in model_kwargs.items() if k != "output_router_logits"}
    with torch.no_grad(), disable_gradient_checkpointing(trainer.model, trainer.args.gradient_checkpointing_kwargs):
        source = reference_source(trainer)
        if source in ("ref_adapter", "adapter_disabled"):
            unwrapped = trainer.accelerator.unwrap_model(trainer.model)
            with use_adapter(unwrapped, adapter_name="ref" if source == "ref_adapter" else None):
                return trainer.model(**ref_kwargs, labels=labels, fused_lm_head=True)
        if source is None:
            raise ValueError(
                "No reference model is available for the pool batch: pass `ref_model`, train a PEFT adapter, or load "
                "the policy from a path so that the reference can be re-loaded from it."
            )
        return trainer.ref_model(**ref_kwargs, labels=labels, fused_lm_head=True)
