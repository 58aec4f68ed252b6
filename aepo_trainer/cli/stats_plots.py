"""`aepo stats --plot`: the strategy comparison drawn with matplotlib (imported on first use)."""

from __future__ import annotations


def plot(records, path, source, prompts, n_max, budget, has_scores) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [r for r in records if r.get("learning_curve")]
    panels = (3 if has_scores else 2) + bool(curves)
    fig, axes = plt.subplots(1, panels, figsize=(5.6 * panels, 5.6), constrained_layout=True)
    labels = list(dict.fromkeys(r["strategy"] for r in records if r["k"] != "N"))
    colors = {label: plt.cm.tab10(i % 10) for i, label in enumerate(labels)}
    west = next((r for r in records if r["k"] == "N"), None)

    # 1. cost: annotations needed (or prompts covered by the budget) against k
    ax = axes[0]
    key = "prompts_covered" if budget is not None else "annotations"
    by_k = {}
    for r in records:
        if r["k"] != "N":
            by_k[r["k"]] = r[key]
    ks = sorted(by_k)
    ax.plot(ks, [by_k[k] for k in ks], "o-", color="tab:blue", label="select k of N (any strategy)")
    if west is not None:
        ax.axhline(west[key], color="black", linestyle="--", label=f"West-of-N (annotate all N ≤ {n_max})")
    ax.set_xlabel("k = annotations per prompt")
    ax.set_xticks(ks)
    if budget is not None:
        ax.set_ylabel(f"prompts covered (of {prompts})")
        ax.set_title(f"Prompts a budget of {budget} annotations covers")
    else:
        ax.set_ylabel("annotations needed for the whole file")
        ax.set_title(f"Annotation cost ({prompts} prompts)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)

    # 2. the trade-off the AEPO objective controls
    ax = axes[1]
    markers = "osD^v<>p*h"
    for i, k in enumerate(ks):
        for r in records:
            if r["k"] == k:
                baseline = not r["strategy"].startswith("aepo")  # hollow: stays visible over an equal aepo point
                ax.scatter(
                    r["diversity"],
                    r["representativeness"],
                    marker=markers[i % len(markers)],
                    s=90 if baseline else 50,
                    linewidth=1.6 if baseline else 0.4,
                    facecolor="none" if baseline else colors[r["strategy"]],
                    edgecolor=colors[r["strategy"]] if baseline else "black",
                )
    if west is not None:
        ax.scatter(
            west["diversity"],
            west["representativeness"],
            color="black",
            marker="X",
            s=70,
            label="west_of_n (whole pool)",
        )
    for label in labels:
        baseline = not label.startswith("aepo")
        ax.scatter(
            [],
            [],
            marker="s",
            facecolor="none" if baseline else colors[label],
            edgecolor=colors[label],
            linewidth=1.6 if baseline else 0.4,
            label=label,
        )
    for i, k in enumerate(ks):
        ax.scatter([], [], color="white", edgecolor="black", marker=markers[i % len(markers)], label=f"k = {k}")
    ax.set_xlabel("mean diversity of the selection (1 − mean pairwise cosine)")
    ax.set_ylabel("mean representativeness (mean cosine to the pool)")
    ax.set_title("Selections: representativeness vs diversity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.14))  # below: never over a point

    # 3. what the annotator would see: score gap between the best and worst selected candidate
    if has_scores:
        ax = axes[2]
        for label in labels:
            points = sorted((r["k"], r["gap"]) for r in records if r["strategy"] == label)
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                "o-" if label.startswith("aepo") else "s--",
                color=colors[label],
                label=label,
                mfc="none" if not label.startswith("aepo") else None,
            )
        if west is not None:
            ax.axhline(west["gap"], color="black", linestyle="--", label="west_of_n (best − worst of pool)")
        ax.set_xlabel("k = annotations per prompt")
        ax.set_xticks(ks)
        ax.set_ylabel("mean score gap: best − worst selected")
        ax.set_title("Preference signal of the pairs (scores column)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    # 4. active strategies: the surrogate's accuracy on each new batch before it saw the batch's labels
    if curves:
        ax = axes[-1]
        for r in curves:
            points = [(q["labels_before"], q["pairwise_accuracy"]) for q in r["learning_curve"] if q["pairs_evaluated"]]
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=f"{r['strategy']} (k = {r['k']})")
        ax.axhline(0.5, color="gray", linestyle=":", label="chance")
        ax.set_xlabel("labels the surrogate was fitted on")
        ax.set_ylabel("pairwise accuracy on the next batch's labels")
        ax.set_title("Learning curve of the reward surrogate")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"aepo stats — {source} ({prompts} prompts, N ≤ {n_max})", fontsize=11)
    fig.savefig(path, dpi=120)
    plt.close(fig)
