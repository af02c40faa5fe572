"""The registry of published numbers: datasets/published/*.yaml (schema: datasets/published/README.md).

Each file is one paper. A row keeps what `ltbench table --reference` matches on (method, dataset,
imbalance_factor) and the metrics at its top level; its provenance (the paper's row label, the table or
README section, backbone, epochs, protocol, the URL where the value can be read, how it was checked) comes
from the file's `defaults` with the row's own keys overriding them. `load_published` resolves every row and
`check_file` says what is wrong with a file (empty list = valid).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bench.paths import repo_or_package_dir

PUBLISHED = repo_or_package_dir("datasets") / "published"
METRICS = ("all", "many", "medium", "few")
ROW_KEYS = ("method", "dataset", "imbalance_factor", *METRICS)
# provenance keys every row must resolve to (row value, else the file's `defaults`)
PROVENANCE = ("label", "table", "backbone", "epochs", "protocol", "selection", "url", "checked")
# what picked the reported model (epoch, hyperparameters): the test set itself, a validation split, nothing
# (the last epoch), or a rule the source does not state. `--reference` compares it with a run's selection.
SELECTIONS = ("test", "val", "last", "unknown")
OPTIONAL = ("note",)
PAPER_KEYS = ("title", "authors", "venue", "year", "url")


def _nonempty_str(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def resolve(doc: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """One row with its provenance filled in from the file's defaults, plus `source` and `paper`."""
    out = {**(doc.get("defaults") or {}), **row}
    out["source"] = doc.get("source")
    out["paper"] = doc.get("paper")
    return out


def check_file(path: Path, labels: set[str] | None = None, datasets: set[str] | None = None) -> list[str]:
    """Problems with one registry file (schema, value ranges, provenance, duplicates); [] if none."""
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        return [f"{path.name}: not valid YAML ({e})"]
    if not isinstance(doc, dict):
        return [f"{path.name}: expected a mapping at the top level"]
    errs: list[str] = []
    unknown = set(doc) - {"source", "paper", "defaults", "rows", "not_added"}
    if unknown:
        errs.append(f"{path.name}: unknown top-level keys {sorted(unknown)}")
    if not _nonempty_str(doc.get("source")):
        errs.append(f"{path.name}: `source` (the short label printed in tables) is missing")
    paper = doc.get("paper")
    if not isinstance(paper, dict):
        errs.append(f"{path.name}: `paper` is missing")
        paper = {}
    for k in PAPER_KEYS:
        v = paper.get(k)
        ok = (isinstance(v, list) and v and all(_nonempty_str(a) for a in v)) if k == "authors" else \
            (isinstance(v, int) and 1990 < v < 2100) if k == "year" else _nonempty_str(v)
        if not ok:
            errs.append(f"{path.name}: paper.{k} is missing or malformed")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict) or set(defaults) - set(PROVENANCE) - set(OPTIONAL):
        errs.append(f"{path.name}: `defaults` may only hold {PROVENANCE + OPTIONAL}")
    rows = doc.get("rows")
    if not isinstance(rows, list) or not rows:
        return errs + [f"{path.name}: `rows` must be a non-empty list"]
    seen: set[tuple] = set()
    for i, row in enumerate(rows):
        where = f"{path.name} row {i + 1}"
        if not isinstance(row, dict):
            errs.append(f"{where}: not a mapping")
            continue
        extra = set(row) - set(ROW_KEYS) - set(PROVENANCE) - set(OPTIONAL)
        if extra:
            errs.append(f"{where}: unknown keys {sorted(extra)}")
        r = resolve(doc, row)
        if not _nonempty_str(r.get("method")):
            errs.append(f"{where}: `method` missing")
        elif labels is not None and r["method"] not in labels:
            errs.append(f"{where}: method {r['method']!r} is not a documented label")
        if not _nonempty_str(r.get("dataset")):
            errs.append(f"{where}: `dataset` missing")
        elif datasets is not None and r["dataset"] not in datasets:
            errs.append(f"{where}: dataset {r['dataset']!r} has no dataset card")
        imb = r.get("imbalance_factor")
        if imb is not None and not (_number(imb) and imb >= 1):
            errs.append(f"{where}: imbalance_factor must be a number >= 1 or absent")
        if r.get("all") is None:
            errs.append(f"{where}: `all` is required (many/medium/few only come with it)")
        for m in METRICS:
            v = r.get(m)
            if v is not None and not (_number(v) and 0 <= v <= 100):
                errs.append(f"{where}: {m} = {v!r} is not a percentage in [0, 100]")
        if r.get("selection") is not None and r["selection"] not in SELECTIONS:
            errs.append(f"{where}: selection {r['selection']!r} is not one of {', '.join(SELECTIONS)}")
        for k in PROVENANCE:
            v = r.get(k)
            ok = (isinstance(v, int) and v > 0) or _nonempty_str(v) if k == "epochs" else _nonempty_str(v)
            if not ok:
                errs.append(f"{where}: provenance `{k}` does not resolve (set it on the row or in defaults)")
        key = (paper.get("title"), r.get("method"), r.get("dataset"), imb, r.get("backbone"))
        if key in seen:
            errs.append(f"{where}: duplicate (paper, method, dataset, imbalance_factor, backbone) {key[1:]}")
        seen.add(key)
    return errs


def load_published(directory: Path = PUBLISHED) -> list[dict[str, Any]]:
    """Every row of every registry file, resolved (file order, then row order)."""
    out = []
    for f in sorted(directory.glob("*.yaml")):
        doc = yaml.safe_load(f.read_text())
        out += [{**resolve(doc, row), "file": f.name} for row in doc["rows"]]
    return out
