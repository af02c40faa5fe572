"""`ltbench perf`: measured speed of the trainer, the data pipeline, stage 2, DDP and the demo.

Every figure is a ratio against a baseline measured in the same invocation, repeats interleaved
(baseline, candidate, baseline, ...) so that drift of a shared machine hits both; the report quotes
medians. Runs use the real code paths: `ltbench run` subprocesses (read back from metrics.jsonl's
train_time_s, the training steps without evaluation), the real shard loader, torchrun for DDP.

Settings: the Fashion-MNIST-LT demo (resnet8_cifar, batch 64, 14,837 training images), or --quick:
the synthetic smoke set (a tiny run, for the test that the command works).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.config import load_config
from bench.data.lt import build_lt_data
from bench.data.prepare import prepare
from bench.devtools.gpucheck import MODELS as GPU_MODELS
from bench.devtools.gpucheck import PARTS as GPU_PARTS
from bench.devtools.gpucheck import gpu_check
from bench.devtools.gpucheck import render as render_gpu
from bench.methods.classifiers import make_model
from bench.paths import repo_or_package_dir
from bench.runtime.process import keep_freed_memory
from bench.runtime.progress import log
from bench.runtime.rundir import RunDir

REPO = Path(__file__).resolve().parents[2]   # the folder holding the package: the cwd of the timed subprocesses
CONFIGS = repo_or_package_dir("configs")
SECTIONS = ("trainer", "data", "stage2", "ddp", "demo", "gpu", "wbref")
WB_REFERENCE = CONFIGS / "fmnist_wb_reference" / "naive.yaml"


class Setting:
    """The config the measurements train: its file, overrides and threads."""

    def __init__(self, quick: bool, threads: int) -> None:
        self.quick, self.threads = quick, threads
        if quick:
            self.config = CONFIGS / "smoke.yaml"
            self.stage2 = CONFIGS / "smoke_stage2.yaml"
            self.dataset, self.train = "synthetic", ["train.epochs=1"]
            self.prepare_args = ["imbalance_factor=10", "val_per_class=10", "synthetic.train_per_class=200",
                                 "synthetic.test_per_class=40", "synthetic.image_size=16"]
        else:
            self.config = CONFIGS / "demo" / "fmnist_naive.yaml"
            self.stage2 = CONFIGS / "demo" / "fmnist_wb.yaml"
            self.dataset, self.train = "fashion-mnist", ["train.epochs=1"]
            self.prepare_args = []
        self.runtime = ["runtime.progress=off", "runtime.plot=false", "wandb.mode=disabled"]
        self.gpu_budget_s = 420.0
        self.gpu_parts: tuple[str, ...] = GPU_PARTS
        self.gpu_models: tuple[str, ...] = GPU_MODELS
        self.wb_reference: Path | None = None     # a clone of the WB reference code (section wbref)
        self.overrides = self.train + self.runtime


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _env(threads: int, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "disabled", **extra}


def ltbench_run(setting: Setting, root: Path, extra: list[str], config: Path | None = None,
                torchrun: int = 0) -> dict[str, Any]:
    """One `ltbench run` (or torchrun of it) in a fresh run directory; its first epoch's row and wall time."""
    run_dir = Path(tempfile.mkdtemp(dir=root, prefix="run-"))
    base = setting.overrides if config is None else setting.runtime    # a stage-2 config inherits `train`
    # torchrun: the processes share the threads of the 1-process baseline; `extra` may set its own
    threads = f"runtime.threads={max(1, setting.threads // max(1, torchrun))}"
    args = [str(config or setting.config), *base, threads, *extra, "--run-dir", str(run_dir)]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}",
               "-m", "bench", "run", *args]
    else:
        cmd = [sys.executable, "-m", "bench", "run", *args]
    t0 = time.time()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                       env=_env(max(1, setting.threads // max(1, torchrun))))
    if r.returncode != 0:
        raise RuntimeError(f"perf: {' '.join(cmd[-6:])} failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    result = RunDir(run_dir).read_result()
    return {"row": rows[0], "rows": rows, "result": result, "wall_s": time.time() - t0, "dir": run_dir}


def bare_loop(config: str, overrides: list[str], threads: int) -> dict[str, float]:
    """A hand-written PyTorch loop: the same model, data (in memory, no augmentation), batch, optimiser
    and schedule as `ltbench run`, one epoch; images/s of the training steps. The process is set up as
    ltbench's: its threads, and glibc's malloc settings unless runtime.keep_freed_memory=false."""
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    cfg = load_config(config, overrides)
    if cfg.runtime.keep_freed_memory:
        keep_freed_memory()
    torch.manual_seed(cfg.seed)
    data = build_lt_data(cfg.data)
    model = make_model(cfg, data)
    t = cfg.train
    opt = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    x_all, y_all = data.train.x, data.train.y
    n, b = len(y_all), t.batch_size
    steps = -(-n // b)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps * t.epochs)
    norm = data.normalizer()
    mean, std = norm.mean, norm.std                           # (x - 255 mean) / (255 std), as ltbench
    model.train()
    order = torch.randperm(n)
    t0 = time.time()
    for s in range(steps):
        idx = order[s * b:(s + 1) * b]
        x = (x_all[idx].float() - mean) / std
        loss = F.cross_entropy(model(x), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    elapsed = time.time() - t0
    return {"images_per_s": n / elapsed, "train_time_s": elapsed, "images": n}


def run_bare(setting: Setting, extra: list[str]) -> dict[str, float]:
    cmd = [sys.executable, "-m", "bench.devtools.perf", "bare", str(setting.config), str(setting.threads),
           *setting.overrides, *extra]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=_env(setting.threads))
    if r.returncode != 0:
        raise RuntimeError(f"perf: bare loop failed: {r.stderr.strip().splitlines()[-1:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def rows(res: dict[str, list[float]]) -> list[list[Any]]:
    """[label, median, repeats] per measurement, for the report."""
    return [[k, _median(v), v] for k, v in res.items()]


def interleaved(repeats: int, fns: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(repeats):
        for k, fn in fns.items():
            out[k].append(fn())
            log(f"perf: repeat {i + 1}/{repeats} {k}: {out[k][-1]:.1f}")
    return out


def section_trainer(s: Setting, root: Path, repeats: int) -> dict[str, Any]:
    """ltbench's training step vs a bare loop (no augmentation in either), and what crop+flip costs; the bare
    loop also with glibc's malloc defaults (what runtime.keep_freed_memory saves)."""
    none = ["data.augment=none"]
    res = interleaved(repeats, {
        "bare loop": lambda: run_bare(s, none)["images_per_s"],
        "bare loop, glibc malloc defaults": lambda: run_bare(s, [*none, "runtime.keep_freed_memory=false"])["images_per_s"],
        "ltbench": lambda: ltbench_run(s, root, none)["row"]["images_per_s"],
        "ltbench + crop/flip": lambda: ltbench_run(s, root, [])["row"]["images_per_s"],
    })
    med = {k: _median(v) for k, v in res.items()}
    ratio = med["ltbench"] / med["bare loop"]
    return {"rows": rows(res), "ratios": {"ltbench / bare loop": ratio,
            "augmented / not augmented": med["ltbench + crop/flip"] / med["ltbench"],
            "bare: freed memory kept / glibc defaults": med["bare loop"] / med["bare loop, glibc malloc defaults"]},
            "target": "ltbench >= 0.97 x bare loop", "met": ratio >= 0.97}


def section_data(s: Setting, root: Path, repeats: int) -> dict[str, Any]:
    """Loader-only images/s (decode + augment) from shards (PNG and raw .npy images) with 0 and 2 workers
    vs in memory, and training from shards vs from memory."""

    formats = ("npy",) if s.quick else ("png", "npy")    # quick: the code path, not the comparison
    shards = {}
    for fmt in formats:
        shards[fmt] = root / f"shards-{fmt}"
        if not (shards[fmt] / "manifest.json").is_file():
            log(f"perf: preparing {s.dataset} shards ({fmt}) in {shards[fmt]}")
            prepare(s.dataset, shards[fmt], data_overrides=s.prepare_args, samples_per_shard=1000, workers=2,
                    progress="off", array_format=fmt)
    torch.set_num_threads(s.threads)

    def loader_rate(shard_dir: Path | None, workers: int) -> float:
        extra = [f"data.shards={shard_dir}"] if shard_dir else []
        cfg = load_config(s.config, [*s.overrides, *extra])
        data = build_lt_data(cfg.data)
        loader = data.train_loader(cfg.train.batch_size, cfg.seed, cfg.data.augment, cfg.train.drop_last,
                                   cfg.train.sampler, workers)
        t0, n = time.time(), 0
        for x, y in loader.epoch(0):
            n += len(y)
        return n / (time.time() - t0)

    def train(fmt: str | None, workers: int) -> Callable[[], float]:
        # workers take their cores from the training threads' share, as the auto default does
        extra = [f"data.shards={shards[fmt]}", f"runtime.workers={workers}",
                 f"runtime.threads={max(1, s.threads - workers)}"] if fmt else []
        return lambda: ltbench_run(s, root, extra)["row"]["images_per_s"]

    loaders = interleaved(repeats, {
        "loader: memory (crop/flip)": lambda: loader_rate(None, 0),
        **{f"loader: {fmt} shards, {w} workers": (lambda f=fmt, w=w: loader_rate(shards[f], w))
           for fmt in formats for w in (0, 2)},
    })
    trains = interleaved(repeats, {
        "train: memory": train(None, 0),
        **{f"train: {fmt} shards, {w} workers": train(fmt, w) for fmt in formats for w in (2, 0)},
    })
    med = {k: _median(v) for k, v in {**loaders, **trains}.items()}
    step_rate = med["train: memory"]
    ratios = {f"{k.split(': ')[1]} / memory, training": med[k] / step_rate for k in trains if k != "train: memory"}
    ratios.update({f"{k} / training step rate": med[k] / step_rate for k in loaders})
    # In-process (0 workers) loading adds its time to every step: a loader at L img/s under a step rate
    # of R img/s takes R / L of the time. With workers it overlaps, unless the workers and the training
    # threads compete for the same cores (as on a 2-core machine). "pipeline" = the loader alone is
    # slower than the model's steps, so no overlap can hide it.
    bound = {k.split(": ")[1]: ("pipeline" if med[k] < step_rate else f"model (loading {100 * step_rate / med[k]:.0f} "
                                "% of a step in-process)") for k in loaders if "shards" in k}
    best = max(ratios[f"{fmt} shards, 2 workers / memory, training"] for fmt in formats)
    return {"rows": rows({**loaders, **trains}), "ratios": ratios, "bound": bound,
            "target": "training from shards >= 0.9 x from memory (2 workers; best image format)", "met": best >= 0.9}


def section_stage2(s: Setting, root: Path, repeats: int) -> dict[str, Any]:
    """WB stage 2 on cached features vs recomputing the frozen backbone every epoch: time per epoch,
    the whole run, and the test accuracy (must be equal)."""
    parent = ltbench_run(s, root, [])["dir"]
    epochs = ["stage2.train.epochs=2"]

    def child(cached: bool) -> dict[str, Any]:
        extra = [f"parent={parent}", *epochs, f"stage2.cache_features={str(cached).lower()}"]
        return ltbench_run(s, root, extra, config=s.stage2)

    runs: dict[str, list[dict[str, Any]]] = {"cached": [], "recomputed": []}
    for i in range(repeats):
        for k in runs:
            runs[k].append(child(k == "cached"))
            log(f"perf: repeat {i + 1}/{repeats} stage 2 {k}: {runs[k][-1]['row']['train_time_s']:.2f} s/epoch")
    per_epoch = {k: [r["row"]["train_time_s"] for r in v] for k, v in runs.items()}
    whole = {k: [r["result"]["wall_time_s"] for r in v] for k, v in runs.items()}
    acc = {k: v[0]["result"]["metrics"]["all"] for k, v in runs.items()}
    ratio = _median(per_epoch["recomputed"]) / _median(per_epoch["cached"])
    return {"rows": rows({f"{k}: training s per epoch": v for k, v in per_epoch.items()}) +
            rows({f"{k}: whole run s": v for k, v in whole.items()}), "accuracy": acc,
            "ratios": {"recomputed / cached, per epoch": ratio,
                       "recomputed / cached, whole run": _median(whole["recomputed"]) / _median(whole["cached"])},
            "target": ">= 20 x faster per epoch, same accuracy",
            "met": ratio >= 20 and acc["cached"] == acc["recomputed"]}


def section_ddp(s: Setting, root: Path, repeats: int) -> dict[str, Any]:
    """1 process on all threads vs 2 gloo processes (torchrun) sharing them: images/s and efficiency."""
    res = interleaved(repeats, {
        "1 process": lambda: ltbench_run(s, root, [])["row"]["images_per_s"],
        "2 processes (gloo)": lambda: ltbench_run(s, root, [], torchrun=2)["row"]["images_per_s"],
    })
    med = {k: _median(v) for k, v in res.items()}
    speedup = med["2 processes (gloo)"] / med["1 process"]
    return {"rows": rows(res), "ratios": {"speedup": speedup, "scaling efficiency": speedup / 2},
            "target": "measured (no target): on one machine the processes share its cores", "met": None}


def section_demo(s: Setting, root: Path, repeats: int) -> dict[str, Any]:
    """`ltbench demo` end to end in a fresh runs root: wall time and the peak RSS of its largest process."""
    extra = ["train.epochs=1", "data.n_max=600"] if s.quick else []
    walls, peaks = [], []
    for i in range(repeats):
        runs = Path(tempfile.mkdtemp(dir=root, prefix="demo-"))
        code = ("import resource, subprocess, sys, time; t = time.time(); "
                "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
                "print(r.returncode, time.time() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        cmd = [sys.executable, "-c", code, sys.executable, "-m", "bench", "demo", *extra, "--runs-root", str(runs)]
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=_env(s.threads)).stdout.split()
        if not out or out[0] != "0":
            raise RuntimeError(f"perf: ltbench demo failed in {runs}")
        walls.append(float(out[1]))
        peaks.append(int(out[2]) / 1024)
        log(f"perf: demo {i + 1}/{repeats}: {walls[-1]:.0f} s, peak RSS {peaks[-1]:.0f} MiB")
    return {"rows": rows({"wall s": walls, "peak RSS of the largest process, MiB": peaks}),
            "target": "demo under 10 min on 2 cores", "met": _median(walls) < 600 if not s.quick else None}


def section_gpu(s: Setting, root: Path, repeats: int) -> dict[str, Any]:
    """The one-shot GPU check (bench/devtools/gpucheck.py, `make gpu-check`): the JPEG pipeline per core, ResNet-50 /
    ResNeXt-50 bare vs ltbench's trainer (synthetic, then JPEG shards), ViT-B/16 with LoRA in ltbench's trainer
    vs bare full, LoRA and AdaptFormer loops, an end-to-end run resumed on the GPU."""

    return gpu_check(root, budget_s=s.gpu_budget_s, tiny=s.quick, parts=s.gpu_parts, models=s.gpu_models)


def wb_reference_epoch(ref_dir: str, threads: int, workers: int, keep_memory: bool = False) -> dict[str, float]:
    """One stage-1 epoch of the WB reference code, its own loop and dataset class imported unchanged from a
    clone of github.com/ShadeAlsha/LTR-weight-balancing (utils/trainval.py `train_model`, utils/
    dataset_CIFAR100LT.py `CIFAR100LT`: per-image PIL crop + flip, a DataLoader of `workers` processes, the
    reference uses 4), on the data of configs/fmnist_wb_reference/naive.yaml (Fashion-MNIST-LT IF 100,
    first n per class, padded to 32 and repeated to 3 channels) with ltbench's resnet32_cifar: batch 64,
    SGD lr 0.01, momentum 0.9, cosine over 20 epochs. The epoch is the training pass and the pass over the
    test split that train_model uses for selection; the training pass is timed by wrapping its loader.
    `keep_memory`: the process gets ltbench's malloc settings first (runtime.keep_freed_memory), to show what
    they give code that is not ltbench's."""
    import numpy as np
    from torch.utils.data import DataLoader

    if keep_memory:
        keep_freed_memory()

    sys.path.insert(0, ref_dir)
    from utils.dataset_CIFAR100LT import CIFAR100LT  # noqa: the reference's own modules
    from utils.trainval import train_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config(WB_REFERENCE)
    data = build_lt_data(cfg.data)
    sets = {name: CIFAR100LT(set_name=name, imageList=np.repeat(split.x.numpy(), 3, axis=1),
                             labelList=split.y.tolist(), isAugment=name == "train")
            for name, split in (("train", data.train), ("test", data.test))}
    loaders = {name: DataLoader(ds, batch_size=cfg.train.batch_size, shuffle=name == "train", num_workers=workers)
               for name, ds in sets.items()}

    class Timed:       # the training pass's wall time, measured around the reference's own iteration
        def __init__(self, loader: DataLoader) -> None:
            self.loader, self.seconds = loader, 0.0

        def __len__(self) -> int:
            return len(self.loader)

        def __iter__(self):
            t0 = time.time()
            yield from self.loader
            self.seconds = time.time() - t0

    class Model(torch.nn.Module):     # train_model reads model.encoder.fc
        def __init__(self) -> None:
            super().__init__()
            self.encoder = make_model(cfg, data)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.encoder(x)

    model = Model()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.train.epochs, eta_min=0)
    loaders["train"] = Timed(loaders["train"])
    with tempfile.TemporaryDirectory() as work:
        t0 = time.time()
        train_model(loaders, model, torch.nn.CrossEntropyLoss(), opt, sched, num_epochs=1, work_dir=work,
                    model_name="naive", print_each=1000)
        epoch = time.time() - t0
    n = len(sets["train"])
    return {"epoch_s": epoch, "train_s": loaders["train"].seconds, "images_per_s": n / loaders["train"].seconds,
            "eval_s": epoch - loaders["train"].seconds, "images": n}


def section_wbref(s: Setting, root: Path, repeats: int) -> dict[str, Any]:
    """A whole stage-1 epoch of ltbench's `wb-reference` run (configs/fmnist_wb_reference/naive.yaml: ResNet-32,
    Fashion-MNIST-LT IF 100 at 32 px, batch 64; training, then selection on test without TTA) against the WB
    reference code's own loop on the same data, model and threads (`--wb-reference DIR`), and the CPU speed
    switches (channels_last, torch.compile, the evaluation batch) on ltbench's run. The reference also runs with
    ltbench's malloc settings (runtime.keep_freed_memory) as a second baseline."""
    if s.wb_reference is None:
        return {"skipped": "needs --wb-reference DIR: a clone of github.com/ShadeAlsha/LTR-weight-balancing, with "
                           "scikit-image, scikit-learn and scipy (< 1.14, for scipy.misc) importable", "met": None}
    def reference(keep_memory: bool = False) -> dict[str, float]:
        ref_cmd = [sys.executable, "-m", "bench.devtools.perf", "wbref", str(s.wb_reference), str(s.threads), "4",
                   str(int(keep_memory))]
        r = subprocess.run(ref_cmd, cwd=REPO, capture_output=True, text=True, env=_env(s.threads))
        if r.returncode != 0:
            raise RuntimeError(f"perf: the WB reference epoch failed: {r.stderr.strip().splitlines()[-1:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])

    def ours(*extra: str, epochs: int = 1) -> dict[str, float]:
        """The last epoch's row: with torch.compile the second, as the first pays the compilation."""
        row = ltbench_run(s, root, [f"train.epochs={epochs}", *extra], config=WB_REFERENCE)["rows"][-1]
        return {"epoch_s": row["epoch_time_s"], "train_s": row["train_time_s"], "images_per_s": row["images_per_s"],
                "eval_s": row["epoch_time_s"] - row["train_time_s"]}

    runs: dict[str, Callable[[], dict[str, float]]] = {
        "WB reference code": reference, "WB reference code, freed memory kept": lambda: reference(keep_memory=True),
        "ltbench": ours,
        "ltbench, channels_last": lambda: ours("runtime.channels_last=true"),
        "ltbench, torch.compile": lambda: ours("runtime.compile=true", epochs=2),
        "ltbench, eval batch 64": lambda: ours("eval.batch_size=64"),
        "ltbench, all three": lambda: ours("runtime.channels_last=true", "runtime.compile=true", "eval.batch_size=64",
                                           epochs=2)}
    full: dict[str, list[dict[str, float]]] = {k: [] for k in runs}
    for i in range(repeats):
        for k, fn in runs.items():
            full[k].append(fn())
            log(f"perf: repeat {i + 1}/{repeats} {k}: epoch {full[k][-1]['epoch_s']:.1f} s, "
                f"train {full[k][-1]['images_per_s']:.1f} img/s")
    table = {f"{k}: {m}": [r[m] for r in v] for k, v in full.items() for m in ("epoch_s", "images_per_s", "eval_s")}
    med = {k: _median(v) for k, v in table.items()}
    ref = "WB reference code"
    ratios = {f"{k} / reference, whole epoch": med[f"{ref}: epoch_s"] / med[f"{k}: epoch_s"] for k in runs if k != ref}
    ratios.update({f"{k} / reference, training images/s": med[f"{k}: images_per_s"] / med[f"{ref}: images_per_s"]
                   for k in runs if k != ref})
    best = max(v for k, v in ratios.items() if k.startswith("ltbench") and k.endswith("whole epoch"))
    return {"rows": rows(table), "ratios": ratios, "target": "a whole stage-1 epoch >= 1.5 x the reference's",
            "met": best >= 1.5}


RUNNERS = {"trainer": section_trainer, "data": section_data, "stage2": section_stage2, "ddp": section_ddp,
           "demo": section_demo, "gpu": section_gpu, "wbref": section_wbref}


def machine() -> dict[str, Any]:
    mem = 0
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**30
    except (ValueError, OSError):
        pass
    return {"host": platform.node(), "cpu_cores": os.cpu_count(), "memory_gib": mem, "torch": torch.__version__,
            "python": platform.python_version(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d %H:%M")}


def run_perf(out: Path, sections: list[str], repeats: int, quick: bool, threads: int | None,
             gpu: dict[str, Any] | None = None, wb_reference: Path | None = None) -> dict[str, Any]:
    """`gpu`: the GPU check's budget_s / parts / models, when not the defaults; `wb_reference`: a clone of the
    WB reference code, for section wbref."""
    s = Setting(quick, threads or os.cpu_count() or 1)
    s.wb_reference = wb_reference
    for key, value in (gpu or {}).items():
        setattr(s, f"gpu_{key}", value)
    out.mkdir(parents=True, exist_ok=True)
    setting = ("GPU check" + (" (tiny)" if quick else "") if sections == ["gpu"] else
               "quick (synthetic smoke)" if quick else "Fashion-MNIST-LT demo")
    report: dict[str, Any] = {"machine": machine(), "setting": setting, "repeats": repeats, "threads": s.threads, "sections": {}}
    with tempfile.TemporaryDirectory(dir=out, prefix="work-") as work:
        for name in sections:
            log(f"perf: {name}")
            t0 = time.time()
            report["sections"][name] = {**RUNNERS[name](s, Path(work), repeats), "doc": RUNNERS[name].__doc__.split("\n\n")[0],
                                        "section_s": round(time.time() - t0, 1)}
            (out / "perf.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "perf.md").write_text(render(report))
    return report


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"# ltbench perf: {report['setting']}", "",
             f"{m['date']}, {m['host']}: {m['cpu_cores']} cores, {m['memory_gib']} GiB, torch {m['torch']}, "
             f"GPU {m['cuda'] or 'none'}; {report['threads']} threads; medians of {report['repeats']} interleaved repeats.", ""]
    for name, sec in report["sections"].items():
        lines += [f"## {name}", "", " ".join(sec["doc"].split()), ""]
        if "skipped" in sec:
            lines += [f"skipped: {sec['skipped']}", ""]
            continue
        if name == "gpu":
            lines += render_gpu(sec)
            continue
        lines += ["| measurement | median | repeats |", "|---|---|---|"]
        for label, med, reps in sec.get("rows", []):
            lines.append(f"| {label} | {med:.4g} | {', '.join(f'{x:.4g}' for x in reps)} |")
        for k, v in sec.get("ratios", {}).items():
            lines.append(f"| **{k}** | **{v:.3g}** | |")
        if "accuracy" in sec:
            lines.append(f"| test accuracy (all) | {', '.join(f'{k} {v:.2f}' for k, v in sec['accuracy'].items())} | |")
        if "bound" in sec:
            lines.append(f"| limits a training step | {', '.join(f'{k}: {v}' for k, v in sec['bound'].items())} | |")
        met = sec.get("met")
        lines += ["", f"target: {sec.get('target', '-')}: " + ("met" if met else "not met" if met is False else "n/a"), ""]
    return "\n".join(lines)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "bare":
    print(json.dumps(bare_loop(sys.argv[2], sys.argv[4:], int(sys.argv[3]))))
if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "wbref":
    print(json.dumps(wb_reference_epoch(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:] == ["1"])))
