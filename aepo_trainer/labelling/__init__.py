"""The labelling page: people label a run's human queue in a browser (`aepo label`, docs/labelling.md).

```python
from aepo_trainer.labelling import LabellingServer, LabellingSettings, create_app

app = create_app("pairs.jsonl.annotations.sqlite", "pairs.jsonl.annotation_queue.jsonl", settings=LabellingSettings())
with LabellingServer(app) as server:  # 127.0.0.1 on a free port, in a background thread
    print(server.url)
```

Answers are committed to the run's annotation store (`LabelBook`) before the next item shows; a run's
`HumanQueueAnnotator` reads the finished ones (one score per item: the mean of the labellers' scores, or of their
Borda points for rankings — `agreement`), stores them as its annotations and marks their ledger charges paid.
Public names are imported lazily (one table below): importing this package imports neither FastAPI nor uvicorn
(`create_app` does, on first use), and `storage.label_book` can use `agreement` without importing the page.
"""

from .._utils.lazy import lazy_getattr

# Bound eagerly (a light module, no cycle): as a lazy name, `agreement` would resolve to the submodule of the same name
# once anything imported it (storage.label_book does), not to the function.
from .agreement import aggregate as aggregate
from .agreement import agreement as agreement
from .agreement import best_worst_points as best_worst_points
from .agreement import borda_points as borda_points

_EXPORTS = {
    "Answer": "aepo_trainer.storage.label_book",
    "LabelBook": "aepo_trainer.storage.label_book",
    "LabelConflict": "aepo_trainer.storage.label_book",
    "LabellingSettings": "aepo_trainer.storage.label_book",
    "read_final_labels": "aepo_trainer.storage.label_book",
    "Review": "aepo_trainer.storage.label_book",
    "ServerLimits": "aepo_trainer.labelling.security",
    "LabellerTokens": "aepo_trainer.labelling.auth",
    "load_tokens": "aepo_trainer.labelling.auth",
    "render_markdown": "aepo_trainer.labelling.render",
    "render_turns": "aepo_trainer.labelling.render",
    "LabellingServer": "aepo_trainer.labelling.server",
    "is_loopback": "aepo_trainer.labelling.server",
    "Progress": "aepo_trainer.labelling.tasks",
    "QueueView": "aepo_trainer.labelling.tasks",
    "Task": "aepo_trainer.labelling.tasks",
    "create_app": "aepo_trainer.labelling.app",
}
__all__ = sorted([*_EXPORTS, "aggregate", "agreement", "best_worst_points", "borda_points"])

__getattr__ = lazy_getattr(__name__, _EXPORTS)
