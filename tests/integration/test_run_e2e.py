"""End-to-end: the real `ltbench run` on the smoke config, exact resume after SIGKILL, CLI errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow

SMOKE = str(REPO / "configs" / "smoke.yaml")
# One thread: identical float reduction order in every process, so resumed == uninterrupted bit for bit.
FIXED = ["runtime.threads=1"]


def result_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def only_run_dir(root: Path) -> Path:
    dirs = [p for p in (root / "smoke").iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """One uninterrupted smoke run shared by the tests of this module."""
    root = tmp_path_factory.mktemp("ref")
    r = run_cli("run", SMOKE, *FIXED, "--runs-root", str(root))
    assert r.returncode == 0, r.stderr
    return only_run_dir(root)


def test_smoke_run_writes_the_run_directory(reference_run):
    res = result_of(reference_run)
    for key in ("dataset", "method", "seed", "metrics", "val_metrics", "per_class_acc", "class_counts"):
        assert key in res
    assert res["status"] == "complete" and res["dataset"] == "synthetic" and res["method"] == "ce"
    assert set(res["metrics"]) == {"all", "many", "medium", "few"}
    assert res["class_counts"] == [190, 147, 113, 88, 68, 52, 40, 31, 24, 19]
    assert len(res["per_class_acc"]) == 10
    # learned something: well above the 10 % of chance on a balanced test set
    assert res["metrics"]["all"] > 30
    lines = (reference_run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    # the lr each epoch ran with: lr 0.05, cosine per epoch over E = 3, factor 0.5 (1 + cos(pi e / 3)) for
    # e = 0, 1, 2 = 1, 0.75, 0.25 (not the next epoch's 0.0375, 0.0125, 0.0)
    rows = [json.loads(line) for line in lines]
    assert [r["lr"] for r in rows] == pytest.approx([0.05, 0.0375, 0.0125], abs=1e-12)
    assert [r["lr_last"] for r in rows] == [r["lr"] for r in rows]   # constant inside an epoch
    import yaml
    resolved = yaml.safe_load((reference_run / "config.yaml").read_text())
    assert resolved["data"]["n_max"] == 190 and resolved["groups"] == {"many": 100, "few": 40, "inclusive": False}
    assert (reference_run / "per_class.png").stat().st_size > 1000
    assert (reference_run / "checkpoints" / "last.pt").is_file()
    run_json = json.loads((reference_run / "run.json").read_text())
    assert run_json["selection_hash"] == res["selection_hash"]


def test_logged_lr_is_the_lr_of_the_epochs_steps(tmp_path):
    """Per-step cosine: 772 training images in batches of 32 = 25 steps per epoch, 50 steps in 2 epochs;
    step t runs at 0.05 * 0.5 (1 + cos(pi t / 50))."""
    r = run_cli("run", SMOKE, *FIXED, "train.epochs=2", "train.schedule_unit=step", "--runs-root", str(tmp_path))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (only_run_dir(tmp_path) / "metrics.jsonl").read_text().splitlines()]
    # epoch 1: steps 0..24: first 0.05; last 0.025 (1 + cos(24 pi / 50)) = 0.025 * 1.0627905195293134
    # epoch 2: steps 25..49: first 0.025 (1 + cos(pi / 2)) = 0.025; last 0.025 (1 - 0.998026728428272)
    assert [r["lr"] for r in rows] == pytest.approx([0.05, 0.025], abs=1e-12)
    assert [r["lr_last"] for r in rows] == pytest.approx([0.026569762988232835, 4.933178929320412e-05], abs=1e-12)


def test_complete_run_is_not_rerun(reference_run):
    before = (reference_run / "result.json").read_text()
    r = run_cli("run", SMOKE, *FIXED, "--runs-root", str(reference_run.parents[1]))
    assert r.returncode == 0 and "nothing to do" in r.stdout
    assert (reference_run / "result.json").read_text() == before


def _start(root: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench", "run", SMOKE, *FIXED, *extra, "--runs-root", str(root)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    t0 = time.time()
    while not ready():
        assert proc.poll() is None, f"run ended before it could be killed:\n{proc.stdout.read()}"
        assert time.time() - t0 < timeout, "timed out waiting for the kill point"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _same_numbers(a: dict, b: dict) -> None:
    for key in ("metrics", "val_metrics", "per_class_acc", "selected_epoch", "metrics_last_epoch", "selection_hash"):
        assert a[key] == b[key], key


def test_sigkill_after_first_epoch_then_resume_is_exact(reference_run, tmp_path):
    proc = _start(tmp_path)
    metrics = lambda: next(iter((tmp_path / "smoke").glob("*/metrics.jsonl")), None)  # noqa: E731
    _kill_when(proc, lambda: metrics() is not None and metrics().read_text().count("\n") >= 1)
    run_dir = only_run_dir(tmp_path)
    assert not (run_dir / "result.json").exists()
    r = run_cli("run", SMOKE, *FIXED, "--runs-root", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout
    _same_numbers(result_of(run_dir), result_of(reference_run))
    ref_hist = [json.loads(line) for line in (reference_run / "metrics.jsonl").read_text().splitlines()]
    new_hist = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # the cost counts the killed attempt's checkpointed epoch too: at least every epoch's time, both attempts
    cost = result_of(run_dir)["cost"]
    assert cost["seconds"] >= sum(h["epoch_time_s"] for h in new_hist) - 0.1 and cost["processes"] == 1
    assert cost["seconds"] > result_of(run_dir)["wall_time_s"] - 0.1 and not cost["gpu"]
    drop = ("epoch_time_s", "train_time_s", "images_per_s")
    assert [{k: v for k, v in h.items() if k not in drop} for h in new_hist] == \
           [{k: v for k, v in h.items() if k not in drop} for h in ref_hist]


def test_sigkill_mid_epoch_then_resume_is_exact(tmp_path):
    """Checkpoints every 3 steps; killed as soon as the first mid-epoch checkpoint exists. With mixup (MiSLAS stage
    1), whose draws at the resumed step must be the uninterrupted run's too."""
    mix = ["runtime.checkpoint_every_steps=3", "train.mixup_alpha=1.0"]
    ref = run_cli("run", SMOKE, *FIXED, *mix, "--runs-root", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    proc = _start(tmp_path, *mix)
    last = lambda: next(iter((tmp_path / "smoke").glob("*/checkpoints/last.pt")), None)  # noqa: E731
    _kill_when(proc, lambda: last() is not None)
    saved = torch.load(last(), weights_only=True)
    assert saved["state"]["step"] > 0 or saved["state"]["epoch"] > 0
    r = run_cli("run", SMOKE, *FIXED, *mix, "--runs-root", str(tmp_path))
    assert r.returncode == 0, r.stderr
    _same_numbers(result_of(only_run_dir(tmp_path)), result_of(only_run_dir(tmp_path / "ref")))


def test_truncated_checkpoint_is_a_one_line_error(tmp_path):
    proc = _start(tmp_path)
    metrics = lambda: next(iter((tmp_path / "smoke").glob("*/metrics.jsonl")), None)  # noqa: E731
    _kill_when(proc, lambda: metrics() is not None)
    ck = only_run_dir(tmp_path) / "checkpoints" / "last.pt"
    ck.write_bytes(ck.read_bytes()[:1000])
    r = run_cli("run", SMOKE, *FIXED, "--runs-root", str(tmp_path))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "last.pt is truncated or corrupt" in r.stderr
    # recorded for `ltbench status` / `ltbench table`; the run stays resumable (not complete)
    failed = json.loads((only_run_dir(tmp_path) / "result.json").read_text())
    assert failed["status"] == "failed" and "last.pt is truncated or corrupt" in failed["error"]
    st = run_cli("status", "smoke", "--runs-root", str(tmp_path))
    assert "failed: CheckpointError: " in st.stdout


def test_python_m_bench_and_console_script_agree(tmp_path):
    r = run_cli("config", SMOKE, "train.epochs=1")
    assert r.returncode == 0 and "epochs: 1" in r.stdout and "# run directory: runs/smoke/ce-seed0-" in r.stdout
    exe = Path(sys.executable).parent / "ltbench"
    if exe.exists():
        out = subprocess.run([str(exe), "config", SMOKE, "train.epochs=1"], capture_output=True, text=True, cwd=REPO)
        assert out.stdout == r.stdout


def test_demo_on_real_fashion_mnist_short(tmp_path):
    """The main job end to end on the real data, shortened (1 epoch, n_max 600) to keep CI fast."""
    r = run_cli("demo", "train.epochs=1", "data.n_max=600", "--runs-root", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    table = [line for line in r.stdout.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0][2:] for line in table[1:]] == ["naive", "wd", "tau-norm", "wb", "hs-stage1", "hs"]
    # printed through `ltbench table` (--select val over the grid), which also wrote it and its plot
    assert "- wb, Fashion-MNIST-LT IF 100: chosen stage2.maxnorm_thresh=" in r.stdout
    assert "(best mean val all of 12 settings)" in r.stdout
    assert "- tau-norm, Fashion-MNIST-LT IF 100: tau chosen on val: " in r.stdout
    assert "- hs, Fashion-MNIST-LT IF 100: tau chosen on val: " in r.stdout
    # under the table: the deviations from the papers' recipes and the claims check (1 seed)
    assert "Deviations from the papers' recipes" in r.stdout and "- stage 1 (naive, wd, hs-stage1): " in r.stdout
    assert "epochs 1 (paper 320" in r.stdout and "data.n_max 600 (paper full" in r.stdout
    assert "Claims, on the mean test accuracy over 1 seed (all choices made on val):" in r.stdout
    claims = [line for line in r.stdout.splitlines() if line.startswith("- [")]
    assert len(claims) == 5 and all(line.split("]")[0] in ("- [holds", "- [NOT shown") for line in claims)
    assert (tmp_path / "demo" / "table-seed0.md").read_text() in r.stdout
    assert (tmp_path / "demo" / "table-seed0-fashion-mnist-if100.png").is_file()
    res = [json.loads(p.read_text()) for p in sorted((tmp_path / "demo").glob("*/result.json"))]
    assert sorted({x["method"] for x in res}) == ["hs", "hs-stage1", "naive", "tau-norm", "wb", "wd"]
    assert sum(x["method"] == "wb" for x in res) == 12          # the stage-2 grid, one run each
    for x in res:
        assert x["class_counts"] == [600, 359, 215, 129, 77, 46, 27, 16, 10, 6]
        assert x["metrics"]["many"] is None  # no class above 1,000 images: reported empty, not 0
        assert x["protocol"] == "clean" and x["selection"]["split"] == "val"
    assert "| — |" in r.stdout
    # a second call finds everything complete and trains nothing
    again = run_cli("demo", "train.epochs=1", "data.n_max=600", "--runs-root", str(tmp_path))
    assert again.returncode == 0 and again.stdout.count("complete already") == 3


def test_analysis_each_epoch_is_logged(tmp_path):
    r = run_cli("run", SMOKE, *FIXED, "train.epochs=1", "eval.analysis_each_epoch=true", "--runs-root", str(tmp_path))
    assert r.returncode == 0, r.stderr
    (row,) = [json.loads(line) for line in (only_run_dir(tmp_path) / "metrics.jsonl").read_text().splitlines()]
    a = row["analysis"]
    assert a["split"] == "val" and len(a["weight_norms"]) == 10 and a["fdr"] > 0
    assert set(a["cosine"]) == {"within", "between", "all"}


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_speed_switches_run_on_cpu(amp, tmp_path):
    """Mixed precision and channels_last work on CPU too; the fp16 grad scaler's state is checkpointed."""
    r = run_cli("run", SMOKE, *FIXED, "train.epochs=1", f"train.amp={amp}", "runtime.channels_last=true",
                "--runs-root", str(tmp_path))
    assert r.returncode == 0, r.stderr
    run_dir = only_run_dir(tmp_path)
    assert result_of(run_dir)["metrics"]["all"] >= 10
    saved = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert (saved["scaler"].get("scale") is not None) == (amp == "fp16")
