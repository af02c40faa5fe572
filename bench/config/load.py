"""Reading config files: YAML with `base:` files merged underneath, command-line overrides, the named protocol,
and the parent run a stage-2 / post-hoc config inherits its data, model and training from (its lineage,
resolved here once); a CONFIG argument naming a shipped config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bench.config.build import _build, _set, merge, parse_override
from bench.config.defaults import from_dict, resolve
from bench.config.protocols import apply_protocol
from bench.config.schema import Config, ConfigError
from bench.paths import repo_or_package_dir


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p}: {'a folder, not a YAML file' if p.is_dir() else 'not found'}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {p}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                          "is it a YAML file?") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {p}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: top level must be a mapping, got {type(data).__name__}")
    return data


INHERITED = ("data", "model", "train")  # a stage2/posthoc run takes these from its parent
LOCATION_KEYS = ("root", "shards")        # ...except where its data lives now, which it may override


def load_with_bases(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML file with an optional `base:` (a file or list of files, relative to it) merged underneath."""
    raw = load_yaml(path)
    bases = raw.pop("base", None)
    if bases is None:
        return raw
    merged: dict[str, Any] = {}
    if not isinstance(bases, (str, list)) or not all(isinstance(b, str) for b in ([bases] if isinstance(bases, str) else bases)):
        raise ConfigError(f"config file {path}: 'base' must be a file name or a list of them, got {bases!r}")
    for b in [bases] if isinstance(bases, str) else bases:
        bp = (path.parent / b).resolve()
        if not bp.is_file():
            raise ConfigError(f"config file {path}: 'base' {b} is {'a folder' if bp.is_dir() else 'not found'} "
                              f"({bp}); it names a YAML file, relative to this one")
        if bp in seen:
            raise ConfigError(f"config file {path}: 'base' {b} includes itself")
        merged = merge(merged, load_with_bases(bp, seen + (bp,)))
    return merge(merged, raw)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML file <- overrides, then dataset-card defaults filled in and cross-field checks.

    A stage2/posthoc config inherits data, model, train (and groups, unless it sets them) from its parent.
    """
    raw: dict[str, Any] = load_with_bases(Path(path)) if path is not None else {}
    if path is not None and not raw:
        # an empty file would silently train the defaults under the name "default": almost surely a mistake
        raise ConfigError(f"config file {path}: empty (an experiment names at least its dataset and model; see "
                          "configs/smoke.yaml)")
    for ov in overrides:
        keys, value = parse_override(ov)
        _set(raw, keys, value)
    raw = apply_protocol(raw)
    if raw.get("stage") in ("stage2", "posthoc"):
        raw = _inherit_from_parent(raw, Path(path).parent if path is not None else Path("."))
    cfg: Config = _build(Config, raw, "")
    return resolve(cfg)


def parent_path(parent: str, base: Path) -> Path:
    """A parent given relative to the config file's folder, else to the working directory."""
    p = Path(parent).expanduser()
    return base / p if not p.is_absolute() and (base / p).exists() else p


def load_parent(parent: str, seed: int, base: Path = Path(".")) -> Config:
    """The parent run's resolved config: from its run directory, or its YAML with this seed."""
    p = parent_path(parent, base)
    if p.is_dir():
        if not (p / "config.yaml").is_file():
            raise ConfigError(f"config key 'parent': run directory {p} has no config.yaml (not a run, or never started)")
        return from_dict(load_yaml(p / "config.yaml"))
    if p.is_file():
        return load_config(p, [f"seed={seed}"])
    raise ConfigError(f"config key 'parent': {parent} is neither a run directory nor a config file")


def _inherit_from_parent(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    stage = raw["stage"]
    if not raw.get("parent"):
        raise ConfigError(f"config key 'parent': a {stage} config needs the run it starts from (a run directory or experiment YAML)")
    where = raw.get("data") if isinstance(raw.get("data"), dict) else None
    if where is not None and set(where) <= set(LOCATION_KEYS):
        raw = {k: v for k, v in raw.items() if k != "data"}   # only where the parent's data is now: allowed
    else:
        where = None
    for key in INHERITED:
        if key in raw:
            raise ConfigError(f"config key '{key}': a {stage} config takes '{key}' from its parent; set it there")
    seed = raw.get("seed", 0)
    parent = load_parent(str(raw["parent"]), seed if isinstance(seed, int) else 0, base)
    protocol = raw.get("protocol", "custom")
    if protocol != "custom" and parent.protocol != protocol:
        raise ConfigError(f"config key 'protocol': {protocol} but the parent run follows {parent.protocol}")
    if parent.seed != raw.get("seed", parent.seed):
        raise ConfigError(f"config key 'seed': {raw.get('seed')} differs from the parent run's seed {parent.seed}")
    pd = parent.to_dict()
    out = dict(raw)
    out["seed"] = parent.seed
    out["parent_hash"] = parent.run_hash()
    if not parent_path(str(raw["parent"]), base).is_dir():
        out["parent_run"] = f"{parent.name}/{parent.run_name()}"   # resolved once: stage 2 finds it from here
    for key in INHERITED:
        out[key] = pd[key]
    if where:
        # the same data somewhere else (node-local shards); resolve() checks the manifest digest still matches
        out["data"] = {**pd["data"], **where}
    out.setdefault("groups", pd["groups"])
    if stage == "posthoc" and parent.stage == "stage2":
        out.setdefault("stage2", pd["stage2"])
    return out


def find_config(arg: str) -> str:
    """A CONFIG argument as a file path: the file itself when it exists, else a shipped config of that name.

    `smoke`, `smoke.yaml`, `demo/fmnist_wd` and `configs/smoke.yaml` all name shipped configs, so the
    commands in the README work from any directory once ltbench is installed. A name that is neither
    stops with a one-line error.
    """
    if Path(arg).expanduser().exists():
        return arg
    shipped = repo_or_package_dir("configs")
    rel = arg.removeprefix("configs/")
    for cand in (shipped / rel, shipped / f"{rel}.yaml"):
        if cand.is_file():
            return str(cand)
    raise ConfigError(f"config file {arg}: not found (neither a file here nor a shipped config in {shipped}; "
                      "e.g. `ltbench config smoke` names configs/smoke.yaml)")
