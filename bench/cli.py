"""The `ltbench` command (also `python -m bench`).

Each subcommand imports what it needs inside its function: `ltbench config` and `--help` start in a
fraction of a second instead of waiting for torch, timm and matplotlib."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import __version__
from bench.config import ConfigError, dump_yaml, find_config
from bench.config.describe import config_markdown, describe_fields
from bench.experiment import load_config
from bench.errors import error_line, user_errors


def cmd_run(args: argparse.Namespace) -> int:
    from bench.launch.run import run_config_file

    # a file, or the name of a shipped config
    run_config_file(find_config(args.config), args.overrides, args.runs_root, run_dir=args.run_dir, wait=args.wait)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.describe:
        if args.format == "markdown":
            sys.stdout.write(config_markdown())
            return 0
        for key, default, doc in describe_fields():
            print(f"{key:36s} {default:>14s}  {doc}")
        return 0
    if not args.config:
        raise ConfigError("ltbench config: give a CONFIG file or --describe")
    cfg = load_config(find_config(args.config), args.overrides)
    sys.stdout.write(dump_yaml(cfg))
    print(f"# run directory: {Path(args.runs_root) / cfg.name / cfg.run_name()}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from bench.launch.demo import run_demo

    return run_demo(args.runs_root, args.overrides, full=args.full, quick=args.quick)


def cmd_fetch(args: argparse.Namespace) -> int:
    from bench.launch.demo import ensure_fashion_mnist
    from bench.runtime.progress import log

    log(f"fashion-mnist: {ensure_fashion_mnist()}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from bench.data.cards import DatasetError
    from bench.data.shards.manifest import verify_shards
    from bench.runtime.progress import log

    out = Path(args.out)
    for flag, value in (("--samples-per-shard", args.samples_per_shard), ("--workers", args.workers)):
        if value < 1:
            raise ConfigError(f"ltbench prepare {flag}: {value} must be at least 1")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"ltbench prepare --out: {out} is a file, not a folder")
    if args.verify:
        bad = verify_shards(out)
        if bad:
            raise DatasetError(f"{len(bad)} shards in {out} do not match their sha256 in manifest.json, e.g. {bad[0]} "
                               f"(run the same `ltbench prepare` command again to rewrite them)")
        log(f"all shards in {out} match manifest.json")
        return 0
    from bench.data.prepare import prepare
    from bench.runtime.lock import DirLock

    with DirLock(out, "prepare output folder", wait=args.wait):    # one writer per output folder
        m = prepare(args.dataset, out, Path(args.src).expanduser() if args.src else None,
                    Path(args.splits).expanduser() if args.splits else None, args.overrides, args.samples_per_shard,
                    args.workers, args.resize_shorter, args.jpeg_quality, args.allow_deviation,
                    array_format=args.array_format)
    sizes = ", ".join(f"{k} {v['num_samples']} in {len(v['shards'])} shards" for k, v in m["splits"].items())
    log(f"{args.dataset}: {sizes} -> {out / 'manifest.json'} (use data.shards={out})")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from bench.launch.submit import submit

    submit([find_config(c) for c in args.configs], list(args.overrides), args.runs_root, args.cluster, args.dry_run,
           args.site, args.max_requeues, args.sweep, args.array_parallelism)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from bench.launch.jobs import status_table

    exp = Path(args.experiment)
    print(status_table(exp if exp.is_dir() else Path(args.runs_root) / args.experiment))
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from bench.report.aggregate import build_table
    from bench.report.collect import collect, records_from_wandb
    from bench.report.render import requestable_columns, save_table

    if not args.paths and not args.wandb:
        raise ConfigError("ltbench table: give run directories / experiments, or --wandb ENTITY/PROJECT")
    records = collect(args.paths) if args.paths else []
    if args.wandb:
        records += records_from_wandb(args.wandb)
    seeds = None
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise ConfigError(f"ltbench table --seeds {args.seeds!r}: expected comma-separated integers") from None
    show = {name for spec in args.show for name in spec.split(",") if name} | ({"cost"} if args.cost else set())
    unknown = sorted(show - set(requestable_columns()))
    if unknown:
        raise ConfigError(f"ltbench table --show {','.join(unknown)}: no such column (columns shown on request: "
                          f"{', '.join(requestable_columns())})")
    table = build_table(records, seeds, args.select, args.reference, args.ci, args.baseline, show, args.protocols)
    out = Path(args.out) if args.out else None
    # PNG files where --plots says, else beside a text --out (an HTML page holds its figures)
    plots = None if args.no_plots else Path(args.plots) if args.plots else (
        out.with_suffix("") if out and args.format != "html" else None)
    figures = None
    if args.format == "html" or args.html:
        from bench.report.html import draw_figures, save_html

        figures = [] if args.no_plots else draw_figures(table, plots)   # drawn once, for the page and the files
    if args.format == "html":
        text = save_html(table, out, figures)
    else:
        text = save_table(table, args.format, out, None if figures is not None else plots)
    if args.html:
        save_html(table, Path(args.html), figures)
    if out is None:
        sys.stdout.write(text)
    return 0


def cmd_perf(args: argparse.Namespace) -> int:
    from bench.devtools.perf import SECTIONS, run_perf
    from bench.runtime.progress import log

    named_only = ("scale", "sweep") + (() if args.wb_reference else ("wbref",)) + (("demo",) if args.quick else ())
    only = args.only.split(",") if args.only else [x for x in SECTIONS if x not in named_only]
    unknown = [x for x in only if x not in SECTIONS]
    if unknown:
        raise ConfigError(f"ltbench perf --only: unknown section(s) {', '.join(unknown)} "
                          f"(known: {', '.join(SECTIONS)})")
    out = Path(args.out)
    from bench.devtools.gpucheck import PARTS

    parts = tuple(args.gpu_parts.split(",")) if args.gpu_parts else PARTS
    if set(parts) - set(PARTS):
        raise ConfigError(f"ltbench perf --gpu-parts: unknown part(s) {', '.join(sorted(set(parts) - set(PARTS)))} "
                          f"(known: {', '.join(PARTS)})")
    gpu = {"budget_s": args.budget_s, "parts": parts}
    if args.gpu_models:
        gpu["models"] = tuple(args.gpu_models.split(","))
    ref = Path(args.wb_reference) if args.wb_reference else None
    if ref is not None and not (ref / "utils" / "trainval.py").is_file():
        raise ConfigError(f"ltbench perf --wb-reference: {ref} holds no utils/trainval.py (give a clone of "
                          "github.com/ShadeAlsha/LTR-weight-balancing)")
    run_perf(out, only, args.repeats, args.quick, args.threads, gpu, ref)
    log(f"perf report -> {out / 'perf.md'} and {out / 'perf.json'}")
    sys.stdout.write((out / "perf.md").read_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ltbench", description="Long-tailed recognition benchmark runner "
                                "(weight balancing and its single-stage simplification).")
    p.add_argument("--version", action="version", version=f"ltbench {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, config: bool = True) -> None:
        if config:
            sp.add_argument("config", nargs="?" if sp.prog.endswith("config") else None,
                            help="experiment YAML file, or a shipped config by name (smoke, demo/fmnist_wd)")
        sp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.lr=0.1")
        sp.add_argument("--runs-root", default="runs", help="where run directories are created (default: runs/)")

    sp = sub.add_parser("run", help="train (or resume, or skip if complete) one experiment")
    common(sp)
    sp.add_argument("--run-dir", default=None, help="use this run directory instead of <runs-root>/<name>/<run>")
    sp.add_argument("--wait", action="store_true", help="if another process is running this run, wait for it "
                    "(then resume or skip) instead of stopping")
    sp.set_defaults(fn=cmd_run)

    sp = sub.add_parser("config", help="print the resolved config, or --describe every field")
    common(sp)
    sp.add_argument("--describe", action="store_true", help="list every config key with its default and meaning")
    sp.add_argument("--format", choices=["text", "markdown"], default="text",
                    help="with --describe: text columns, or Markdown (the page docs/config.md)")
    sp.add_argument("--markdown", dest="format", action="store_const", const="markdown",
                    help="same as --format markdown")
    sp.set_defaults(fn=cmd_config)

    sp = sub.add_parser("demo", help="the main job: naive, WD, tau-norm, WB and HS on Fashion-MNIST-LT (IF 100), "
                        "with the papers' claims checked under the table")
    common(sp, config=False)
    sp.add_argument("--full", action="store_true", help="three seeds (about 25 minutes on 2 cores); without it one "
                    "seed of the papers' weight decay for 20 epochs at lr 0.05 (about 8 minutes)")
    sp.add_argument("--quick", action="store_true", help="one seed of the 12-epoch configs/demo/*.yaml as they are "
                    "(about 6 minutes); its claims check says which claims that budget does not show")
    sp.set_defaults(fn=cmd_demo)

    sp = sub.add_parser("submit", help="submit configs (and the runs they depend on) as SLURM jobs via submitit")
    sp.add_argument("configs", nargs="+", metavar="CONFIG", help="experiment YAML files (or shipped config names)")
    sp.add_argument("--override", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override applied to every CONFIG (repeatable)")
    sp.add_argument("--runs-root", default="runs", help="where run directories are created (default: runs/)")
    sp.add_argument("--cluster", choices=["slurm", "local"], default="slurm",
                    help="slurm (sbatch) or local (submitit's local executor, this machine)")
    sp.add_argument("--dry-run", action="store_true", help="print the plan, submit nothing")
    sp.add_argument("--site", default=None, help="site file (YAML): partition, account, GPUs, time ...")
    sp.add_argument("--max-requeues", type=int, default=10, help="requeues on preemption / time limit per job")
    sp.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                    help="sweep axis (repeatable; the runs are every combination), e.g. seed=0,1,2")
    sp.add_argument("--array-parallelism", type=int, default=16, help="job-array tasks running at once")
    sp.set_defaults(fn=cmd_submit)

    sp = sub.add_parser("status", help="table of an experiment's runs and jobs: state, requeues, epoch, latest metrics")
    sp.add_argument("experiment", help="experiment name (under --runs-root) or its directory")
    sp.add_argument("--runs-root", default="runs", help="where run directories are (default: runs/)")
    sp.set_defaults(fn=cmd_status)

    sp = sub.add_parser("table",
                        help="benchmark table of many runs: mean +- std over seeds of all / many / medium / few")
    sp.add_argument("paths", nargs="*", metavar="PATH", help="run directories, experiments or runs roots")
    sp.add_argument("--format", choices=["md", "latex", "csv", "html"], default="md",
                    help="output format (default md; html: the page of --html)")
    sp.add_argument("--out", default=None, help="write the table here (and its plots as <out stem>-<dataset>.png)")
    sp.add_argument("--seeds", default=None, help="expected seeds, e.g. 0,1,2 (default: every seed among the runs)")
    sp.add_argument("--select", choices=["val"], default=None,
                    help="one row per method: of its settings on a dataset, the best mean val accuracy")
    sp.add_argument("--reference", action="store_true", help="add the published numbers (datasets/published/)")
    sp.add_argument("--ci", choices=["t", "bootstrap"], default=None,
                    help="add a 95%% interval of the mean over seeds to every cell (Student t, or percentile "
                         "bootstrap)")
    sp.add_argument("--protocols", action="store_true",
                    help="rows per protocol (clean, wb-reference, hs-reference), and each method's reference-protocol "
                         "number beside its clean one")
    sp.add_argument("--show", action="append", default=[], metavar="COLUMN[,COLUMN]",
                    help="add columns shown only on request: cost = each cell's device-hours (GPU-h / CPU-h from "
                         "result.json: wall time x processes, requeued attempts included)")
    sp.add_argument("--cost", action="store_true", help="the same as --show cost")
    sp.add_argument("--baseline", default=None, metavar="METHOD",
                    help="compare every row with METHOD: paired t-test of 'all' over the seeds both completed "
                         "(▲ / ▼ at p < 0.05; CSV: difference, p, pairs)")
    sp.add_argument("--wandb", default=None, metavar="ENTITY/PROJECT",
                    help="also read runs from W&B run summaries (online; needs a login)")
    sp.add_argument("--plots", default=None, metavar="PREFIX", help="write plots as PREFIX-<dataset>.png")
    sp.add_argument("--no-plots", action="store_true", help="no plots, even with --out (--html: no figures)")
    sp.add_argument("--html", default=None, metavar="OUT",
                    help="also write one self-contained HTML page: caption, table, notes, published rows with their "
                         "provenance, and the plots embedded (no external files)")
    sp.set_defaults(fn=cmd_table)

    sp = sub.add_parser("perf", help="measure the trainer, data pipeline, stage 2, DDP, demo and GPU speed; the "
                        "scale at iNaturalist's size; a sweep on SLURM")
    sp.add_argument("--out", default="perf", help="report directory: perf.md, perf.json (default perf/)")
    sp.add_argument("--only", default=None,
                    help="comma-separated sections: trainer, data, stage2, ddp, demo, gpu, wbref; only when named: "
                         "scale (iNaturalist 2018's size, about 20 minutes), sweep (a 120-run sweep on the SLURM "
                         "cluster of SLURM_CONF)")
    sp.add_argument("--repeats", type=int, default=3, help="interleaved repeats per measurement (median reported)")
    sp.add_argument("--quick", action="store_true", help="tiny synthetic setting (checks the command, not the speed)")
    sp.add_argument("--threads", type=int, default=None, help="torch threads per run (default: all cores)")
    sp.add_argument("--budget-s", type=float, default=420.0,
                    help="gpu section: seconds it may take; items that do not fit are reported as skipped")
    sp.add_argument("--gpu-parts", default=None,
                    help="gpu section: comma-separated parts: pipeline, models, foundation, end_to_end")
    sp.add_argument("--gpu-models", default=None,
                    help="gpu section: comma-separated timm models (default resnet50,resnext50_32x4d)")
    sp.add_argument("--wb-reference", default=None, metavar="DIR",
                    help="wbref section: a clone of the WB reference code (github.com/ShadeAlsha/LTR-weight-balancing)")
    sp.set_defaults(fn=cmd_perf)

    sp = sub.add_parser("prepare", help="write a dataset as webdataset tar shards + manifest.json (data.shards=OUT)")
    sp.add_argument("dataset", help="dataset card name: fashion-mnist, cifar10, cifar100, imagenet-lt, places-lt, "
                    "inat2018, synthetic")
    sp.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                    help="CIFAR / Fashion-MNIST: the long-tailed cut, e.g. imbalance_factor=50 val_per_class=0")
    sp.add_argument("--out", required=True, help="output directory (shards, manifest.json)")
    sp.add_argument("--src", help="image root (ImageNet-LT, Places-LT, iNat) or raw files directory (CIFAR, "
                    "Fashion-MNIST; default: auto-detect)")
    sp.add_argument("--splits", help="directory of the split files / JSON (default: --src)")
    sp.add_argument("--samples-per-shard", type=int, default=1000, help="samples per tar shard (default 1000)")
    sp.add_argument("--workers", type=int, default=2, help="parallel writer processes (default 2)")
    sp.add_argument("--resize-shorter", type=int, default=None, help="re-encode: shorter side at most this")
    sp.add_argument("--jpeg-quality", type=int, default=None, help="re-encode as JPEG with this quality")
    sp.add_argument("--array-format", choices=["png", "npy"], default="png",
                    help="CIFAR / Fashion-MNIST / synthetic: images as PNG, or raw .npy (lossless, no PIL decode: "
                    "faster for small images, BENCHMARKS.md)")
    sp.add_argument("--allow-deviation", action="store_true",
                    help="prepare even when the source differs from the card's expected statistics (recorded)")
    sp.add_argument("--verify", action="store_true", help="only check every shard in --out against its sha256")
    sp.add_argument("--wait", action="store_true", help="if another `ltbench prepare` writes to --out, wait for it")
    sp.set_defaults(fn=cmd_prepare)

    sp = sub.add_parser("fetch", help="make sure a dataset is present (Debian package as root, else download)")
    sp.add_argument("dataset", choices=["fashion-mnist"])
    sp.set_defaults(fn=cmd_fetch)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # KEY=VALUE overrides may also come after options (`prepare cifar100 --out D imbalance_factor=50`),
    # which argparse alone leaves unparsed.
    args, rest = parser.parse_known_args(argv)
    stray = [r for r in rest if r.startswith("-") or "=" not in r or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if rest:
        args.overrides = list(args.overrides) + rest
    try:
        return args.fn(args)
    except user_errors() as e:
        print(f"ltbench: error: {error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ltbench: interrupted; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130
