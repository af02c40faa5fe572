"""The WB reference side by side (`ltbench perf --only wbref --wb-reference DIR`): a stage-1 epoch of the WB
reference code's own loop against ltbench's `wb-reference` run on the same data, model and threads.

Owns both sides of that comparison: wb_reference_epoch runs the reference's code (imported from a clone of
github.com/ShadeAlsha/LTR-weight-balancing) in a process of its own (`python -m bench.devtools.wbref DIR THREADS
WORKERS KEEP_MEMORY` prints its figures as one JSON line), and section_wbref is perf's section that times it
against ltbench and its CPU speed switches.
"""

from __future__ import annotations

import json
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
from bench.devtools.harness import CONFIGS, REPO, Setting, ltbench_run, median, rows, run_env
from bench.methods.classifiers import make_model
from bench.runtime.process import keep_freed_memory
from bench.runtime.progress import log

WB_REFERENCE = CONFIGS / "fmnist_wb_reference" / "naive.yaml"


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
    from utils.dataset_CIFAR100LT import CIFAR100LT  # the reference code's own modules, from ref_dir
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
        ref_cmd = [sys.executable, "-m", "bench.devtools.wbref", str(s.wb_reference), str(s.threads), "4",
                   str(int(keep_memory))]
        r = subprocess.run(ref_cmd, cwd=REPO, capture_output=True, text=True, env=run_env(s.threads))
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
    med = {k: median(v) for k, v in table.items()}
    ref = "WB reference code"
    ratios = {f"{k} / reference, whole epoch": med[f"{ref}: epoch_s"] / med[f"{k}: epoch_s"] for k in runs if k != ref}
    ratios.update({f"{k} / reference, training images/s": med[f"{k}: images_per_s"] / med[f"{ref}: images_per_s"]
                   for k in runs if k != ref})
    best = max(v for k, v in ratios.items() if k.startswith("ltbench") and k.endswith("whole epoch"))
    return {"rows": rows(table), "ratios": ratios, "target": "a whole stage-1 epoch >= 1.5 x the reference's",
            "met": best >= 1.5}


if __name__ == "__main__":
    print(json.dumps(wb_reference_epoch(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:] == ["1"])))
