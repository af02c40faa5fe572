"""The one-shot GPU check (`make gpu-check`, `ltbench perf --only gpu`): what ltbench delivers on a GPU.

On a bare one-GPU machine whose Python has torch, torchvision and timm (docs/distributed.md, "The GPU check", says how
to carry the rest), in a few minutes, and written as perf.json / perf.md:

1. the JPEG pipeline per core: realistic 500x375 JPEGs (quality 90) written by `ltbench prepare`'s own
   writer, and the same set re-encoded with `--resize-shorter 256`; images/s of one core for training
   (decode + RandomResizedCrop(224) + flip + uint8 tensor) and evaluation (resize 256, centre crop 224),
   then the loader's images/s with the workers the machine allows;
2. per model (ResNet-50, ResNeXt-50; 224 px, bf16, channels_last; eager, then torch.compile): the bare
   model's images/s on batches already on the GPU; ltbench's trainer (`ltbench run`, in-memory synthetic
   images, the same model and batch) as a ratio of it (target >= 0.97); ltbench's trainer from the
   re-encoded JPEG shards as a ratio of its synthetic run (target >= 0.95); GPU memory high-water marks;
3. a foundation model (`foundation`): ViT-B/16 at 224 px (CLIP's image tower, random weights, bf16; no
   channels_last, which does not apply to ViTs): a bare full fine-tune, bare LoRA and AdaptFormer loops and
   ltbench's trainer with LoRA (`model.peft.method=lora`, r 8 on qkv; in-memory synthetic images) in images/s, the
   trainable-parameter count and share, GPU memory high-water marks; needs peft (carried as wheels);
4. end to end on a tiny shard set: stage 1 killed after its first checkpoint and resumed on the GPU
   (the numbers must equal an uninterrupted run's), stage 2 on cached features, `ltbench table`, and
   the same stage 1 under `torchrun --nproc_per_node <GPUs>` (NCCL when there are several).

Without a GPU only part 1 runs; the rest says "no GPU". Every item has a time budget: what does not fit
is reported as skipped, never silently left out. Items run in the order above; the models part leaves
time for the parts after it.

This module owns the GPU parts (2-4) and the check's schedule; the photo-like JPEGs, their shards and part 1
are in bench/devtools/gpudata.py, the report's Markdown in bench/devtools/gpureport.py.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import torch

from bench.config import PeftConfig
from bench.experiment import load_config
from bench.data.prepare import prepare
from bench.devtools.gpudata import JPEG, jpeg_shards, section_pipeline
from bench.errors import one_line
from bench.launch.local import read_run, run_command
from bench.methods.adapters import apply_peft, parameter_counts
from bench.models import build_model
from bench.models.clip import build_clip_model
from bench.paths import repo_or_package_dir
from bench.runtime.progress import log

REPO = Path(__file__).resolve().parents[2]   # the folder holding the package: the cwd of its subprocesses
CONFIGS = repo_or_package_dir("configs")
SYNTHETIC = CONFIGS / "perf" / "gpu_synthetic.yaml"
MODELS = ("resnet50", "resnext50_32x4d")
FOUNDATION = CONFIGS / "perf" / "gpu_vit_lora.yaml"
# ViT-B/16 at 224 px as configs/foundation runs it: OpenAI CLIP's image tower (QuickGELU, pre-norm, 512-d
# projection), built without weights (none can be downloaded; the architecture decides the speed)
VIT = "vit_base_patch16_clip_quickgelu_224"
FOUNDATION_S = 110.0    # seconds the foundation part is given (three bare loops, one `ltbench run` subprocess)
# LIFT's width on ImageNet-LT (configs/foundation/imagenet_lt/lift.yaml)
ADAPTFORMER = PeftConfig(method="adaptformer", r=32)


# --- 2. models on the GPU -----------------------------------------------------------------------

def bare_rate(model_name: str, batch: int, compile_: bool, device: str = "cuda", image: int = 224,
              num_classes: int = 100, steps: int = 30, warmup: int = 10, channels_last: bool = True,
              embedding: str = "pooled", peft: PeftConfig | None = None) -> dict[str, Any]:
    """A hand-written loop: timm model, bf16 autocast, channels_last (where it applies: not for ViTs, whose
    only convolution is the patch embedding), SGD over the parameters that train, inputs already on the
    device. embedding="clip" builds the model as model.embedding=clip does (a CLIP tower and a classifier on
    its embedding); `peft` injects adapters as model.peft does (only they and the classifier train)."""

    dev = torch.device(device)
    torch.backends.cudnn.benchmark = dev.type == "cuda"
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    build = build_clip_model if embedding == "clip" else build_model
    model = build(model_name, num_classes=num_classes, in_chans=3)
    if peft is not None and peft.method != "none":
        apply_peft(model, peft)
    counts = parameter_counts(model)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(dev).to(memory_format=fmt)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9,
                          weight_decay=5e-5)
    step_fn = torch.compile(model) if compile_ else model
    x = torch.randn(batch, 3, image, image, device=dev).contiguous(memory_format=fmt)
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
    out = {"images_per_s": steps * batch / (time.time() - t0), "warmup_s": round(warm_s, 1),
           "trainable_params": counts}
    if dev.type == "cuda":
        out["gpu_mem_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    del model, opt, step_fn, x, y
    if dev.type == "cuda":
        torch.cuda.empty_cache()      # the next item (often an `ltbench run` subprocess) gets the memory back
    return out


def run_ltbench(config: Path, overrides: list[str], run_dir: Path, torchrun: int = 0, timeout: float = 600,
                env: dict[str, str] | None = None, kill_after_checkpoint: bool = False) -> dict[str, Any]:
    """`ltbench run CONFIG OVERRIDES --run-dir RUN_DIR` in a subprocess (or torchrun of it); its metrics rows and
    result. kill_after_checkpoint: SIGKILL it as soon as checkpoints/last.pt exists (a preempted job)."""
    cmd = run_command([str(config), *overrides, "--run-dir", str(run_dir)], torchrun)
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
    rows, result = read_run(run_dir)
    return {"rows": rows, "result": result, "wall_s": time.time() - t0, "log": output}


def steady_rate(rows: list[dict[str, Any]]) -> float:
    """Images/s of the epochs after the first (which pays cuDNN autotuning, compilation, worker start)."""
    later = [r["images_per_s"] for r in rows[1:]] or [r["images_per_s"] for r in rows]
    return statistics.median(later)


def trainer_rates(model_name: str, compile_: bool, work: Path, jpeg: Path | None, device: str = "cuda",
                  extra: Sequence[str] = (), synthetic_extra: Sequence[str] = (),
                  jpeg_extra: Sequence[str] = ()) -> dict[str, Any]:
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
                   device: str = "cuda", bare_kw: dict[str, Any] | None = None, extra: Sequence[str] = (),
                   synthetic_extra: Sequence[str] = (), jpeg_extra: Sequence[str] = (),
                   batch: int = 256) -> dict[str, Any]:
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
            log(f"gpu-check: {label}: bare {bare['images_per_s']:.0f} img/s, "
                f"ltbench {tr['synthetic']['images_per_s']:.0f} "
                f"({row['trainer / bare']:.3f})" + "".join(
                    f", {k} {tr[k]['images_per_s']:.0f} ({row[f'{k} / synthetic']:.3f})"
                    for k in ("jpeg", "jpeg_gpu_decode") if k in tr))
    # the JPEG target: the better of the two decoders (the config field picks it per machine)
    met = all(r["trainer / bare"] >= 0.97 for r in rows) and all(
        max(r.get("jpeg / synthetic", 1), r.get("jpeg_gpu_decode / synthetic", 0)) >= 0.95 for r in rows)
    return {"rows": rows, "skipped_items": skipped, "met": met if rows else None,
            "target": "ltbench trainer >= 0.97 x bare model (synthetic); from JPEG shards >= 0.95 x synthetic"}


# --- 3. a foundation model: ViT-B/16 with LoRA and AdaptFormer ------------------------------------

def section_foundation(work: Path, deadline: float, device: str = "cuda", model: str = VIT, image: int = 224,
                       batch: int = 256, bare_kw: dict[str, Any] | None = None,
                       extra: Sequence[str] = ()) -> dict[str, Any]:
    """ViT-B/16 at 224 px, random weights, built as model.embedding=clip builds it (a CLIP tower, a classifier
    on its embedding), bf16 autocast, no channels_last (it does not apply to ViTs): a bare full fine-tune, a
    bare LoRA loop and a bare AdaptFormer loop (LIFT's module, r 32; batches already on the device), then
    ltbench's trainer with LoRA (`ltbench run` gpu_vit_lora.yaml, in-memory synthetic images); images/s,
    trainable parameters (result.json's trainable_params), GPU memory high-water marks. Skipped, with the reason,
    when peft cannot be imported or fewer than FOUNDATION_S seconds are left before `deadline`."""

    try:
        import peft  # noqa: F401  (imports transformers, accelerate, tokenizers, regex: `make gpu-wheels` carries them)
    except Exception as e:     # ImportError, or transformers' own version check of what the machine has
        return {"skipped": f"peft cannot be imported ({type(e).__name__}: {one_line(e)}); `make gpu-wheels` carries it",
                "met": None}
    left = deadline - time.time()
    if left < FOUNDATION_S:
        return {"skipped": f"time budget: it needs about {FOUNDATION_S:.0f} s, {max(0.0, left):.0f} s were left",
                "met": None}
    t0 = time.time()
    cfg = load_config(FOUNDATION, [f"model.name={model}", *extra])
    pc, classes = cfg.model.peft, cfg.data.synthetic.num_classes
    kw = {"image": image, "num_classes": classes, "channels_last": False, "embedding": cfg.model.embedding,
          **(bare_kw or {})}
    try:    # a failure here (out of memory, a peft the machine cannot run) is reported; the check goes on
        full = bare_rate(model, batch, False, device, **kw)
        lora = bare_rate(model, batch, False, device, peft=pc, **kw)
        adaptformer = bare_rate(model, batch, False, device, peft=ADAPTFORMER, **kw)
        run = run_ltbench(FOUNDATION, [f"model.name={model}", f"runtime.device={device}", *extra],
                          work / "run-vit-lora")
    except Exception as e:
        log(f"gpu-check: the foundation part failed: {type(e).__name__}: {one_line(e)}")
        return {"skipped": f"failed after {time.time() - t0:.0f} s: {type(e).__name__}: {one_line(e)}", "met": False}
    rate = steady_rate(run["rows"])
    trainer = {"images_per_s": rate, "epochs": [r["images_per_s"] for r in run["rows"]],
               "gpu_mem_gib": run["rows"][-1].get("gpu_mem_gib"),
               "trainable_params": run["result"]["trainable_params"], "peft": run["result"].get("peft")}
    out = {"model": model, "image": image, "batch": batch, "embedding": cfg.model.embedding,
           "amp": {"bare": "bf16", "trainer": cfg.train.amp},
           "channels_last": False,
           "lora": {"r": pc.r, "alpha": pc.alpha, "target_modules": list(pc.target_modules)},
           "adaptformer": {"r": ADAPTFORMER.r},
           "bare_full": full, "bare_lora": lora, "bare_adaptformer": adaptformer, "trainer_lora": trainer,
           "lora trainer / bare full": rate / full["images_per_s"],
           "lora trainer / bare lora": rate / lora["images_per_s"],
           "section_s": round(time.time() - t0, 1), "met": None,
           "target": "none yet: measured (issue 19: the GPU row for ViT-B/16 with LoRA)"}
    log(f"gpu-check: {model} at {image} px: bare full fine-tune {full['images_per_s']:.0f} img/s, bare LoRA "
        f"{lora['images_per_s']:.0f}, ltbench LoRA {rate:.0f} ({out['lora trainer / bare full']:.3f} of full), "
        f"trainable {trainer['trainable_params']['trainable']:,} = {trainer['trainable_params']['share']:.4f}")
    return out


# --- 4. end to end ------------------------------------------------------------------------------

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
                     "equal": same,
                     "resumed_at": next((ln for ln in resumed["log"].splitlines() if "resuming" in ln), None)}
    stage2 = run_ltbench(CONFIGS / "smoke_stage2.yaml", [*common[1:], f"parent={runs / 'smoke' / 'uninterrupted'}"],
                         runs / "smoke" / "stage2")
    out["stage2"] = {"metrics": stage2["result"]["metrics"], "cached_features": "extracting" in stage2["log"].lower()
                     or (runs / "smoke" / "uninterrupted" / "features").is_dir()}
    table = subprocess.run([sys.executable, "-m", "bench", "table", str(runs / "smoke")], cwd=REPO,
                           capture_output=True, text=True)
    out["table"] = table.stdout.strip() if table.returncode == 0 else f"failed: {table.stderr.strip()[-300:]}"
    tr = run_ltbench(smoke, common, other / f"torchrun-{gpus}", torchrun=gpus)
    out["torchrun"] = {"nproc_per_node": gpus,
                       "backend": "nccl" if gpus > 1 else "none (one process: no process group)",
                       "metrics": tr["result"]["metrics"], "world_size": tr["result"]["world_size"]}
    out["met"] = bool(same and table.returncode == 0)
    out["target"] = "a run killed after its first checkpoint and resumed on the device ends with the same numbers"
    return out


# --- the check ----------------------------------------------------------------------------------

PARTS = ("pipeline", "models", "foundation", "end_to_end")
E2E_S = 90.0            # seconds kept for the end-to-end part


def gpu_check(work: Path, budget_s: float = 420, tiny: bool = False, device: str | None = None,
              parts: tuple[str, ...] = PARTS, models: tuple[str, ...] = MODELS) -> dict[str, Any]:
    """`parts` of the check within `budget_s` seconds (a part that is not asked for is reported as such).
    tiny = small images and models (checks the code path); device = where the model parts run (default:
    cuda when present, else they are skipped; "cpu" rehearses the GPU run on the CPU). The models part
    leaves FOUNDATION_S and E2E_S seconds of the budget to the parts after it that were asked for."""
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
    # the JPEG shards serve the pipeline and the models parts only
    shards = (jpeg_shards(work, counts, max(1, cores - 1 if cuda else cores), size)
              if {"pipeline", "models"} & set(parts) else {})
    out["pipeline"] = section_pipeline(shards, cores, images, extra) if "pipeline" in parts else not_asked
    device = device or ("cuda" if cuda else None)
    if device is None:
        out["models"] = out["foundation"] = out["end_to_end"] = {"skipped": "no GPU", "met": None}
        return out
    end = t_start + budget_s - (E2E_S if "end_to_end" in parts else 0)    # the foundation part's deadline
    deadline = end - (FOUNDATION_S if "foundation" in parts else 0)           # the models part's
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
    if "foundation" not in parts:
        out["foundation"] = not_asked
    elif tiny:
        # timm's test_vit (6 blocks, width 64, 160 px) wrapped as a CLIP tower: its 1000-wide head plays the
        # projection; synthetic 32-px images are resized to 160 on the device (data.input_stats=model)
        small = ["train.batch_size=16", "train.epochs=2", "runtime.threads=1", "train.amp=none",
                 "runtime.cudnn_benchmark=false", "data.synthetic.image_size=32", "data.synthetic.num_classes=10",
                 "data.synthetic.train_per_class=8", "data.synthetic.test_per_class=2"]
        out["foundation"] = section_foundation(work, end, device, "test_vit", 160, 16, {"steps": 2, "warmup": 1},
                                               small)
    else:
        out["foundation"] = section_foundation(work, end, device)
    out["end_to_end"] = section_end_to_end(work, device, max(1, out["gpus"])) if "end_to_end" in parts else not_asked
    out["check_s"] = round(time.time() - t_start, 1)
    return out
