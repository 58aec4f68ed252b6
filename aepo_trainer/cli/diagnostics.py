"""`aepo stats --diagnostics_plot`: what a selection strategy does to each prompt, where people would rather look
than read — the scores of the chosen and rejected candidates and the diversity of the selections, AEPO against random
selection at the same k, and how a budget burns down as the prompts are annotated in order."""

from __future__ import annotations

import math

__all__ = ["plot_diagnostics"]


def _pick(per_prompt: dict, prefix: str):
    """The (label, k) of the variant whose label starts with `prefix`, at the smallest k (λ = 1 for AEPO)."""
    keys = sorted((k for k in per_prompt if k[0].startswith(prefix) and k[1] != "N"), key=lambda key: (key[1], key[0]))
    default = [key for key in keys if key[1] == keys[0][1] and key[0].endswith("λ=1")] if keys else []
    return (default or keys or [None])[0]  # AEPO's default λ = 1 when it was compared


def plot_diagnostics(per_prompt: dict, path: str, source: str, prompts: int, budget, has_scores: bool) -> None:
    """Draw the diagnostics figure from `{(strategy label, k): {"diversity", "costs", ["best", "worst"]}}`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    aepo, random_ = _pick(per_prompt, "aepo"), _pick(per_prompt, "random")
    compared = [key for key in (aepo, random_) if key is not None] or sorted(per_prompt, key=str)[:2]
    colors = dict(zip(compared, ("tab:blue", "tab:orange")))
    panels = 3 if has_scores else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.4 * panels, 4.6), constrained_layout=True)
    axes = list(axes)

    if has_scores:  # 1. chosen = best selected, rejected = worst selected: the gap is the preference signal
        ax = axes.pop(0)
        values = [v for key in compared for name in ("best", "worst") for v in per_prompt[key].get(name, [])]
        bins = _bins(values)
        for key in compared:
            label = f"{key[0]} (k = {key[1]})"
            ax.hist(per_prompt[key]["best"], bins=bins, histtype="step", linewidth=2, color=colors[key],
                    label=f"chosen, {label}")  # fmt: skip
            ax.hist(per_prompt[key]["worst"], bins=bins, histtype="step", linewidth=1.5, linestyle="--",
                    color=colors[key], label=f"rejected, {label}")  # fmt: skip
        ax.set_xlabel("score (scores column)")
        ax.set_ylabel("prompts")
        ax.set_title("Scores of chosen and rejected candidates")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)

    ax = axes.pop(0)  # 2. how different the selected candidates are from each other
    values = [v for key in compared for v in per_prompt[key]["diversity"]]
    bins = _bins(values)
    for key in compared:
        ax.hist(per_prompt[key]["diversity"], bins=bins, alpha=0.5, color=colors[key], label=f"{key[0]} (k = {key[1]})")
    ax.set_xlabel("diversity of the selection (1 − mean pairwise cosine)")
    ax.set_ylabel("prompts")
    ax.set_title("Diversity of each prompt's selection")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)

    ax = axes.pop(0)  # 3. budget burn-down: annotations left after each prompt, in file order
    costs_by_k = {}  # a prompt costs k annotations whatever the strategy (west_of_n: its pool size)
    for (_, k), data in sorted(per_prompt.items(), key=lambda item: str(item[0][1])):
        costs_by_k.setdefault(k, data["costs"])
    for k, costs in costs_by_k.items():
        spent, curve = 0, []
        for cost in costs:
            spent += cost
            curve.append((budget - spent) if budget is not None else spent)
        ax.plot(range(1, len(curve) + 1), curve, label="west_of_n (all N)" if k == "N" else f"k = {k}")
    if budget is not None:
        ax.axhline(0, color="black", linewidth=1)
        ax.set_ylabel(f"annotations left of a budget of {budget}")
        ax.set_title("Budget burn-down (prompts below 0 are skipped)")
    else:
        ax.set_ylabel("annotations spent")
        ax.set_title("Annotations spent as prompts are annotated")
    ax.set_xlabel("prompts annotated (in file order)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.suptitle(f"aepo stats diagnostics — {source} ({prompts} prompts)", fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bins(values, count: int = 20):
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return count
    low, high = min(finite), max(finite)
    if high == low:
        high = low + 1e-6
    return [low + (high - low) * i / count for i in range(count + 1)]
