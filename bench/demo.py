"""`ltbench demo`: the main job on the embedded default, Fashion-MNIST-LT (exp profile, IF 100).

Trains the naive baseline (weight decay 0) and the tuned-WD model (WB stage 1) and prints a table of
all / many / medium / few. Groups use this dataset's card thresholds (many > 1000, few < 200: 4 / 3 / 3
classes), because the usual > 100 / < 20 leaves no few-shot class on a 10-class profile.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

from bench.config import load_config
from bench.data.cards import DatasetError, load_card
from bench.data.sources import load_fashion_mnist
from bench.metrics import format_pct
from bench.progress import log
from bench.rundir import RunDir

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
DEMO_CONFIGS = ["demo/fmnist_naive.yaml", "demo/fmnist_wd.yaml"]
OFFICIAL_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"


def ensure_fashion_mnist() -> str:
    """Find Fashion-MNIST; else install the Debian package (as root) or download the official files."""
    try:
        return str(load_fashion_mnist().root)
    except DatasetError as missing:
        card = load_card("fashion-mnist")
        if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
            log("Fashion-MNIST not found: installing the Debian package dataset-fashion-mnist")
            cmd = ["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"]
            if subprocess.run(cmd).returncode != 0:
                subprocess.run(["apt-get", "update", "-q"])
                subprocess.run(cmd)
        else:
            dest = Path("~/.cache/ltbench/fashion-mnist").expanduser()
            dest.mkdir(parents=True, exist_ok=True)
            log(f"Fashion-MNIST not found: downloading the official files to {dest}")
            try:
                for f in card["files"].values():
                    if not (dest / f).is_file():
                        with urllib.request.urlopen(OFFICIAL_URL + f, timeout=20) as r:
                            (dest / f).write_bytes(r.read())
            except OSError as e:
                raise DatasetError(f"{missing} (download failed: {e})") from None
        return str(load_fashion_mnist().root)


def run_demo(runs_root: str, overrides: list[str]) -> int:
    from bench.train.stage1 import train_stage1

    root = ensure_fashion_mnist()
    log(f"Fashion-MNIST found in {root}")
    rows = []
    for name in DEMO_CONFIGS:
        cfg = load_config(CONFIG_DIR / name, overrides)
        run = RunDir.for_config(cfg, runs_root)
        if run.is_complete():
            log(f"{cfg.method}: complete already ({run.path})")
        else:
            log(f"{cfg.method}: training {cfg.model.name}, weight decay {cfg.train.weight_decay:g}, "
                f"{cfg.train.epochs} epochs -> {run.path}")
            train_stage1(cfg, run)
        rows.append((cfg, run))
    print(demo_table(rows))
    return 0


def demo_table(rows: list) -> str:
    import json

    first = json.loads(rows[0][1].result_file.read_text())
    n = {g: len(first["groups"][g]) for g in ("many", "medium", "few")}
    th = first["group_thresholds"]
    lines = [f"\nFashion-MNIST-LT, IF {first['imbalance_factor']:g}, {first['model']}, seed {first['seed']}: "
             f"test accuracy (%), groups by training count: many > {th['many']} ({n['many']} classes), "
             f"few < {th['few']} ({n['few']}), medium ({n['medium']})",
             "| method | weight decay | all | many | medium | few |", "|---|---|---|---|---|---|"]
    for cfg, run in rows:
        m = json.loads(run.result_file.read_text())["metrics"]
        lines.append(f"| {cfg.method} | {cfg.train.weight_decay:g} | {format_pct(m['all'])} | {format_pct(m['many'])} "
                     f"| {format_pct(m['medium'])} | {format_pct(m['few'])} |")
    return "\n".join(lines)
