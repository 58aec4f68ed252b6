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
Importing this package imports neither FastAPI nor uvicorn (`create_app` does, on first use).
"""

from ..storage.label_book import Answer, LabelBook, LabelConflict, LabellingSettings, read_final_labels
from .agreement import aggregate, agreement, best_worst_points, borda_points
from .auth import LabellerTokens, load_tokens
from .render import render_markdown, render_turns
from .server import LabellingServer, is_loopback
from .tasks import Progress, QueueView, Task

__all__ = [
    "Answer",
    "LabelBook",
    "LabelConflict",
    "LabellerTokens",
    "LabellingServer",
    "LabellingSettings",
    "Progress",
    "QueueView",
    "Task",
    "aggregate",
    "agreement",
    "best_worst_points",
    "borda_points",
    "create_app",
    "is_loopback",
    "load_tokens",
    "read_final_labels",
    "render_markdown",
    "render_turns",
]


def __getattr__(name):
    if name == "create_app":  # FastAPI is imported only by the app itself
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
