"""`ltbench table`: grouping, mean +- sample std, marking of failed / unfinished / missing runs, and the
Markdown / LaTeX / CSV renderings against golden files (tests/golden/table.*).

The run directories are written here the way ltbench writes them: config.yaml from a real resolved
config, result.json with status complete or failed, metrics.jsonl for an unfinished run.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from bench.config import ConfigError, dump_yaml
from bench.experiment import load_config
from bench.report.aggregate import build_table, setting_labels
from bench.report.collect import collect, record_from_summary
from bench.report.render import RENDER
from bench.runtime.tracking import summary_of
from tests.conftest import REPO, run_cli

GOLDEN = REPO / "tests" / "golden"
SMOKE = REPO / "configs" / "smoke.yaml"
UPDATE = os.environ.get("LTBENCH_UPDATE_GOLDEN") == "1"   # regenerate the golden files after a deliberate change


def write_run(root: Path, overrides: list[str], state: str = "complete", all_: float = 0.0,
              groups: tuple[float | None, float | None, float | None] = (0.0, 0.0, 0.0), val: float | None = None,
              extra: dict | None = None, sub: str = "", config: Path = SMOKE) -> Path:
    cfg = load_config(config, overrides)
    # named without the config hash, so the golden files do not change with the config schema
    run = root / cfg.name / f"{cfg.method}-seed{cfg.seed}" / f"{cfg.data.dataset}{sub}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_yaml(cfg))
    metrics = {"all": all_, "many": groups[0], "medium": groups[1], "few": groups[2]}
    if state == "complete":
        result = {"status": "complete", "name": cfg.name, "method": cfg.method, "dataset": cfg.data.dataset,
                  "imbalance_factor": cfg.data.imbalance_factor, "seed": cfg.seed, "stage": cfg.stage,
                  "metrics": metrics, "val_metrics": None if val is None else {**metrics, "all": val},
                  "class_counts": [200, 155, 120, 93, 72, 56, 43, 33, 26, 20],
                  "per_class_acc": [90.0, 85, 80, 70, 60, 50, 40, 30, 20, None],
                  "class_names": [f"c{i}" for i in range(10)],
                  "groups": {"many": [0, 1, 2], "medium": [3, 4, 5, 6], "few": [7, 8, 9]},
                  "analysis": {"weight_norms": [2.0 - 0.1 * i for i in range(10)]}, **(extra or {})}
        (run / "result.json").write_text(json.dumps(result))
    elif state == "failed":
        (run / "result.json").write_text(json.dumps({"status": "failed", "error": "RuntimeError: CUDA out of memory"}))
    else:   # unfinished: 1 of 3 epochs
        (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val": {"all": 20.0}}) + "\n")
    return run


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    """Two methods x two columns x seeds 0-2 with one failed run, one unfinished run and one missing seed."""
    monkeypatch.chdir(tmp_path)
    root = Path("runs")
    syn = ["name=bench"]
    fm = ["name=bench", "data.dataset=fashion-mnist", "data.imbalance_factor=100"]
    # wd on synthetic IF 10: 50 / 52 / 54 -> mean 52.00, sample std 2.00
    for seed, a in enumerate([50.0, 52.0, 54.0]):
        write_run(root, syn + ["method=wd", f"seed={seed}"], all_=a, groups=(a + 20, a, a - 20))
    # wb on synthetic: seeds 0, 1 complete; seed 2 failed (never averaged in)
    write_run(root, syn + ["method=wb", "seed=0"], all_=60.0, groups=(70.0, 60.0, 50.0))
    write_run(root, syn + ["method=wb", "seed=1"], all_=61.0, groups=(71.0, 61.0, 52.0))
    write_run(root, syn + ["method=wb", "seed=2"], state="failed")
    # wd on Fashion-MNIST IF 100: seeds 0, 2 complete, seed 1 missing; a 'few' group that is empty
    write_run(root, fm + ["method=wd", "seed=0"], all_=80.0, groups=(90.0, 70.0, None))
    write_run(root, fm + ["method=wd", "seed=2"], all_=81.5, groups=(91.0, 71.0, None))
    # wb on Fashion-MNIST IF 100: seeds 0, 1 complete, seed 2 unfinished
    write_run(root, fm + ["method=wb", "seed=0"], all_=85.0, groups=(88.0, 80.0, 86.0))
    write_run(root, fm + ["method=wb", "seed=1"], all_=86.0, groups=(89.0, 81.0, 87.0))
    write_run(root, fm + ["method=wb", "seed=2"], state="unfinished")
    return root


def test_mean_and_sample_std_by_hand(runs):
    t = build_table(collect([str(runs)]))
    assert t.columns == [("fashion-mnist", 100.0), ("synthetic", 10.0)]
    assert t.rows == [("wd", ""), ("wb", "")]       # the WB paper's row order, not alphabetical
    wd = t.cells[(("wd", ""), ("synthetic", 10.0))]
    mean, std, n = wd.stats("all")
    assert (mean, n) == (52.0, 3) and std == pytest.approx(2.0)   # sqrt(((-2)^2 + 0 + 2^2) / (3 - 1))
    assert wd.stats("few")[:2] == (32.0, pytest.approx(2.0))
    wb = t.cells[(("wb", ""), ("synthetic", 10.0))]
    assert wb.stats("all")[:3] == (60.5, pytest.approx(math.sqrt(0.5)), 2)   # the failed seed 2 is left out
    assert wb.flagged and "seed 2 failed (RuntimeError: CUDA out of memory)" in wb.left_out[0]
    fm_wd = t.cells[(("wd", ""), ("fashion-mnist", 100.0))]
    assert fm_wd.missing == [1] and fm_wd.stats("few") == (None, None, 0)
    fm_wb = t.cells[(("wb", ""), ("fashion-mnist", 100.0))]
    assert "seed 2 incomplete (1/3 epochs)" in fm_wb.left_out[0]


@pytest.mark.parametrize("fmt, golden", [("md", "table.md"), ("latex", "table.tex"), ("csv", "table.csv")])
def test_golden_outputs(runs, fmt, golden):
    text = RENDER[fmt](build_table(collect([str(runs)]), reference=False))
    if UPDATE:
        (GOLDEN / golden).write_text(text)
    assert text == (GOLDEN / golden).read_text()


def test_output_is_deterministic_whatever_the_path_order(runs):
    a = RENDER["md"](build_table(collect([str(runs / "bench")])))
    dirs = sorted(str(p) for p in (runs / "bench").iterdir())
    b = RENDER["md"](build_table(collect(list(reversed(dirs)) + dirs)))   # duplicates given twice count once
    assert a == b


def test_expected_seeds_mark_cells_with_a_missing_seed(runs):
    t = build_table(collect([str(runs)]), seeds=[0, 1, 2, 3])
    wd = t.cells[(("wd", ""), ("synthetic", 10.0))]
    assert wd.missing == [3] and "3/4†" in RENDER["md"](t)
    # seeds outside --seeds are never averaged in: 50, 52 -> 51.00 +- 1.41
    t = build_table(collect([str(runs)]), seeds=[0, 1])
    wd = t.cells[(("wd", ""), ("synthetic", 10.0))]
    assert wd.stats("all")[:3] == (51.0, pytest.approx(math.sqrt(2)), 2)
    assert wd.flagged and "seed 2 not among the seeds asked for" in wd.left_out[0]


def test_settings_of_one_method_get_labels_and_select_picks_best_val(tmp_path):
    root = tmp_path / "runs"
    for wd, vals in ((0.001, (70.0, 72.0)), (0.01, (75.0, 71.0)), (0.1, (60.0, 80.0))):
        for seed, v in enumerate(vals):
            write_run(root, ["name=grid", "method=wb", f"seed={seed}", f"train.weight_decay={wd}"],
                      all_=v, val=v - 1, sub=f"-wd{wd}")
    t = build_table(collect([str(root)]))
    assert [r[1] for r in t.rows] == ["train.weight_decay=0.001", "train.weight_decay=0.01", "train.weight_decay=0.1"]
    sel = build_table(collect([str(root)]), select="val")
    (cell,) = sel.cells.values()
    # mean val: 70 / 72 / 69 (seeds averaged first): 0.01 wins although 0.1 has the best single seed
    assert cell.stats("all")[0] == 73.0 and cell.chosen.startswith("train.weight_decay=0.01 (best mean val all of 3")
    assert setting_labels([(("a", "1"), ("b", "2")), (("a", "1"), ("b", "3"))]) == \
        {(("a", "1"), ("b", "2")): "b=2", (("a", "1"), ("b", "3")): "b=3"}


def test_same_method_from_two_experiments_gets_two_rows(tmp_path):
    root = tmp_path / "runs"
    write_run(root, ["name=exp-a", "method=wd"], all_=50.0)
    write_run(root, ["name=exp-b", "method=wd", "train.lr=0.1"], all_=55.0)
    t = build_table(collect([str(root)]))
    assert t.rows == [("wd", "exp-a"), ("wd", "exp-b")]


def test_reference_rows_from_the_published_file(tmp_path):
    root = tmp_path / "runs"
    write_run(root, ["name=c", "method=wb", "data.dataset=cifar100", "data.imbalance_factor=100"], all_=52.0)
    t = build_table(collect([str(root)]), reference=True)
    wb = [r for r in t.reference if r["method"] == "wb"]
    # the WB paper, datasets/published/wb_cvpr2022.yaml
    assert len(wb) == 1 and wb[0]["all"] == 53.35 and wb[0]["few"] == 32.63
    md = RENDER["md"](t)
    assert "| *wb (WB paper (CVPR 2022))* | 53.35 | 72.60 | 51.86 | 32.63 | pub. |" in md
    assert "*naive (WB paper (CVPR 2022))* | 38.38 | 64.05 | 35.80 | 11.43" in md
    assert "IF 50" not in md                                         # only the columns of the table


def test_reference_without_published_numbers_says_so(tmp_path):
    root = tmp_path / "runs"
    write_run(root, ["name=f", "method=wb", "data.dataset=fashion-mnist", "data.imbalance_factor=100"], all_=80.0)
    md = RENDER["md"](build_table(collect([str(root)]), reference=True))
    assert "- no published number of these methods on Fashion-MNIST-LT IF 100 in datasets/published/" in md
    assert "nothing to compare" not in RENDER["md"](build_table(collect([str(root)])))     # only when asked


def test_wandb_summary_gives_the_same_record(runs):
    """`--wandb` reads what bench.runtime.tracking writes: summary_of(result) + the resolved config."""
    import yaml

    (rec,) = [r for r in collect([str(runs)]) if r.method == "wb" and r.seed == 0 and r.dataset == "synthetic"]
    cfg = yaml.safe_load((Path(rec.path) / "config.yaml").read_text())
    again = record_from_summary("wandb:x/y/abc", summary_of(rec.result), cfg, "finished")
    assert (again.method, again.dataset, again.imbalance_factor, again.seed, again.state, again.setting) == \
           (rec.method, rec.dataset, rec.imbalance_factor, rec.seed, "complete", rec.setting)
    assert again.metrics == rec.metrics
    crashed = record_from_summary("wandb:x/y/def", {}, cfg, "crashed")
    assert crashed.state == "failed"


def test_cli_writes_table_and_plots(runs, tmp_path):
    r = run_cli("table", str(runs), "--format", "csv", "--out", "t/bench.csv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "t" / "bench.csv").read_text() == (GOLDEN / "table.csv").read_text()
    for png in ("bench-synthetic-if10.png", "bench-fashion-mnist-if100.png"):
        assert (tmp_path / "t" / png).stat().st_size > 5000
    bad = run_cli("table", "no/such/dir", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip() == "ltbench: error: ltbench table: no/such/dir does not exist"
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("table", str(empty), cwd=tmp_path)
    assert r.returncode == 2 and "no run directories (with config.yaml) under" in r.stderr


def test_broken_result_json_names_the_file(runs):
    victim = next(Path(runs).glob("bench/wd-seed0/*")) / "result.json"
    victim.write_text('{"status": "comp')
    with pytest.raises(ConfigError, match=r"result.json: not valid JSON"):
        collect([str(runs)])


def test_seed_intervals_and_paired_comparison_by_hand(tmp_path):
    """--ci t and --baseline: numbers computed by hand from the seeds' values."""
    root = tmp_path / "runs"
    # naive: 40, 41, 42 (mean 41, s 1); wb: 45, 47, 46 -> differences 5, 6, 4 (mean 5, s 1)
    for seed, naive, wb in ((0, 40.0, 45.0), (1, 41.0, 47.0), (2, 42.0, 46.0)):
        write_run(root, ["name=bench", "method=naive", f"seed={seed}"], all_=naive)
        write_run(root, ["name=bench", "method=wb", "train.lr=0.02", f"seed={seed}"], all_=wb)
    table = build_table(collect([str(root)]), ci="t", baseline="naive")
    col = table.columns[0]
    wb_row = next(r for r in table.rows if r[0] == "wb")
    naive_row = next(r for r in table.rows if r[0] == "naive")
    # t_{0.975,2} = 4.3027: 41 +- 4.3027 * 1 / sqrt(3) = 41 +- 2.4841
    lo, hi = table.cells[(naive_row, col)].interval("all", "t")
    assert abs(lo - 38.5159) < 1e-3 and abs(hi - 43.4841) < 1e-3
    # paired t = 5 / (1 / sqrt 3) = 8.660, df 2: p = 1 - t / sqrt(2 + t^2) = 0.01307
    diff, p, n = table.versus_baseline(wb_row, col)
    assert diff == 5.0 and n == 3 and abs(p - (1 - 8.6603 / math.sqrt(2 + 75.0))) < 1e-4
    assert table.marker(wb_row, col) == " ▲" and table.marker(naive_row, col) == ""
    md = RENDER["md"](table)
    assert "41.00 ± 1.00 [38.52, 43.48]" in md and "46.00 ± 1.00 [43.52, 48.48] ▲" in md
    assert "paired t-test" in md and "Student t" in md
    csv_text = RENDER["csv"](table)
    head, *lines = csv_text.splitlines()
    assert head.endswith("vs_baseline_all_diff,vs_baseline_all_p,vs_baseline_pairs") and "all_ci_lo" in head
    wb_line = next(line for line in lines if line.startswith("wb,"))
    assert wb_line.endswith(",5.0000,0.01307,3")
    with pytest.raises(ConfigError, match="--baseline nope: no such method"):
        build_table(collect([str(root)]), baseline="nope")
    # a second naive setting: which naive row the others are compared with would be a guess
    write_run(root, ["name=bench", "method=naive", "train.lr=0.2", "seed=0"], all_=30.0, sub="-lr0.2")
    with pytest.raises(ConfigError, match=r"--baseline naive: 2 rows of naive on synthetic \(.*\); reduce them"):
        build_table(collect([str(root)]), baseline="naive")


def test_side_by_side_with_the_published_value(tmp_path):
    """--reference: each reproduced cell against the paper's value, the difference, a verdict, and the
    protocol differences the run records (backbone, epochs, selection split)."""
    root = tmp_path / "runs"
    extra = {"model": "resnet32_cifar", "epochs": 200,
             "selection": {"split": "val", "select": "best", "tta_flip": False}}
    for seed, v in ((0, 52.0), (1, 53.0), (2, 54.0)):          # mean 53.00, std 1.00: 53.35 is within 2 std
        write_run(root, ["name=c", "method=wb", "data.dataset=cifar100", "data.imbalance_factor=100", f"seed={seed}"],
                  all_=v, extra=extra)
    for seed, v in ((0, 40.0), (1, 41.0), (2, 42.0)):          # naive mean 41.00 vs 38.38: +2.62 > 2 std: above
        write_run(root, ["name=c", "method=naive", "data.dataset=cifar100", "data.imbalance_factor=100",
                         f"seed={seed}"], all_=v, extra={**extra, "model": "resnet34_wb"})
    md = RENDER["md"](build_table(collect([str(root)]), reference=True))
    wb = next(x for x in md.splitlines() if x.startswith("- wb, "))
    assert "ours 53.00 ± 1.00, n = 3; WB paper (CVPR 2022) 53.35: -0.35 points, within the seeds' spread (2 std)" in wb
    naive = next(x for x in md.splitlines() if x.startswith("- naive, "))
    assert "+2.62 points, above (2 std)" in naive and "backbone resnet34_wb vs ResNet-32" in naive
    assert "selection: best epoch on val vs the test set in the paper" in naive   # WB picked its epoch on test


def test_reference_selection_rule_is_the_registry_field_not_protocol_wording(tmp_path):
    """The paper's selection rule is its registry `selection`, not words in its protocol text: the logit-
    adjustment numbers are "last epoch on test (no model selection)" (`selection: last`), so a run selected
    on val differs in nothing, and a run that picks its best epoch on test is marked."""
    lines = {}
    for split in ("val", "test"):
        root = tmp_path / split
        write_run(root, ["name=c", "method=la", "data.dataset=cifar10", "data.imbalance_factor=100", "seed=0"],
                  all_=77.0, extra={"model": "resnet32_cifar", "selection": {"split": split, "select": "best",
                                                                             "tta_flip": False}})
        md = RENDER["md"](build_table(collect([str(root)]), reference=True))
        lines[split] = next(x for x in md.splitlines() if x.startswith("- la, ") and "77.32" in x)
    assert "selection" not in lines["val"]
    assert "selection: best epoch on test vs last in the paper" in lines["test"]


def test_cost_per_cell(tmp_path):
    root = tmp_path / "runs"
    for seed, hours in ((0, 0.5), (1, 0.25)):
        write_run(root, ["name=c", "method=wb", f"seed={seed}"], all_=50.0,
                  extra={"cost": {"device": "NVIDIA H200", "gpu": True, "processes": 4, "seconds": 450.0 * (1 + seed),
                                  "device_hours": hours}})
    write_run(root, ["name=c", "method=naive"], all_=40.0)        # written before cost records existed
    t = build_table(collect([str(root)]), show={"cost"})
    md = RENDER["md"](t)
    assert "| 0.75 GPU-h |" in md and "| — |" in md and "device-hours of the averaged runs" in md
    assert RENDER["csv"](t).splitlines()[0].endswith(",device_hours,device_unit")


def test_a_column_on_request_is_one_entry(tmp_path, monkeypatch):
    """CONTRIBUTING's "add a table column shown on request": a Column with on_request (and its CsvField with
    `column`) in bench/report/render.py is all it takes; --show NAME shows it, its note joins the caption."""
    from bench.report import render

    seeds = render.Column("seeds", "seeds", lambda t, row, col, cell, latex: cell and ",".join(
        str(r.seed) for r in cell.runs) or "", lambda ref: "", on_request=True, note="the seeds averaged.")
    monkeypatch.setattr(render, "COLUMNS", (*render.COLUMNS, seeds))
    monkeypatch.setattr(render, "CSV_FIELDS", (*render.CSV_FIELDS, render.CsvField(
        "seed_list", lambda t, row, col, cell: "|".join(str(r.seed) for r in cell.runs), column="seeds")))
    root = tmp_path / "runs"
    for seed in (0, 1):
        write_run(root, ["name=c", "method=wb", f"seed={seed}"], all_=50.0)
    assert "seeds" in render.requestable_columns()
    plain, asked = build_table(collect([str(root)])), build_table(collect([str(root)]), show={"seeds"})
    assert "| 0,1 |" not in render.render_markdown(plain) and "seed_list" not in render.render_csv(plain)
    md = render.render_markdown(asked)
    assert "| 0,1 |" in md and "seeds = the seeds averaged." in md
    assert render.render_csv(asked).splitlines()[1].endswith(",0|1")


def test_protocols_side_by_side(tmp_path):
    """--protocols: a method's clean and reference-protocol runs as rows named by protocol, and the
    difference the reference protocol (selection on test, TTA, ...) makes."""
    root = tmp_path / "runs"
    for seed, (clean, ref) in enumerate(((50.0, 53.0), (52.0, 55.0))):
        write_run(root, ["name=c", "method=wd", "protocol=clean", f"seed={seed}"], all_=clean)
        write_run(root, ["name=c", "method=wd", "protocol=custom", "eval.selection_split=test", "eval.select=best",
                         f"seed={seed}"], all_=ref, sub="-ref")
    t = build_table(collect([str(root)]), protocols=True)
    assert [r for r in t.rows] == [("wd", "clean"), ("wd", "custom")]
    md = RENDER["md"](t)
    assert "| wd (clean) | 51.00 ± 1.41 |" in md and "| wd (custom) | 54.00 ± 1.41 |" in md
    assert "wd, Synthetic-LT IF 10: custom 54.00 vs clean 51.00: +3.00 points under custom" in md
    # a second custom setting: which one the difference is about would be a guess
    write_run(root, ["name=c", "method=wd", "protocol=custom", "eval.selection_split=test", "eval.select=last",
                     "seed=0"], all_=60.0, sub="-ref2")
    md = RENDER["md"](build_table(collect([str(root)]), protocols=True))
    assert "wd, Synthetic-LT IF 10: several settings under custom; no single difference" in md
    assert "points under custom" not in md


def test_columns_are_defined_once_and_latex_rows_stay_rectangular(tmp_path):
    """COLUMNS drives the grid renderers: LaTeX (which has no cost column) gives published rows as many cells
    as reproduced rows, also under --cost."""
    from bench.report.render import COLUMNS, columns_of

    root = tmp_path / "runs"
    write_run(root, ["name=c", "method=wb", "data.dataset=cifar100", "data.imbalance_factor=100"], all_=52.0,
              extra={"cost": {"device": "cpu", "gpu": False, "processes": 1, "seconds": 36.0, "device_hours": 0.01}})
    t = build_table(collect([str(root)]), reference=True, show={"cost"})
    assert [c.name for c in COLUMNS] == ["all", "many", "medium", "few", "n", "cost"]
    assert [c.name for c in columns_of(t, "latex")] == ["all", "many", "medium", "few", "n"]
    rows = [x for x in RENDER["latex"](t).splitlines() if x.endswith("\\\\") and " & " in x and "multicolumn" not in x]
    assert len({x.count(" & ") for x in rows}) == 1 and any(x.startswith("\\textit") for x in rows)
    md = [x for x in RENDER["md"](t).splitlines() if x.startswith("| ")]
    assert len({x.count(" | ") for x in md}) == 1 and "| 0.01 CPU-h |" in md[1]


def test_html_page_holds_the_markdown_cells_escaped_and_self_contained(runs):
    """bench/report/html.py: the Markdown table's cells, notes and published rows in one page; every text
    escaped (a run path with <&> in its notes), figures as data URIs, nothing fetched from elsewhere."""
    import re

    from bench.report.html import draw_figures, render_html

    write_run(runs, ["name=bench", "method=wd", "seed=1", "data.dataset=cifar100", "data.imbalance_factor=100"],
              state="failed", sub="<b>&x")
    write_run(runs, ["name=bench", "method=wd", "seed=0", "data.dataset=cifar100", "data.imbalance_factor=100"],
              all_=47.0)
    t = build_table(collect([str(runs)]), reference=True, ci="t", baseline="wd", show={"cost"})
    page = render_html(t, figures=draw_figures(t))
    for cell in ("80.75 ± 1.06", "2/3<span class=\"flag\">†</span>", "60.50 ± 0.71", "46.08", "pub."):
        assert cell in page
    assert "wd-seed1/cifar100&lt;b&gt;&amp;x" in page and "<b>&x" not in page
    assert '<a href="https://arxiv.org/abs/2203.14197">WB paper (CVPR 2022)</a>' in page      # provenance links
    imgs = re.findall(r'<img src="([^"]*)"', page)
    assert len(imgs) == 3 and all(s.startswith("data:image/png;base64,") for s in imgs)
    assert not re.search(r'<(script|link|iframe)\b|src="(?!data:)', page)
    assert page.count("<tr") == 2 + len(t.rows) + len({(r["source"], r["method"]) for r in t.reference})


def test_settings_alike_in_their_first_keys_keep_a_row_each(tmp_path, monkeypatch):
    """Two settings that differ only past the label's fourth key get labels that differ (more keys), never
    one row that hides the other; a row taken twice is an internal error, not an overwrite."""
    import bench.report.aggregate

    root = tmp_path / "runs"
    base = ["name=grid", "method=wd", "seed=0"]
    write_run(root, base, all_=50.0, sub="-s1")
    write_run(root, base + ["train.batch_size=64", "train.lr=0.1", "train.momentum=0.5", "train.nesterov=true"],
              all_=55.0, sub="-s2")
    write_run(root, base + ["train.weight_decay=0.0"], all_=99.0, sub="-s3")      # s1 but for the fifth key
    t = build_table(collect([str(root)]))
    assert len(t.rows) == 3 and sorted(c.stats("all")[0] for c in t.cells.values()) == [50.0, 55.0, 99.0]
    assert all(r[1].endswith(("train.weight_decay=0.0", "train.weight_decay=0.0005")) for r in t.rows)
    # values that print alike (the string "1", the number 1) still get two labels
    a, b = (("k", '"1"'),), (("k", "1"),)
    assert len(set(setting_labels([a, b]).values())) == 2
    monkeypatch.setattr(bench.report.aggregate, "setting_labels", lambda keys: {s: "same" for s in keys})
    with pytest.raises(RuntimeError, match=r"internal error: two settings share the row wd \(same\)"):
        build_table(collect([str(root)]))


def test_children_of_differently_selected_parents_get_their_own_rows(tmp_path):
    """A post-hoc run inherits only its parent's data / model / train: the parent's own choices (here its epoch
    selection) come from the parent's run directory, so children of a test-selected and of a val-selected
    parent are two rows, while the seeds of one lineage are still averaged together."""
    root = tmp_path / "runs"
    for seed in (0, 1):
        for name, ev in (("s1", []), ("s1-peek", ["eval.selection_split=test"])):
            parent = write_run(root, [f"name={name}", "method=wd", f"seed={seed}", *ev], all_=50.0)
            write_run(root, [f"parent={parent}", "name=ph", "method=tau-norm"], all_=60.0 + seed + (10 if ev else 0),
                      sub="-peek" if ev else "", config=REPO / "configs" / "smoke_taunorm.yaml")
    t = build_table(collect([str(root / "ph")]))
    assert t.rows == [("tau-norm", "parent.eval.selection_split=test"), ("tau-norm", "parent.eval.selection_split=val")]
    assert [t.cells[(r, t.columns[0])].stats("all")[::2] for r in t.rows] == [(70.5, 2), (60.5, 2)]


def test_reference_counts_tau_chosen_on_test_and_a_peeking_parent_as_peeking(tmp_path):
    """--reference: a post-hoc tau chosen on test peeks (as the WB paper does: no selection note for tau-norm),
    so does a parent that picked its best epoch on test, and every averaged run is checked."""
    lines = {}
    tau_on_test = {"model": "resnet32_cifar", "selection": {"split": "test", "select": "last", "tta_flip": True},
                   "posthoc": {"kind": "taunorm", "tau": 1.9, "chosen_on": "test", "grid": {}}}
    for ds, method in (("cifar10", "la"), ("cifar100", "tau-norm")):
        root = tmp_path / ds
        write_run(root, ["name=c", f"method={method}", f"data.dataset={ds}", "data.imbalance_factor=100"],
                  all_=77.0, extra=tau_on_test)
        md = RENDER["md"](build_table(collect([str(root)]), reference=True))
        lines[method] = next(x for x in md.splitlines() if x.startswith(f"- {method}, ") and "ours" in x)
    assert "selection" not in lines["tau-norm"]                          # both chose on test
    assert "selection: tau chosen on test vs last in the paper" in lines["la"]
    # a child whose own choices are on val, of a parent that picked its epoch on test; seed 1's only
    root = tmp_path / "lineage"
    on_val = {"model": "resnet32_cifar", "selection": {"split": "val", "select": "last", "tta_flip": False},
              "posthoc": {"kind": "taunorm", "tau": 1.0, "chosen_on": None, "grid": None}}
    for seed, sel in ((0, {"split": "val", "select": "best"}), (1, {"split": "test", "select": "best"})):
        parent = write_run(root, ["name=s1", "method=wd", "data.dataset=cifar10", "data.imbalance_factor=100",
                                  f"seed={seed}"], all_=70.0, extra={"selection": sel})
        write_run(root, [f"parent={parent}", "name=c", "method=la"], all_=77.0, extra=on_val,
                  config=REPO / "configs" / "smoke_taunorm.yaml")
    md = RENDER["md"](build_table(collect([str(root / "c")]), reference=True))
    line = next(x for x in md.splitlines() if x.startswith("- la, ") and "ours" in x)
    assert "selection: parent's best epoch on test (1 of 2 runs) vs last in the paper" in line


def test_experiments_named_like_run_folders_are_collected(tmp_path):
    """wandb/, checkpoints/, features/, logs/ are skipped inside a run directory only (W&B writes a config.yaml
    of its own there): an experiment of that name is a table's row like any other."""
    root = tmp_path / "runs"
    write_run(root, ["name=main", "method=wd"], all_=50.0)
    for name in ("logs", "features", "checkpoints", "wandb"):
        write_run(root, [f"name={name}", "method=wb"], all_=60.0)
    w = next((root / "main").rglob("result.json")).parent / "wandb" / "run-1" / "files"
    w.mkdir(parents=True)
    (w / "config.yaml").write_text("_wandb: {desc: null, value: {}}\n")     # no ltbench config: would not load
    sub = root / "_submitit" / "x"
    sub.mkdir(parents=True)
    (sub / "config.yaml").write_text("not: a run\n")
    assert sorted(r.name for r in collect([str(root)])) == ["checkpoints", "features", "logs", "main", "wandb"]


def test_a_multi_expert_run_beside_a_published_row_of_other_experts(tmp_path):
    """RIDE's published `ride-teacher` row on CIFAR-100-LT IF 100 has 6 experts: a 4-expert teacher run beside it is
    marked (the run's result.json records model.experts)."""
    root = tmp_path / "runs"
    extra = {"model": "resnet32_cifar", "epochs": 200, "experts": 4,
             "selection": {"split": "test", "select": "last", "tta_flip": False}}
    write_run(root, ["name=c", "method=ride-teacher", "data.dataset=cifar100", "data.imbalance_factor=100",
                     "model.experts=4", "model.expert_width=0.75", "train.loss.name=ride"], all_=47.0, extra=extra)
    md = RENDER["md"](build_table(collect([str(root)]), reference=True))
    line = next(x for x in md.splitlines() if x.startswith("- ride-teacher, "))
    assert "50.20" in line and "experts 4 vs 6" in line, line


def test_a_test_time_aggregation_row_names_its_weights_and_that_it_read_test(tmp_path):
    """A sade_tta result has expert weights, not a tau: the notes list them per seed and say what they were fitted
    on (a table used to fail on the missing tau)."""
    root = tmp_path / "runs"
    for seed, w in ((0, [0.1, 0.2, 0.7]), (1, [0.3, 0.3, 0.4])):
        write_run(root, ["name=c", "method=sade-tta", f"seed={seed}"], all_=80.0, extra={
            "posthoc": {"kind": "sade_tta", "expert_weights": w, "passes": 5, "chosen_on": "test",
                        "transductive": True}})
    md = RENDER["md"](build_table(collect([str(root)])))
    assert ("sade-tta, Synthetic-LT IF 10: expert weights fitted on the unlabeled test images (transductive): "
            "[0.10, 0.20, 0.70] (seed 0), [0.30, 0.30, 0.40] (seed 1)") in md


def test_seeds_of_a_distilled_model_are_one_setting(tmp_path):
    """Each seed of a distilled model has its own teacher (the teacher run of that seed): the teacher's hash, like a
    parent's, differs between the seeds of one setting and does not split the row."""
    root = tmp_path / "runs"
    for seed, acc in ((0, 80.0), (1, 82.0)):
        write_run(root, ["name=c", "method=ride-distill", f"seed={seed}", f"train.distill.teacher_hash=t{seed}"],
                  all_=acc)
    md = RENDER["md"](build_table(collect([str(root)])))
    assert "| ride-distill | 81.00 ± 1.41 |" in md and "several settings" not in md
