"""Every shipped config keeps its run hash (and so its run directory) across refactors of the code.

The golden file lists `<config> <method>-seed<seed>-<hash>` for every shipped config that is not a `_base`
fragment. Environment paths point nowhere real and the shard manifest's digest is a fixed stand-in: the hash
covers the digest's value, not how it was read. Regenerate only for a deliberate change of a published
setting: `UPDATE_GOLDEN=1 pytest tests/unit/test_run_hashes.py`.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import bench.data.shards.manifest as manifest_mod
from bench.experiment import load_config

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "run_hashes.txt"


def shipped_hashes(repo: Path) -> str:
    lines = []
    for p in sorted((repo / "configs").rglob("*.yaml")):
        if not p.name.startswith("_"):
            lines.append(f"{p.relative_to(repo).as_posix()} {load_config(p).run_name()}")
    return "\n".join(lines) + "\n"


def test_every_shipped_config_keeps_its_run_hash(repo, monkeypatch):
    for var in ("LTBENCH_SHARDS", "LTBENCH_WEIGHTS", "LTBENCH_DATA"):
        monkeypatch.setenv(var, f"/nonexistent/{var.lower()}")
    fixed = SimpleNamespace(digest="0123456789abcdef")
    monkeypatch.setattr(manifest_mod, "load_manifest", lambda root: fixed)
    got = shipped_hashes(repo)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(got)
    assert got == GOLDEN.read_text()
