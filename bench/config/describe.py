"""The config described for people: `ltbench config --describe` (a row per key) and docs/config.md (the
Markdown page generated from the schema, so the reference cannot drift from the code)."""

from __future__ import annotations

import dataclasses
import textwrap
from typing import Any

from bench.config.schema import Config


def describe_fields(obj: Any = None, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, doc) for every field of a default Config: `ltbench config --describe`, docs/config.md. The
    doc of a name of an extensible kind ends with the names its registry holds."""
    obj = Config() if obj is None else obj
    rows = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            rows += describe_fields(value, prefix + f.name + ".")
        else:
            doc, choices = f.metadata.get("doc", ""), f.metadata.get("choices")
            if choices is not None:
                doc += f" (registered: {', '.join(choices)})"
            rows.append((prefix + f.name, repr(value), doc))
    return rows


def _md_cell(text: str, code: bool = False) -> str:
    """One table cell: `|` escaped; outside `code spans`, `<` too (`<run>` would be read as an HTML tag)."""
    parts = " ".join(text.split()).replace("|", "\\|").split("`")
    parts = [p if code or i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts)]
    return "`".join(parts)


def config_markdown() -> str:
    """docs/config.md, generated from the schema: `ltbench config --describe --format markdown`."""
    sections = {f.name: type(getattr(Config(), f.name)) for f in dataclasses.fields(Config)}
    rows: dict[str, list[tuple[str, str, str]]] = {}
    for key, default, doc in describe_fields():
        rows.setdefault(key.split(".")[0] if "." in key else "", []).append((key, default, doc))
    how = textwrap.fill(
        "An experiment's config is built in layers, each overriding the one before: the defaults below <- a YAML file"
        " (which may name files it extends with `base:`, a path or a list of paths relative to it, merged underneath)"
        " <- `key.sub=value` overrides on the command line (`ltbench run CONFIG train.lr=0.1`). Then the named "
        "`protocol` fills in its settings (an explicit conflicting value is an error), a stage-2 / post-hoc run takes"
        " `data`, `model` and `train` from its `parent`, and fields left at `'card'` come from the dataset card; "
        "`ltbench config CONFIG [KEY=VALUE ...]` prints the result and its run directory. The run directory is "
        "`<runs-root>/<name>/<method>-seed<seed>-<hash>`: the hash covers every field that can change a result, so "
        "the same experiment always lands in the same directory and running it again resumes it. Outside the hash: "
        "`runtime.*` and `wandb.*` (how a run executes and is tracked), `parent` and `parent_run` (the parent enters "
        "as `parent_hash`), `data.root` and `data.shards` (where the files are), the `stage2` / `posthoc` section of "
        "a stage the run is not, and a few fields added after run directories were first named, while they hold their"
        " default.",
        width=110, break_long_words=False, break_on_hyphens=False)
    out = ["# Configuration reference", "", "<!-- Generated from bench/config/schema.py; do not edit. Regenerate with",
           "     ltbench config --describe --format markdown > docs/config.md -->", "", how]
    for name, section_rows in rows.items():
        cls = sections.get(name)
        title, intro = (f"`{name}`", (cls.__doc__ or "").split("\n\n")[0]) if cls else ("Top-level keys", "")
        out += ["", f"## {title}", ""]
        if intro:
            out += [_md_cell(intro), ""]
        out += ["| key | default | meaning |", "| --- | --- | --- |"]
        out += [f"| `{_md_cell(k, code=True)}` | `{_md_cell(d, code=True)}` | {_md_cell(doc)} |"
                for k, d, doc in section_rows]
    return "\n".join(out) + "\n"
