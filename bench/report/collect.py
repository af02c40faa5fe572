"""Finding runs for `ltbench table`: run directories under the given paths (or a W&B export), each read once
into a RunRecord: its config, result, status, setting (the config keys that vary, its parent's included)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from bench.config import GROUPS, INHERITED, ConfigError, load_yaml, stored_config
from bench.runtime.jobstate import run_status
from bench.runtime.rundir import RunDir

METRICS = ("all", *GROUPS)
# Config keys that identify the row or the column, or differ between seeds of one setting.
IDENTITY_KEYS = ("seed", "parent_hash", "name", "method", "train.distill.teacher_hash")   # parent, teacher: per seed
COLUMN_KEYS = ("data.dataset", "data.imbalance_factor")
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
    result: Mapping[str, Any] | None = None       # the whole result.json of a complete run (plots)
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
    flat = flatten(stored_config(raw).result_dict())
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
                self.hashes[cfg_path] = stored_config(load_yaml(cfg_path)).run_hash()
            except ConfigError:
                self.hashes[cfg_path] = None          # not a run of this version: never a parent
        return self.hashes[cfg_path]


# The per-class keys of result.json: most of the file at 8,142 classes (~10 ms to decode a run). collect leaves
# them in the file and per_class() reads them when a figure or a claim needs them, so that `ltbench table` over
# a thousand runs decodes only what its cells need; keys nothing reads are never decoded.
PER_CLASS = ("per_class_acc", "class_counts", "groups", "analysis")
NOT_READ = ("class_names", "per_class_acc_last_epoch", *PER_CLASS)


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
    rec = RunRecord(path=str(run_dir), name=str(raw.get("name")), method=str(raw.get("method")),
                    dataset=str(data.get("dataset")),
                    imbalance_factor=data.get("imbalance_factor"), seed=int(raw.get("seed", 0)),
                    state="incomplete", setting=setting, protocol=str(raw.get("protocol", "custom")))
    result = RunDir(run_dir).read_result(skip=NOT_READ)
    parent_dir = find_parent_dir(run_dir, raw, result, memo)
    if parent_dir is not None:
        # A child inherits only its parent's data / model / train, so the parent's other choices (its epoch
        # selection, its stage-2 settings, ...) become part of the child's setting: children of differently
        # chosen parents land in different rows instead of being averaged together.
        rec.parent = load_record(parent_dir, memo)
        rec.setting = tuple(sorted(rec.setting + tuple(
            (f"parent.{k}", v) for k, v in rec.parent.setting if k.split(".")[0] not in INHERITED)))
    if result.get("status") == "complete":
        rec.state, rec.metrics = "complete", result["metrics"]
        rec.val_metrics, rec.result = result.get("val_metrics"), result
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


def find_parent_dir(run_dir: Path, raw: dict[str, Any], result: Mapping[str, Any], memo: _Memo) -> Path | None:
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


def per_class(rec: RunRecord) -> Mapping[str, Any]:
    """The record's result with its per-class keys (PER_CLASS), read from its result.json when collect left them
    there; a result that has them already (W&B, a file of an earlier layout) as it is."""
    res = rec.result or {}
    if not res or any(k in res for k in PER_CLASS) or not Path(rec.path).is_dir():
        return res
    return {**res, **RunDir(Path(rec.path)).read_result(keys=PER_CLASS)}


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
    """A W&B run (summary written by bench.runtime.tracking.summary_of, config = the resolved config)."""
    cfg = {k: v for k, v in config.items() if k not in ("run_dir", "parent_run")}
    complete = summary.get("status") == "complete"
    rec = RunRecord(path=path, name=str(cfg.get("name")), method=str(cfg.get("method")),
                    dataset=str((cfg.get("data") or {}).get("dataset")),
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


def peeks_at_test(rec: RunRecord) -> list[str]:
    """What this run, or a run it starts from, chose on the test split ([] when nothing)."""
    res = rec.result or {}
    sel = res.get("selection") or {}
    out = ["best epoch on test"] if sel.get("split") == "test" and sel.get("select") == "best" else []
    if (res.get("posthoc") or {}).get("chosen_on") == "test":
        out.append("tau chosen on test")
    return out + ([f"parent's {x}" for x in peeks_at_test(rec.parent)] if rec.parent is not None else [])


