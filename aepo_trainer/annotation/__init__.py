"""Annotation: annotators, the crash-safe annotation store and the budget ledger.

```python
from aepo_trainer.annotation import AnnotationRequest, AnnotationService, AnnotationStore, RewardFunctionAnnotator

service = AnnotationService(RewardFunctionAnnotator(my_reward), AnnotationStore("annotations.sqlite"), budget=1000)
outcome = service.annotate([AnnotationRequest(prompt, selected_completions, selected_indices, row)])
```

One annotation = one (prompt, completion) score: the unit of `annotation_budget`. See docs/annotation.md.
Importing this package does not import torch (the model-based annotators import it when they first score).
"""

from ..storage.annotations import AnnotationStore, StoredAnnotation
from .api_judge import ApiJudgeAnnotator
from .base import (
    PENDING,
    AnnotationError,
    AnnotationRequest,
    AnnotationsPending,
    Annotator,
    BudgetExhausted,
    canonical_json,
    is_valid_score,
    make_key,
)
from .dataset_scores import DatasetScoresAnnotator
from .factory import build_annotator
from .human import HumanQueueAnnotator
from .judge import DEFAULT_JUDGE_TEMPLATE, PairwiseJudgeAnnotator
from .reward_function import RewardFunctionAnnotator
from .reward_model import RewardModelAnnotator
from .service import AnnotationOutcome, AnnotationService

__all__ = [
    "DEFAULT_JUDGE_TEMPLATE",
    "PENDING",
    "AnnotationError",
    "AnnotationOutcome",
    "AnnotationRequest",
    "AnnotationService",
    "AnnotationStore",
    "AnnotationsPending",
    "Annotator",
    "ApiJudgeAnnotator",
    "BudgetExhausted",
    "DatasetScoresAnnotator",
    "HumanQueueAnnotator",
    "PairwiseJudgeAnnotator",
    "RewardFunctionAnnotator",
    "RewardModelAnnotator",
    "StoredAnnotation",
    "build_annotator",
    "canonical_json",
    "is_valid_score",
    "make_key",
]
