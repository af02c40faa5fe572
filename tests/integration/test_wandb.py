"""Real wandb (offline): one W&B run per run directory, summary with many / medium / few, the same run id
after a SIGKILL and resume, steps that never decrease and no epoch lost, no API key in any file, and
training that goes on when W&B cannot be reached. The offline run files
(<run>/wandb/offline-run-*/run-<id>.wandb) are read back record by record (bench.runtime.tracking.offline_records).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bench.experiment import load_config
from bench.runtime.tracking import epoch_log, offline_last_step, offline_records, summary_of, wandb_mode
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow

SMOKE = str(REPO / "configs" / "smoke.yaml")
SECRET = "ltbench-test-secret-key-0123456789abcdef"   # 40 characters, like a real key


def items(update) -> dict:
    return {(u.key or "/".join(u.nested_key)): json.loads(u.value_json) for u in update}


def env(**extra: str) -> dict:
    out = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return {**out, "PYTHONUNBUFFERED": "1", **extra}


def test_offline_run_resume_keeps_the_run_id(tmp_path):
    e = env(WANDB_MODE="offline", WANDB_API_KEY=SECRET, HOME=str(tmp_path))
    args = [sys.executable, "-m", "bench", "run", SMOKE, "train.epochs=5", "runtime.threads=1",
            "--runs-root", str(tmp_path)]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=e)
    state = lambda: next(iter(tmp_path.glob("smoke/*/wandb.json")), None)  # noqa: E731
    t0 = time.time()
    # killed once W&B has logged epoch 1 and before the run ends
    while not (state() and json.loads(state().read_text())["last_step"] >= 1):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - t0 < 300
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = state().parent
    first_id = json.loads(state().read_text())["id"]

    r = run_cli("run", SMOKE, "train.epochs=5", "runtime.threads=1", "--runs-root", str(tmp_path), env=e)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming" in r.stdout and "warning" not in r.stdout
    saved = json.loads((run_dir / "wandb.json").read_text())
    assert saved["id"] == first_id and saved["mode"] == "offline" and saved["group"] == "smoke"
    files = sorted(run_dir.glob(f"wandb/offline-run-*-{first_id}/run-{first_id}.wandb"))
    assert len(files) == 2, files          # two attempts, one W&B run id

    steps, summary, runs = [], {}, []
    for f in files:
        for kind, rec in offline_records(f):
            if kind == "history":
                h = items(rec.history.item)
                steps.append(h["_step"])
            elif kind == "summary":
                summary.update(items(rec.summary.update))
            elif kind == "run":
                runs.append((rec.run.run_id, rec.run.run_group, rec.run.job_type))
                cfg = items(rec.run.config.update)
                assert cfg["method"] == "ce" and cfg["train"]["epochs"] == 5
    # wandb-core buffers offline writes: the killed attempt's file may hold nothing after its header; the
    # resumed attempt re-logs exactly the epochs that are not on disk, so every epoch is there once
    assert runs[-1] == (first_id, "smoke", "stage1") and len(runs) in (1, 2)
    assert steps == sorted(steps) and sorted(set(steps)) == [1, 2, 3, 4, 5, 6]   # 5 epochs, then the final table
    assert len(steps) == 6 and offline_last_step(run_dir, first_id) == 6
    result = json.loads((run_dir / "result.json").read_text())
    for g in ("all", "many", "medium", "few"):
        assert summary[f"test/{g}"] == pytest.approx(result["metrics"][g])
        assert summary[f"val/{g}"] == pytest.approx(result["val_metrics"][g])
    assert summary["status"] == "complete" and summary["seed"] == 0 and summary["method"] == "ce"
    assert summary["per_class/_type"] == "table-file" and summary["per_class_plot/_type"] == "image-file"
    table = json.loads(next(run_dir.glob("wandb/offline-run-*/files/media/table/per_class_*.table.json")).read_text())
    assert table["columns"][:5] == ["class", "name", "train_images", "group", "test_acc"] and len(table["data"]) == 10
    # the API key is in the environment only: never in the run directory (config, logs, W&B files)
    for p in run_dir.rglob("*"):
        if p.is_file():
            assert SECRET.encode() not in p.read_bytes(), p


@pytest.mark.parametrize("extra", [
    {},                                               # no API key at all: wandb.init fails at once
    {"WANDB_API_KEY": SECRET},                        # a key but no network: init times out (5 s here)
])
def test_training_goes_on_when_wandb_is_unavailable(tmp_path, extra):
    e = env(WANDB_MODE="online", HOME=str(tmp_path), **extra)
    r = run_cli("run", SMOKE, "train.epochs=2", "runtime.threads=1", "wandb.init_timeout=5",
                "--runs-root", str(tmp_path), env=e)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("warning: W&B online tracking failed") == 1, r.stdout
    (run_dir,) = list(tmp_path.glob("smoke/*"))
    assert json.loads((run_dir / "result.json").read_text())["status"] == "complete"
    for p in run_dir.rglob("*"):
        if p.is_file():
            assert SECRET.encode() not in p.read_bytes(), p


def test_a_failed_run_ends_its_wandb_run_as_failed(tmp_path):
    e = env(WANDB_MODE="offline", HOME=str(tmp_path))
    args = [sys.executable, "-m", "bench", "run", SMOKE, "train.epochs=4", "runtime.threads=1",
            "--runs-root", str(tmp_path)]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=e)
    metrics = lambda: next(iter(tmp_path.glob("smoke/*/metrics.jsonl")), None)  # noqa: E731
    t0 = time.time()
    while metrics() is None:
        assert proc.poll() is None and time.time() - t0 < 300
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = metrics().parent
    ck = run_dir / "checkpoints" / "last.pt"
    ck.write_bytes(ck.read_bytes()[:1000])
    r = run_cli("run", SMOKE, "train.epochs=4", "runtime.threads=1", "--runs-root", str(tmp_path), env=e)
    assert r.returncode == 2 and "truncated or corrupt" in r.stderr
    run_id = json.loads((run_dir / "wandb.json").read_text())["id"]
    last = sorted(run_dir.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))[-1]
    exits = [rec.exit.exit_code for kind, rec in offline_records(last) if kind == "exit"]
    assert exits == [1]


def test_disabled_writes_nothing_and_mode_precedence(tmp_path, monkeypatch):
    bad = run_cli("run", SMOKE, "--runs-root", str(tmp_path), env=env(WANDB_MODE="sometimes"))
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "WANDB_MODE" in bad.stderr
    assert not (tmp_path / "smoke").exists()
    r = run_cli("run", SMOKE, "train.epochs=1", "runtime.threads=1", "--runs-root", str(tmp_path),
                env=env(WANDB_MODE="disabled"))
    assert r.returncode == 0, r.stderr
    (run_dir,) = list(tmp_path.glob("smoke/*"))
    assert not (run_dir / "wandb").exists() and not (run_dir / "wandb.json").exists()
    cfg = load_config(SMOKE)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode(cfg) == "offline"                       # the default: no network, sync later
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_mode(cfg) == "online"
    assert wandb_mode(load_config(SMOKE, ["wandb.mode=disabled"])) == "disabled"   # the config wins


def test_epoch_and_summary_keys():
    row = {"epoch": 3, "lr": 0.1, "train_loss": 1.5, "train_acc": 40.0, "epoch_time_s": 2.0, "images_per_s": 900.0,
           "val": {"all": 50.0, "many": 70.0, "medium": 45.0, "few": None}}
    assert epoch_log(row) == {"epoch": 3, "lr": 0.1, "train/loss": 1.5, "train/acc": 40.0, "perf/epoch_time_s": 2.0,
                              "perf/images_per_s": 900.0, "val/all": 50.0, "val/many": 70.0, "val/medium": 45.0}
    s = summary_of({"status": "complete", "method": "wb", "metrics": {"all": 1.0, "few": None}, "val_metrics": None})
    assert s["test/all"] == 1.0 and "test/few" not in s and s["method"] == "wb"
