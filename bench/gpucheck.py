"""The one-shot GPU check (`make gpu-check`, `ltbench perf --only gpu`): what ltbench delivers on a GPU.

On a bare one-GPU machine whose Python has torch, torchvision and timm (README "The GPU check" says how
to carry the rest), in a few minutes, and written as perf.json / perf.md:

1. the JPEG pipeline per core: realistic 500x375 JPEGs (quality 90) written by `ltbench prepare`'s own
   writer, and the same set re-encoded with `--resize-shorter 256`; images/s of one core for training
   (decode + RandomResizedCrop(224) + flip + uint8 tensor) and evaluation (resize 256, centre crop 224),
   then the loader's images/s with the workers the machine allows;
2. per model (ResNet-50, ResNeXt-50; 224 px, bf16, channels_last; eager, then torch.compile): the bare
   model's images/s on batches already on the GPU; ltbench's trainer (`ltbench run`, in-memory synthetic
   images, the same model and batch) as a ratio of it (target >= 0.97); ltbench's trainer from the
   re-encoded JPEG shards as a ratio of its synthetic run (target >= 0.95); GPU memory high-water marks;
3. end to end on a tiny shard set: stage 1 killed after its first checkpoint and resumed on the GPU
   (the numbers must equal an uninterrupted run's), stage 2 on cached features, `ltbench table`, and
   the same stage 1 under `torchrun --nproc_per_node <GPUs>` (NCCL when there are several).

Without a GPU only part 1 runs; the rest says "no GPU". Every item has a time budget: what does not fit
is reported as skipped, never silently left out. Items run in the order above, most informative first.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.config import load_config
from bench.data.lt import build_lt_data
from bench.data.prepare import prepare
from bench.data.shards.loader import ShardLoader
from bench.models import build_model
from bench.paths import repo_or_package_dir
from bench.progress import log
from bench.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]   # the folder holding the package: the cwd of its subprocesses
CONFIGS = repo_or_package_dir("configs")
SYNTHETIC = CONFIGS / "perf" / "gpu_synthetic.yaml"
JPEG = CONFIGS / "perf" / "gpu_jpeg.yaml"
MODELS = ("resnet50", "resnext50_32x4d")


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
                extra: list[str] = ()) -> dict[str, float]:
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
        for x, y in loader.epoch(0):
            n += len(y)
            if n >= max_images:
                break
        elapsed = time.time() - t0
    finally:
        torch.set_num_threads(threads)
    return {"images_per_s": n / elapsed, "images": n, "shape": list(x.shape[1:]), "dtype": str(x.dtype)}


def section_pipeline(shards: dict[str, Path], cores: int, max_images: int, extra: list[str] = ()) -> dict[str, Any]:
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


# --- 2. models on the GPU -----------------------------------------------------------------------

def bare_rate(model_name: str, batch: int, compile_: bool, device: str = "cuda", image: int = 224,
              num_classes: int = 100, steps: int = 30, warmup: int = 10) -> dict[str, float]:
    """A hand-written loop: timm model, bf16 autocast, channels_last, SGD, inputs already on the device."""

    dev = torch.device(device)
    torch.backends.cudnn.benchmark = dev.type == "cuda"
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    model = build_model(model_name, num_classes=num_classes, in_chans=3).to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-5)
    step_fn = torch.compile(model) if compile_ else model
    x = torch.randn(batch, 3, image, image, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch,), device=dev)
    t_start = time.time()
    for i in range(warmup + steps):
        if i == warmup:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0, warm_s = time.time(), time.time() - t_start
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(step_fn(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    out = {"images_per_s": steps * batch / (time.time() - t0), "warmup_s": round(warm_s, 1)}
    if dev.type == "cuda":
        out["gpu_mem_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    del model, opt, step_fn
    return out


def run_ltbench(config: Path, overrides: list[str], run_dir: Path, torchrun: int = 0, timeout: float = 600,
                env: dict[str, str] | None = None, kill_after_checkpoint: bool = False) -> dict[str, Any]:
    """`ltbench run CONFIG OVERRIDES --run-dir RUN_DIR` in a subprocess (or torchrun of it); its metrics rows and
    result. kill_after_checkpoint: SIGKILL it as soon as checkpoints/last.pt exists (a preempted job)."""
    args = [str(config), *overrides, "--run-dir", str(run_dir)]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"]
           if torchrun else [sys.executable]) + ["-m", "bench", "run", *args]
    t0 = time.time()
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled", **(env or {})}
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=full_env, start_new_session=True)
    if kill_after_checkpoint:
        while proc.poll() is None and not (run_dir / "checkpoints" / "last.pt").is_file():
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return {"killed": True, "wall_s": time.time() - t0}
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise RuntimeError(f"gpu-check: {' '.join(cmd[-8:])} ran past {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"gpu-check: ltbench run failed: {output.strip().splitlines()[-3:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    result = RunDir(run_dir).read_result()
    return {"rows": rows, "result": result, "wall_s": time.time() - t0, "log": output}


def steady_rate(rows: list[dict[str, Any]]) -> float:
    """Images/s of the epochs after the first (which pays cuDNN autotuning, compilation, worker start)."""
    later = [r["images_per_s"] for r in rows[1:]] or [r["images_per_s"] for r in rows]
    return statistics.median(later)


def trainer_rates(model_name: str, compile_: bool, work: Path, jpeg: Path | None, device: str = "cuda",
                  extra: list[str] = (), synthetic_extra: list[str] = (), jpeg_extra: list[str] = ()) -> dict[str, Any]:
    """ltbench's trainer on in-memory synthetic images and (when `jpeg` is given) from the JPEG shards."""
    common = [f"model.name={model_name}", f"runtime.compile={str(compile_).lower()}", f"runtime.device={device}",
              *extra]
    tag = f"{model_name}-{'compiled' if compile_ else 'eager'}"
    synth = run_ltbench(SYNTHETIC, [*common, *synthetic_extra], work / f"run-synthetic-{tag}")
    out: dict[str, Any] = {"synthetic": {"images_per_s": steady_rate(synth["rows"]),
                                         "epochs": [r["images_per_s"] for r in synth["rows"]],
                                         "gpu_mem_gib": synth["rows"][-1].get("gpu_mem_gib")}}
    decoders = ("cpu", "gpu") if device == "cuda" else ("cpu",)     # nvJPEG needs the GPU
    if compile_:
        decoders = decoders[-1:]     # compiled steps are the fastest: only the faster decoder can keep up
    for decode in decoders if jpeg is not None else ():
        # decode=cpu: PIL in the workers; decode=gpu: the workers read the tar, nvJPEG decodes on the device
        shards = run_ltbench(JPEG, [*common, f"data.shards={jpeg}", f"data.decode={decode}", *jpeg_extra],
                             work / f"run-jpeg-{decode}-{tag}")
        out["jpeg" if decode == "cpu" else "jpeg_gpu_decode"] = {
            "images_per_s": steady_rate(shards["rows"]), "epochs": [r["images_per_s"] for r in shards["rows"]],
            "gpu_mem_gib": shards["rows"][-1].get("gpu_mem_gib"), "test_all": shards["result"]["metrics"]["all"]}
    return out


def section_models(work: Path, jpeg: Path | None, deadline: float, models: tuple[str, ...] = MODELS,
                   device: str = "cuda", bare_kw: dict[str, Any] | None = None, extra: list[str] = (),
                   synthetic_extra: list[str] = (), jpeg_extra: list[str] = (), batch: int = 256) -> dict[str, Any]:
    rows, skipped = [], []
    took: dict[bool, float] = {}      # seconds the last item of each kind took: does the next one fit?
    # eager first (both models), then compiled: the figures that matter most come before the budget ends
    for compile_ in (False, True):
        for name in models:
            label = f"{name}, {'torch.compile' if compile_ else 'eager'}"
            if time.time() + took.get(compile_, 0.0) > deadline:
                skipped.append(label)
                continue
            t0 = time.time()
            bare = bare_rate(name, batch, compile_, device, **(bare_kw or {}))
            tr = trainer_rates(name, compile_, work, jpeg, device, extra, synthetic_extra,
                               jpeg_extra)
            row = {"model": label, "bare": bare, **tr,
                   "trainer / bare": tr["synthetic"]["images_per_s"] / bare["images_per_s"]}
            for k in ("jpeg", "jpeg_gpu_decode"):
                if k in tr:
                    row[f"{k} / synthetic"] = tr[k]["images_per_s"] / tr["synthetic"]["images_per_s"]
            took[compile_] = time.time() - t0
            row["section_s"] = round(took[compile_], 1)
            rows.append(row)
            log(f"gpu-check: {label}: bare {bare['images_per_s']:.0f} img/s, ltbench {tr['synthetic']['images_per_s']:.0f} "
                f"({row['trainer / bare']:.3f})" + "".join(
                    f", {k} {tr[k]['images_per_s']:.0f} ({row[f'{k} / synthetic']:.3f})"
                    for k in ("jpeg", "jpeg_gpu_decode") if k in tr))
    # the JPEG target: the better of the two decoders (the config field picks it per machine)
    met = all(r["trainer / bare"] >= 0.97 for r in rows) and all(
        max(r.get("jpeg / synthetic", 1), r.get("jpeg_gpu_decode / synthetic", 0)) >= 0.95 for r in rows)
    return {"rows": rows, "skipped_items": skipped, "met": met if rows else None,
            "target": "ltbench trainer >= 0.97 x bare model (synthetic); from JPEG shards >= 0.95 x synthetic"}


# --- 3. end to end ------------------------------------------------------------------------------

def section_end_to_end(work: Path, device: str = "cuda", gpus: int = 1) -> dict[str, Any]:
    """Tiny synthetic shards: stage 1 killed after its first checkpoint and resumed (numbers equal to an
    uninterrupted run's), stage 2 on cached features, the table, and stage 1 under torchrun."""

    smoke = CONFIGS / "smoke.yaml"
    shards = work / "smoke-shards"
    prepare("synthetic", shards, data_overrides=["imbalance_factor=10", "val_per_class=10",
                                                  "synthetic.train_per_class=200", "synthetic.test_per_class=40",
                                                  "synthetic.image_size=16"], samples_per_shard=500, progress="off")
    runs = work / "e2e-runs"
    common = [f"data.shards={shards}", f"runtime.device={device}", "runtime.checkpoint_every_steps=5",
              "runtime.plot=false", "wandb.mode=disabled"]
    out: dict[str, Any] = {}
    other = work / "e2e-other"        # runs of the same config kept out of the table (it would count duplicates)
    ref = run_ltbench(smoke, common, runs / "smoke" / "uninterrupted")
    resumed_dir = other / "resumed"
    run_ltbench(smoke, common, resumed_dir, kill_after_checkpoint=True)
    resumed = run_ltbench(smoke, common, resumed_dir)
    same = ref["result"]["metrics"] == resumed["result"]["metrics"]
    out["resume"] = {"uninterrupted": ref["result"]["metrics"], "killed and resumed": resumed["result"]["metrics"],
                     "equal": same, "resumed_at": next((ln for ln in resumed["log"].splitlines() if "resuming" in ln), None)}
    stage2 = run_ltbench(CONFIGS / "smoke_stage2.yaml", [*common[1:], f"parent={runs / 'smoke' / 'uninterrupted'}"],
                         runs / "smoke" / "stage2")
    out["stage2"] = {"metrics": stage2["result"]["metrics"], "cached_features": "extracting" in stage2["log"].lower()
                     or (runs / "smoke" / "uninterrupted" / "features").is_dir()}
    table = subprocess.run([sys.executable, "-m", "bench", "table", str(runs / "smoke")], cwd=REPO,
                           capture_output=True, text=True)
    out["table"] = table.stdout.strip() if table.returncode == 0 else f"failed: {table.stderr.strip()[-300:]}"
    tr = run_ltbench(smoke, common, other / f"torchrun-{gpus}", torchrun=gpus)
    out["torchrun"] = {"nproc_per_node": gpus, "backend": "nccl" if gpus > 1 else "none (one process: no process group)",
                       "metrics": tr["result"]["metrics"], "world_size": tr["result"]["world_size"]}
    out["met"] = bool(same and table.returncode == 0)
    out["target"] = "a run killed after its first checkpoint and resumed on the device ends with the same numbers"
    return out


# --- the check ----------------------------------------------------------------------------------

PARTS = ("pipeline", "models", "end_to_end")


def gpu_check(work: Path, budget_s: float = 420, tiny: bool = False, device: str | None = None,
              parts: tuple[str, ...] = PARTS, models: tuple[str, ...] = MODELS) -> dict[str, Any]:
    """`parts` of the check within `budget_s` seconds (a part that is not asked for is reported as such).
    tiny = small images and models (checks the code path); device = where the model parts run (default:
    cuda when present, else they are skipped; "cpu" rehearses the GPU run on the CPU)."""
    t_start = time.time()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cuda = torch.cuda.is_available()
    out: dict[str, Any] = {"cores": cores, "gpu": torch.cuda.get_device_name(0) if cuda else None,
                           "gpus": torch.cuda.device_count() if cuda else 0}
    if tiny:
        counts, size, images = {"train": 64, "val": 8, "test": 16}, (64, 48), 32
        extra = ["data.image_size=32", "data.eval_resize=36"]
    else:
        counts, size, images = {"train": 12800, "val": 500, "test": 500}, (500, 375), 1024
        extra = []
    not_asked = {"skipped": "not asked for (--gpu-parts)", "met": None}
    shards = jpeg_shards(work, counts, max(1, cores - 1 if cuda else cores), size)
    out["pipeline"] = section_pipeline(shards, cores, images, extra) if "pipeline" in parts else not_asked
    device = device or ("cuda" if cuda else None)
    if device is None:
        out["models"] = out["end_to_end"] = {"skipped": "no GPU", "met": None}
        return out
    deadline = t_start + budget_s - (90 if "end_to_end" in parts else 0)
    if "models" not in parts:
        out["models"] = not_asked
    elif tiny:
        small = ["train.batch_size=16", "train.epochs=2", "runtime.threads=1", "train.amp=none",
                 "runtime.channels_last=false", "runtime.cudnn_benchmark=false"]
        out["models"] = section_models(work, shards["shorter-256"], deadline, ("resnet8_cifar",), device,
                                       {"image": 32, "steps": 2, "warmup": 1}, small,
                                       ["data.synthetic.image_size=32", "data.synthetic.train_per_class=4"],
                                       [*extra, "data.streams=1"], 16)
    else:
        # the JPEG run decodes on every core but the one that feeds the GPU (workers divide data.streams)
        out["models"] = section_models(work, shards["shorter-256"], deadline, models, device=device,
                                       jpeg_extra=[f"data.streams={max(1, cores - 1)}"])
    out["end_to_end"] = section_end_to_end(work, device, max(1, out["gpus"])) if "end_to_end" in parts else not_asked
    out["check_s"] = round(time.time() - t_start, 1)
    return out


def render(sec: dict[str, Any]) -> list[str]:
    """Markdown lines of the check's report (perf.md's gpu section)."""
    lines = [f"Machine: {sec.get('gpu') or 'no GPU'} x {sec.get('gpus', 0)}, {sec['cores']} cores; "
             f"check took {sec.get('check_s', '-')} s.", "", "### JPEG pipeline (CPU)", ""]
    pipe = sec["pipeline"]
    if pipe.get("rows"):
        lines += ["| shards | path | workers | images/s | per core | batch |", "|---|---|---|---|---|---|"]
    for r in pipe.get("rows", []):
        lines.append(f"| {r['shards']} | {r['path']} | {r['workers']} | {r['images_per_s']:.0f} | "
                     f"{r['images_per_s_per_core']:.0f} | {'x'.join(map(str, r['shape']))} {r['dtype']} |")
    lines += ["", f"target: {pipe['target']}: {'met' if pipe['met'] else 'not met'}" if "target" in pipe else
              f"skipped: {pipe.get('skipped')}", "", "### Models", ""]
    models = sec["models"]
    if "skipped" in models:
        lines += [f"skipped: {models['skipped']}", ""]
    else:
        lines += ["| model | bare img/s | ltbench synthetic img/s | ratio | JPEG, decode=cpu img/s | ratio | "
                  "JPEG, decode=gpu img/s | ratio | GPU GiB (bare / synthetic / JPEG) | s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in models["rows"]:
            cells = [r["model"], f"{r['bare']['images_per_s']:.0f}", f"{r['synthetic']['images_per_s']:.0f}",
                     f"**{r['trainer / bare']:.3f}**"]
            for k in ("jpeg", "jpeg_gpu_decode"):
                cells += ([f"{r[k]['images_per_s']:.0f}", f"**{r[f'{k} / synthetic']:.3f}**"] if k in r else ["-", "-"])
            mem = [r["bare"].get("gpu_mem_gib"), r["synthetic"].get("gpu_mem_gib"), (r.get("jpeg") or {}).get("gpu_mem_gib")]
            cells += [" / ".join(str(m) for m in mem if m is not None) or "-", str(r["section_s"])]
            lines.append("| " + " | ".join(cells) + " |")
        if models.get("skipped_items"):
            lines += ["", f"skipped (time budget): {', '.join(models['skipped_items'])}"]
        met = models.get("met")
        lines += ["", f"target: {models['target']}: " + ("met" if met else "not met" if met is False else "n/a"), ""]
    e2e = sec["end_to_end"]
    lines += ["### End to end", ""]
    if "skipped" in e2e:
        lines += [f"skipped: {e2e['skipped']}", ""]
    else:
        res = e2e["resume"]
        lines += [f"- stage 1 killed after its first checkpoint and resumed: test {res['killed and resumed']['all']:.2f} "
                  f"vs uninterrupted {res['uninterrupted']['all']:.2f}: {'equal' if res['equal'] else 'DIFFERENT'} "
                  f"({res['resumed_at']})",
                  f"- stage 2 on cached features: test all {e2e['stage2']['metrics']['all']:.2f}",
                  f"- torchrun --nproc_per_node {e2e['torchrun']['nproc_per_node']}: world size "
                  f"{e2e['torchrun']['world_size']}, backend {e2e['torchrun']['backend']}, test all "
                  f"{e2e['torchrun']['metrics']['all']:.2f}", "", "```", e2e["table"], "```", ""]
    return lines
