"""PNG plots people would rather look at than JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_per_class(result: dict[str, Any], path: Path) -> None:
    """Per-class test accuracy (bars) against training class size (line, log scale), classes in profile order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts, acc = result["class_counts"], [a if a is not None else 0.0 for a in result["per_class_acc"]]
    fig, ax = plt.subplots(figsize=(max(6, 0.12 * len(counts) + 4), 3.6))
    colors = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}
    group_of = {c: g for g, cs in result["groups"].items() for c in cs}
    ax.bar(range(len(acc)), acc, color=[colors[group_of[c]] for c in range(len(acc))], width=0.85)
    ax.set_ylim(0, 100)
    ax.set_xlabel("class (sorted by training count as in the profile)")
    ax.set_ylabel("test accuracy (%)")
    ax2 = ax.twinx()
    ax2.plot(range(len(counts)), counts, color="black", lw=1.2)
    ax2.set_yscale("log")
    ax2.set_ylabel("training images")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    ax.legend(handles, list(colors), loc="upper right", fontsize=8)
    m = result["metrics"]
    ax.set_title(f"{result['dataset']} IF {result['imbalance_factor']:g} {result['method']} seed {result['seed']}: "
                 f"all {m['all']:.1f}%", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
