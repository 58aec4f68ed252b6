"""Every TRL name aepo-trainer uses that TRL does not export from its top level, in one place.

`AEPOTrainer` subclasses `trl.DPOTrainer` and calls TRL's own loss code on the pairs it forms, so it cannot avoid a
few of TRL's internal names. Each one is imported or named here, with the reason, and nowhere else; the test
`tests/test_trl_compat.py` fails loudly (naming the missing one) when a TRL release renames or removes any of them.
The package pins `trl>=1.16,<1.17`, the minor these names were read from.
"""

from __future__ import annotations

# On-policy pools sampled with vLLM: TRL's check for vLLM and its generation wrapper, which syncs the policy's weights
# into vLLM (colocate or server mode) exactly as TRL's own online trainers do. Importing it does not import vLLM.
from trl.generation.vllm_generation import VLLMGeneration
from trl.import_utils import is_vllm_available

# The pool loss hands TRL's `_compute_loss` a proxy model that returns rows of one fused-head pass; the proxy must
# return TRL's own output type, and the reference pass must use TRL's adapter switch and checkpointing guard so
# that the reference log-probs are exactly those DPOTrainer computes.
# On-policy sampling generates with the model outside its DDP/DeepSpeed wrapper (ZeRO-3 gathers the weights first),
# exactly as TRL's own online trainers do.
from trl.models.utils import disable_gradient_checkpointing, unwrap_model_for_generation

# `DataCollatorForPreference` is not exported by `trl` (another class of that name lives in reward_trainer.py):
# pair batches must go through DPO's own collator so that pair training stays bitwise identical to DPOTrainer.
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import FusedCausalLMOutput, use_adapter

__all__ = [
    "TRAINER_ATTRIBUTES",
    "TRAINER_HOOKS",
    "DataCollatorForPreference",
    "FusedCausalLMOutput",
    "VLLMGeneration",
    "disable_gradient_checkpointing",
    "is_vllm_available",
    "unwrap_model_for_generation",
    "use_adapter",
]

#: DPOTrainer methods with a leading underscore that AEPOTrainer overrides or calls, and why.
TRAINER_HOOKS = {
    "_prepare_dataset": "pool datasets are tokenized by TRL's own pair tokenization, then regrouped per prompt",
    "_set_signature_columns_if_needed": "pool batches need the text, score and embedding columns TRL would drop",
    "_compute_loss": "TRL's 15 loss types run unchanged on the pairs formed in the training step",
}

#: DPOTrainer attributes with a leading underscore (or loss settings) that the pool loss reads or sets, and why.
TRAINER_ATTRIBUTES = {
    "_metrics": "the aepo/* metrics are logged through TRL's own metric store, averaged like TRL's",
    "_total_train_tokens": "tokens are counted once per response (TRL would count a response once per pair)",
    "loss_types": "TRL's loss types run on the pairs; the rpo_* types are computed by aepo-trainer",
    "loss_weights": "the weights of TRL's loss types, split from those of the rpo_* types",
    "precompute_ref_logps": "reference log-probs come from the one reference pass of the group batch",
    "aux_loss_enabled": "MoE router logits are requested exactly when TRL requests them",
    "_tokenizer": "the tokenizer TRL resolved from `processing_class` (its pad token pads the pool batches)",
    "_signature_columns": "transformers' kept-columns list, reset when a pool dataset is prepared for `evaluate()`",
}
