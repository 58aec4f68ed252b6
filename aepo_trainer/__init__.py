"""aepo-trainer: Annotation-Efficient Preference Optimization (AEPO) for TRL.

Swap `DPOConfig`/`DPOTrainer` for `AEPOConfig`/`AEPOTrainer`. On prompt/chosen/rejected data nothing changes; on
candidate pools (`{"prompt", "completions": [...]}`) each batch's pools are reduced on the fly: embed → select k of N
(representativeness + λ·diversity, one fused batched kernel) → annotate only the selected → pair → DPO.

Public names are imported lazily, so `import aepo_trainer` stays cheap and a CLI `--help` does not import torch.
"""

from __future__ import annotations

import importlib

from ._utils import moved

moved.install()  # old module paths of 0.1 keep importing (deprecated): see _utils/moved.py

__version__ = "0.1.0"

_EXPORTS = {
    "AEPOConfig": "aepo_trainer.config",
    "AEPOTrainer": "aepo_trainer.trainer.core",
    "AEPODataCollator": "aepo_trainer.data.collator",
    "select_subsets": "aepo_trainer.selection",
    "SelectionResult": "aepo_trainer.selection",
    "prompt_key": "aepo_trainer.selection",
    "Embedder": "aepo_trainer.embedding.embedder",
    "embed_pools": "aepo_trainer.embedding.embedder",
    "Annotator": "aepo_trainer.annotation",
    "AnnotationRequest": "aepo_trainer.annotation",
    "DatasetScoresAnnotator": "aepo_trainer.annotation",
    "RewardModelAnnotator": "aepo_trainer.annotation",
    "RewardFunctionAnnotator": "aepo_trainer.annotation",
    "PairwiseJudgeAnnotator": "aepo_trainer.annotation",
    "HumanQueueAnnotator": "aepo_trainer.annotation",
    "ApiJudgeAnnotator": "aepo_trainer.annotation",
    "ChatClient": "aepo_trainer.generation",
    "AnnotationStore": "aepo_trainer.annotation",
    "AnnotationService": "aepo_trainer.annotation",
    "BudgetExhausted": "aepo_trainer.annotation",
    "AnnotationsPending": "aepo_trainer.annotation",
    "make_pairs": "aepo_trainer.reduction.pairing",
    "reward_aware_loss": "aepo_trainer.trainer.losses",
    "AEPOError": "aepo_trainer.errors",
    "StorageWriteError": "aepo_trainer.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'aepo_trainer' has no attribute {name!r}")


def __dir__():
    return __all__
