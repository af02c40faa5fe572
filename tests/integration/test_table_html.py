"""`ltbench table --html` opened in a real headless browser (Debian's Chromium, installed by `make test`):
the page renders to a non-blank screenshot, and the DOM the browser built holds the Markdown table's
cells row for row, its notes, linked provenance, and only embedded (data: URI) images."""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.unit.test_table import write_run

pytestmark = pytest.mark.slow

# flags that work headless as root in a container: no sandbox, no GPU, nothing fetched in the background
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TABLE_ARGS = ["--reference", "--ci", "t", "--baseline", "naive", "--show", "cost"]


@pytest.fixture(scope="module")
def chromium() -> str:
    """The browser; fails (make test, LTBENCH_REQUIRE_BROWSER=1) or skips (a bare pytest) without it."""
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)
    if path is None:
        if os.environ.get("LTBENCH_REQUIRE_BROWSER") == "1":
            pytest.fail("Chromium is not installed (`make test` installs it: apt-get install -y chromium)")
        pytest.skip("no Chromium (run `make test`, or apt-get install -y chromium)")
    return path


def browse(chromium: str, tmp: Path, page: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"     # a new, empty profile per launch
    profile.mkdir()
    r = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


class Dom(HTMLParser):
    """What the test reads of the browser's DOM: table rows (cell texts), list items, links, image sources."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.items: list[str] = []
        self.links: list[str] = []
        self.imgs: list[str] = []
        self._cell: list[str] | None = None
        self._li: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "li":
            self._li = []
        elif tag == "a":
            self.links.append(a.get("href") or "")
        elif tag == "img":
            self.imgs.append(a.get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "li" and self._li is not None:
            self.items.append(" ".join("".join(self._li).split()))
            self._li = None

    def handle_data(self, data: str) -> None:
        for buf in (self._cell, self._li):
            if buf is not None:
                buf.append(data)


def markdown_rows(md: str) -> list[list[str]]:
    """The Markdown table's rows (header first), cells as printed, italics of published rows dropped."""
    lines = [x for x in md.splitlines() if x.startswith("| ")]
    return [[" ".join(c.strip("*").split()) for c in x[2:-2].split(" | ")] for x in lines]


def test_html_table_in_chromium(chromium, tmp_path):
    runs = tmp_path / "runs"
    cost = {"cost": {"device": "cpu", "gpu": False, "processes": 1, "seconds": 72.0, "device_hours": 0.02}}
    c100 = ["name=bench", "data.dataset=cifar100", "data.imbalance_factor=100"]
    for seed, (naive, wb) in enumerate(((40.0, 45.0), (41.0, 47.0), (42.0, 46.0))):
        write_run(runs, [*c100, "method=naive", f"seed={seed}"], all_=naive, groups=(naive + 25, naive, naive - 30),
                  extra=cost)
        write_run(runs, [*c100, "method=wb", f"seed={seed}"], all_=wb, groups=(wb + 20, wb, wb - 15), extra=cost)
    write_run(runs, [*c100, "method=wd", "seed=0"], all_=44.0, groups=(70.0, 44.0, 10.0), extra=cost)
    write_run(runs, [*c100, "method=wd", "seed=1"], state="failed")
    page = tmp_path / "out" / "table.html"
    r = run_cli("table", str(runs), *TABLE_ARGS, "--html", str(page), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"html -> {page}" in r.stdout and page.is_file()
    md = r.stdout                                                     # the Markdown table, printed as usual
    assert "46.00 ± 1.00 [43.52, 48.48] ▲" in md

    # (a) what the browser paints: a screenshot that is not blank
    from PIL import Image

    shot = tmp_path / "shot.png"
    browse(chromium, tmp_path, page, f"--screenshot={shot}", "--window-size=1200,900")
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 900)
    colours = img.getcolors(maxcolors=1 << 24)
    non_white = sum(n for n, c in colours if min(c) < 240)
    assert len(colours) > 50 and non_white > 0.02 * 1200 * 900, (len(colours), non_white)

    # (b) what the browser parsed: the DOM holds the Markdown table's cells, row for row
    dom = Dom()
    dom.feed(browse(chromium, tmp_path, page, "--dump-dom").stdout)
    want = markdown_rows(md)
    body = [row for row in dom.rows if len(row) == len(want[0])]  # grid rows (the 2nd header row is shorter)
    assert body == want[1:], (body, want)
    assert dom.rows[1] == want[0][1:]                                  # sub-column headers: all ... n cost
    assert want[1][0] == "naive" and want[3][:2] == ["wb", "46.00 ± 1.00 [43.52, 48.48] ▲"]
    assert any(row[0] == "wb (WB paper (CVPR 2022))" and row[1] == "53.35" for row in body)
    assert any(x.startswith("† wd, CIFAR-100-LT IF 100: not averaged in: seed 2 missing; seed 1 failed")
               for x in dom.items)                                 # the Markdown's notes
    assert "https://arxiv.org/abs/2203.14197" in dom.links             # a published row's provenance, linked
    # self-contained: every image is an embedded PNG, and it decodes
    assert dom.imgs and all(s.startswith("data:image/png;base64,") for s in dom.imgs)
    fig = Image.open(io.BytesIO(base64.b64decode(dom.imgs[0].split(",", 1)[1])))
    assert fig.format == "PNG" and fig.size[0] > 300
