"""PNG plots people would rather look at than JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_per_class(result: dict[str, Any], path: Path) -> None:
    """Per-class test accuracy and classifier weight norms against training class size (WB Fig. 1 style).

    Classes are in profile order (largest first); bars are coloured by many / medium / few.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = result["class_counts"]
    acc = [a if a is not None else 0.0 for a in result["per_class_acc"]]
    norms = (result.get("analysis") or {}).get("weight_norms")
    colors = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}
    group_of = {c: g for g, cs in result["groups"].items() for c in cs}
    bar_colors = [colors[group_of[c]] for c in range(len(acc))]
    panels = 2 if norms else 1
    fig, axes = plt.subplots(panels, 1, figsize=(max(6, 0.12 * len(counts) + 4), 3.2 * panels), sharex=True,
                             squeeze=False)
    ax = axes[0][0]
    ax.bar(range(len(acc)), acc, color=bar_colors, width=0.85)
    ax.set_ylim(0, 100)
    ax.set_ylabel("test accuracy (%)")
    ax2 = ax.twinx()
    ax2.plot(range(len(counts)), counts, color="black", lw=1.2)
    ax2.set_yscale("log")
    ax2.set_ylabel("training images")
    ax.legend([plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()], list(colors), loc="upper right", fontsize=8)
    m = result["metrics"]
    ax.set_title(f"{result['dataset']} IF {result['imbalance_factor']:g} {result['method']} seed {result['seed']}: "
                 f"all {m['all']:.1f}%", fontsize=9)
    if norms:
        axes[1][0].bar(range(len(norms)), norms, color=bar_colors, width=0.85)
        axes[1][0].set_ylabel("classifier weight norm")
    axes[-1][0].set_xlabel("class (sorted by training count as in the profile)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
