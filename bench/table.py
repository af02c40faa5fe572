"""`ltbench table`: many runs -> one benchmark table (mean +- std over seeds), as in the WB paper's tables.

Runs are found by their run directories (config.yaml, result.json). A row is a method (and, when one
method ran with several settings on a dataset, each setting: labelled by the config keys that differ; a
stage-2 / post-hoc run's setting includes its parent run's); a column is a dataset x imbalance factor.
A cell averages the COMPLETE runs of the seeds that ran. Runs that failed or are unfinished, and seeds
that are missing (against --seeds, or else every seed seen in the table), are never averaged in
silently: the cell is marked and a footnote names them.

Standard deviations are sample standard deviations (n - 1 in the denominator), the usual reading of
"mean +- std over seeds"; one seed has no std. Output is a pure function of the runs: sorted, fixed
formatting, paths as given.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bench.config import INHERITED, ConfigError, from_dict, load_yaml
from bench.data.cards import dataset_title
from bench.jobs import run_status
from bench.metrics import GROUPS
from bench.paths import repo_or_package_dir
from bench.progress import log
from bench.published import load_published
from bench.rundir import RunDir, write_text_atomic
from bench.stats import bootstrap_interval, paired_t, t_interval

METRICS = ("all", *GROUPS)
# Row order of the WB paper's tables (naive -> stage 1 -> post-hoc -> stage 2 -> HS); a foundation-model table
# reads as LIFT's: zero-shot and the linear probe first, the classifier re-balancing rows of the WB order on the
# frozen model, lightweight fine-tuning last. Others follow by name.
METHOD_ORDER = ("zs-clip", "zs-clip-la", "probe", "naive", "ce", "wd", "l2-norm", "tau-norm", "lws", "crt", "cb-wd",
                "cb-maxnorm", "wb", "hs-stage1", "hs", "lift-lora", "lift")
# Config keys that identify the row or the column, or differ between seeds of one setting.
IDENTITY_KEYS = ("seed", "parent_hash", "name", "method")
COLUMN_KEYS = ("data.dataset", "data.imbalance_factor")
PUBLISHED = repo_or_package_dir("datasets") / "published"
# What a run directory holds besides its own config.yaml (W&B writes a config.yaml of its own under wandb/):
# skipped only inside a run directory, so that an experiment may be called `logs` or `features`.
RUN_SUBDIRS = {"wandb", "checkpoints", "features", "logs"}
TOOL_DIRS = {"_submitit", ".prepare"}            # ltbench's own folders beside the runs: never runs


@dataclass
class RunRecord:
    """One run directory as the table sees it."""

    path: str
    name: str                                    # experiment name
    method: str
    dataset: str
    imbalance_factor: float | None
    seed: int
    state: str                                   # complete, failed, incomplete
    note: str = ""                               # why it is not complete (error, epoch k/N, scheduler state)
    metrics: dict[str, float | None] = field(default_factory=dict)        # test
    val_metrics: dict[str, float | None] | None = None
    setting: tuple[tuple[str, str], ...] = ()   # flattened config without identity / column keys (+ parent.*)
    protocol: str = "custom"                     # the config's named protocol (clean, wb-reference, ...)
    result: dict[str, Any] | None = None        # the whole result.json of a complete run (plots)
    parent: RunRecord | None = None             # stage 2 / post-hoc: the run it started from, when on disk

    @property
    def column(self) -> tuple[str, float | None]:
        return (self.dataset, self.imbalance_factor)


# ----------------------------------------------------------------------------------------------- collecting
def find_run_dirs(paths: list[str]) -> list[Path]:
    """Run directories under each path (a run directory, an experiment, a runs root), sorted, unique."""
    found: dict[Path, Path] = {}
    for given in paths:
        p = Path(given)
        if not p.exists():
            raise ConfigError(f"ltbench table: {p} does not exist")
        if (p / "config.yaml").is_file():
            found.setdefault(p.resolve(), p)
            continue
        for cfg in sorted(p.rglob("config.yaml")):
            if not _skipped(p, cfg.parent.relative_to(p).parts):
                found.setdefault(cfg.parent.resolve(), cfg.parent)
    if not found:
        raise ConfigError(f"ltbench table: no run directories (with config.yaml) under {', '.join(paths)}")
    return sorted(found.values(), key=lambda q: str(q))


def _skipped(root: Path, rel: tuple[str, ...]) -> bool:
    """Is root/rel inside an ltbench tool folder, or inside a run directory's own sub-folders (wandb/, ...)?"""
    return any(part in TOOL_DIRS or (part in RUN_SUBDIRS and (root.joinpath(*rel[:i]) / "config.yaml").is_file())
               for i, part in enumerate(rel))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def setting_of(raw: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The config fields that can change a number (Config.result_dict), minus seed, row and column keys."""
    flat = flatten(from_dict(raw).result_dict())
    drop = set(IDENTITY_KEYS) | set(COLUMN_KEYS)
    return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in flat.items() if k not in drop))


@dataclass
class _Memo:
    """What one collect() has read: a parent shared by many children (the WB grid's 12 settings x seeds)
    is loaded, and its config hashed, once."""

    records: dict[Path, RunRecord] = field(default_factory=dict)
    hashes: dict[Path, str | None] = field(default_factory=dict)

    def run_hash(self, cfg_path: Path) -> str | None:
        if cfg_path not in self.hashes:
            try:
                self.hashes[cfg_path] = from_dict(load_yaml(cfg_path)).run_hash()
            except ConfigError:
                self.hashes[cfg_path] = None          # not a run of this version: never a parent
        return self.hashes[cfg_path]


def load_record(run_dir: Path, memo: _Memo | None = None) -> RunRecord:
    """What a run directory says about itself; a clear error for a broken one."""
    memo = memo or _Memo()
    if (key := run_dir.resolve()) in memo.records:
        return memo.records[key]
    raw = load_yaml(run_dir / "config.yaml")
    try:
        setting = setting_of(raw)
    except ConfigError as e:
        raise ConfigError(f"{run_dir / 'config.yaml'}: {e}") from None
    data = raw.get("data") or {}
    rec = RunRecord(path=str(run_dir), name=str(raw.get("name")), method=str(raw.get("method")), dataset=str(data.get("dataset")),
                    imbalance_factor=data.get("imbalance_factor"), seed=int(raw.get("seed", 0)),
                    state="incomplete", setting=setting, protocol=str(raw.get("protocol", "custom")))
    result = RunDir(run_dir).read_result()
    parent_dir = find_parent_dir(run_dir, raw, result, memo)
    if parent_dir is not None:
        # A child inherits only its parent's data / model / train, so the parent's other choices (its epoch
        # selection, its stage-2 settings, ...) become part of the child's setting: children of differently
        # chosen parents land in different rows instead of being averaged together.
        rec.parent = load_record(parent_dir, memo)
        rec.setting = tuple(sorted(rec.setting + tuple(
            (f"parent.{k}", v) for k, v in rec.parent.setting if k.split(".")[0] not in INHERITED)))
    if result.get("status") == "complete":
        rec.state, rec.metrics, rec.val_metrics, rec.result = "complete", result["metrics"], result.get("val_metrics"), result
        # the dataset card fills imbalance_factor for file-split sets: take the resolved value
        rec.imbalance_factor = result.get("imbalance_factor", rec.imbalance_factor)
    elif result.get("status") == "failed" and not (run_dir / "job.json").is_file():
        rec.state, rec.note = "failed", result.get("error", "")
    else:   # unfinished, or submitted: the scheduler's word (a failed attempt may be running again)
        st = run_status(RunDir(run_dir))
        epochs = f"{st['epoch']} epochs" if st["stage"] != "posthoc" else ""
        rec.note = epochs if st["state"] == "not started" else ", ".join(x for x in (st["state"], epochs) if x)
        if st["state"].split(":")[0].split(" ")[0] in ("failed", "cancelled", "timeout", "out_of_memory", "node_fail"):
            rec.state = "failed"
    memo.records[key] = rec
    return rec


def find_parent_dir(run_dir: Path, raw: dict[str, Any], result: dict[str, Any], memo: _Memo) -> Path | None:
    """A stage-2 / post-hoc run's parent run directory, from what the child recorded (its `parent` path,
    `parent_run` under the runs root, result.json's `parent`, else a run named *-<parent_hash> beside it),
    checked against its `parent_hash`; None for a stage-1 run or a parent that is not on disk."""
    want = raw.get("parent_hash")
    if not want:
        return None
    root = run_dir.parent.parent                 # <runs root>/<name>/<run name>
    cands = [raw.get("parent"), root / str(raw["parent_run"]) if raw.get("parent_run") else None, result.get("parent")]
    if run_dir.parent.name == str(raw.get("name")):   # the runs-root layout: look for the parent beside it
        cands += sorted(root.glob(f"*/*-{want}"))
    for cand in cands:
        if cand and (Path(cand) / "config.yaml").is_file() and memo.run_hash(Path(cand) / "config.yaml") == want:
            return Path(cand)
    return None


def collect(paths: list[str]) -> list[RunRecord]:
    memo = _Memo()
    return [load_record(p, memo) for p in find_run_dirs(paths)]


def records_from_wandb(path: str) -> list[RunRecord]:
    """The same records from the summaries of a W&B project's runs (needs the network and a login)."""
    try:
        import wandb

        runs = wandb.Api(timeout=30).runs(path)
        return [record_from_summary(f"wandb:{path}/{r.id}", dict(r.summary), dict(r.config), r.state)
                for r in runs]
    except Exception as e:  # noqa: BLE001 - no network, no login, no such project: one line
        raise ConfigError(f"ltbench table --wandb {path}: cannot read the W&B runs ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:200]})") from None


def record_from_summary(path: str, summary: dict[str, Any], config: dict[str, Any], run_state: str) -> RunRecord:
    """A W&B run (summary written by bench.tracking.summary_of, config = the resolved config)."""
    cfg = {k: v for k, v in config.items() if k not in ("run_dir", "parent_run")}
    complete = summary.get("status") == "complete"
    rec = RunRecord(path=path, name=str(cfg.get("name")), method=str(cfg.get("method")), dataset=str((cfg.get("data") or {}).get("dataset")),
                    imbalance_factor=summary.get("imbalance_factor", (cfg.get("data") or {}).get("imbalance_factor")),
                    seed=int(cfg.get("seed", 0)), state="complete" if complete else
                    "failed" if run_state in ("failed", "crashed") else "incomplete",
                    note="" if complete else f"W&B state {run_state}", setting=setting_of(cfg),
                    protocol=str(cfg.get("protocol", "custom")))
    if complete:
        rec.metrics = {g: summary.get(f"test/{g}") for g in METRICS}
        if any(f"val/{g}" in summary for g in METRICS):
            rec.val_metrics = {g: summary.get(f"val/{g}") for g in METRICS}
    return rec


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
        costs = [(r.result or {}).get("cost") for r in self.runs]
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
    cost: bool = False                           # a device-hours column per dataset column (result.json cost)
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


def _method_key(m: str) -> tuple[int, str]:
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
                cost: bool = False, protocols: bool = False) -> Table:
    """Group records into cells: (method, label) x (dataset, imbalance factor).

    Within a column, a method's runs are split by experiment name (named in the label when a method
    comes from several experiments), then by setting; with `select`, each experiment's settings are
    reduced to the one with the best mean `select` accuracy (seeds averaged first).
    """
    expected = sorted(seeds) if seeds is not None else sorted({r.seed for r in records})
    groups: dict[tuple, dict[str, dict[tuple, list[RunRecord]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
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
                def score(s: tuple) -> float:
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
    rows = sorted({r for r, _ in cells}, key=lambda r: (_method_key(r[0]), r[1]))
    table = Table(columns, rows, cells, expected, ci=ci, baseline=baseline, cost=cost, protocols=protocols)
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

    Each row comes resolved with its provenance (bench.published: label, table, backbone, epochs, protocol,
    url, checked, paper); the renderers print method, metrics and the file's short `source`."""
    out = []
    for row in load_published(PUBLISHED):
        for col in columns:
            if row["dataset"] == col[0] and row.get("imbalance_factor") in (None, col[1]):
                out.append({**row, "column": col})
    return out


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
            taus = [(r.seed, r.result["posthoc"]) for r in cell.runs
                    if r.result and (r.result.get("posthoc") or {}).get("chosen_on")]
            if taus:
                notes.append(("", f"{name}: tau chosen on {taus[0][1]['chosen_on']}: "
                                  + ", ".join(f"{p['tau']:g} (seed {seed})" for seed, p in taus)))
            if cell.flagged:
                parts = ([f"seed {s} missing" for s in cell.missing] + cell.left_out)
                notes.append(("†", f"{name}: not averaged in: " + "; ".join(parts)))
    return notes


def protocol_notes(table: Table) -> list[str]:
    """--protocols: per method and column run under a reference protocol and under clean, the difference in
    `all` (what selecting on test, TTA and the reference's other choices add to the number)."""
    out = []
    for col in table.columns:
        by_method: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for row in table.rows:
            cell = table.cells.get((row, col))
            mean = cell.stats("all")[0] if cell is not None else None
            if mean is not None and row[1].split(",")[0] in _PROTOCOL_NAMES:
                by_method[row[0]][row[1].split(",")[0]].append(mean)
        for method, found in sorted(by_method.items(), key=lambda kv: _method_key(kv[0])):
            several = sorted(p for p, m in found.items() if len(m) > 1)
            if several and "clean" in found and len(found) > 1:
                # which of a protocol's settings to hold against clean would be a guess: say so instead
                out.append(f"{method}, {dataset_title(*col)}: several settings under {', '.join(several)}; no single "
                           "difference (compare its rows, or --select val)")
                continue
            means = {p: m[0] for p, m in found.items()}
            if "clean" in means:
                for proto, mean in sorted(means.items()):
                    if proto != "clean":
                        out.append(f"{method}, {dataset_title(*col)}: {proto} {mean:.2f} vs clean {means['clean']:.2f}: "
                                   f"{mean - means['clean']:+.2f} points under {proto}")
    return out


_PROTOCOL_NAMES = ("clean", "wb-reference", "hs-reference", "custom")


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
    if table.cost:
        text += (" cost = device-hours of the averaged runs together (wall time x processes, requeued attempts "
                 "included; GPU-h or CPU-h).")
    return text


def _cost_text(cell: Cell | None) -> str:
    if cell is None:
        return ""
    hours, unit = cell.device_hours()
    return "—" if hours is None else f"{hours:.3g} {unit}"


def _norm_backbone(name: str) -> str:
    """'resnext50_32x4d' / 'ResNeXt-50' -> 'resnext50'; 'resnet32_cifar' / 'ResNet-32' -> 'resnet32'."""
    return re.sub(r"[^a-z0-9]", "", name.lower().split("_")[0].split("(")[0])


def comparisons(table: Table) -> list[dict[str, Any]]:
    """Each reproduced cell beside the published value of the same method and column (--reference): the
    difference in points of `all`, a verdict, and what differs between our protocol and the paper's."""
    out = []
    for ref in table.reference:
        for row in table.rows:
            cell = table.cells.get((row, ref["column"]))
            if row[0] != ref["method"] or cell is None or ref.get("all") is None:
                continue
            mean, std, n = cell.stats("all")
            if mean is None:
                continue
            diff = mean - ref["all"]
            spread, rule = (2 * std, "2 std") if n >= 3 and std is not None else (1.0, "1 point, n < 3")
            verdict = ("within the seeds' spread" if abs(diff) <= spread else "above" if diff > 0 else "below")
            res = cell.runs[0].result or {}
            differs = []
            ours_model, theirs = str(res.get("model", "")), str(ref.get("backbone", ""))
            if ours_model and theirs and _norm_backbone(ours_model) != _norm_backbone(theirs):
                differs.append(f"backbone {ours_model} vs {theirs}")
            if isinstance(ref.get("epochs"), int) and res.get("epochs") not in (None, ref["epochs"]):
                differs.append(f"epochs {res['epochs']} vs {ref['epochs']}")
            # Peeking at test = choosing on the test split (the best epoch, a post-hoc tau), here or in a parent
            # run; every averaged run is checked. The paper's rule is its registry `selection`.
            known = [r for r in cell.runs if ((r.result or {}).get("selection") or {}).get("split")]
            peeks = [p for r in known if (p := peeks_at_test(r))]
            theirs = ref.get("selection", "unknown")
            if known and theirs != "unknown" and bool(peeks) != (theirs == "test"):
                if peeks:
                    ours = "; ".join(dict.fromkeys(x for p in peeks for x in p))
                    ours += f" ({len(peeks)} of {len(known)} runs)" if len(peeks) < len(known) else ""
                else:
                    sel = (known[0].result or {})["selection"]
                    ours = f"{sel.get('select', 'last')} epoch on {sel['split']}"
                differs.append(f"selection: {ours} vs {'the test set' if theirs == 'test' else theirs} in the paper")
            out.append({"row": row, "column": ref["column"], "source": ref["source"], "published": ref["all"],
                        "mean": mean, "std": std, "n": n, "diff": diff, "verdict": f"{verdict} ({rule})",
                        "differs": differs})
    return out


def peeks_at_test(rec: RunRecord) -> list[str]:
    """What this run, or a run it starts from, chose on the test split ([] when nothing)."""
    res = rec.result or {}
    sel = res.get("selection") or {}
    out = ["best epoch on test"] if sel.get("split") == "test" and sel.get("select") == "best" else []
    if (res.get("posthoc") or {}).get("chosen_on") == "test":
        out.append("tau chosen on test")
    return out + ([f"parent's {x}" for x in peeks_at_test(rec.parent)] if rec.parent is not None else [])


def comparison_lines(table: Table) -> list[str]:
    lines = []
    found = comparisons(table)
    if table.reference_asked and not found:
        cols = ", ".join(dataset_title(*c) for c in table.columns)
        return [f"no published number of these methods on {cols} in datasets/published/ (nothing to compare)"]
    for c in found:
        ours = f"{c['mean']:.2f}" + (f" ± {c['std']:.2f}" if c["std"] is not None else "") + f", n = {c['n']}"
        lines.append(f"{row_label(c['row'])}, {dataset_title(*c['column'])}: ours {ours}; {c['source']} "
                     f"{c['published']:.2f}: {c['diff']:+.2f} points, {c['verdict']}"
                     + (f"; protocol differs: {'; '.join(c['differs'])}" if c["differs"] else ""))
    return lines


# ----------------------------------------------------------------------------------------------- columns
Row = tuple[str, str]                            # (method, setting label)
Col = tuple[str, float | None]                   # (dataset, imbalance factor)


@dataclass(frozen=True)
class Column:
    """One sub-column of every dataset column in the grid renderers (Markdown, LaTeX, HTML): defined once here,
    so that a new column is one entry of COLUMNS (and, for CSV, of CSV_FIELDS)."""

    name: str
    header: str                                  # header text (Markdown, HTML; LaTeX: `tex` when set)
    text: Callable[[Table, Row, Col, Cell | None, bool], str]   # a reproduced cell; bool: LaTeX source
    published: Callable[[dict[str, Any]], str]   # a published reference row's cell (its column has a value)
    shown: Callable[[Table, str], bool] = lambda table, fmt: True   # given the table's flags and the format
    tex: str | None = None


def _metric_column(m: str) -> Column:
    return Column(m, m, lambda t, row, col, cell, latex: _cell_text(
        cell, m, latex=latex, ci=t.ci, mark=t.marker(row, col) if m == "all" else ""), lambda ref: _num(ref.get(m)))


COLUMNS = (
    *(_metric_column(m) for m in METRICS),
    Column("n", "n", lambda t, row, col, cell, latex: _n_text(cell, t.expected_seeds, "$^\\dagger$" if latex else "†"),
           lambda ref: "pub.", tex="$n$"),
    Column("cost", "cost", lambda t, row, col, cell, latex: _cost_text(cell), lambda ref: "",
           shown=lambda t, fmt: t.cost and fmt != "latex"),
)


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


def _csv_num(v: float | None, fmt: str = ".4f") -> str:
    return "" if v is None else format(v, fmt)


def _csv_ci(m: str, end: int) -> CsvField:
    def value(t: Table, row: Row, col: Col, cell: Cell) -> str:
        iv = cell.interval(m, t.ci)
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
    return CsvField(header, value, shown=lambda t: t.cost)


CSV_FIELDS = (
    CsvField("method", lambda t, row, col, cell: row[0], lambda ref: ref["method"]),
    CsvField("setting", lambda t, row, col, cell: row[1], lambda ref: f"published: {ref['source']}"),
    CsvField("dataset", lambda t, row, col, cell: col[0], lambda ref: ref["column"][0]),
    CsvField("imbalance_factor", lambda t, row, col, cell: _csv_num(col[1], "g"),
             lambda ref: _csv_num(ref["column"][1], "g")),
    CsvField("n", lambda t, row, col, cell: str(len(cell.runs)), lambda ref: ""),
    CsvField("seeds", lambda t, row, col, cell: " ".join(str(r.seed) for r in cell.runs), lambda ref: ""),
    *(CsvField(f"{m}_{s}", lambda t, row, col, cell, m=m, i=i: _csv_num(cell.stats(m)[i]),
               lambda ref, m=m, i=i: _csv_num(ref.get(m)) if i == 0 else "")
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


PROTOCOL_NOTES_INTRO = "The same methods under two protocols (clean = everything chosen on validation, test read once):"
COMPARISON_INTRO = ("Against the published numbers (all; within = |difference| <= 2 std over seeds, or 1 point "
                    "with fewer than 3 seeds):")


def grid_cells(table: Table, row: Row, fmt: str) -> list[str]:
    """A reproduced row's cells in the grid renderers: every dataset column's shown sub-columns."""
    latex = fmt == "latex"
    shown = columns_of(table, fmt)
    return [c.text(table, row, col, table.cells.get((row, col)), latex) for col in table.columns for c in shown]


def row_label(row: tuple[str, str]) -> str:
    return f"{row[0]} ({row[1]})" if row[1] else row[0]


def reference_rows(table: Table) -> list[tuple[str, str, dict[Col, dict[str, Any]]]]:
    """The published rows as the grid shows them: (source, method, {column: registry row}), sorted."""
    by_row: dict[tuple[str, str], dict[Col, dict[str, Any]]] = defaultdict(dict)
    for ref in table.reference:
        by_row[(ref["source"], ref["method"])][ref["column"]] = ref
    return [(source, method, by_row[(source, method)])
            for (source, method) in sorted(by_row, key=lambda k: (k[0], _method_key(k[1])))]


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
    fields = [f for f in CSV_FIELDS if f.shown(table)]
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
    from bench.plots import plot_table       # matplotlib: only when plots are asked for

    text = RENDER[fmt](table)
    if out is not None:
        write_text_atomic(out, text)
        log(f"table -> {out}")
    for path in plot_table(table, plots) if plots is not None else []:
        log(f"plot -> {path}")
    return text
