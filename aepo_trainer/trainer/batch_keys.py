"""Keys the training step adds to a group batch, read by the loss (a leaf module: both sides import it)."""

from __future__ import annotations

__all__ = ["REF_LOGPS", "STEP_PAIRS", "TERMS"]

TERMS = (
    "aepo_terms"  # loss terms of this micro-batch on this rank (pairs; for rpo_* alone: prompts with >= 2 responses)
)
STEP_PAIRS = "aepo_step_terms"  # loss terms of the whole optimizer step, all micro-batches, all ranks
REF_LOGPS = "aepo_ref_logps"  # [R] reference log-prob of each response, from the step's policy-signals pass
