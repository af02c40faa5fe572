"""An experiment's config as a run uses it: the file and overrides read (bench.config), the named protocol
applied, a stage-2 / post-hoc config's lineage taken from its parent run (data, model and training; resolved
here once), and the result resolved against its dataset card, model and shards (bench.experiment.resolve)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.config import Config, ConfigError
from bench.config.build import build_config
from bench.config.load import INHERITED, LOCATION_KEYS, load_yaml, parent_path, read_raw, stored_config
from bench.config.protocols import apply_protocol
from bench.data.cards import is_file_split
from bench.experiment.resolve import resolve


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML file <- overrides, then dataset-card defaults filled in and cross-field checks.

    A stage2/posthoc config inherits data, model, train (and groups, unless it sets them) from its parent.
    """
    raw = read_raw(path, overrides)
    base = Path(path).parent if path is not None else Path(".")
    if raw.get("stage") in ("stage2", "posthoc"):
        raw = _inherit_from_parent(raw, base)
    else:
        raw = _resolve_teacher(raw, base)
    # after the lineage: a child's dataset (inherited) picks the protocol's per-dataset settings too
    dataset = raw.get("data", {}).get("dataset") if isinstance(raw.get("data"), dict) else None
    raw = apply_protocol(raw, file_split=is_file_split(dataset))
    cfg = build_config(raw)
    return resolve(cfg)


def load_parent(parent: str, seed: int, base: Path = Path("."), key: str = "parent") -> Config:
    """The parent run's (or a teacher's, `key`) resolved config: from its run directory, or its YAML with this
    seed."""
    p = parent_path(parent, base)
    if p.is_dir():
        if not (p / "config.yaml").is_file():
            raise ConfigError(f"config key '{key}': run directory {p} has no config.yaml "
                              "(not a run, or never started)")
        return stored_config(load_yaml(p / "config.yaml"))
    if p.is_file():
        return load_config(p, [f"seed={seed}"])
    raise ConfigError(f"config key '{key}': {parent} is neither a run directory nor a config file")


def _resolve_teacher(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """train.distill.teacher: its config hash (part of this run's hash) and, from a YAML, its run directory."""
    train = raw.get("train")
    if not isinstance(train, dict):
        return raw
    distill = train.get("distill")
    if not isinstance(distill, dict) or not distill.get("teacher"):
        return raw
    # a teacher picked on test would carry it into a clean student: the same protocol, as a parent
    teacher, run = _lineage(raw, str(distill["teacher"]), base, "train.distill.teacher", "teacher")
    if teacher.stage != "stage1":
        raise ConfigError(f"config key 'train.distill.teacher': {distill['teacher']} is a {teacher.stage} run; a "
                          "teacher is a trained model (stage1)")
    distill = {**distill, "teacher_hash": teacher.run_hash(), **({"teacher_run": run} if run else {})}
    return {**raw, "train": {**train, "distill": distill}}


def _lineage(raw: dict[str, Any], ref: str, base: Path, key: str, what: str) -> tuple[Config, str | None]:
    """The run `ref` (a parent, a teacher) names, for this config's seed, checked to follow its protocol; and,
    when `ref` is a YAML, its run directory under the runs root (<name>/<run name>, resolved once here)."""
    seed = raw.get("seed", 0)
    cfg = load_parent(ref, seed if isinstance(seed, int) else 0, base, key=key)
    protocol = raw.get("protocol", "custom")
    if protocol != "custom" and cfg.protocol != protocol:
        raise ConfigError(f"config key 'protocol': {protocol} but the {what} run follows {cfg.protocol}")
    return cfg, None if parent_path(ref, base).is_dir() else f"{cfg.name}/{cfg.run_name()}"


def _inherit_from_parent(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    stage = raw["stage"]
    if not raw.get("parent"):
        raise ConfigError(f"config key 'parent': a {stage} config needs the run it starts from "
                          "(a run directory or experiment YAML)")
    where = raw.get("data") if isinstance(raw.get("data"), dict) else None
    if where is not None and set(where) <= set(LOCATION_KEYS):
        raw = {k: v for k, v in raw.items() if k != "data"}   # only where the parent's data is now: allowed
    else:
        where = None
    for key in INHERITED:
        if key in raw:
            raise ConfigError(f"config key '{key}': a {stage} config takes '{key}' from its parent; set it there")
    parent, run = _lineage(raw, str(raw["parent"]), base, "parent", "parent")
    if parent.seed != raw.get("seed", parent.seed):
        raise ConfigError(f"config key 'seed': {raw.get('seed')} differs from the parent run's seed {parent.seed}")
    pd = parent.to_dict()
    out = dict(raw)
    out["seed"] = parent.seed
    out["parent_hash"] = parent.run_hash()
    if run:
        out["parent_run"] = run   # resolved once: stage 2 finds it from here
    for key in INHERITED:
        out[key] = pd[key]
    if where:
        # the same data somewhere else (node-local shards); resolve() checks the manifest digest still matches
        out["data"] = {**pd["data"], **where}
    out.setdefault("groups", pd["groups"])
    if stage == "posthoc" and parent.stage == "stage2":
        out.setdefault("stage2", pd["stage2"])
    return out
