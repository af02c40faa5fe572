"""PNG plots people would rather look at than JSON, at a fixed readable size for 10 to 10,000 classes.

Up to BAR_LIMIT classes every class is a bar (or a point of a method's line), in profile order. Beyond that a
bar per class would be thinner than a pixel (iNaturalist 2018: 8,142 classes), so classes are placed by their
training size on a log axis: each class a faint point, and per bin of class size the mean with its spread
(one standard deviation), with the many / medium / few bands marked. The per-class numbers stay complete in
result.json, W&B and the CSV; the figure is for reading the trend.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.data.cards import dataset_title

BAR_LIMIT = 100                  # classes drawn one by one up to this many
SIZE = (8.0, 3.2)                # inches per panel (8 x 3.2 at 110 dpi = 880 x 352 px)
DPI = 110
BINS = 24                        # bins of log class size beyond BAR_LIMIT
GROUP_COLORS = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}


def per_class_figure(result: Mapping[str, Any], run_dir: Path) -> dict[str, Path]:
    """A finished run's per-class figure, <run>/per_class.png ({W&B key: path}, for bench/launch/run.py)."""
    path = run_dir / "per_class.png"
    plot_per_class(result, path)
    return {"per_class_plot": path}


def size_bins(counts: Sequence[int], bins: int = BINS) -> list[list[int]]:
    """Class indices grouped into at most `bins` bins of equal width in log training size (empty bins dropped)."""
    lo, hi = math.log(max(1, min(counts))), math.log(max(1, max(counts)))
    width = (hi - lo) / bins or 1.0
    out: list[list[int]] = [[] for _ in range(bins)]
    for c, n in enumerate(counts):
        out[min(bins - 1, int((math.log(max(1, n)) - lo) / width))].append(c)
    return [b for b in out if b]


def binned(counts: Sequence[int], values: Sequence[float | None], bins: int = BINS) -> tuple[list[float], ...]:
    """(geometric-mean class size, mean, std) of `values` per bin of log class size (None values left out)."""
    xs, means, stds = [], [], []
    for b in size_bins(counts, bins):
        vals = [float(v) for v in (values[c] for c in b) if v is not None and not math.isnan(v)]
        if not vals:
            continue
        m = sum(vals) / len(vals)
        xs.append(math.exp(sum(math.log(max(1, counts[c])) for c in b) / len(b)))
        means.append(m)
        stds.append(math.sqrt(sum((v - m) ** 2 for v in vals) / len(vals)))
    return xs, means, stds


def _bands(ax: Any, counts: Sequence[int], groups: Mapping[str, Sequence[int]]) -> None:
    """Shade each of many / medium / few over the range of training sizes its classes span."""
    for g, cs in groups.items():
        if cs:
            sizes = [counts[c] for c in cs]
            lo, hi = min(sizes) * 0.95, max(sizes) * 1.05
            ax.axvspan(lo, hi, color=GROUP_COLORS.get(g, "0.8"), alpha=0.08, lw=0)
            ax.text(math.sqrt(lo * hi), 1.0, g, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                    fontsize=7, color=GROUP_COLORS.get(g, "0.4"))


def _by_size(ax: Any, counts: Sequence[int], values: Sequence[float | None], color: str, label: str | None,
             points: bool) -> None:
    """Per-class values against log class size: faint points (when `points`) and the binned mean +- std."""
    if points:
        present = [(counts[c], v) for c, v in enumerate(values) if v is not None and not math.isnan(v)]
        ax.scatter([n for n, _ in present], [v for _, v in present], s=2, color=color, alpha=0.15,
                   lw=0, rasterized=True)
    xs, means, stds = binned(counts, values)
    ax.plot(xs, means, color=color, lw=1.5, marker="o", ms=3, label=label)
    ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)], color=color,
                    alpha=0.15, lw=0)
    ax.set_xscale("log")


def plot_per_class(result: Mapping[str, Any], path: Path) -> None:
    """Per-class test accuracy and classifier weight norms against training class size (WB Fig. 1 style).

    Up to BAR_LIMIT classes: bars in profile order (largest first), coloured by many / medium / few, with the
    class sizes as a line. Beyond: against log class size, binned (module docstring). Always SIZE per panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = result["class_counts"]
    acc = result["per_class_acc"]
    norms = (result.get("analysis") or {}).get("weight_norms")
    groups = result["groups"]
    panels = 2 if norms else 1
    fig, axes = plt.subplots(panels, 1, figsize=(SIZE[0], SIZE[1] * panels), sharex=True, squeeze=False)
    ax = axes[0][0]
    if len(counts) <= BAR_LIMIT:
        group_of = {c: g for g, cs in groups.items() for c in cs}
        bar_colors = [GROUP_COLORS[group_of[c]] for c in range(len(acc))]
        ax.bar(range(len(acc)), [a if a is not None else 0.0 for a in acc], color=bar_colors, width=0.85)
        twin = ax.twinx()
        twin.plot(range(len(counts)), counts, color="black", lw=1.2)
        twin.set_yscale("log")
        twin.set_ylabel("training images")
        ax.legend([plt.Rectangle((0, 0), 1, 1, color=c) for c in GROUP_COLORS.values()], list(GROUP_COLORS),
                  loc="upper right", fontsize=8)
        if norms:
            axes[1][0].bar(range(len(norms)), norms, color=bar_colors, width=0.85)
        axes[-1][0].set_xlabel("class (sorted by training count as in the profile)")
    else:
        for a, values in zip([row[0] for row in axes], [acc, norms]):
            _bands(a, counts, groups)
            _by_size(a, counts, values, "tab:blue", None, points=True)
        ax.legend([plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.3) for c in GROUP_COLORS.values()],
                  list(GROUP_COLORS), loc="upper left", fontsize=8)
        axes[-1][0].set_xlabel(f"training images of the class (log); {len(counts):,} classes, binned: mean +- std")
    ax.set_ylim(0, 100)
    ax.set_ylabel("test accuracy (%)")
    if norms:
        axes[1][0].set_ylabel("classifier weight norm")
    m = result["metrics"]
    ax.set_title(f"{result['dataset']} IF {result['imbalance_factor']:g} {result['method']} seed {result['seed']}: "
                 f"all {m['all']:.1f}%", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_table(table: Any, prefix: Path) -> list[Path]:
    """Per dataset column of a benchmark table: per-class test accuracy against class size, one line per
    method (mean over its averaged seeds), and per-class classifier weight norms (WB paper, Fig. 1); binned by
    log class size beyond BAR_LIMIT classes. Writes <prefix>-<dataset>[-if<IF>].png, at a fixed size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.report.collect import per_class

    written = []
    for col in table.columns:
        series = []
        for row in table.rows:
            cell = table.cells.get((row, col))
            results = [per_class(r) for r in (cell.runs if cell else []) if r.result]
            if results:
                series.append((row, results))
        if not series:
            continue
        counts = series[0][1][0]["class_counts"]
        many = len(counts) > BAR_LIMIT
        order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
        fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(SIZE[0], 2 * SIZE[1]), sharex=True)
        for i, (row, results) in enumerate(series):
            label, color = (f"{row[0]} ({row[1]})" if row[1] else row[0]), f"C{i % 10}"
            acc = [_mean([r["per_class_acc"][c] for r in results]) for c in range(len(counts))]
            norms: list[Any] = [(r.get("analysis") or {}).get("weight_norms") for r in results]
            norm = [_mean([n[c] for n in norms]) for c in range(len(counts))] if all(norms) else None
            if many:
                _by_size(ax, counts, acc, color, label, points=False)
                if norm is not None:
                    _by_size(ax_n, counts, norm, color, None, points=False)
                continue
            ax.plot(range(len(order)), [acc[c] for c in order], marker="o" if len(order) <= 20 else None, ms=3,
                    lw=1.2, label=label, color=color)
            if norm is not None:
                ax_n.plot(range(len(order)), [norm[c] for c in order], lw=1.2, color=color)
        if many:
            for a in (ax, ax_n):
                _bands(a, counts, series[0][1][0]["groups"])
            ax_n.set_xlabel(f"training images of the class (log); {len(counts):,} classes, binned: mean +- std")
        else:
            twin = ax.twinx()
            twin.bar(range(len(order)), [counts[c] for c in order], color="0.85", width=0.9, zorder=0)
            twin.set_yscale("log")
            twin.set_ylabel("training images")
            ax.set_zorder(twin.get_zorder() + 1)
            ax.patch.set_visible(False)
            ax_n.set_xlabel("class (sorted by training count, largest first)")
        ax.set_ylim(0, 100)
        ax.set_ylabel("test accuracy (%)")
        ax.legend(fontsize=7, loc="lower left" if not many else "upper left")
        ax.set_title(f"{dataset_title(*col)}: per-class accuracy and classifier weight norms", fontsize=9)
        ax_n.set_ylabel("classifier weight norm")
        fig.tight_layout()
        path = plot_path(prefix, col)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        written.append(path)
    return written


def plot_path(prefix: Path, col: tuple[str, float | None]) -> Path:
    """Where plot_table writes a dataset column's figure: <prefix>-<dataset>[-if<IF>].png."""
    return Path(f"{prefix}-{col[0]}{'' if col[1] is None else f'-if{col[1]:g}'}.png")


def _mean(vals: list[float | None]) -> float:
    present = [v for v in vals if v is not None]
    return sum(present) / len(present) if present else float("nan")
