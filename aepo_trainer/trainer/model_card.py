"""The AEPO section `AEPOTrainer` appends to the model card TRL writes: how the model was trained, with which
settings, annotator and spend."""

from __future__ import annotations

__all__ = ["model_card_section"]


def model_card_section(args, uses_pools: bool, service=None) -> str:
    """The markdown section (settings table; the annotator, spend, budget and store when `service` is given)."""
    lines = ["", "## AEPO", ""]
    if uses_pools:
        lines.append(
            "This model was trained with **AEPO** (Annotation-Efficient Preference Optimization, "
            "[arXiv:2405.13541](https://huggingface.co/papers/2405.13541)) using "
            "aepo-trainer: for each prompt, k of the N candidate "
            "completions were selected (representativeness + diversity), only those were annotated, and the "
            "preference pairs were formed on the fly during DPO training."
        )
    else:
        lines.append(
            "This model was trained with aepo-trainer's `AEPOTrainer` on preference pairs (DPO; no pool "
            "reduction was needed)."
        )
    lines += ["", "| setting | value |", "|---|---|"]
    lines += [f"| `{name}` | `{value}` |" for name, value in args.aepo_settings().items()]
    if service is not None:
        budget = "unlimited" if service.budget is None else service.budget
        lines += [f"| annotator | `{service.identity}` |", f"| annotations spent | {service.spent} |"]
        lines += [f"| annotation budget | {budget} |", f"| annotation store | `{service.store.path}` |"]
    return "\n".join(lines) + "\n"
