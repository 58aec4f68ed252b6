"""Where a dataset came from: provenance metadata and a Hugging Face dataset card for every dataset the package writes.

A preference dataset built by annotating k of N candidates is only reusable if its reader knows the k, the strategy,
λ, the seed, who annotated (the annotator identity, which is also the annotation-store key) and how much was spent.
`aepo select` (pairs) and `aepo generate` (pools) therefore write a dataset card next to their output — `README.md`
inside a `save_to_disk` folder, `<output>.README.md` beside a file — whose YAML header holds the provenance under
`aepo_provenance` (machine-readable: `DatasetCard.load(path).data.aepo_provenance`), and push the same card with
`--push_to_hub`.
"""

from __future__ import annotations

import datetime
import os

from ..errors import storage_guard

__all__ = ["card_path", "dataset_card", "provenance", "write_dataset_card"]


def provenance(kind: str, source: str, settings: dict, **extra) -> dict:
    """The provenance record of a dataset: what it is (`kind`: 'preference pairs' or 'candidate pools'), where its
    input came from (`source`), the settings that made it, and `extra` facts (annotator identity, annotations spent,
    budget, counts). Values must be JSON-serialisable."""
    from aepo_trainer import __version__

    record = {
        "kind": kind,
        "source": str(source),
        "created_by": f"aepo-trainer {__version__}",
        "created_at": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
    }
    record.update(settings)
    record.update(extra)
    return record


def dataset_card(record: dict, title: str, description: str):
    """A `huggingface_hub.DatasetCard` with the provenance in its YAML header and a table of it in its text."""
    from huggingface_hub import DatasetCard, DatasetCardData

    source = record.get("source", "")
    looks_like_hub_id = source.count("/") == 1 and not os.path.exists(source)
    data = DatasetCardData(
        tags=["aepo", "aepo-trainer", "preference" if "pair" in record.get("kind", "") else "candidate-pools"],
        source_datasets=[source] if looks_like_hub_id else None,
        aepo_provenance=record,
    )
    rows = "\n".join(f"| `{name}` | `{value}` |" for name, value in record.items())
    content = (
        f"---\n{data.to_yaml()}\n---\n\n# {title}\n\n{description}\n\n"
        "Built with [aepo-trainer](https://huggingface.co/papers/2405.13541) (Annotation-Efficient Preference "
        "Optimization).\n\n## Provenance\n\n| setting | value |\n|---|---|\n" + rows + "\n"
    )
    return DatasetCard(content)


def card_path(destination: str) -> str:
    """`README.md` inside a folder output, `<output>.README.md` beside a file output."""
    destination = os.path.expanduser(str(destination))
    return os.path.join(destination, "README.md") if os.path.isdir(destination) else f"{destination}.README.md"


def write_dataset_card(destination: str, card) -> str:
    """Write `card` for the output at `destination`; returns the card's path."""
    path = card_path(destination)
    with storage_guard(path):  # a full disk or a read-only place: StorageWriteError naming the card
        card.save(path)
    return path
