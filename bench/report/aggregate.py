"""Runs -> the benchmark table (mean +- std over seeds), as in the WB paper's tables.

A row is a method (and, when one method ran with several settings on a dataset, each setting: labelled by
the config keys that differ; a stage-2 / post-hoc run's setting includes its parent run's); a column is a
dataset x imbalance factor. A cell averages the COMPLETE runs of the seeds that ran. Runs that failed or are
unfinished, and seeds that are missing (against --seeds, or else every seed seen in the table), are never
averaged in silently: the cell is marked and a footnote names them.

Standard deviations are sample standard deviations (n - 1 in the denominator), the usual reading of
"mean +- std over seeds"; one seed has no std. Output is a pure function of the runs: sorted, fixed
formatting, paths as given."""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bench.config import ConfigError
from bench.paths import repo_or_package_dir
from bench.report.collect import RunRecord
from bench.report.published import load_published
from bench.report.stats import bootstrap_interval, paired_t, t_interval

# Row order of the WB paper's tables (naive -> stage 1 -> post-hoc -> stage 2 -> HS); a foundation-model table
# reads as LIFT's: zero-shot and the linear probe first, the classifier re-balancing rows of the WB order on the
# frozen model, lightweight fine-tuning last. Others follow by name.
METHOD_ORDER = ("zs-clip", "zs-clip-la", "probe", "naive", "ce", "wd", "l2-norm", "tau-norm", "lws", "crt", "cb-wd",
                "cb-maxnorm", "wb", "hs-stage1", "hs", "lift-lora", "lift")
PUBLISHED = repo_or_package_dir("datasets") / "published"
# ----------------------------------------------------------------------------------------------- grouping
@dataclass
class Cell:
    runs: list[RunRecord]                        # complete runs averaged (one per seed)
    left_out: list[str]                          # footnote text: failed / unfinished / duplicate runs
    missing: list[int]                           # expected seeds with no run at all
    chosen: str = ""                             # --select: the setting chosen and among how many

    def values(self, metric: str, source: str = "metrics") -> dict[int, float]:
        """seed -> value of the complete runs (one per seed)."""
        return {r.seed: v for r in self.runs if (v := (getattr(r, source) or {}).get(metric)) is not None}

    def interval(self, metric: str, kind: str) -> tuple[float, float] | None:
        """95 % interval of the mean over seeds: Student t (kind "t") or a percentile bootstrap."""
        vals = list(self.values(metric).values())
        return t_interval(vals) if kind == "t" else bootstrap_interval(vals)

    def device_hours(self) -> tuple[float | None, str]:
        """Device-hours of the averaged runs together, and their unit (GPU-h, CPU-h, or device-h when mixed);
        None when a run predates cost records."""
        costs: list[Any] = [(r.result or {}).get("cost") for r in self.runs]
        if not costs or any(c is None for c in costs):
            return None, ""
        kinds = {c["gpu"] for c in costs}
        return sum(c["device_hours"] for c in costs), ("GPU-h" if kinds == {True} else "CPU-h" if kinds == {False}
                                                       else "device-h")

    def stats(self, metric: str, source: str = "metrics") -> tuple[float | None, float | None, int]:
        vals = [v for r in self.runs if (v := (getattr(r, source) or {}).get(metric)) is not None]
        if not vals:
            return None, None, 0
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
        return mean, std, len(vals)

    @property
    def flagged(self) -> bool:
        return bool(self.left_out or self.missing)


@dataclass
class Table:
    columns: list[tuple[str, float | None]]
    rows: list[tuple[str, str]]                  # (method, setting label)
    cells: dict[tuple[tuple[str, str], tuple[str, float | None]], Cell]
    expected_seeds: list[int]
    reference: list[dict[str, Any]] = field(default_factory=list)
    reference_asked: bool = False                # --reference: say so when the registry has nothing to compare
    ci: str | None = None                        # "t" or "bootstrap": a 95 % interval in every cell
    show: frozenset[str] = frozenset()           # the columns shown only on request (--show, e.g. cost)
    protocols: bool = False                      # rows split by protocol, and each method's protocols compared
    baseline: str | None = None                  # method every row is compared with (paired t-test over seeds)

    def versus_baseline(self, row: tuple[str, str], col: tuple[str, float | None],
                        metric: str = "all") -> tuple[float, float, int] | None:
        """(mean difference row - baseline, two-sided p, pairs) over the seeds both completed; None when
        there is no baseline, this is the baseline, or fewer than two seeds pair up."""
        if self.baseline is None or row[0] == self.baseline:
            return None
        base = next((self.cells[(r, col)] for r in self.rows if r[0] == self.baseline and (r, col) in self.cells), None)
        cell = self.cells.get((row, col))
        if base is None or cell is None:
            return None
        a, b = cell.values(metric), base.values(metric)
        seeds = sorted(set(a) & set(b))
        return paired_t([a[k] for k in seeds], [b[k] for k in seeds])

    def marker(self, row: tuple[str, str], col: tuple[str, float | None]) -> str:
        """▲ / ▼: better / worse than the baseline at p < 0.05 (paired t-test of "all" over seeds)."""
        cmp = self.versus_baseline(row, col)
        if cmp is None or cmp[1] >= 0.05:
            return ""
        return " ▲" if cmp[0] > 0 else " ▼"


def method_key(m: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m)


def setting_labels(settings: list[tuple[tuple[str, str], ...]], max_keys: int = 4) -> dict[tuple, str]:
    """Short, unique labels for several settings of one method in one experiment on one dataset: the config
    keys whose values differ (max_keys of them, then '+N more'; more keys while two labels would be equal)."""
    if len(settings) < 2:
        return {s: "" for s in settings}
    dicts = {s: dict(s) for s in settings}
    keys = sorted({k for d in dicts.values() for k in d})
    differing = [k for k in keys if len({d.get(k) for d in dicts.values()}) > 1]

    def labels(n: int) -> dict[tuple, str]:
        out = {}
        for s, d in dicts.items():
            parts = [f"{k}={json.loads(d[k]) if k in d else '-'}" for k in differing[:n]]
            if len(differing) > n:
                parts.append(f"+{len(differing) - n} more")
            out[s] = ", ".join(parts)
        return out

    n = max_keys
    out = labels(n)
    while len(set(out.values())) < len(out) and n < len(differing):
        n += 1
        out = labels(n)
    if len(set(out.values())) < len(out):   # values that print alike (the string "1" and the number 1)
        out = {s: f"{label}, #{hashlib.sha256(json.dumps(s).encode()).hexdigest()[:6]}" for s, label in out.items()}
    return out


def build_table(records: list[RunRecord], seeds: list[int] | None = None, select: str | None = None,
                reference: bool = False, ci: str | None = None, baseline: str | None = None,
                show: Iterable[str] = (), protocols: bool = False) -> Table:
    """Group records into cells: (method, label) x (dataset, imbalance factor).

    Within a column, a method's runs are split by experiment name (named in the label when a method
    comes from several experiments), then by setting; with `select`, each experiment's settings are
    reduced to the one with the best mean `select` accuracy (seeds averaged first).
    """
    expected = sorted(seeds) if seeds is not None else sorted({r.seed for r in records})
    groups: dict[tuple, dict[str, dict[tuple, list[RunRecord]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    for r in records:
        # --protocols: a method's runs are split (and labelled) by protocol rather than by experiment
        groups[(r.method, r.column)][r.protocol if protocols else r.name][r.setting].append(r)

    cells: dict[tuple[tuple[str, str], tuple[str, float | None]], Cell] = {}
    for (method, col), by_name in groups.items():
        for name, settings in sorted(by_name.items()):
            prefix = name if len(by_name) > 1 or protocols else ""
            keys = sorted(settings)
            label = setting_labels(keys)
            made = {s: make_cell(settings[s], expected) for s in keys}
            if select and len(keys) > 1:
                def score(s: tuple, made: dict[tuple, Cell] = made) -> float:
                    mean = made[s].stats("all", "val_metrics")[0]
                    return -math.inf if mean is None else mean
                best = max(keys, key=score)      # first in sorted order on ties
                if score(best) == -math.inf:
                    raise ConfigError(f"ltbench table --select {select}: no {method} run of {name} on {col[0]} has "
                                      f"{select} metrics (runs without a {select} split cannot be selected on it)")
                made[best].chosen = f"{label[best]} (best mean {select} all of {len(keys)} settings)"
                _put(cells, ((method, prefix), col), made[best])
            else:
                for s in keys:
                    _put(cells, ((method, ", ".join(x for x in (prefix, label[s]) if x)), col), made[s])

    columns = sorted({c for _, c in cells}, key=lambda c: (c[0], -(c[1] or 0)))
    rows = sorted({r for r, _ in cells}, key=lambda r: (method_key(r[0]), r[1]))
    table = Table(columns, rows, cells, expected, ci=ci, baseline=baseline, show=frozenset(show),
                  protocols=protocols)
    if baseline is not None and not any(r[0] == baseline for r in rows):
        raise ConfigError(f"ltbench table --baseline {baseline}: no such method among the runs "
                          f"({', '.join(sorted({r[0] for r in rows}))})")
    for col in columns if baseline is not None else []:
        # every row is compared with THE baseline cell of its column: with several, which one would be a guess
        several = [row_label(r) for r in rows if r[0] == baseline and (r, col) in cells]
        if len(several) > 1:
            raise ConfigError(f"ltbench table --baseline {baseline}: {len(several)} rows of {baseline} on {col[0]} "
                              f"({'; '.join(several)}); reduce them to one (--select val, or fewer run folders)")
    if reference:
        table.reference, table.reference_asked = published_rows(columns), True
    return table


def _put(cells: dict[tuple[tuple[str, str], tuple[str, float | None]], Cell],
         key: tuple[tuple[str, str], tuple[str, float | None]], cell: Cell) -> None:
    """cells[key] = cell; a key taken already would hide a setting's runs: an internal error, never an overwrite."""
    if key in cells:
        paths = [r.path for c in (cells[key], cell) for r in c.runs[:1]]
        raise RuntimeError(f"ltbench table: internal error: two settings share the row {row_label(key[0])} on "
                           f"{key[1][0]} ({', '.join(paths)})")
    cells[key] = cell


def make_cell(runs: list[RunRecord], expected: list[int]) -> Cell:
    complete: dict[int, RunRecord] = {}
    left: list[str] = []
    for r in sorted(runs, key=lambda r: (r.seed, r.path)):
        if r.seed not in expected:
            left.append(f"seed {r.seed} not among the seeds asked for: {r.path}")
        elif r.state != "complete":
            left.append(f"seed {r.seed} {r.state}" + (f" ({r.note})" if r.note else "") + f": {r.path}")
        elif r.seed in complete:
            left.append(f"seed {r.seed} duplicate (averaged once, from {complete[r.seed].path}): {r.path}")
        else:
            complete[r.seed] = r
    seen = {r.seed for r in runs}
    return Cell([complete[s] for s in sorted(complete)], left, [s for s in expected if s not in seen])


def published_rows(columns: list[tuple[str, float | None]]) -> list[dict[str, Any]]:
    """Reference rows from datasets/published/*.yaml for the table's columns (IF omitted = the set's own).

    Each row comes resolved with its provenance (bench.report.published: label, table, backbone, epochs, protocol,
    url, checked, paper); the renderers print method, metrics and the file's short `source`."""
    out = []
    for row in load_published(PUBLISHED):
        for col in columns:
            if row["dataset"] == col[0] and row.get("imbalance_factor") in (None, col[1]):
                out.append({**row, "column": col})
    return out


# ----------------------------------------------------------------------------------------------- columns
Row = tuple[str, str]                            # (method, setting label)
Col = tuple[str, float | None]                   # (dataset, imbalance factor)


def row_label(row: tuple[str, str]) -> str:
    return f"{row[0]} ({row[1]})" if row[1] else row[0]


