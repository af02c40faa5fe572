"""Figures that read at any class count: a fixed size from 10 to 8,142 classes (iNaturalist 2018), per-class
bars while they fit, binned by log class size beyond; small files, never blank."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from PIL import Image

from bench.data.profiles import class_counts
from bench.report.aggregate import build_table
from bench.report.collect import collect
from bench.report.html import save_html
from bench.report.plots import BAR_LIMIT, binned, plot_per_class, plot_table, size_bins
from tests.unit.test_table import write_run


def fake_result(num_classes: int, n_max: int, factor: float, seed: int = 0) -> dict:
    counts = class_counts(num_classes, n_max, factor)
    rng = random.Random(seed)
    acc = [min(100.0, max(0.0, 30 + 15 * n ** 0.3 + rng.gauss(0, 12))) for n in counts]
    acc[-1] = None                                      # a class with no test image
    return {"class_counts": counts, "per_class_acc": acc,
            "groups": {"many": [c for c, n in enumerate(counts) if n > 100],
                       "medium": [c for c, n in enumerate(counts) if 20 <= n <= 100],
                       "few": [c for c, n in enumerate(counts) if n < 20]},
            "analysis": {"weight_norms": [0.5 + 0.1 * n ** 0.25 + rng.gauss(0, 0.05) for n in counts]},
            "class_names": [f"c{i}" for i in range(num_classes)]}


def check_png(path: Path, max_kb: int) -> None:
    img = Image.open(path).convert("L")
    assert img.size[0] <= 1000 and img.size[1] <= 800, img.size
    assert path.stat().st_size < max_kb * 1024, path.stat().st_size
    lo, hi = img.getextrema()
    assert hi - lo > 100 and len(img.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 20   # drawn, not blank


def test_size_bins_cover_every_class_once_and_binned_means_are_means():
    counts = [1000, 500, 100, 50, 10, 2]
    bins = size_bins(counts, bins=3)
    assert sorted(c for b in bins for c in b) == list(range(6)) and len(bins) == 3
    xs, means, stds = binned([100, 100, 1], [10.0, 30.0, None], bins=2)
    assert xs == [pytest.approx(100.0)] and means == [20.0] and stds == [10.0]   # the None class has no value


@pytest.mark.parametrize("num_classes", [10, BAR_LIMIT, 8142])
def test_a_runs_figure_has_one_size_at_any_class_count(tmp_path, num_classes):
    result = {**fake_result(num_classes, 1000, 500.0), "metrics": {"all": 60.0}, "dataset": "inat2018",
              "imbalance_factor": 500.0, "method": "wb", "seed": 0}
    plot_per_class(result, tmp_path / "per_class.png")
    assert Image.open(tmp_path / "per_class.png").size == (880, 704)
    check_png(tmp_path / "per_class.png", 400)


def test_an_inat_sized_table_has_small_readable_figures_and_page(tmp_path):
    """Three methods x 8,142 classes: the table's figure stays 880 x 704 px, and its HTML page (figure inside)
    stays under 2 MB, while each run's result.json keeps every class."""
    root = tmp_path / "runs"
    for i, method in enumerate(("ce", "wd", "wb")):
        extra = fake_result(8142, 1000, 500.0, seed=i)
        write_run(root, [f"method={method}", "seed=0"], all_=50.0 + i, extra=extra)
    table = build_table(collect([str(root)]))
    (fig,) = plot_table(table, tmp_path / "fig")
    assert Image.open(fig).size == (880, 704)
    check_png(fig, 400)
    page = tmp_path / "table.html"
    save_html(table, page)
    assert page.stat().st_size < 2 * 1024 * 1024
