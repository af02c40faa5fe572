"""Bad input a user can cause gets one line naming the problem and exit code 2: never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow

SMOKE = str(REPO / "configs" / "smoke.yaml")


def _table_dir(tmp: Path, result: str | None, config: str | None = None) -> list[str]:
    run = tmp / "runs" / "smoke" / "r1"
    run.mkdir(parents=True)
    if config is None:
        shutil.copy(SMOKE, run / "config.yaml")
    else:
        (run / "config.yaml").write_text(config)
    if result is not None:
        (run / "result.json").write_text(result)
    return ["table", str(tmp / "runs")]


def _status_dir(tmp: Path) -> list[str]:
    run = tmp / "runs" / "smoke" / "r1"
    run.mkdir(parents=True)
    shutil.copy(SMOKE, run / "config.yaml")
    (run / "job.json").write_text("{broken")
    return ["status", "smoke", "--runs-root", str(tmp / "runs")]


def _manifest(tmp: Path) -> list[str]:
    (tmp / "shards").mkdir()
    (tmp / "shards" / "manifest.json").write_text(json.dumps({"format": "ltbench-shards/1", "dataset": "synthetic"}))
    return ["run", SMOKE, f"data.shards={tmp / 'shards'}", "--runs-root", str(tmp / "runs")]


def _file(tmp: Path) -> Path:
    (tmp / "file").write_text("x")
    return tmp / "file"


def _yaml(tmp: Path, name: str, content: bytes) -> str:
    (tmp / name).write_bytes(content)
    return str(tmp / name)


CASES = {
    "config not UTF-8": (lambda t: ["run", _yaml(t, "c.yaml", b"name: x\n\xff\xfe: 1\n")], "not UTF-8 text"),
    "base is a folder": (lambda t: ["run", _yaml(t, "c.yaml", f"base: {t}\n".encode())], "is a folder"),
    "base missing": (lambda t: ["run", _yaml(t, "c.yaml", b"base: nope.yaml\n")], "'base' nope.yaml is not found"),
    "empty config": (lambda t: ["run", _yaml(t, "c.yaml", b"")], "c.yaml: empty"),
    "negative seed": (lambda t: ["run", SMOKE, "seed=-1"], "config key 'seed': value -1 out of range"),
    "samples per shard 0": (lambda t: ["prepare", "synthetic", "--out", str(t / "s"), "--samples-per-shard", "0"],
                            "--samples-per-shard: 0 must be at least 1"),
    "prepare into a file": (lambda t: ["prepare", "synthetic", "--out", str(_file(t))], "is a file, not a folder"),
    "manifest lacks keys": (_manifest, "manifest.json: missing num_classes"),
    "result.json is a list": (lambda t: _table_dir(t, "[1, 2]"), "result.json: expected a JSON object, got a list"),
    "result.json without metrics": (lambda t: _table_dir(t, '{"status": "complete"}'),
                                    "a complete result without 'metrics'"),
    "broken config.yaml beside a result": (lambda t: _table_dir(t, None, ": : :"), "config.yaml line 1: invalid YAML"),
    "corrupt job.json": (_status_dir, "job.json: not valid JSON"),
    "missing site file": (lambda t: ["submit", SMOKE, "--dry-run", "--site", str(t / "none.yaml")], "none.yaml: not found"),
    "site file not YAML": (lambda t: (t / "site.yaml").write_text("a: [") and ["submit", SMOKE, "--dry-run", "--site",
                                                                               str(t / "site.yaml")], "invalid YAML"),
    "runs root is a file": (lambda t: ["run", SMOKE, "train.epochs=1", "--runs-root", str(_file(t))], "Not a directory"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_line_error(tmp_path, case):
    make, message = CASES[case]
    r = run_cli(*make(tmp_path))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    assert r.stderr.startswith("ltbench: error: ") and message in r.stderr, r.stderr
