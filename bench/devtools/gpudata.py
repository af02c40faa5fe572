"""The GPU check's data: photo-like JPEGs, their `ltbench prepare` shards, and part 1 (the JPEG pipeline on the CPU).

Owns what the check decodes: a synthetic ImageNet-LT-shaped tree of 500x375 quality-90 JPEGs whose decoding costs
what a photo's does, written as shards twice (originals, and re-encoded with `--resize-shorter 256`), and the
shard loader's images/s on them (per core, then with the workers the machine allows). The models part trains
from the same shards (bench/devtools/gpucheck.py).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from bench.experiment import load_config
from bench.data.lt import build_lt_data
from bench.data.prepare import prepare
from bench.data.shards.loader import ShardLoader
from bench.paths import repo_or_package_dir
from bench.runtime.progress import log

JPEG = repo_or_package_dir("configs") / "perf" / "gpu_jpeg.yaml"    # the JPEG-shard runs and loader rates


# --- realistic JPEGs --------------------------------------------------------------------------

def photo_like(rng: np.random.Generator, width: int = 500, height: int = 375) -> np.ndarray:
    """A uint8 RGB image whose JPEG costs what a photo's does: smooth colour fields at three scales,
    a few hard-edged shapes and sensor-like noise (a flat or pure-noise image would decode much faster
    or slower than ImageNet's). 500x375 q90 gives ~80-100 kB, ImageNet's JPEGs average ~110 kB."""
    from PIL import Image, ImageDraw

    img = rng.uniform(60, 200, 3).astype(np.float32)[None, None, :] * np.ones((height, width, 1), np.float32)
    for cells, amp in ((4, 50.0), (24, 25.0), (120, 14.0)):
        small = rng.normal(0, 1, (max(2, cells * height // width), cells, 3)).astype(np.float32)
        img += amp * np.stack([np.asarray(Image.fromarray(small[..., c]).resize((width, height), Image.BICUBIC))
                               for c in range(3)], -1)
    pil = Image.fromarray(np.clip(img + rng.normal(0, 5, (height, width, 1)), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        box = (x0, y0, x0 + int(rng.integers(20, width // 2)), y0 + int(rng.integers(20, height // 2)))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    return np.asarray(pil)


def _write_photo(job: tuple[str, int, int, int]) -> None:
    from PIL import Image

    path, seed, width, height = job
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo_like(np.random.default_rng(seed), width, height)).save(path, format="JPEG", quality=90)


def photo_tree(root: Path, counts: dict[str, int], classes: int = 1000, size: tuple[int, int] = (500, 375),
               workers: int = 1) -> Path:
    """An ImageNet-LT-shaped source tree (ILSVRC layout + OLTR split files) of photo-like JPEGs; labels
    cycle through `classes`. Returns the image root; the split files are in root/splits."""
    images = root / "images"
    jobs, lines = [], {}
    k = 0
    for split, n in counts.items():
        lines[split] = []
        for i in range(n):
            c = i % classes
            rel = f"val/ILSVRC2012_val_{k:08d}.JPEG" if split == "test" else f"train/n{c:08d}/n{c:08d}_{k}.JPEG"
            jobs.append((str(images / rel), k, *size))
            lines[split].append(f"{rel} {c}")
            k += 1
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            pool.map(_write_photo, jobs, chunksize=16)
    else:
        for job in jobs:
            _write_photo(job)
    (root / "splits").mkdir(parents=True, exist_ok=True)
    for split, ls in lines.items():
        (root / "splits" / f"ImageNet_LT_{split}.txt").write_text("\n".join(ls) + "\n")
    return images


def jpeg_shards(work: Path, counts: dict[str, int], workers: int, size: tuple[int, int] = (500, 375),
                resize_shorter: int = 256) -> dict[str, Path]:
    """The photo-like tree as `ltbench prepare imagenet-lt` shards: originals and re-encoded (shorter side
    `resize_shorter`, quality 90). The tree is not ImageNet-LT, so the card check is passed with
    --allow-deviation (recorded in the manifests)."""

    src = work / "photos"
    if not (src / "splits").is_dir():
        t0 = time.time()
        photo_tree(src, counts, size=size, workers=workers)
        log(f"gpu-check: {sum(counts.values())} photo-like {size[0]}x{size[1]} JPEGs in {time.time() - t0:.0f} s")
    out = {"original": work / "shards-original", f"shorter-{resize_shorter}": work / f"shards-{resize_shorter}"}
    for name, path in out.items():
        prepare("imagenet-lt", path, src=src / "images", splits_dir=src / "splits", samples_per_shard=500,
                workers=workers, resize_shorter=None if name == "original" else resize_shorter,
                jpeg_quality=None if name == "original" else 90, allow_deviation=True, progress="off")
    return out


# --- 1. the pipeline on the CPU -----------------------------------------------------------------

def loader_rate(shards: Path, train: bool, batch: int, workers: int, max_images: int,
                extra: Sequence[str] = ()) -> dict[str, float]:
    """Images/s of the shard loader alone: decode + crop (+ flip) + uint8 batch, no normalisation (that
    runs on the GPU), with `workers` decoding processes (0 = this process, one thread: per core)."""

    streams = max(1, workers)
    cfg = load_config(JPEG, [f"data.shards={shards}", f"data.streams={streams}", *extra])
    data = build_lt_data(cfg.data)
    split = data.train if train else data.test
    spec = data._spec(split, train, batch, cfg.seed, cfg.data.augment if train else "none", False)
    loader = ShardLoader(spec, None, workers)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        n, t0 = 0, time.time()
        for x, y in loader.epoch(0):  # noqa: B007 (the last batch's x is read below)
            n += len(y)
            if n >= max_images:
                break
        elapsed = time.time() - t0
    finally:
        torch.set_num_threads(threads)
    return {"images_per_s": n / elapsed, "images": n, "shape": list(x.shape[1:]), "dtype": str(x.dtype)}


def section_pipeline(shards: dict[str, Path], cores: int, max_images: int, extra: Sequence[str] = ()) -> dict[str, Any]:
    rows = []
    for name, path in shards.items():
        for train in (True, False):
            r = loader_rate(path, train, 64, 0, max_images, extra)
            rows.append({"shards": name, "path": "train: RRC + flip" if train else "eval: resize + centre crop",
                         "workers": 0, **r, "images_per_s_per_core": r["images_per_s"]})
            log(f"gpu-check: pipeline {name} {rows[-1]['path']}: {r['images_per_s']:.0f} img/s on one core")
    workers = max(1, cores - 1)
    if cores > 2:
        name = [k for k in shards if k != "original"][0]
        r = loader_rate(shards[name], True, 256, workers, max_images * workers, extra)
        rows.append({"shards": name, "path": "train: RRC + flip", "workers": workers, **r,
                     "images_per_s_per_core": r["images_per_s"] / workers})
        log(f"gpu-check: pipeline {name} with {workers} workers: {r['images_per_s']:.0f} img/s")
    best = max(r["images_per_s_per_core"] for r in rows if r["workers"] == 0 and r["shards"] != "original"
               and r["path"].startswith("train"))
    return {"rows": rows, "target": ">= 300 training images/s per core at 224 px from the re-encoded shards",
            "met": best >= 300}
