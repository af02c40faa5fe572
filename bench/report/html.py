"""`ltbench table --html OUT` (and `--format html`): the benchmark table as ONE self-contained HTML page.

The page holds what the Markdown table holds (caption, the grid of bench.report.render.COLUMNS, published rows,
notes, the protocol and published-number comparisons), the published rows' provenance with links, and the
per-dataset figures of bench.report.plots.plot_table embedded as base64 PNG data URIs: no external file, script or
network. Every text is escaped (html.escape); only http(s) URLs become links.
"""

from __future__ import annotations

import base64
import html
import re
import tempfile
from pathlib import Path
from typing import Any

from bench.data.cards import dataset_title
from bench.report.aggregate import Table, row_label
from bench.report.compare import COMPARISON_INTRO, PROTOCOL_NOTES_INTRO, comparison_lines, protocol_notes
from bench.report.render import caption, columns_of, footnotes, grid_cells, reference_cells, reference_rows
from bench.runtime.rundir import write_text_atomic

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1f2328;
       margin: 24px auto; max-width: 1400px; padding: 0 16px; }
h1 { font-size: 20px; margin: 0 0 6px; }
h2 { font-size: 16px; margin: 24px 0 6px; }
p.caption { color: #444; max-width: 110ch; margin: 0 0 10px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 8px 0; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 8px; border-bottom: 1px solid #d8dee4; white-space: nowrap; text-align: right; }
thead th { background: #f3f5f7; border-bottom: 2px solid #afb8c1; }
thead tr.group th { text-align: center; }
th.method, th[scope=row] { text-align: left; }
th[scope=row] { white-space: normal; min-width: 16em; max-width: 28em; }
.ci { display: block; color: #57606a; font-size: 12px; }
.g { border-left: 2px solid #afb8c1; }
tbody tr:nth-child(even) { background: #f8f9fa; }
tr.ref { color: #57606a; }
tr.ref th { font-weight: normal; }
tbody tr.ref:first-of-type th, tbody tr.ref:first-of-type td { border-top: 2px solid #afb8c1; }
.flag { color: #b35900; font-weight: 600; }
.up { color: #1a7f37; font-weight: 600; }
.down { color: #cf222e; font-weight: 600; }
ul { padding-left: 22px; margin: 4px 0; }
li { margin: 3px 0; overflow-wrap: anywhere; }
ul.small { font-size: 12px; color: #424a53; }
figure { margin: 16px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #d8dee4; }
figcaption { color: #57606a; font-size: 12px; }
a { color: #0969da; }
"""


G = ' class="g"'       # the first sub-column of a dataset: a rule on its left


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _link(text: str, url: Any) -> str:
    """Escaped `text`, a link to `url` when it is an http(s) URL."""
    if isinstance(url, str) and url.startswith(("https://", "http://")):
        return f'<a href="{_e(url)}">{_e(text)}</a>'
    return _e(text)


def _marks(text: str) -> str:
    """Escaped cell text with its † / ▲ / ▼ marks coloured and a [lo, hi] interval on a line of its own (the
    text itself is unchanged)."""
    out = (_e(text).replace("†", '<span class="flag">†</span>').replace("▲", '<span class="up">▲</span>')
           .replace("▼", '<span class="down">▼</span>'))
    return re.sub(r" (\[-?[0-9.]+, -?[0-9.]+\].*)$", r' <span class="ci">\1</span>', out)


def _grid(table: Table) -> list[str]:
    shown = columns_of(table, "html")
    k = len(shown)
    out = ['<div class="scroll"><table>', "<thead>",
           '<tr class="group"><th class="method" rowspan="2" scope="col">method</th>'
           + "".join(f'<th class="g" colspan="{k}" scope="colgroup">{_e(dataset_title(*col))}</th>'
                     for col in table.columns) + "</tr>",
           "<tr>" + "".join(f'<th{G if i == 0 else ""} scope="col">{_e(c.header)}</th>'
                            for _ in table.columns for i, c in enumerate(shown)) + "</tr>",
           "</thead>", "<tbody>"]

    def tds(cells: list[str]) -> str:
        return "".join(f'<td{G if i % k == 0 else ""}>{_marks(x)}</td>' for i, x in enumerate(cells))

    for row in table.rows:
        out.append(f'<tr><th scope="row">{_e(row_label(row))}</th>{tds(grid_cells(table, row, "html"))}</tr>')
    for source, method, refs in reference_rows(table):
        paper = next(iter(refs.values())).get("paper") or {}
        out.append(f'<tr class="ref"><th scope="row"><em>{_e(method)}</em> ({_link(source, paper.get("url"))})</th>'
                   f'{tds(reference_cells(table, refs, "html"))}</tr>')
    out += ["</tbody>", "</table></div>"]
    return out


def _provenance(table: Table) -> list[str]:
    """Each published value with where it comes from (datasets/published/*.yaml), linked."""
    items = []
    for source, method, refs in reference_rows(table):
        for col in table.columns:
            ref = refs.get(col)
            if ref is None:
                continue
            paper = ref.get("paper") or {}
            title = f"{paper.get('title')} ({paper.get('venue')} {paper.get('year')})" if paper.get("title") else ""
            facts = "; ".join(f"{k} {_e(ref[k])}" for k in ("table", "backbone", "epochs", "protocol", "checked")
                              if ref.get(k) not in (None, ""))
            items.append(f"<li><em>{_e(method)}</em>, {_e(dataset_title(*col))}: all {_e(ref.get('all'))} — "
                         f"{_link(source, ref.get('url'))}"
                         + (f", row “{_e(ref['label'])}”" if ref.get("label") else "")
                         + (f" of {_link(title, paper.get('url'))}" if title else "")
                         + (f" ({facts})" if facts else "") + f" [{_e(ref.get('file', ''))}]</li>")
    return items


def render_html(table: Table, figures: list[tuple[str, bytes]] | None = None) -> str:
    """The page. `figures`: (caption, PNG bytes) to embed; None draws them (bench.report.plots.plot_table)."""
    if figures is None:
        figures = draw_figures(table)
    single = len(table.columns) == 1
    title = "ltbench table" + (f": {dataset_title(*table.columns[0])}" if single else "")
    body = [f"<h1>{_e(title)}</h1>", f'<p class="caption">{_e(caption(table))}</p>', *_grid(table)]
    notes = footnotes(table)
    if notes:
        body += ["<h2>Notes</h2>", "<ul>", *(f"<li>{_marks(mark + ' ' if mark else '')}{_e(text)}</li>"
                                           for mark, text in notes), "</ul>"]
    peeks = protocol_notes(table) if table.protocols else []
    if peeks:
        body += ["<h2>Protocols</h2>", f"<p>{_e(PROTOCOL_NOTES_INTRO)}</p>", "<ul>",
                 *(f"<li>{_e(x)}</li>" for x in peeks), "</ul>"]
    against = comparison_lines(table)
    if against:
        rule = COMPARISON_INTRO.removeprefix("Against the published numbers (").removesuffix("):")
        body += ["<h2>Against the published numbers</h2>", f"<p>{_e(rule[:1].upper() + rule[1:])}.</p>", "<ul>",
                 *(f"<li>{_e(x)}</li>" for x in against), "</ul>"]
    provenance = _provenance(table)
    if provenance:
        body += ["<h2>Published numbers: provenance</h2>", '<ul class="small">', *provenance, "</ul>"]
    if figures:
        body.append("<h2>Figures</h2>")
        for text, png in figures:
            data = base64.b64encode(png).decode("ascii")
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{_e(text)}">'
                        f"<figcaption>{_e(text)}</figcaption></figure>")
    head = ['<!DOCTYPE html>', '<html lang="en">', "<head>", '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">', f"<title>{_e(title)}</title>",
            f"<style>{STYLE}</style>", "</head>", "<body>"]
    return "\n".join([*head, *body, "</body>", "</html>"]) + "\n"


def draw_figures(table: Table, prefix: Path | None = None) -> list[tuple[str, bytes]]:
    """(caption, PNG bytes) per dataset column with per-class results: plot_table's figures, written to
    <prefix>-<dataset>.png when a prefix is given, else drawn in a temporary folder."""
    from bench.report.plots import plot_path, plot_table  # matplotlib: only when figures are asked for
    from bench.runtime.progress import log

    def read(pre: Path) -> list[tuple[str, bytes]]:
        written = plot_table(table, pre)
        if prefix is not None:
            for path in written:
                log(f"plot -> {path}")
        return [(f"{dataset_title(*col)}: per-class test accuracy against training class size (mean over the "
                 "averaged seeds), and per-class classifier weight norms", plot_path(pre, col).read_bytes())
                for col in table.columns if plot_path(pre, col) in written]

    if prefix is not None:
        return read(prefix)
    with tempfile.TemporaryDirectory(prefix="ltbench-html-") as tmp:
        return read(Path(tmp) / "plot")


def save_html(table: Table, out: Path | None, figures: list[tuple[str, bytes]] | None = None) -> str:
    """Render the page with `figures` embedded (None: draw them) and write it atomically to `out` if given.
    Returns the page."""
    from bench.runtime.progress import log

    page = render_html(table, figures)
    if out is not None:
        write_text_atomic(out, page)
        log(f"html -> {out}")
    return page
