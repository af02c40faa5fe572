"""`ltbench perf`: measured speed of the trainer, the data pipeline, stage 2, DDP and the demo.

Every figure is a ratio against a baseline measured in the same invocation, repeats interleaved
(baseline, candidate, baseline, ...) so that drift of a shared machine hits both; the report quotes
medians. Runs use the real code paths: `ltbench run` subprocesses (read back from metrics.jsonl's
train_time_s, the training steps without evaluation), the real shard loader, torchrun for DDP.

Settings: the Fashion-MNIST-LT demo (resnet8_cifar, batch 64, 14,837 training images), or --quick:
the synthetic smoke set (a tiny run, for the test that the command works).

This module owns the sections, the run of `ltbench perf` and perf.md; the measuring harness (setting,
timed `ltbench run`, interleaved repeats) is bench/devtools/harness.py, section wbref and the WB reference
code's epoch are bench/devtools/wbref.py, section gpu is the GPU check (bench/devtools/gpucheck.py).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.experiment import load_config
from bench.data.lt import build_lt_data
from bench.data.prepare import prepare
from bench.devtools.gpucheck import gpu_check
from bench.devtools.gpureport import render as render_gpu
from bench.devtools.scale import render as render_scale
from bench.devtools.scale import section_scale
from bench.devtools.sweep import render as render_sweep
from bench.devtools.sweep import section_sweep
from bench.devtools.harness import REPO, Setting, interleaved, ltbench_run, median, rows, run_env, timed_process
from bench.devtools.wbref import section_wbref
from bench.methods.classifiers import make_model
from bench.runtime.process import keep_freed_memory
from bench.runtime.progress import log

SECTIONS = ("trainer", "data", "access", "stage2", "ddp", "demo", "gpu", "wbref", "scale", "sweep")


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
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=run_env(setting.threads))
    if r.returncode != 0:
        raise RuntimeError(f"perf: bare loop failed: {r.stderr.strip().splitlines()[-1:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def section_trainer(s: Setting, root: Path, repeats: int) -> dict[str, Any]:
    """ltbench's training step vs a bare loop (no augmentation in either), and what crop+flip costs; the bare
    loop also with glibc's malloc defaults (what runtime.keep_freed_memory saves)."""
    none = ["data.augment=none"]
    res = interleaved(repeats, {
        "bare loop": lambda: run_bare(s, none)["images_per_s"],
        "bare loop, glibc malloc defaults":
            lambda: run_bare(s, [*none, "runtime.keep_freed_memory=false"])["images_per_s"],
        "ltbench": lambda: ltbench_run(s, root, none)["row"]["images_per_s"],
        "ltbench + crop/flip": lambda: ltbench_run(s, root, [])["row"]["images_per_s"],
    })
    med = {k: median(v) for k, v in res.items()}
    ratio = med["ltbench"] / med["bare loop"]
    return {"rows": rows(res), "ratios": {"ltbench / bare loop": ratio,
            "augmented / not augmented": med["ltbench + crop/flip"] / med["ltbench"],
            "bare: freed memory kept / glibc defaults": med["bare loop"] / med["bare loop, glibc malloc defaults"]},
            "target": "ltbench >= 0.97 x bare loop", "met": ratio >= 0.97}


def _shards(s: Setting, root: Path, fmt: str) -> Path:
    """The setting's dataset as shards of `fmt` images under root (prepared once per `ltbench perf`)."""
    out = root / f"shards-{fmt}"
    if not (out / "manifest.json").is_file():
        log(f"perf: preparing {s.dataset} shards ({fmt}) in {out}")
        prepare(s.dataset, out, data_overrides=s.prepare_args, samples_per_shard=1000, workers=2, progress="off",
                array_format=fmt)
    return out


def _loader_rate(s: Setting, shard_dir: Path | None, workers: int, sampler: str | None = None) -> float:
    """Images per second of one training epoch of the loader alone (decode + augmentation, no model)."""
    cfg = load_config(s.config, [*s.overrides, *([f"data.shards={shard_dir}"] if shard_dir else [])])
    data = build_lt_data(cfg.data)
    loader = data.train_loader(cfg.train.batch_size, cfg.seed, cfg.data.augment, cfg.train.drop_last,
                               sampler or cfg.train.sampler, workers)
    t0, n = time.time(), 0
    for _x, y in loader.epoch(0):
        n += len(y)
    return n / (time.time() - t0)


def section_access(s: Setting, root: Path, repeats: int) -> dict[str, Any]:
    """The class-aware sampler from shards, reading each sample at its recorded offset, against the stream loader
    on the same PNG shards: loaders alone (decode + crop/flip, one epoch, no model, 0 workers); and the header
    scan that shards prepared without recorded offsets need once per process (page cache warm)."""
    from bench.data.shards.manifest import load_manifest
    from bench.data.shards.tar import shard_spans

    shards = _shards(s, root, "npy" if s.quick else "png")
    torch.set_num_threads(s.threads)
    split = load_manifest(shards).split("train")
    assert split is not None

    def scan() -> float:
        t0 = time.time()
        n = sum(len(shard_spans(split.path(k))[0]) for k in range(len(split.shards)))
        return n / (time.time() - t0)

    res = interleaved(repeats, {
        "stream loader (instance sampler), img/s": lambda: _loader_rate(s, shards, 0, "instance"),
        "random access (class_aware sampler), img/s": lambda: _loader_rate(s, shards, 0, "class_aware"),
        "header scan, samples/s": scan,
    })
    med = {k: median(v) for k, v in res.items()}
    ratio = med["random access (class_aware sampler), img/s"] / med["stream loader (instance sampler), img/s"]
    return {"rows": rows(res), "ratios": {"random access / stream": ratio,
                                          "header scan: s per 100k samples": 1e5 / med["header scan, samples/s"]},
            "target": "random access >= 0.8 x the stream loader", "met": ratio >= 0.8}


def section_data(s: Setting, root: Path, repeats: int) -> dict[str, Any]:
    """Loader-only images/s (decode + augment) from shards (PNG and raw .npy images) with 0 and 2 workers
    vs in memory, and training from shards vs from memory."""

    formats = ("npy",) if s.quick else ("png", "npy")    # quick: the code path, not the comparison
    shards = {fmt: _shards(s, root, fmt) for fmt in formats}
    torch.set_num_threads(s.threads)

    def loader_rate(shard_dir: Path | None, workers: int) -> float:
        return _loader_rate(s, shard_dir, workers)

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
    med = {k: median(v) for k, v in {**loaders, **trains}.items()}
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
    ratio = median(per_epoch["recomputed"]) / median(per_epoch["cached"])
    return {"rows": rows({f"{k}: training s per epoch": v for k, v in per_epoch.items()}) +
            rows({f"{k}: whole run s": v for k, v in whole.items()}), "accuracy": acc,
            "ratios": {"recomputed / cached, per epoch": ratio,
                       "recomputed / cached, whole run": median(whole["recomputed"]) / median(whole["cached"])},
            "target": ">= 20 x faster per epoch, same accuracy",
            "met": ratio >= 20 and acc["cached"] == acc["recomputed"]}


def section_ddp(s: Setting, root: Path, repeats: int) -> dict[str, Any]:
    """1 process on all threads vs 2 gloo processes (torchrun) sharing them: images/s and efficiency."""
    res = interleaved(repeats, {
        "1 process": lambda: ltbench_run(s, root, [])["row"]["images_per_s"],
        "2 processes (gloo)": lambda: ltbench_run(s, root, [], torchrun=2)["row"]["images_per_s"],
    })
    med = {k: median(v) for k, v in res.items()}
    speedup = med["2 processes (gloo)"] / med["1 process"]
    return {"rows": rows(res), "ratios": {"speedup": speedup, "scaling efficiency": speedup / 2},
            "target": "measured (no target): on one machine the processes share its cores", "met": None}


def section_demo(s: Setting, root: Path, repeats: int) -> dict[str, Any]:
    """`ltbench demo` end to end in a fresh runs root: wall time and the peak RSS of its largest process."""
    extra = ["train.epochs=1", "data.n_max=600"] if s.quick else []
    walls, peaks = [], []
    for i in range(repeats):
        runs = Path(tempfile.mkdtemp(dir=root, prefix="demo-"))
        t = timed_process([sys.executable, "-m", "bench", "demo", *extra, "--runs-root", str(runs)],
                          run_env(s.threads), f"ltbench demo in {runs}")
        walls.append(t["wall_s"])
        peaks.append(t["peak_rss_mib"])
        log(f"perf: demo {i + 1}/{repeats}: {walls[-1]:.0f} s, peak RSS {peaks[-1]:.0f} MiB")
    return {"rows": rows({"wall s": walls, "peak RSS of the largest process, MiB": peaks}),
            "target": "demo under 10 min on 2 cores", "met": median(walls) < 600 if not s.quick else None}


def section_gpu(s: Setting, root: Path, repeats: int) -> dict[str, Any]:
    """The one-shot GPU check (bench/devtools/gpucheck.py, `make gpu-check`): the JPEG pipeline per core, ResNet-50 /
    ResNeXt-50 bare vs ltbench's trainer (synthetic, then JPEG shards), ViT-B/16 with LoRA in ltbench's trainer
    vs bare full, LoRA and AdaptFormer loops, an end-to-end run resumed on the GPU."""

    return gpu_check(root, budget_s=s.gpu_budget_s, tiny=s.quick, parts=s.gpu_parts, models=s.gpu_models)


RUNNERS = {"trainer": section_trainer, "data": section_data, "access": section_access, "stage2": section_stage2,
           "ddp": section_ddp,
           "demo": section_demo, "gpu": section_gpu, "wbref": section_wbref, "scale": section_scale,
           "sweep": section_sweep}


def machine() -> dict[str, Any]:
    mem = 0
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**30
    except (ValueError, OSError):
        pass
    return {"host": platform.node(), "cpu_cores": os.cpu_count(), "memory_gib": mem, "torch": torch.__version__,
            "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
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
    report: dict[str, Any] = {"machine": machine(), "setting": setting, "repeats": repeats, "threads": s.threads,
                              "sections": {}}
    with tempfile.TemporaryDirectory(dir=out, prefix="work-") as work:
        for name in sections:
            log(f"perf: {name}")
            t0 = time.time()
            report["sections"][name] = {**RUNNERS[name](s, Path(work), repeats),
                                        "doc": RUNNERS[name].__doc__.split("\n\n")[0],
                                        "section_s": round(time.time() - t0, 1)}
            (out / "perf.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "perf.md").write_text(render(report))
    return report


def _verdict(met: bool | None) -> str:
    return "met" if met else "not met" if met is False else "n/a"


SPECIAL = {"gpu": render_gpu, "scale": render_scale, "sweep": render_sweep}   # sections with their own layout


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"# ltbench perf: {report['setting']}", "",
             f"{m['date']}, {m['host']}: {m['cpu_cores']} cores, {m['memory_gib']} GiB, torch {m['torch']}, "
             f"GPU {m['cuda'] or 'none'}; {report['threads']} threads; "
             f"medians of {report['repeats']} interleaved repeats.", ""]
    for name, sec in report["sections"].items():
        lines += [f"## {name}", "", " ".join(sec["doc"].split()), ""]
        if "skipped" in sec:
            lines += [f"skipped: {sec['skipped']}", ""]
            continue
        if name in SPECIAL:
            lines += SPECIAL[name](sec)
            lines += [f"target: {sec['target']}: {_verdict(sec.get('met'))}", ""] if "target" in sec else []
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
        lines += ["", f"target: {sec.get('target', '-')}: {_verdict(sec.get('met'))}", ""]
    return "\n".join(lines)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "bare":
    print(json.dumps(bare_loop(sys.argv[2], sys.argv[4:], int(sys.argv[3]))))
