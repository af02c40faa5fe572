"""Reading config files: YAML with `base:` files merged underneath, command-line overrides, `$VAR` in path fields,
a run directory's stored config, and a CONFIG argument naming a shipped config. Resolving a config against its
dataset card, model and parent run happens one layer up (bench/experiment)."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml

from bench.config.build import _set, build_config, merge, parse_override
from bench.config.schema import HASH_NEUTRAL_AT_DEFAULT, Config, ConfigError
from bench.paths import repo_or_package_dir


_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _python_parser_error(path: Path) -> yaml.YAMLError | None:
    """The error PyYAML's pure-Python parser reports for a file libyaml refused."""
    try:
        yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        return e
    return None


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p}: {'a folder, not a YAML file' if p.is_dir() else 'not found'}")
    try:
        # libyaml's parser where PyYAML has it: the same documents, ~10x faster (status / table read one per run)
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_SAFE_LOADER)
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {p}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                          "is it a YAML file?") from None
    except yaml.YAMLError as e:
        e = _python_parser_error(p) or e   # its line and wording (libyaml places some errors a line later)
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
    if not isinstance(bases, (str, list)) or not all(isinstance(b, str)
                                                     for b in ([bases] if isinstance(bases, str) else bases)):
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


def parent_path(parent: str, base: Path) -> Path:
    """A parent given relative to the config file's folder, else to the working directory."""
    p = Path(parent).expanduser()
    return base / p if not p.is_absolute() and (base / p).exists() else p


def find_config(arg: str) -> str:
    """A CONFIG argument as a file path: the file itself when it exists, else a shipped config of that name.

    `smoke`, `smoke.yaml`, `demo/fmnist_wd` and `configs/smoke.yaml` all name shipped configs, so the
    commands in the docs work from any directory once ltbench is installed. A name that is neither
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


def read_raw(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """A config file (with its bases) and the command line's `key.sub=value` overrides, as a plain dict."""
    raw: dict[str, Any] = load_with_bases(Path(path)) if path is not None else {}
    if path is not None and not raw:
        # an empty file would silently train the defaults under the name "default": almost surely a mistake
        raise ConfigError(f"config file {path}: empty (an experiment names at least its dataset and model; see "
                          "configs/smoke.yaml)")
    for ov in overrides:
        keys, value = parse_override(ov)
        _set(raw, keys, value)
    return raw


def dump_yaml(cfg: Config) -> str:
    """A config as the YAML a run directory stores (config.yaml): every field, in the schema's order."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def stored_config(raw: dict[str, Any]) -> Config:
    """A run directory's config.yaml (or a tracked run's config) as a Config. It was resolved when it was
    written, so it is built as it stands, not resolved again (its shards may since have moved); a field the
    file predates takes its HASH_NEUTRAL_AT_DEFAULT value, the value every run before the field had."""
    raw = copy.deepcopy(raw)
    for dotted, default in HASH_NEUTRAL_AT_DEFAULT.items():
        *path, key = dotted.split(".")
        section: Any = raw
        for k in path:
            section = section.get(k) if isinstance(section, dict) else None
        if isinstance(section, dict) and key not in section:
            section[key] = default
    return build_config(raw)


def expand_path(key: str, value: str | None) -> str | None:
    """$VAR / ${VAR} in path fields (shared configs name data locations by environment variable)."""
    if value is None or "$" not in value:
        return value
    out = os.path.expandvars(value)
    if "$" in out:
        unset = re.findall(r"\$\{?(\w+)", out)
        raise ConfigError(f"config key '{key}': {value} uses the unset environment variable "
                          f"{unset[0] if unset else '?'} (export it, or give the path)")
    return out
