"""The bad-input battery: everything a user can get wrong gets one line naming the problem (file, key or
value) and exit code 2 — never a traceback — and changes nothing in a completed run directory.

Cases run in-process through `bench.cli.main` (the CLI's own error handling, without a Python start-up per
case); the end-to-end tests elsewhere run the same errors through real subprocesses.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import pytest

from bench.cli import main
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow

SMOKE = str(REPO / "configs" / "smoke.yaml")
STAGE2 = str(REPO / "configs" / "smoke_stage2.yaml")
QUIET = ["runtime.threads=1", "wandb.mode=disabled", "runtime.plot=false"]


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Path:
    """A completed smoke run: no case may change a byte of it."""
    d = tmp_path_factory.mktemp("done") / "run"
    r = run_cli("run", SMOKE, *QUIET, "train.epochs=1", "--run-dir", str(d))
    assert r.returncode == 0, r.stderr
    return d


def digest(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def _w(t: Path, name: str, content: str | bytes) -> str:
    p = t / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(p)


def _file(t: Path) -> str:
    return _w(t, "file", "x")


def _run_dir(t: Path, files: dict[str, bytes | str]) -> str:
    for name, content in files.items():
        _w(t / "run", name, content)
    return str(t / "run")


def _table_dir(t: Path, result: str | None, config: str | None = None) -> list[str]:
    run = t / "runs" / "smoke" / "r1"
    run.mkdir(parents=True)
    _w(run, "config.yaml", Path(SMOKE).read_text() if config is None else config)
    if result is not None:
        _w(run, "result.json", result)
    return ["table", str(t / "runs")]


def _status_dir(t: Path) -> list[str]:
    run = t / "runs" / "smoke" / "r1"
    _w(run, "config.yaml", Path(SMOKE).read_text())
    _w(run, "job.json", "{broken")
    return ["status", "smoke", "--runs-root", str(t / "runs")]


def _unfinished_parent(t: Path) -> list[str]:
    parent = t / "parent"                       # a run directory that never finished: no result.json
    _w(parent, "config.yaml", Path(SMOKE).read_text())
    return ["run", STAGE2, f"parent={parent}", "--runs-root", str(t / "runs")]


MANIFEST = {"format": "ltbench-shards/1", "dataset": "synthetic"}

CASES: dict[str, tuple] = {
    # config files and overrides
    "unknown key": (lambda t: ["run", SMOKE, "train.lrr=0.1"],
                    "unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
    "wrong type": (lambda t: ["run", SMOKE, "train.epochs=x"], "config key 'train.epochs': expected an integer"),
    "out of range": (lambda t: ["run", SMOKE, "train.momentum=2"],
                     "config key 'train.momentum': value 2.0 out of range"),
    "negative seed": (lambda t: ["run", SMOKE, "seed=-1"], "config key 'seed': value -1 out of range"),
    "YAML syntax": (lambda t: ["run", _w(t, "c.yaml", "a: [")], "c.yaml line 1: invalid YAML"),
    "missing config": (lambda t: ["run", str(t / "none.yaml")], "none.yaml: not found"),
    "folder as config": (lambda t: ["run", str(t)], "a folder, not a YAML file"),
    "non-mapping YAML": (lambda t: ["run", _w(t, "c.yaml", "- a\n- b\n")], "top level must be a mapping, got list"),
    "config not UTF-8": (lambda t: ["run", _w(t, "c.yaml", b"name: x\n\xff\xfe: 1\n")], "c.yaml: not UTF-8 text"),
    "empty config": (lambda t: ["run", _w(t, "c.yaml", b"")], "c.yaml: empty"),
    "base missing": (lambda t: ["run", _w(t, "c.yaml", "base: nope.yaml\n")], "'base' nope.yaml is not found"),
    "base is a folder": (lambda t: ["run", _w(t, "c.yaml", f"base: {t}\n")], "is a folder"),
    # models and data
    "bad model": (lambda t: ["run", SMOKE, "model.name=resnet_nonexistent"], "resnet_nonexistent"),
    "bad pretrained file": (lambda t: ["run", SMOKE, f"model.pretrained_file={_file(t)}"], "model.pretrained_file: "),
    "missing data": (lambda t: ["run", SMOKE, "data.dataset=cifar10", "data.root=/nonexistent/cifar"],
                     "CIFAR-10-LT not found (looked in: /nonexistent/cifar)"),
    "missing shards": (lambda t: ["run", SMOKE, f"data.shards={t / 'none'}"], "manifest.json not found"),
    "manifest not JSON": (lambda t: ["run", SMOKE, f"data.shards={Path(_w(t, 's/manifest.json', '{')).parent}"],
                          "manifest.json: not valid JSON"),
    "manifest lacks keys": (lambda t: ["run", SMOKE,
                                       f"data.shards={Path(_w(t, 's/manifest.json', json.dumps(MANIFEST))).parent}"],
                            "manifest.json: missing num_classes"),
    "runs root is a file": (lambda t: ["run", SMOKE, "train.epochs=1", "--runs-root", _file(t)], "Not a directory"),
    # run directories, checkpoints, parents
    "truncated checkpoint": (lambda t: ["run", SMOKE, *QUIET, "--run-dir",
                                        _run_dir(t, {"checkpoints/last.pt": b"PK\x03\x04"})],
                             "last.pt is truncated or corrupt"),
    "garbage checkpoint": (lambda t: ["run", SMOKE, *QUIET, "--run-dir",
                                      _run_dir(t, {"checkpoints/last.pt": b"\x00" * 64})],
                           "last.pt is truncated or corrupt"),
    "another config's complete run": (lambda t: ["run", SMOKE, *QUIET, "train.lr=0.2", "--run-dir",
                                                 str(t.parent / "DONE")],
                                      "result.json belongs to config"),
    "missing parent": (lambda t: ["run", STAGE2, f"parent={t / 'nothing'}", "--runs-root", str(t)],
                       "nothing is neither a run directory nor a config file"),
    "unfinished parent": (_unfinished_parent, "to be complete"),
    # prepare
    "samples per shard 0": (lambda t: ["prepare", "synthetic", "--out", str(t / "s"), "--samples-per-shard", "0"],
                            "--samples-per-shard: 0 must be at least 1"),
    "prepare into a file": (lambda t: ["prepare", "synthetic", "--out", _file(t)], "is a file, not a folder"),
    # table, status, submit
    "empty table folder": (lambda t: ["table", str(t)], "no run directories (with config.yaml)"),
    "unknown --show column": (lambda t: [*_table_dir(t, None), "--show", "cost,gpu"],
                              "--show gpu: no such column (columns shown on request: cost)"),
    "bad --seeds": (lambda t: [*_table_dir(t, None), "--seeds", "a,b"],
                    "--seeds 'a,b': expected comma-separated integers"),
    "result.json is a list": (lambda t: _table_dir(t, "[1, 2]"), "result.json: expected a JSON object, got a list"),
    "result.json without metrics": (lambda t: _table_dir(t, '{"status": "complete"}'),
                                    "a complete result without 'metrics'"),
    "broken config.yaml beside a result": (lambda t: _table_dir(t, None, ": : :"), "config.yaml line 1: invalid YAML"),
    "corrupt job.json": (_status_dir, "job.json: not valid JSON"),
    "bad --sweep": (lambda t: ["submit", SMOKE, "--dry-run", "--sweep", "seed"], "--sweep"),
    "bad --override": (lambda t: ["submit", SMOKE, "--dry-run", "--override", "train.lrr=1"],
                       "unknown config key 'train.lrr'"),
    "missing site file": (lambda t: ["submit", SMOKE, "--dry-run", "--site", str(t / "none.yaml")],
                          "none.yaml: not found"),
    "site file not YAML": (lambda t: ["submit", SMOKE, "--dry-run", "--site", _w(t, "site.yaml", "a: [")],
                           "invalid YAML"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_line_error_and_nothing_lost(tmp_path, done, case, monkeypatch):
    make, message = CASES[case]
    (tmp_path / "DONE").symlink_to(done)              # cases reach the completed run through this name
    before = digest(done)
    monkeypatch.chdir(tmp_path)                        # nothing may land in the checkout either
    work = tmp_path / "case"
    work.mkdir()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(make(work))
    text = err.getvalue()
    assert code == 2, text
    assert "Traceback" not in text and text.strip().count("\n") == 0, text
    assert text.startswith("ltbench: error: ") and message in text, text
    assert digest(done) == before
