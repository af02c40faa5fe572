"""A table as Markdown, LaTeX or CSV: its columns (COLUMNS, read by the Markdown, LaTeX and HTML grids),
CSV fields, caption and footnotes, and the file `ltbench table --out` writes."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.data.cards import dataset_title
from bench.report.aggregate import Cell, Col, Row, Table, method_key, row_label
from bench.report.collect import METRICS
from bench.report.compare import COMPARISON_INTRO, PROTOCOL_NOTES_INTRO, comparison_lines, protocol_notes
from bench.runtime.progress import log
from bench.runtime.rundir import write_text_atomic


# ----------------------------------------------------------------------------------------------- rendering
def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def _cell_text(cell: Cell | None, metric: str, latex: bool = False, ci: str | None = None, mark: str = "") -> str:
    if cell is None:
        return ""
    mean, std, _ = cell.stats(metric)
    if mean is None:
        return "--" if latex else "—"
    if std is None:
        return _num(mean) + mark
    text = f"${mean:.2f} \\pm {std:.2f}$" if latex else f"{mean:.2f} ± {std:.2f}"
    interval = cell.interval(metric, ci) if ci else None
    if interval is not None:
        text += f" [{interval[0]:.2f}, {interval[1]:.2f}]"
    return text + (mark.replace(" ▲", " $\\blacktriangle$").replace(" ▼", " $\\blacktriangledown$") if latex else mark)


def _n_text(cell: Cell | None, expected: list[int], mark: str) -> str:
    if cell is None:
        return ""
    return f"{len(cell.runs)}/{len(expected)}{mark}" if cell.flagged else str(len(cell.runs))


def footnotes(table: Table) -> list[tuple[str, str]]:
    """(mark, text) per flagged or selected cell, in row then column order."""
    notes = []
    for row in table.rows:
        for col in table.columns:
            cell = table.cells.get((row, col))
            if cell is None:
                continue
            name = f"{row[0]}{' (' + row[1] + ')' if row[1] else ''}, {dataset_title(*col)}"
            if cell.chosen:
                notes.append(("", f"{name}: chosen {cell.chosen}"))
            chosen = [(r.seed, r.result["posthoc"]) for r in cell.runs
                      if r.result and (r.result.get("posthoc") or {}).get("chosen_on")]
            taus = [(seed, p) for seed, p in chosen if "tau" in p]
            if taus:
                notes.append(("", f"{name}: tau chosen on {taus[0][1]['chosen_on']}: "
                                  + ", ".join(f"{p['tau']:g} (seed {seed})" for seed, p in taus)))
            weights = [(seed, p) for seed, p in chosen if "expert_weights" in p]   # SADE's test-time aggregation
            if weights:
                notes.append(("", f"{name}: expert weights fitted on the unlabeled {weights[0][1]['chosen_on']} images "
                                  "(transductive): " + ", ".join(
                                      "[" + ", ".join(f"{w:.2f}" for w in p["expert_weights"]) + f"] (seed {seed})"
                                      for seed, p in weights)))
            if cell.flagged:
                parts = ([f"seed {s} missing" for s in cell.missing] + cell.left_out)
                notes.append(("†", f"{name}: not averaged in: " + "; ".join(parts)))
    return notes


def caption(table: Table) -> str:
    seeds = ", ".join(map(str, table.expected_seeds))
    text = (f"Test top-1 accuracy (%), mean ± sample std over seeds {{{seeds}}}; n = complete runs averaged; "
            "† = runs failed, unfinished or missing (not averaged in; see notes).")
    if table.ci:
        text += (" [lo, hi] = 95 % interval of the mean (" + ("Student t over seeds" if table.ci == "t" else
                 "percentile bootstrap over seeds") + ").")
    if table.baseline:
        text += (f" ▲ / ▼ = all better / worse than {table.baseline} at p < 0.05 (paired t-test over the seeds "
                 "both completed).")
    return text + "".join(f" {c.header} = {c.note}" for c in COLUMNS if c.on_request and c.name in table.show)


def _cost_text(cell: Cell | None) -> str:
    if cell is None:
        return ""
    hours, unit = cell.device_hours()
    return "—" if hours is None else f"{hours:.3g} {unit}"


@dataclass(frozen=True)
class Column:
    """One sub-column of every dataset column in the grid renderers (Markdown, LaTeX, HTML): defined once here,
    so that a new column is one entry of COLUMNS (and, for CSV, of CSV_FIELDS). A column `on_request` is shown
    only when `ltbench table --show NAME` asks for it (Table.show); its `note` then joins the caption."""

    name: str
    header: str                                  # header text (Markdown, HTML; LaTeX: `tex` when set)
    text: Callable[[Table, Row, Col, Cell | None, bool], str]   # a reproduced cell; bool: LaTeX source
    published: Callable[[dict[str, Any]], str]   # a published reference row's cell (its column has a value)
    formats: frozenset[str] = frozenset({"md", "latex", "html"})
    on_request: bool = False
    note: str = ""                               # what the column holds, said in the caption when it is shown
    tex: str | None = None

    def shown(self, table: Table, fmt: str) -> bool:
        return fmt in self.formats and (not self.on_request or self.name in table.show)


def _metric_column(m: str) -> Column:
    return Column(m, m, lambda t, row, col, cell, latex: _cell_text(
        cell, m, latex=latex, ci=t.ci, mark=t.marker(row, col) if m == "all" else ""), lambda ref: _num(ref.get(m)))


COLUMNS = (
    *(_metric_column(m) for m in METRICS),
    Column("n", "n", lambda t, row, col, cell, latex: _n_text(cell, t.expected_seeds, "$^\\dagger$" if latex else "†"),
           lambda ref: "pub.", tex="$n$"),
    Column("cost", "cost", lambda t, row, col, cell, latex: _cost_text(cell), lambda ref: "",
           formats=frozenset({"md", "html"}), on_request=True,
           note="device-hours of the averaged runs together (wall time x processes, requeued attempts included; "
                "GPU-h or CPU-h)."),
)


def requestable_columns() -> list[str]:
    """The names `ltbench table --show` accepts: the columns shown only on request."""
    return [c.name for c in COLUMNS if c.on_request]


def columns_of(table: Table, fmt: str) -> list[Column]:
    """The sub-columns `fmt` ("md", "latex", "html") shows for this table's flags."""
    return [c for c in COLUMNS if c.shown(table, fmt)]


@dataclass(frozen=True)
class CsvField:
    """One field of the CSV (a line per reproduced cell, then a line per published value)."""

    header: str
    value: Callable[[Table, Row, Col, Cell], str]
    published: Callable[[dict[str, Any]], str] | None = None   # None: not written on published lines
    shown: Callable[[Table], bool] = lambda table: True
    column: str | None = None                    # written when this column (on request) is asked for

    def written(self, table: Table) -> bool:
        return self.shown(table) and (self.column is None or self.column in table.show)


def _csv_num(v: float | None, fmt: str = ".4f") -> str:
    return "" if v is None else format(v, fmt)


def _csv_ci(m: str, end: int) -> CsvField:
    def value(t: Table, row: Row, col: Col, cell: Cell) -> str:
        iv = cell.interval(m, t.ci)  # type: ignore[arg-type]  # shown only when t.ci is set
        return "" if iv is None else f"{iv[end]:.4f}"
    return CsvField(f"{m}_ci_{('lo', 'hi')[end]}", value, shown=lambda t: bool(t.ci))


def _csv_vs(i: int, header: str, fmt: str) -> CsvField:
    def value(t: Table, row: Row, col: Col, cell: Cell) -> str:
        cmp = t.versus_baseline(row, col)
        return "" if cmp is None else format(cmp[i], fmt)
    return CsvField(header, value, shown=lambda t: bool(t.baseline))


def _csv_hours(i: int, header: str) -> CsvField:
    def value(t: Table, row: Row, col: Col, cell: Cell) -> str:
        hours, unit = cell.device_hours()
        return "" if hours is None else (f"{hours:.5f}", unit)[i]
    return CsvField(header, value, column="cost")


CSV_FIELDS = (
    CsvField("method", lambda t, row, col, cell: row[0], lambda ref: ref["method"]),
    CsvField("setting", lambda t, row, col, cell: row[1], lambda ref: f"published: {ref['source']}"),
    CsvField("dataset", lambda t, row, col, cell: col[0], lambda ref: ref["column"][0]),
    CsvField("imbalance_factor", lambda t, row, col, cell: _csv_num(col[1], "g"),
             lambda ref: _csv_num(ref["column"][1], "g")),
    CsvField("n", lambda t, row, col, cell: str(len(cell.runs)), lambda ref: ""),
    CsvField("seeds", lambda t, row, col, cell: " ".join(str(r.seed) for r in cell.runs), lambda ref: ""),
    *(CsvField(f"{m}_{s}", lambda t, row, col, cell, m=m, i=i: _csv_num(cell.stats(m)[i]),  # type: ignore[misc]
               lambda ref, m=m, i=i: _csv_num(ref.get(m)) if i == 0 else "")  # type: ignore[misc]
      for m in METRICS for i, s in enumerate(("mean", "std"))),
    CsvField("not_averaged", lambda t, row, col, cell: "; ".join([f"seed {s} missing" for s in cell.missing]
                                                                  + cell.left_out), lambda ref: ""),
    CsvField("chosen", lambda t, row, col, cell: cell.chosen, lambda ref: ""),
    *(_csv_ci(m, end) for m in METRICS for end in (0, 1)),
    _csv_vs(0, "vs_baseline_all_diff", ".4f"), _csv_vs(1, "vs_baseline_all_p", ".4g"),
    _csv_vs(2, "vs_baseline_pairs", ""),
    _csv_hours(0, "device_hours"), _csv_hours(1, "device_unit"),
)


# ----------------------------------------------------------------------------------------------- renderers
def render_markdown(table: Table) -> str:
    head = ["method"]
    single = len(table.columns) == 1   # one dataset: plain headers, its name in the caption
    shown = columns_of(table, "md")
    for col in table.columns:
        t = "" if single else dataset_title(*col) + " "
        head += [f"{t}{c.header}" for c in shown]
    title = f"{dataset_title(*table.columns[0])}. " if single else ""
    lines = [title + caption(table), "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.rows:
        lines.append("| " + " | ".join([row_label(row), *grid_cells(table, row, "md")]) + " |")
    for ref in _reference_lines(table):
        lines.append("| " + " | ".join(ref) + " |")
    notes = footnotes(table)
    if notes:
        lines.append("")
        lines += [f"- {mark}{' ' if mark else ''}{text}" for mark, text in notes]
    peeks = protocol_notes(table) if table.protocols else []
    if peeks:
        lines += ["", PROTOCOL_NOTES_INTRO, ""] + [f"- {x}" for x in peeks]
    against = comparison_lines(table)
    if against:
        lines += ["", COMPARISON_INTRO, ""] + [f"- {x}" for x in against]
    return "\n".join(lines) + "\n"


def grid_cells(table: Table, row: Row, fmt: str) -> list[str]:
    """A reproduced row's cells in the grid renderers: every dataset column's shown sub-columns."""
    latex = fmt == "latex"
    shown = columns_of(table, fmt)
    return [c.text(table, row, col, table.cells.get((row, col)), latex) for col in table.columns for c in shown]


def reference_rows(table: Table) -> list[tuple[str, str, dict[Col, dict[str, Any]]]]:
    """The published rows as the grid shows them: (source, method, {column: registry row}), sorted."""
    by_row: dict[tuple[str, str], dict[Col, dict[str, Any]]] = defaultdict(dict)
    for ref in table.reference:
        by_row[(ref["source"], ref["method"])][ref["column"]] = ref
    return [(source, method, by_row[(source, method)])
            for (source, method) in sorted(by_row, key=lambda k: (k[0], method_key(k[1])))]


def reference_cells(table: Table, refs: dict[Col, dict[str, Any]], fmt: str) -> list[str]:
    shown = columns_of(table, fmt)
    return [("" if ref is None else c.published(ref)) for col in table.columns
            for ref in (refs.get(col),) for c in shown]


def _reference_lines(table: Table, latex: bool = False) -> list[list[str]]:
    out = []
    for source, method, refs in reference_rows(table):
        label = f"{method} ({source})"
        out.append([f"\\textit{{{_tex(label)}}}" if latex else f"*{label}*",
                    *reference_cells(table, refs, "latex" if latex else "md")])
    return out


_TEX = {"\\": "\\textbackslash{}", "_": "\\_", "%": "\\%", "&": "\\&", "#": "\\#", "{": "\\{", "}": "\\}",
        "$": "\\$", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}"}


def _tex(s: str) -> str:
    """LaTeX-escape text (one pass, so escapes are not escaped again)."""
    return "".join(_TEX.get(ch, ch) for ch in s)


def render_latex(table: Table) -> str:
    """A booktabs table: one multicolumn group (all / many / medium / few / n) per dataset column."""
    shown = columns_of(table, "latex")
    ncol = len(shown)
    spec = "l" + ("c" * ncol) * len(table.columns)
    lines = ["% " + caption(table), f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
             " & ".join(["method"] + [f"\\multicolumn{{{ncol}}}{{c}}{{{_tex(dataset_title(*c))}}}"
                                      for c in table.columns]) + " \\\\"]
    rules = " ".join(f"\\cmidrule(lr){{{2 + i * ncol}-{1 + (i + 1) * ncol}}}" for i in range(len(table.columns)))
    lines += [rules, " & ".join([""] + [c.tex or c.header for _ in table.columns for c in shown]) + " \\\\",
              "\\midrule"]
    for row in table.rows:
        lines.append(" & ".join([_tex(row_label(row)), *grid_cells(table, row, "latex")]) + " \\\\")
    refs = _reference_lines(table, latex=True)
    if refs:
        lines.append("\\midrule")
        lines += [" & ".join(r) + " \\\\" for r in refs]
    lines += ["\\bottomrule", "\\end{tabular}"]
    for mark, text in footnotes(table):
        lines.append(f"% {mark}{' ' if mark else ''}{text}")
    lines += [f"% against the published numbers: {x}" for x in comparison_lines(table)]
    return "\n".join(lines) + "\n"


def render_csv(table: Table) -> str:
    """One line per (row, column): mean, std of each metric, n, seeds, what was left out (CSV_FIELDS)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    fields = [f for f in CSV_FIELDS if f.written(table)]
    w.writerow([f.header for f in fields])
    for row in table.rows:
        for col in table.columns:
            cell = table.cells.get((row, col))
            if cell is not None:
                w.writerow([f.value(table, row, col, cell) for f in fields])
    for ref in table.reference:
        w.writerow([f.published(ref) for f in fields if f.published is not None])
    return buf.getvalue()


RENDER = {"md": render_markdown, "latex": render_latex, "csv": render_csv}


def save_table(table: Table, fmt: str, out: Path | None, plots: Path | None) -> str:
    """Render `table` as `fmt`; write it atomically to `out` (if given) and its per-dataset plots to
    <plots>-<dataset>.png (if given). Returns the text. `ltbench table` and the demo."""
    from bench.report.plots import plot_table  # matplotlib: only when plots are asked for

    text = RENDER[fmt](table)
    if out is not None:
        write_text_atomic(out, text)
        log(f"table -> {out}")
    for path in plot_table(table, plots) if plots is not None else []:
        log(f"plot -> {path}")
    return text
