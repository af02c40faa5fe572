"""Typed configs from plain dicts (YAML, overrides), checked field by field with one-line errors."""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from typing import Any, Literal

import yaml

from bench.config.schema import Config, ConfigError


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                pass
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        options = typing.get_args(tp)
        if isinstance(value, bool) and {"on", "off"} <= set(options):
            value = "on" if value else "off"  # YAML 1.1 reads on/off as booleans
        if value in options and not (isinstance(value, bool) and bool not in map(type, options)):
            return value
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, list):
            return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "5e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")


def _plain_name(value: Any) -> bool:
    """A name safe as one path component and in a script: letters, digits, '.', '_', '-', no '..', starting with
    a letter or digit (so never '.', '..', a hidden folder, or one of ltbench's own `_submitit` / `.prepare`)."""
    return isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value) is not None \
        and ".." not in value


@functools.cache
def _schema_of(cls: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field]]:
    """The resolved annotations and fields of a config class (resolving the string annotations is ~90 % of
    building a config: `ltbench table` / `status` build one per run directory)."""
    return typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}


@functools.cache
def _section_default(cls: type, name: str) -> dict[str, Any]:
    """The default of the section field `name` of `cls` as a dict (shared: merge copies what it changes, and
    nothing writes into it)."""
    factory = _schema_of(cls)[1][name].default_factory
    return dataclasses.asdict(factory()) if factory is not dataclasses.MISSING else {}


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{prefix.rstrip('.') or '<root>'}': expected a mapping, got {data!r}")
    hints, fields = _schema_of(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        import difflib
        key = prefix + str(unknown[0])
        near = difflib.get_close_matches(str(unknown[0]), list(fields), n=1)
        hint = f" (did you mean '{prefix}{near[0]}'?)" if near else ""
        raise ConfigError(f"unknown config key '{key}'{hint}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        tp, key = hints[name], prefix + name
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            # Start from this field's own default (stage2.train defaults differ from train's), so a
            # partial section keeps the defaults it does not mention.
            base = _section_default(cls, name)
            kwargs[name] = _build(tp, merge(base, value) if isinstance(value, dict) else value, key + ".")
            continue
        value = _coerce(value, tp, key)
        meta = fields[name].metadata
        if meta.get("path_part") and not _plain_name(value):
            # the value becomes a folder under the runs root and a SLURM job name: nothing that leaves its
            # folder ('..', a separator, an absolute path) or breaks a line of a generated script
            raise ConfigError(f"config key '{key}': {value!r} is not a plain name (letters, digits, '.', '_', '-', "
                              "starting with a letter or digit); it names a folder under the runs root")
        choices = meta.get("choices")
        if choices is not None and value is not None and value not in choices:
            # a name of an extensible kind, checked against its registry (bench/registry.py)
            raise ConfigError(f"config key '{key}': expected one of {', '.join(repr(c) for c in choices)}, "
                              f"got {value!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            for bound, ok, word in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                                    ("le", lambda v, b: v <= b, "<=")):
                b = meta.get(bound)
                if b is not None and not ok(value, b):
                    raise ConfigError(f"config key '{key}': value {value!r} out of range (must be {word} {b})")
        kwargs[name] = value
    return cls(**kwargs)


def build_config(raw: dict[str, Any]) -> Config:
    """A Config from a plain dict, field by field, with one-line errors (its defaults where a key is absent)."""
    return _build(Config, raw, "")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=0.1` -> (['train', 'lr'], 0.1); the value is parsed as YAML (so `null`, `true`, `[1,2]`)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.lr=0.1")
    key, raw = text.split("=", 1)
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _set(d: dict[str, Any], path: list[str], value: Any) -> None:
    for p in path[:-1]:
        nxt = d.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"config key '{'.'.join(path)}': '{p}' is not a section")
        d = nxt
    d[path[-1]] = value


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else in `top` replaces `base`."""
    out = dict(base)
    for k, v in top.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
