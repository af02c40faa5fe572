"""`ltbench demo`: the main job on the embedded default, Fashion-MNIST-LT (exp profile, IF 100).

Clean protocol throughout: every hyperparameter of stage 2 and of the post-hoc steps is chosen on the
held-out validation split; test is only read for the final table. Runs:
  stage 1   naive (WD 0), WD (WB stage 1), HS single stage (ETF + WD in loss + FR)  - in parallel
  stage 2   WB on the WD model: a small grid of weight decay x beta x MaxNorm threshold, best on val
  post-hoc  tau-norm of the WD model; HS multiplicative logit adjustment; tau chosen on val
Groups use the dataset card's thresholds (many > 1000, few < 200: 4 / 3 / 3 classes), because the usual
> 100 / < 20 leaves no few-shot class on a 10-class profile.
Under the table: every deviation from the papers' recipes and the papers' claims checked on the mean test
accuracy over the seeds run (bench/report/claims.py), with the reason for each claim its budget does not show.
By default one seed of the papers' weight decay for 20 epochs (FULL below; about 8 minutes on 2 cores); --full:
three seeds of it; --quick: configs/demo/*.yaml as they are (12 epochs, the demo's own weight decay; about 6
minutes), which shows fewer of the claims.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from bench.config import ConfigError
from bench.experiment import load_config
from bench.launch.fetch import ensure_fashion_mnist
from bench.launch.local import run_command
from bench.launch.run import run_experiment
from bench.paths import repo_or_package_dir
from bench.report.aggregate import Table, build_table
from bench.report.claims import check_claims, deviations, format_claims, rows_from_table
from bench.report.collect import collect
from bench.report.render import save_table
from bench.runtime.progress import log
from bench.runtime.rundir import RunDir, write_text_atomic

CONFIG_DIR = repo_or_package_dir("configs") / "demo"
STAGE1 = ["fmnist_naive", "fmnist_wd", "fmnist_hs_stage1"]
# WB stage 2 grid, chosen on val: weight decay, CB beta, MaxNorm threshold (12 runs on cached features).
WB_GRID = {"stage2.train.weight_decay": [1e-3, 1e-2, 1e-1], "stage2.train.loss.cb_beta": [0.99, 0.9999],
           "stage2.maxnorm_thresh": [0.1, 0.5]}
# --quick runs configs/demo/*.yaml as they are. The default (one seed) and --full (three) run the papers' own weight
# decay (WB 5e-3 on all parameters; HS 5e-3 in the loss + FR 0.01) for 20 epochs instead of 12, at the demo's
# lr 0.05 instead of the papers' 0.01: at 0.01 twenty epochs underfit and the HS single stage and every
# re-balanced classifier trail (3 seeds: HS + LA 71.7 vs WB 83.0); at 0.05 they converge (3 seeds: HS + LA
# 84.5 vs WB 84.2). Also measured and not adopted (seed 0, test all; docs/reproduction.md, "`--full` settings
# search"): the papers' 200 epochs on a tenth of the data (n_max 500; WD - naive -3.4) and WD / HS decay
# 1e-3 at lr 0.05 (WD - naive -1.5, HS + LA - WB -3.3). Overrides per stage-1 config ("" = all of them).
FULL: dict[str, list[str]] = {"": ["train.epochs=20", "train.lr=0.05"],
                              "fmnist_wd": ["train.weight_decay=5e-3"],
                              "fmnist_hs_stage1": ["train.wd_in_loss=5e-3"]}
FULL_SEEDS = ["0", "1", "2"]
FULL_POOL_PER_CLASS = 6000     # Fashion-MNIST training images per class
# Why a budget may not show a claim (printed next to a claim that does not hold), from the measured runs.
NOT_SHOWN_QUICK = {
    "WD beats naive": "12 epochs (~2,800 steps) are far too few for weight decay to pay off (WB trains 200-320 "
                      "epochs); no value tried beats naive on val at this budget (configs/demo/fmnist_wd.yaml); "
                      "the default recipe does not show it either (docs/reproduction.md)",
    "WB stage 2 beats WD": "stage 2 re-balances a short-schedule WD model; run without --quick",
    "tau-norm beats WD": "tau-norm re-balances a short-schedule WD model; run without --quick",
    "HS + LA": "the fixed-ETF single stage needs a long schedule for its features to align with the ETF; after "
               "12 epochs it misses its rarest classes, and multiplicative LA only scales their logits",
    "no final method": "after 12 epochs the HS single stage predicts no test image as its rarest class, and "
                       "multiplicative LA (z_c * pi_c^-tau) cannot lift negative logits",
}
NOT_SHOWN_FULL = {
    "WD beats naive": "with resnet8_cifar weight decay costs the rarest classes more than it gives back in every "
                      "setting measured (20 epochs at lr 0.01 or 0.05, decay 1e-3 or 5e-3; 200 epochs on a tenth "
                      "of the data: WD 1.5-11 points below naive); the WB reference code shows it with ResNet-32 "
                      "(docs/reproduction.md, \"Checked against the WB reference code\"), about 4x this budget",
    "HS + LA": "20 epochs are still far from the HS paper's 320: the ETF single stage misses its rarest classes",
    "no final method": "the HS single stage still predicts no test image as some rare class after 20 epochs, "
                       "and multiplicative LA cannot lift negative logits",
}


def run_stage1_parallel(names: list[str], overrides: list[str], runs_root: str,
                        per_name: dict[str, list[str]] | None = None) -> dict[str, RunDir]:
    """Stage-1 runs as parallel `ltbench run` processes with one thread each: on 2 cores, single-threaded
    runs side by side deliver more images/s in total than one run on 2 threads (BENCHMARKS.md)."""
    # The command line is the one perf and the GPU check start (bench/launch/local.py); the pool is the demo's
    # own: they time one run at a time, the demo wants its runs side by side (local.py's docstring says why).
    per_name = per_name or {}
    runs = {}
    for n in names:
        cfg = load_config(CONFIG_DIR / f"{n}.yaml", [*per_name.get(n, []), *overrides])
        runs[n] = RunDir.for_config(cfg, runs_root)
    logs = Path(runs_root) / "demo" / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    def one(n: str) -> None:
        if runs[n].is_complete():
            log(f"{n}: complete already ({runs[n].path})")
            return
        t0 = time.time()
        log(f"{n}: training -> {runs[n].path} (log: {logs / (n + '.log')})")
        with open(logs / f"{n}.log", "w") as f:
            rc = subprocess.run(run_command([str(CONFIG_DIR / f"{n}.yaml"), *per_name.get(n, []), *overrides,
                                             "runtime.threads=1", "runtime.progress=off", "--runs-root", runs_root]),
                                stdout=f, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            tail = (logs / f"{n}.log").read_text().strip().splitlines()[-1:]
            raise RuntimeError(f"demo run {n} failed (exit {rc}): {' '.join(tail)}; see {logs / (n + '.log')}")
        log(f"{n}: done in {time.time() - t0:.0f} s")

    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        list(pool.map(one, names))
    return runs


def run_child(config: str, parent: RunDir, runs_root: str, extra: Sequence[str] = ()) -> dict[str, Any]:
    """A stage2 / posthoc run on a finished parent run directory, in this process."""
    cfg = load_config(CONFIG_DIR / f"{config}.yaml", [f"parent={parent.path}", *extra, "runtime.progress=off"])
    run = RunDir.for_config(cfg, runs_root)
    result = run_experiment(cfg, run, runs_root=runs_root, parent=parent)
    return {"cfg": cfg, "result": result, "run": run}


def run_seed(runs_root: str, overrides: list[str],
             per_name: dict[str, list[str]]) -> tuple[list[Path], dict[str, Any]]:
    """One seed of the demo: stage 1 in parallel, then the WB grid, tau-norm and HS LA (cheap, in process).
    Returns the run directories and each method's config (for the deviations)."""
    s1 = run_stage1_parallel(STAGE1, list(overrides), runs_root, per_name)
    grid = []
    for values in itertools.product(*WB_GRID.values()):
        extra = [f"{k}={v}" for k, v in zip(WB_GRID, values)]
        grid.append((run_child("fmnist_wb", s1["fmnist_wd"], runs_root, extra), dict(zip(WB_GRID, values))))
    best, chosen = max(grid, key=lambda g: g[0]["result"]["val_metrics"]["all"])  # first on ties
    log(f"WB stage 2: best of {len(grid)} on val: {chosen}")
    tau_norm = run_child("fmnist_taunorm", s1["fmnist_wd"], runs_root)
    hs = run_child("fmnist_hs", s1["fmnist_hs_stage1"], runs_root)
    runs = [r.path for r in s1.values()] + [g[0]["run"].path for g in grid] + [tau_norm["run"].path, hs["run"].path]
    configs = {}
    for n in STAGE1:
        cfg = load_config(CONFIG_DIR / f"{n}.yaml", [*per_name.get(n, []), *overrides])
        configs[cfg.method] = cfg.to_dict()
    configs.update({c["cfg"].method: c["cfg"].to_dict() for c in (tau_norm, best, hs)})
    return runs, configs


def report(table: Table, configs: dict[str, Any], quick: bool) -> str:
    """Deviations from the papers' recipes and the claims check, for under the table."""
    rows = rows_from_table(table)
    grid = " x ".join(f"{k.rsplit('.', 1)[-1]} {v}" for k, v in WB_GRID.items())
    lines = ["", "Deviations from the papers' recipes (WB: Alshammari et al. 2022; HS: Hasegawa & Sato 2024):",
             *deviations(configs, {"wb": (list(WB_GRID), f"weight decay, beta and MaxNorm threshold chosen on val "
                                                         f"from {grid}")},
                         full_n_max=FULL_POOL_PER_CLASS - configs["naive"]["data"]["val_per_class"]),
             "", format_claims(check_claims(rows), max(r["seeds"] for r in rows.values()),
                               NOT_SHOWN_QUICK if quick else NOT_SHOWN_FULL)]
    return "\n".join(lines) + "\n"


def run_demo(runs_root: str, overrides: list[str], full: bool = False, quick: bool = False) -> int:
    """The demo: one seed of the papers' weight decay for 20 epochs (FULL), three seeds with `full`, or with
    `quick` one seed of configs/demo/*.yaml as they are; a `seed=N` override runs that seed alone."""
    if full and quick:
        raise ConfigError("ltbench demo: --full and --quick exclude each other (--full: 3 seeds of the default "
                          "recipe; --quick: the 12-epoch configs, one seed)")
    t0 = time.time()
    log(f"Fashion-MNIST found in {ensure_fashion_mnist()}")
    profile = {} if quick else FULL
    seed_list = [o.split("=", 1)[1] for o in overrides if o.startswith("seed=")][-1:] or (
        FULL_SEEDS if full else ["0"])
    rest = [o for o in overrides if not o.startswith("seed=")]
    runs: list[Path] = []
    for seed in seed_list:
        r, configs = run_seed(runs_root, [*profile.get("", []), *rest, f"seed={seed}"],
                              {n: o for n, o in profile.items() if n})
        runs += r

    # The table is `ltbench table` over exactly this demo's runs, the WB grid reduced to its best
    # setting on val (the same choice as above), with its per-class plot beside it.
    tag = ("quick-" if quick else "") + ("full" if len(seed_list) > 1 else f"seed{seed_list[0]}")
    out = Path(runs_root) / "demo" / f"table-{tag}.md"
    print()
    table = build_table(collect([str(r) for r in runs]), select="val")
    text = save_table(table, "md", None, out.with_suffix("")) + report(table, configs, quick)
    write_text_atomic(out, text)
    sys.stdout.write(text)
    log(f"demo finished in {time.time() - t0:.0f} s; table -> {out}; runs under {Path(runs_root) / 'demo'}; "
        f"all seeds run so far: ltbench table {Path(runs_root) / 'demo'} --select val")
    return 0
