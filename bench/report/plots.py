"""PNG plots people would rather look at than JSON."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.data.cards import dataset_title


def per_class_figure(result: Mapping[str, Any], run_dir: Path) -> dict[str, Path]:
    """A finished run's per-class figure, <run>/per_class.png ({W&B key: path}, for bench/launch/run.py)."""
    path = run_dir / "per_class.png"
    plot_per_class(result, path)
    return {"per_class_plot": path}


def plot_per_class(result: Mapping[str, Any], path: Path) -> None:
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
    ax.legend([plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()], list(colors),
              loc="upper right", fontsize=8)
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


def plot_table(table: Any, prefix: Path) -> list[Path]:
    """Per dataset column of a benchmark table: per-class test accuracy against class size, one line per
    method (mean over its averaged seeds), and per-class classifier weight norms (WB paper, Fig. 1).
    Classes sorted by training count, largest first. Writes <prefix>-<dataset>[-if<IF>].png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for col in table.columns:
        series = []
        for row in table.rows:
            cell = table.cells.get((row, col))
            results = [r.result for r in (cell.runs if cell else []) if r.result]
            if results:
                series.append((row, results))
        if not series:
            continue
        counts = series[0][1][0]["class_counts"]
        order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
        fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(max(6.5, 0.1 * len(counts) + 5), 6.4), sharex=True)
        for i, (row, results) in enumerate(series):
            label, color = (f"{row[0]} ({row[1]})" if row[1] else row[0]), f"C{i % 10}"
            acc = [_mean([r["per_class_acc"][c] for r in results]) for c in order]
            ax.plot(range(len(order)), acc, marker="o" if len(order) <= 20 else None, ms=3, lw=1.2, label=label,
                    color=color)
            norms: list[Any] = [(r.get("analysis") or {}).get("weight_norms") for r in results]
            if all(norms):
                ax_n.plot(range(len(order)), [_mean([n[c] for n in norms]) for c in order], lw=1.2, color=color)
        twin = ax.twinx()
        twin.bar(range(len(order)), [counts[c] for c in order], color="0.85", width=0.9, zorder=0)
        twin.set_yscale("log")
        twin.set_ylabel("training images")
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.set_ylim(0, 100)
        ax.set_ylabel("test accuracy (%)")
        ax.legend(fontsize=7, loc="lower left")
        ax.set_title(f"{dataset_title(*col)}: per-class accuracy and classifier weight norms", fontsize=9)
        ax_n.set_ylabel("classifier weight norm")
        ax_n.set_xlabel("class (sorted by training count, largest first)")
        fig.tight_layout()
        path = plot_path(prefix, col)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def plot_path(prefix: Path, col: tuple[str, float | None]) -> Path:
    """Where plot_table writes a dataset column's figure: <prefix>-<dataset>[-if<IF>].png."""
    return Path(f"{prefix}-{col[0]}{'' if col[1] is None else f'-if{col[1]:g}'}.png")


def _mean(vals: list[float | None]) -> float:
    present = [v for v in vals if v is not None]
    return sum(present) / len(present) if present else float("nan")
