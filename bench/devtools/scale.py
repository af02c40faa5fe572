"""`ltbench perf --only scale`: ltbench at the size of iNaturalist 2018, on this machine.

It writes an iNaturalist-2018-shaped source tree (8,142 classes, 437,513 training images from 1,000 down to 2 per
class, 3 test images per class, train2018.json / val2018.json in the real COCO-style format, tiny JPEGs) and times,
with the peak RSS of the largest process of each step, what a user runs on it:

- `ltbench prepare inat2018` (tree -> tar shards + manifest);
- one stage-1 epoch from the shards at a small input size (resnet8_cifar at 16 px), and the same epoch on a quarter
  of the images, for the slope of peak RSS against the dataset size;
- WB stage 2 on the parent's features: the first run extracts and caches them, a second reuses them; its epoch
  against a bare linear-layer loop on the same cached features;
- a cRT epoch with the class-aware sampler (max_c n_c x C = 8.14 M samples);
- `ltbench table` and `ltbench status` over 1,000 run directories (40 stage-1 runs, 24 stage-2 children each,
  copies of the real runs above with their configs varied), and `ltbench submit --dry-run` of a 1,010-run sweep.

The quick mode (the test suite's) is the same path at 50 classes and 100 run directories.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.config import dump_yaml, stored_config
from bench.config.load import load_yaml
from bench.devtools.harness import REPO, CONFIGS, Setting, run_env, timed_process
from bench.launch.local import read_run
from bench.runtime.progress import log
from bench.runtime.rundir import RunDir
from bench.train import checkpoint as ckpt


@dataclasses.dataclass(frozen=True)
class Shape:
    """The dataset and the report sizes one scale measurement works at."""

    classes: int
    n_max: int
    n_min: int
    train: int               # training images in all
    test_per_class: int
    px: int                  # side of the JPEGs and of the training crop
    parents: int             # stage-1 run directories of the table / status test (x children each)
    children: int
    sweep: tuple[str, ...]   # `ltbench submit --dry-run --sweep` axes
    slope: bool              # also the quarter-size dataset, for the RSS slope


FULL = Shape(8142, 1000, 2, 437_513, 3, 16, parents=40, children=24, slope=True,
             sweep=("seed=" + ",".join(map(str, range(10))),
                    "stage2.train.lr=" + ",".join(f"{0.002 * (i + 1):g}" for i in range(10)),
                    "stage2.train.weight_decay=" + ",".join(f"{0.02 * (i + 1):g}" for i in range(10))))
QUICK = Shape(50, 40, 2, 400, 3, 16, parents=4, children=24, slope=False,
              sweep=("seed=0,1", "stage2.train.lr=0.002,0.004,0.006,0.008,0.01",
                     "stage2.train.weight_decay=" + ",".join(f"{0.02 * (i + 1):g}" for i in range(10))))


def class_counts(classes: int, n_max: int, n_min: int, total: int) -> list[int]:
    """Training counts from n_max (the first class) down to n_min (the last) that sum to `total` exactly:
    n_c = round(n_min + (n_max - n_min) (1 - c / (C - 1))^p), a head that falls fast into a long tail (iNaturalist's
    shape: a mean of 54 images a class between 1,000 and 2). p is the smallest power whose counts still reach
    `total` (bisection; the sum falls as p grows); the few images over come off the classes between the
    first and the last."""
    if not (classes >= 3 and n_max + (classes - 1) * n_min < total < classes * n_max):
        raise ValueError(f"{total} images cannot fall from {n_max} to {n_min} over {classes} classes")

    def counts(p: float) -> list[int]:
        return [round(n_min + (n_max - n_min) * (1 - c / (classes - 1)) ** p) for c in range(classes)]

    lo, hi = 0.0, 1.0
    while sum(counts(hi)) >= total:
        lo, hi = hi, 2 * hi
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sum(counts(mid)) >= total else (lo, mid)
    out = counts(lo)
    over = sum(out) - total
    for c in range(1, classes - 1):
        take = min(over, out[c] - n_min)
        out[c], over = out[c] - take, over - take
    assert sum(out) == total and out[0] == n_max and out[-1] == n_min
    return out


def write_tree(root: Path, counts: list[int], test_per_class: int, px: int) -> tuple[Path, Path]:
    """iNaturalist 2018's layout under root: images/train_val2018/Plantae/<class>/<id>.jpg and splits/
    train2018.json, val2018.json. Each class has 4 JPEGs of its colour with noise, written under every id."""
    from PIL import Image
    import io

    rng = np.random.default_rng(0)
    images, splits = root / "images", root / "splits"
    docs = {s: {"images": [], "annotations": [], "categories": [
        {"id": c, "name": f"Species {c}", "supercategory": "Plantae"} for c in range(len(counts))]}
        for s in ("train", "val")}
    k, t0 = 0, time.time()
    for c, n in enumerate(counts):
        colour = np.array([(c * 53) % 256, (c * 101) % 256, (c * 197) % 256], dtype=np.float64)
        variants = []
        for _ in range(4):
            buf = io.BytesIO()
            Image.fromarray(np.clip(colour + rng.normal(0, 25, (px, px, 3)), 0, 255).astype(np.uint8)).save(
                buf, format="JPEG", quality=85)
            variants.append(buf.getvalue())
        folder = images / "train_val2018" / "Plantae" / str(c)
        folder.mkdir(parents=True, exist_ok=True)
        for split, m in (("train", n), ("val", test_per_class)):
            for _ in range(m):
                rel = f"train_val2018/Plantae/{c}/{k}.jpg"
                (images / rel).write_bytes(variants[k % 4])
                docs[split]["images"].append({"id": k, "file_name": rel, "width": px, "height": px})
                docs[split]["annotations"].append({"id": k, "image_id": k, "category_id": c})
                k += 1
        if (c + 1) % 2000 == 0:
            log(f"scale: tree {c + 1}/{len(counts)} classes, {k:,} images, {time.time() - t0:.0f} s")
    splits.mkdir(parents=True, exist_ok=True)
    for split, doc in docs.items():
        (splits / f"{split}2018.json").write_text(json.dumps(doc))
    return images, splits


def write_cards(dest: Path, counts: list[int], test_per_class: int, px: int) -> Path:
    """A copy of datasets/ whose inat2018 card expects this tree (at full size: the real card's numbers) and trains
    at px (evaluation: resize to px + 2, centre crop px)."""
    import yaml

    dest.mkdir(parents=True, exist_ok=True)
    for p in (REPO / "datasets").glob("*.yaml"):
        shutil.copy(p, dest / p.name)
    card = yaml.safe_load((dest / "inat2018.yaml").read_text())
    c = len(counts)
    card.update(num_classes=c, image_size=px, eval_resize=px + 2,
                lt={"imbalance_factor": max(counts) / min(counts), "n_max": max(counts), "val_per_class": 0},
                expected={"train": {"samples": sum(counts), "classes": c, "max_per_class": max(counts),
                                    "min_per_class": min(counts)},
                          "test": {"samples": c * test_per_class, "classes": c, "max_per_class": test_per_class,
                                   "min_per_class": test_per_class}})
    (dest / "inat2018.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    return dest


def bare_linear(features: Path, batch_size: int, threads: int) -> float:
    """Samples/s of one epoch of a hand-written linear-layer loop on cached features: shuffled batches, CE, SGD with
    momentum and weight decay; nothing else."""
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    saved = ckpt.load(features)
    x, y = saved["x"], saved["y"]
    torch.manual_seed(0)
    layer = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.SGD(layer.parameters(), lr=0.01, momentum=0.9, weight_decay=0.1)
    order = torch.randperm(len(y))
    t0 = time.time()
    for i in range(0, len(y), batch_size):
        idx = order[i:i + batch_size]
        loss = F.cross_entropy(layer(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return len(y) / (time.time() - t0)


def copy_runs(stage1: Path, stage2: Path, root: Path, parents: int, children: int) -> int:
    """`parents` x (1 + `children`) run directories under root/scale/: copies of a real stage-1 run (its weight decay
    and seed varied) and of a real stage-2 run (its lr and weight decay varied) pointing at them, each with the
    config, result and metrics files `ltbench table` / `status` read, named by its own run hash."""
    results = {src: RunDir(src).read_result() for src in (stage1, stage2)}   # read once, written 1,000 times

    def place(raw: dict[str, Any], src: Path, result_edit: dict[str, Any]) -> tuple[Path, str]:
        cfg = stored_config(raw)
        d = root / cfg.name / cfg.run_name()
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.yaml").write_text(dump_yaml(cfg))
        RunDir(d).write_result({**results[src], **result_edit})  # type: ignore[typeddict-item]  # as a run writes it
        shutil.copy(src / "metrics.jsonl", d / "metrics.jsonl")
        return d, cfg.run_hash()

    n = 0
    raw1, raw2 = load_yaml(stage1 / "config.yaml"), load_yaml(stage2 / "config.yaml")
    for p in range(parents):
        r1 = {**raw1, "name": "scale", "seed": p % 10, "train": {**raw1["train"], "weight_decay": 1e-4 * (1 + p // 10)}}
        parent, h = place(r1, stage1, {})
        for k in range(children):
            s2 = raw2["stage2"]
            r2 = {**raw2, "name": "scale", "seed": r1["seed"], "parent": str(parent), "parent_hash": h,
                  "parent_run": f"scale/{parent.name}",
                  "stage2": {**s2, "train": {**s2["train"], "lr": 0.002 * (1 + k % 4),
                                             "weight_decay": 0.02 * (1 + k // 4)}}}
            place(r2, stage2, {"parent": str(parent)})
        n += 1 + children
    return n


def section_scale(s: Setting, root: Path, repeats: int) -> dict[str, Any]:
    """At iNaturalist 2018's size (8,142 classes, 437,513 training images of tiny JPEGs; --quick: 50 classes): prepare,
    a stage-1 epoch, stage-2 feature extraction and epoch against a bare linear loop, a cRT epoch with the class-aware
    sampler, MiSLAS's stage 2 reading class-aware batches from the shards, `table` / `status` over 1,000 run
    directories and `submit --dry-run` of a 1,010-run sweep, each with its
    wall time and peak RSS. One pass (`--repeats` does not apply: the full pass takes about 20 minutes)."""
    shape = QUICK if s.quick else FULL
    steps: dict[str, dict[str, float]] = {}
    figures: dict[str, float] = {}
    shards_root = root / "shards"
    counts = class_counts(shape.classes, shape.n_max, shape.n_min, shape.train)

    def env(cards: Path) -> dict[str, str]:
        return run_env(s.threads, LTBENCH_DATASETS_DIR=str(cards), LTBENCH_SHARDS=str(shards_root))

    def bench_cmd(*args: str) -> list[str]:
        return [sys.executable, "-m", "bench", *args]

    def step(name: str, cmd: list[str], cards: Path) -> dict[str, float]:
        log(f"scale: {name}")
        steps[name] = timed_process(cmd, env(cards), name)
        log(f"scale: {name}: {steps[name]['wall_s']:.1f} s, peak RSS {steps[name]['peak_rss_mib']:.0f} MiB")
        return steps[name]

    runtime = [f"runtime.threads={s.threads}", "runtime.progress=off", "wandb.mode=disabled"]
    stage1_args = ["model.name=resnet8_cifar", "train.epochs=1", "train.batch_size=512", "train.lr=0.2", *runtime]

    def prepare_and_train(tag: str, cnts: list[int]) -> tuple[Path, Path]:
        t0 = time.time()
        images, splits = write_tree(root / f"tree-{tag}", cnts, shape.test_per_class, shape.px)
        figures[f"tree {tag}: s to write"] = round(time.time() - t0, 1)
        cards = write_cards(root / f"cards-{tag}", cnts, shape.test_per_class, shape.px)
        shards = shards_root / "inat2018" if tag == "full" else root / f"shards-{tag}"
        step(f"prepare ({tag}: {sum(cnts):,} images)", bench_cmd(
            "prepare", "inat2018", "--src", str(images), "--splits", str(splits), "--out", str(shards)), cards)
        runs = root / f"runs-{tag}"
        step(f"stage-1 epoch ({tag})", bench_cmd(
            "run", str(CONFIGS / "paper" / "inat2018" / "wd.yaml"), f"data.shards={shards}", *stage1_args,
            "--runs-root", str(runs)), cards)
        run_dir = next((runs / "inat2018").glob("wd-*"))
        row = read_run(run_dir)[0][0]
        figures[f"stage-1 ({tag}): img/s of the training steps"] = row["images_per_s"]
        shutil.rmtree(images.parent)         # the tree is in the shards now
        return run_dir, cards

    parent, cards = prepare_and_train("full", counts)
    if shape.slope:
        quarter = class_counts(shape.classes, shape.n_max // 4, shape.n_min, shape.train // 4)
        prepare_and_train("quarter", quarter)
        d_rss = steps["stage-1 epoch (full)"]["peak_rss_mib"] - steps["stage-1 epoch (quarter)"]["peak_rss_mib"]
        figures["stage-1 peak RSS slope, MiB per 100k training images"] = (
            d_rss / ((sum(counts) - sum(quarter)) / 1e5))

    wb = str(CONFIGS / "paper" / "inat2018" / "wb.yaml")
    stage2 = [f"parent={parent}", "stage2.train.epochs=1", *runtime, "--runs-root", str(root / "runs-stage2")]
    step("WB stage 2 (extracts the features)", bench_cmd("run", wb, *stage2), cards)
    if not s.quick:
        step("WB stage 2 (reuses them)", bench_cmd("run", wb, "stage2.train.lr=0.02", *stage2), cards)
        figures["feature extraction s (first minus second stage-2 run)"] = (
            steps["WB stage 2 (extracts the features)"]["wall_s"] - steps["WB stage 2 (reuses them)"]["wall_s"])
    child = sorted((root / "runs-stage2" / "inat2018").glob("wb-*"))[0]
    ltbench_rate = read_run(child)[0][0]["images_per_s"]
    bare = [bare_linear(parent / "features" / "train.pt", 512, s.threads) for _ in range(3)]
    figures["stage 2 on cached features: ltbench samples/s"] = ltbench_rate
    figures["bare linear loop on the same features: samples/s (median of 3)"] = float(np.median(bare))
    ratio = ltbench_rate / float(np.median(bare))
    figures["stage 2 / bare linear loop"] = ratio
    if not s.quick:    # the class-aware sampler on cached features has its own tests; here it is its size
        step("cRT epoch, class-aware sampler", bench_cmd(
            "run", wb, "method=crt", "stage2.reinit_classifier=true", "stage2.train.sampler=class_aware",
            "stage2.train.loss.name=ce", "stage2.maxnorm=false", "stage2.train.weight_decay=5e-4", *stage2), cards)
        crt_row = read_run(next((root / "runs-stage2" / "inat2018").glob("crt-*")))[0][0]
        figures["cRT: samples in the epoch"] = max(counts) * len(counts)
        figures["cRT: samples/s of the training steps"] = crt_row["images_per_s"]

    # MiSLAS's stage 2 from the shards: class-aware batches read by random access (the manifest's offsets), the
    # stage-1 transform, BatchNorm re-estimated in train mode, an epoch cut after ceil(N / B) + 1 batches
    step("MiSLAS stage 2 from the shards, class-aware batches by random access", bench_cmd(
        "run", wb, "method=mislas", "stage2.lws=true", "stage2.maxnorm=false", "stage2.lws_rows_lr_factor=0.05",
        "stage2.bn_mode=train", "stage2.augment=rrc_flip_jitter", "stage2.train.sampler=class_aware",
        "stage2.train.epoch_length=dataset_plus_one", "stage2.train.loss.name=las", "stage2.train.loss.las_head=0.3",
        "stage2.train.loss.las_tail=0.0", "stage2.train.weight_decay=1e-4", *stage2), cards)
    mislas = read_run(next((root / "runs-stage2" / "inat2018").glob("mislas-*")))[0][0]
    figures["MiSLAS stage 2: samples/s of the training steps (random access + backbone forward)"] = (
        mislas["images_per_s"])

    many = root / "runs-many"
    n_runs = copy_runs(parent, child, many, shape.parents, shape.children)
    figures["run directories for table / status"] = n_runs
    table = step(f"table over {n_runs} runs", bench_cmd("table", str(many), "--out", str(root / "table.md")), cards)
    status = step(f"status over {n_runs} runs", bench_cmd("status", "scale", "--runs-root", str(many)), cards)
    sweep_runs = math.prod(len(a.split("=", 1)[1].split(",")) for a in shape.sweep)
    dry = step(f"submit --dry-run, {sweep_runs} stage-2 runs + their parents", bench_cmd(
        "submit", wb, "--dry-run", *(x for a in shape.sweep for x in ("--sweep", a)),
        "--runs-root", str(root / "runs-sweep")), cards)
    met = {"table <= 10 s": table["wall_s"] <= 10, "status <= 5 s": status["wall_s"] <= 5,
           "dry-run <= 10 s": dry["wall_s"] <= 10, "stage 2 >= 0.8 x bare": ratio >= 0.8}
    return {"steps": steps, "figures": figures, "targets": met, "shape": dataclasses.asdict(shape),
            "target": "; ".join(met), "met": all(met.values()) if not s.quick else None}


def render(sec: dict[str, Any]) -> list[str]:
    """The scale section of perf.md: a row per step (wall, peak RSS), then the figures and the targets."""
    lines = ["| step | wall s | peak RSS MiB |", "|---|---|---|"]
    lines += [f"| {k} | {v['wall_s']:.1f} | {v['peak_rss_mib']:.0f} |" for k, v in sec["steps"].items()]
    lines += ["", "| figure | value |", "|---|---|"]
    lines += [f"| {k} | {v:,.4g} |" if isinstance(v, float) else f"| {k} | {v:,} |" for k, v in sec["figures"].items()]
    lines += ["", "| target | met |", "|---|---|"]
    lines += [f"| {k} | {'yes' if v else 'NO'} |" for k, v in sec["targets"].items()]
    return lines + [""]
