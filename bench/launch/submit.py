"""`ltbench submit`: a config and the runs it depends on, as SLURM jobs through submitit (or locally).

The plan is a function of the resolved configs: every run has its deterministic run directory, so a
complete run is skipped, an incomplete one is submitted again and resumes from its last checkpoint,
and no run is submitted twice. A stage-2 / post-hoc config brings its parent along, and a distilled model its
teacher (train.distill.teacher): the child waits for it (`afterok`) and is cancelled by SLURM if the parent fails
(`kill-on-invalid-dep`).

Jobs are checkpointable: on SIGUSR2 (preemption, or the time limit approaching) submitit calls
`RunJob.checkpoint`, which requeues the same job; the run continues from its latest atomic checkpoint.
The number of requeues is bounded (`--max-requeues`) and counted in the run directory.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from bench.config import Config, ConfigError, load_yaml, parent_path
from bench.experiment import load_config
from bench.errors import error_line, user_errors
from bench.launch.jobs import queued_job
from bench.runtime.lock import DirLock
from bench.runtime.rundir import RunDir


@dataclass
class Node:
    """One run of the plan: the config that makes it and the run it waits for."""

    config: str
    overrides: list[str]
    cfg: Config
    run: RunDir
    parent: Node | None = None
    complete: bool = False
    job_id: str | None = None          # submitted now, or still queued / running from an earlier submit
    queued: bool = False
    children: list[Node] = field(default_factory=list)


def plan(config: str, overrides: list[str], runs_root: str) -> list[Node]:
    """The runs to reach `config` (parents first), one node per run directory."""
    cfg = load_config(config, overrides)
    node = Node(config, list(overrides), cfg, RunDir.for_config(cfg, runs_root))
    nodes = [node]
    # the run this one starts from: a stage-2 / post-hoc config's parent, a distilled model's teacher
    needs = cfg.parent if cfg.stage != "stage1" else cfg.train.distill.teacher
    if needs:
        p = parent_path(needs, Path(config).parent)
        if p.is_file():  # a parent given as an experiment YAML runs first, with this seed (and runtime)
            runtime = [o for o in overrides if o.startswith("runtime.")]
            parents = plan(str(p), [f"seed={cfg.seed}", *runtime], runs_root)
            node.parent = parents[-1]
            nodes = parents + nodes
    for n in nodes:
        n.complete = n.run.is_complete()
        if not n.complete:
            n.job_id = queued_job(n.run)
            n.queued = n.job_id is not None
    return nodes


class RunJob:
    """What a SLURM task executes: `ltbench run` of one config; requeued on preemption."""

    def __init__(self, config: str, overrides: list[str], runs_root: str, max_requeues: int,
                 run_path: Path | None = None) -> None:
        self.config, self.overrides, self.runs_root, self.max_requeues = config, overrides, runs_root, max_requeues
        # known at submit time, so that checkpoint() (a signal handler) needs no config loading
        self.run_path = run_path or RunDir.for_config(load_config(config, overrides), runs_root).path

    def __call__(self) -> int:
        import os
        import signal

        # The preemption signal (SIGUSR2) can arrive while this process is still importing torch. Handled
        # then, submitit's handler exits the process in the middle of torch's import, whose half-registered
        # operators break what runs after it ("Trying to override a python impl for DispatchKey.Meta").
        # So a signal during start-up is only recorded, and handled once the imports are done.
        pending: list[int] = []
        handler = signal.signal(signal.SIGUSR2, lambda signum, frame: pending.append(signum))
        try:
            import torch  # noqa: F401 - the import the signal must not interrupt

            from bench.launch.run import run_config_file
            from bench.train import stage1, stage2  # noqa: F401
        finally:
            signal.signal(signal.SIGUSR2, handler)
        if pending:
            os.kill(os.getpid(), signal.SIGUSR2)     # now submitit checkpoints and requeues, as at any time

        if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
            import submitit

            env = submitit.JobEnvironment()
            os.environ.setdefault("MASTER_ADDR", env.hostnames[0])
            # from the job id, so a requeued job (same id) meets again; offset into a high range
            os.environ.setdefault("MASTER_PORT", str(20000 + int(env.job_id.split("_")[0]) % 20000))
        try:
            run_config_file(self.config, self.overrides, self.runs_root)
        except user_errors() as e:   # bad input: the job fails with the one line `ltbench run` prints
            raise RuntimeError(f"ltbench run {self.config}: {error_line(e)}") from None
        # The run is complete. A preemption signal from here on has nothing to save, yet while the interpreter
        # shuts down Python restores USR2's default action (terminate), and SLURM would record the finished
        # job as FAILED (seen in the local cluster's preemption test). Ignored handlers survive the shutdown.
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        return 0

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Preempted or near the time limit: requeue unless the bound is reached (counted in the run dir)."""
        import submitit

        counter = Path(self.run_path) / "requeues.json"
        n = json.loads(counter.read_text())["requeues"] if counter.is_file() else 0
        if n >= self.max_requeues:
            return None
        counter.parent.mkdir(parents=True, exist_ok=True)
        counter.write_text(json.dumps({"requeues": n + 1}))
        return submitit.helpers.DelayedSubmission(self)


def load_site(path: str | None) -> dict[str, Any]:
    """A site file (YAML) of SLURM settings for a real cluster; see slurm/site.example.yaml."""
    if path is None:
        return {}
    doc = load_yaml(path)      # missing, not YAML or not a mapping: one line naming the file
    known = {"partition", "account", "qos", "constraint", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min",
             "nodes", "tasks_per_node", "setup", "signal_delay_s"}
    unknown = set(doc) - known
    if unknown:
        raise ConfigError(f"site file {path}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(known))})")
    return doc


IGNORE_USR2_THEN = """/bin/sh -c 'trap "" USR2; exec "$0" "$@"' """   # then the python and its arguments


def executor_for(name: str, cluster: str, folder: Path, site: dict[str, Any], after: list[str],
                 parallelism: int) -> Any:
    """A submitit executor for one level of the plan; `after`: job ids it must wait for (afterok)."""
    import submitit

    # The task starts with SIGUSR2 ignored (an ignored signal stays ignored across exec) until submitit installs its
    # handler: a preemption in the task's first moments (Python starting, submitit importing) would otherwise kill
    # it with USR2's default action, and SLURM records FAILED instead of requeueing it (seen in a 120-run sweep
    # preempted twice within 13 s). Ignored, the signal is lost, and SLURM's preemption requeues the job after the
    # partition's grace time all the same.
    ex = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster, slurm_python=IGNORE_USR2_THEN + shlex.quote(
        sys.executable))
    params: dict[str, Any] = {"name": name, "timeout_min": site.get("timeout_min", 60)}
    if cluster == "slurm":
        extra = {k: site[k] for k in ("account", "qos", "constraint") if k in site}
        if after:
            # afterok keeps the job pending until its parents succeed; kill-on-invalid-dep cancels it when
            # one fails, instead of leaving it pending forever
            extra.update({"dependency": "afterok:" + ":".join(after), "kill-on-invalid-dep": "yes"})
        params.update({"slurm_partition": site.get("partition"), "slurm_signal_delay_s": site.get("signal_delay_s", 90),
                       "slurm_additional_parameters": extra, "slurm_setup": site.get("setup", []),
                       "slurm_array_parallelism": parallelism,
                       "nodes": site.get("nodes", 1), "tasks_per_node": site.get("tasks_per_node", 1),
                       "cpus_per_task": site.get("cpus_per_task", 1), "gpus_per_node": site.get("gpus_per_node", 0)})
        if "mem_gb" in site:
            params["mem_gb"] = site["mem_gb"]
        params = {k: v for k, v in params.items() if v is not None}
    ex.update_parameters(**params)
    return ex


def expand_sweep(sweeps: list[str]) -> list[list[str]]:
    """`KEY=V1,V2` axes -> every combination as a list of overrides (the cartesian product)."""
    axes = []
    for sw in sweeps:
        key, _, values = sw.partition("=")
        if not key or not values:
            raise ConfigError(f"--sweep {sw!r}: expected KEY=V1,V2,...")
        axes.append([f"{key}={v}" for v in values.split(",")])
    return [list(combo) for combo in itertools.product(*axes)]


def describe(nodes: list[Node]) -> list[str]:
    out = []
    for n in nodes:
        state = "complete, skipped" if n.complete else f"queued as {n.job_id}" if n.queued else "submit"
        dep = f" after {n.parent.run.path}" if n.parent is not None and not n.parent.complete else ""
        out.append(f"{state:18s} {n.cfg.stage:8s} {n.run.path}{dep}")
    return out


def estimate_cost(nodes: list[Node], runs_root: str) -> list[str]:
    """The device-hours of the runs to submit, from the completed runs under `runs_root` of the same stage,
    dataset and model (their device-hours per epoch, median, x the planned epochs), or why there is none."""
    import statistics

    per_epoch: dict[tuple[str, str, str], list[float]] = {}
    root = Path(runs_root)
    for f in sorted(root.rglob("result.json")) if root.is_dir() else []:
        try:
            res = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(res, dict) and res.get("status") == "complete" and res.get("cost") and res.get("epochs"):
            key = (res.get("stage"), res.get("dataset"), res.get("model"))
            per_epoch.setdefault(key, []).append(res["cost"]["device_hours"] / res["epochs"])
    hours, based, missing = 0.0, 0, set()
    todo = [n for n in nodes if not n.complete and not n.queued and n.cfg.stage != "posthoc"]   # post-hoc: seconds
    for n in todo:
        key = (n.cfg.stage, n.cfg.data.dataset, n.cfg.model.name)
        epochs = (n.cfg.train if n.cfg.stage == "stage1" else n.cfg.stage2.train).epochs
        if key in per_epoch:
            hours += statistics.median(per_epoch[key]) * epochs
            based += 1
        else:
            missing.add("/".join(key))
    out = []
    if based:
        out.append(f"cost estimate: {hours:.3g} device-hours for {based} of {len(todo)} runs to train (device-hours "
                   f"per epoch of completed runs under {runs_root} x planned epochs)")
    if missing:
        out.append(f"cost estimate: none for {', '.join(sorted(missing))} (no completed run of that stage, dataset "
                   f"and model under {runs_root})")
    return out


def submit(configs: list[str], overrides: list[str], runs_root: str, cluster: str, dry_run: bool,
           site_file: str | None, max_requeues: int, sweeps: Sequence[str] = (), parallelism: int = 16) -> list[Node]:
    """Plan every config x sweep point, then submit what is neither complete nor queued.

    The runs of one level (stage-1 runs; then the runs that start from them; ...) go out as one job
    array (at most `parallelism` tasks at once), and a level waits for the jobs of the level before.
    """
    site = load_site(site_file)
    import shutil

    if cluster == "slurm" and shutil.which("srun") is None:
        raise ConfigError("ltbench submit: no SLURM client here (srun not found on PATH); submit from a login "
                          "node of the cluster, or run the plan on this machine with --cluster local")
    # Two submits of overlapping plans on one runs root at once would each find a run neither complete nor queued
    # and both submit it (one job then fails on the run directory's lock, and stage-2 jobs waiting on it are
    # cancelled): planning, submitting and writing each job.json is one step per runs root. A dry run writes nothing.
    lock = contextlib.nullcontext() if dry_run else DirLock(Path(runs_root) / "_submitit", "runs root (ltbench submit)",
                                                           wait=True)
    with lock:
        return _plan_and_submit(configs, overrides, runs_root, cluster, dry_run, site, max_requeues, sweeps,
                                parallelism)


def _plan_and_submit(configs: list[str], overrides: list[str], runs_root: str, cluster: str, dry_run: bool,
                     site: dict[str, Any], max_requeues: int, sweeps: Sequence[str], parallelism: int) -> list[Node]:
    """submit()'s work: plan every config x sweep point, print the plan, submit each level's missing runs."""
    nodes: dict[Path, Node] = {}
    for c in configs:
        for point in expand_sweep(list(sweeps)):
            for n in plan(c, [*overrides, *point], runs_root):
                if n.parent is not None:  # one node object per run, shared by all its children
                    n.parent = nodes.get(n.parent.run.path, n.parent)
                nodes.setdefault(n.run.path, n)
    ordered = list(nodes.values())
    for line in describe(ordered):
        print(line)
    if dry_run:
        for line in estimate_cost(ordered, runs_root):
            print(line)

    def depth(n: Node) -> int:
        return 0 if n.parent is None else depth(n.parent) + 1

    folder = Path(runs_root) / "_submitit"
    for level in range(max((depth(n) for n in ordered), default=-1) + 1):
        todo = [n for n in ordered if depth(n) == level and not n.complete and not n.queued]
        if not todo:
            continue
        after = sorted({n.parent.job_id.split("_")[0] for n in todo
                        if n.parent is not None and n.parent.job_id is not None and not n.parent.complete})
        if dry_run:
            if any(n.parent is not None and not n.parent.complete and n.parent.job_id is None for n in todo):
                after.append(f"<jobs of level {level - 1}>")
            if cluster == "slurm":
                ex = executor_for(f"{todo[0].cfg.name}:{todo[0].cfg.stage}", cluster, folder, site, after, parallelism)
                # submitit's own sbatch text (its API has no public renderer)
                script = ex._executor._make_submission_file_text(ex._executor._submitit_command_str, "dry-run")
                kind = f"a job array of {len(todo)}" if len(todo) > 1 else "1 job"
                print(f"\n# level {level}: {kind}\n{script}")
            continue
        if cluster == "local":
            for n in ordered:  # no dependencies on the local executor: wait for the level before here
                if depth(n) == level - 1 and getattr(n, "job", None) is not None:
                    n.job.result()  # type: ignore[attr-defined]
        name = todo[0].cfg.name if len({n.cfg.name for n in todo}) == 1 else "ltbench"
        ex = executor_for(f"{name}:{todo[0].cfg.stage}", cluster, folder, site, after, parallelism)
        jobs = []
        with ex.batch() if len(todo) > 1 else contextlib.nullcontext():
            for n in todo:
                jobs.append(ex.submit(RunJob(n.config, n.overrides, runs_root, max_requeues, n.run.path)))
        for n, job in zip(todo, jobs):
            n.job_id, n.job = job.job_id, job  # type: ignore[attr-defined]
            n.run.path.mkdir(parents=True, exist_ok=True)
            (n.run.path / "job.json").write_text(json.dumps({
                "job_id": job.job_id, "cluster": cluster, "folder": str(folder / job.job_id),
                "stage": n.cfg.stage, "config": n.config, "overrides": n.overrides}))
            print(f"submitted {n.run.path.name} as job {job.job_id}")
    return ordered
