"""The manifest.json of a `ltbench prepare` directory: reading and checking it, and the shard files it names.

A leaf of the data package: it imports nothing from bench.config, bench.data.lt or the loaders, so the config
can read a manifest's digest without pulling the data pipeline in (and without an import circle).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.data.cards import DatasetError

if TYPE_CHECKING:
    import torch

FORMAT = "ltbench-shards/1"
MANIFEST = "manifest.json"
MANIFEST_KEYS = ("dataset", "num_classes", "class_names", "channels", "selection", "splits")
SHARD_KEYS = ("name", "samples", "bytes", "sha256", "labels")
SHARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\.tar")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class ShardSplit:
    """One split of a prepared dataset: its shards (in manifest order) and labels, without the images."""

    root: Path
    name: str
    shards: list[dict[str, Any]]

    def __len__(self) -> int:
        return sum(s["samples"] for s in self.shards)

    @property
    def y(self) -> torch.Tensor:
        """Labels in manifest order (the evaluation order on one rank)."""
        import torch  # local: reading a manifest (login nodes resolve configs) loads no torch

        return torch.tensor([lab for s in self.shards for lab in s["labels"]], dtype=torch.int64)

    def path(self, k: int) -> str:
        return str(self.root / self.shards[k]["name"])


@dataclass
class Manifest:
    root: Path
    doc: dict[str, Any]
    digest: str                      # sha256 of manifest.json: names exactly these shards

    def split(self, name: str) -> ShardSplit | None:
        s = self.doc["splits"].get(name)
        return None if s is None else ShardSplit(self.root, name, s["shards"])


_READ: dict[tuple[str, int, int], Manifest] = {}    # (path, mtime_ns, size) -> the manifest read from it


def load_manifest(root: str | Path) -> Manifest:
    """The checked manifest of a shard folder. Read once per process while the file is unchanged: planning a
    1,000-run sweep resolves every run's config against the same manifest (5 MB at iNaturalist's size)."""
    root = Path(root).expanduser()
    path = root / MANIFEST
    if not path.is_file():
        raise DatasetError(f"data.shards: {path} not found (prepare the shards with `ltbench prepare`)")
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _READ:
        _READ[key] = _read_manifest(root, path)
    return _READ[key]


def _read_manifest(root: Path, path: Path) -> Manifest:
    raw = path.read_bytes()
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise DatasetError(f"{path}: format {got!r}, expected {FORMAT!r} (prepare again)")
    missing = [k for k in MANIFEST_KEYS if k not in doc]
    if missing:
        raise DatasetError(f"{path}: missing {', '.join(missing)} (not written by `ltbench prepare`, or damaged; "
                           "prepare again)")
    for name, split in doc["splits"].items():
        lacking = [k for k in ("num_samples", "class_counts", "shards") if k not in split]
        lacking += sorted({k for s in split.get("shards", []) for k in SHARD_KEYS if k not in s})
        if lacking:
            raise DatasetError(f"{path}: split {name} lacks {', '.join(lacking)} (prepare again)")
        for s in split["shards"]:
            # a manifest travels between users: its names must be plain files in this folder (never
            # "pipe:cmd", "../x" or a URL, which a tar opener might run or follow)
            shard = str(s["name"])
            if not SHARD_NAME.fullmatch(shard):
                raise DatasetError(f"{path}: shard name {shard[:80]!r} is not a plain file name in {root} "
                                   "(letters, digits, '.', '_', '-', ending in .tar)")
    return Manifest(root, doc, hashlib.sha256(raw).hexdigest()[:16])


def check_shard_files(split: ShardSplit, on_error: str) -> list[str]:
    """Compare every shard's size with the manifest (cheap; catches truncated or replaced files up front).

    Returns the problems; raises on the first one unless on_error == 'skip'.
    """
    problems = []
    for s in split.shards:
        p = split.root / s["name"]
        if not p.is_file():
            problems.append(f"shard {p} is missing")
        elif p.stat().st_size != s["bytes"]:
            problems.append(f"shard {p} has {p.stat().st_size} bytes, the manifest says {s['bytes']} "
                            "(truncated or replaced; run `ltbench prepare` again to rewrite it)")
        if problems and on_error != "skip":
            raise DatasetError(problems[0])
    return problems


def verify_shards(root: str | Path) -> list[str]:
    """Full check of every shard against its sha256 in the manifest (`ltbench prepare --verify`)."""
    m = load_manifest(root)
    bad = []
    for name in m.doc["splits"]:
        split = m.split(name)
        assert split is not None
        for s in split.shards:
            p = split.root / s["name"]
            if not p.is_file() or file_sha256(p) != s["sha256"]:
                bad.append(str(p))
    return bad
