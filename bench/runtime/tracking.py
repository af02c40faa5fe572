"""Weights & Biases tracking: one W&B run per run directory (= per stage), grouped by experiment.

Rules (wandb's documented behaviour, checked here):
- only global rank 0 talks to W&B;
- the run id is written to <run>/wandb.json before wandb.init, and a resumed or requeued job continues
  the same W&B run (id=..., resume="allow"); the step is the epoch, so it never decreases, and epochs
  the previous attempt finished but never logged are logged on resume;
- every W&B call runs on a background thread: training only puts work in a queue, so a slow or failing
  W&B (no network, bad key) never stops or slows it. The first failure warns once and tracking stops
  for that run; the numbers are in the run directory either way;
- the API key is read by wandb itself (`wandb login` / WANDB_API_KEY) and never passes through here.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from bench.config import GROUPS, Config, ConfigError
from bench.errors import one_line
from bench.runtime import dist
from bench.runtime.progress import log
from bench.runtime.rundir import RunDir, write_text_atomic

STATE_FILE = "wandb.json"
_OPEN: set[Tracker] = set()     # trackers of this process whose W&B run is not closed yet


def abort_open(reason: BaseException) -> None:
    """Close every open tracker as failed (`ltbench run` calls this when a stage raises)."""
    for tracker in list(_OPEN):
        tracker.abort()


def wandb_mode(cfg: Config) -> str:
    """Config field, else WANDB_MODE, else offline (no network calls; `wandb sync` uploads later)."""
    mode = cfg.wandb.mode or os.environ.get("WANDB_MODE") or "offline"
    # wandb also knows "dryrun" (= offline) and "run" (= online); anything else is a typo worth naming
    mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)
    if mode not in ("online", "offline", "disabled"):
        raise ConfigError(f"W&B mode {mode!r} (from WANDB_MODE) is not one of online, offline, disabled")
    return mode


def epoch_log(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics.jsonl row as W&B keys: train/loss, val/all ... val/few, analysis scalars."""
    out: dict[str, Any] = {"epoch": row["epoch"], "lr": row["lr"], "train/loss": row["train_loss"],
                           "train/acc": row["train_acc"], "perf/epoch_time_s": row["epoch_time_s"],
                           "perf/images_per_s": row["images_per_s"]}
    if "train_time_s" in row:
        out["perf/train_time_s"] = row["train_time_s"]
    for key, val in row.items():
        if isinstance(val, dict) and "all" in val:          # the selection split's metrics
            out.update({f"{key}/{g}": val[g] for g in ("all", *GROUPS) if val.get(g) is not None})
    ana = row.get("analysis") or {}
    for key in ("fdr", "feature_norm_mean"):
        if key in ana:
            out[f"analysis/{key}"] = ana[key]
    return out


def summary_of(result: Mapping[str, Any]) -> dict[str, Any]:
    """What `ltbench table --wandb` needs from a run: the identity of the row and its metrics."""
    out: dict[str, Any] = {k: result.get(k) for k in ("status", "name", "method", "dataset", "imbalance_factor",
                                                      "seed", "stage", "model", "protocol", "selected_epoch",
                                                      "config_hash", "wall_time_s")}
    for split, key in (("test", "metrics"), ("val", "val_metrics")):
        for g, v in (result.get(key) or {}).items():
            if v is not None:
                out[f"{split}/{g}"] = v
    if result.get("posthoc"):
        out["posthoc/tau"] = result["posthoc"]["tau"]
    return out


class Tracker:
    """The W&B side of one run; a no-op off rank 0 or with mode=disabled."""

    def __init__(self, cfg: Config, run: RunDir, extra_config: dict[str, Any] | None = None) -> None:
        self.mode = wandb_mode(cfg)
        self.active = self.mode != "disabled" and dist.is_main()
        self.run_dir = run
        self.failed = False
        self._wb: Any = None
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._finish_timeout = cfg.wandb.finish_timeout
        if not self.active:
            return
        state_file = run.path / STATE_FILE
        try:
            state = json.loads(state_file.read_text()) if state_file.is_file() else {}
        except json.JSONDecodeError:
            self._warn(f"{state_file} is not valid JSON; this run starts a new W&B run")
            state = {}
        # One W&B run per run directory: the id is chosen once and written before wandb.init, so a job
        # killed during init still resumes the same W&B run.
        self.state = {"id": state.get("id") or secrets.token_hex(4), "last_step": state.get("last_step", 0),
                      "mode": self.mode, "project": os.environ.get("WANDB_PROJECT") or cfg.wandb.project,
                      "entity": os.environ.get("WANDB_ENTITY") or cfg.wandb.entity, "group": cfg.name}
        self._save_state()
        _OPEN.add(self)
        init = dict(id=self.state["id"], resume="allow", project=self.state["project"], entity=self.state["entity"],
                    group=cfg.name, job_type=cfg.stage, name=run.path.name, dir=str(run.path), mode=self.mode,
                    tags=sorted({cfg.method, cfg.data.dataset, cfg.stage, cfg.protocol, *cfg.wandb.tags}),
                    config={**cfg.to_dict(), **(extra_config or {}), "run_dir": str(run.path)})
        self._thread = threading.Thread(target=self._work, name="wandb", daemon=True)
        self._thread.start()
        self._put(lambda: self._init(init, cfg.wandb.init_timeout))

    # ------------------------------------------------------------------ called from training
    def resume(self, history: list[dict[str, Any]]) -> None:
        """Log the epochs of `history` that no earlier attempt got onto disk.

        wandb.json's last_step says what was handed to wandb; offline, wandb-core buffers its writes and a
        SIGKILLed attempt can leave its run file with fewer steps (or none), so the last step actually in
        the offline files counts. (Online the server has it; what was in flight at the kill is lost.)
        """
        if not self.active:
            return
        if self.mode == "offline":
            self.state["last_step"] = offline_last_step(self.run_dir.path, self.state["id"])
        for row in history:
            if row["epoch"] > self.state["last_step"]:
                self.log_epoch(row)

    def log_epoch(self, row: dict[str, Any]) -> None:
        if self.active:
            data, step = epoch_log(row), int(row["epoch"])
            self._put(lambda: self._log(data, step))

    def finish(self, result: Mapping[str, Any], images: dict[str, Path] | None = None) -> None:
        """Summary (all / many / medium / few of test and val), per-class table and plots; then close."""
        if not self.active:
            return

        def final() -> None:
            wandb = self._wandb()
            self._wb.summary.update(summary_of(result))
            payload: dict[str, Any] = {"per_class": per_class_table(wandb, result)}
            for key, path in (images or {}).items():
                if path.is_file():
                    payload[key] = wandb.Image(str(path))
            # one step past the last epoch: W&B steps only increase, and the epochs keep their own
            self._log(payload, self.state["last_step"] + 1)
            self._wb.finish()
            self._wb = None

        self._put(final)
        self.close()

    def abort(self) -> None:
        """The run failed: finish the W&B run as failed (exit code 1), then close."""
        def fail() -> None:
            if self._wb is not None:
                self._wb.finish(exit_code=1)
                self._wb = None

        self._put(fail)
        self.close()

    def close(self) -> None:
        """Stop the worker (bounded wait: W&B never holds the end of a run for longer than finish_timeout)."""
        _OPEN.discard(self)
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(self._finish_timeout)
        if self._thread.is_alive():
            self._warn(f"W&B did not finish within wandb.finish_timeout={self._finish_timeout:g} s; leaving it")
        self._thread = None

    # ------------------------------------------------------------------ the worker thread
    def _put(self, op: Callable[[], None]) -> None:
        if not self.failed:
            self._queue.put(op)

    def _work(self) -> None:
        while (op := self._queue.get()) is not None:
            if self.failed:
                continue
            try:
                op()
            except Exception as e:  # noqa: BLE001 - any W&B problem: warn once, keep training
                self.failed = True
                self._warn(f"W&B {self.mode} tracking failed ({type(e).__name__}: {one_line(e)}); training goes on, "
                           f"results are in {self.run_dir.path}")
                try:
                    if self._wb is not None:
                        self._wb.finish(exit_code=1, quiet=True)
                except Exception:  # noqa: BLE001
                    pass

    def _wandb(self) -> Any:
        import wandb

        return wandb

    def _init(self, kwargs: dict[str, Any], timeout: float) -> None:
        wandb = self._wandb()
        # reinit=create_new: a run of this process left open (an earlier stage that failed) never
        # receives this run's metrics
        settings = wandb.Settings(console="off", silent=True, x_disable_stats=True, disable_git=True,
                                  save_code=False, init_timeout=timeout, reinit="create_new")
        self._wb = wandb.init(settings=settings, **kwargs)

    def _log(self, data: dict[str, Any], step: int) -> None:
        self._wb.log(data, step=step)
        self.state["last_step"] = max(step, self.state["last_step"])
        self._save_state()

    def _save_state(self) -> None:
        write_text_atomic(self.run_dir.path / STATE_FILE, json.dumps(self.state, indent=2) + "\n")

    def _warn(self, msg: str) -> None:
        log(f"warning: {msg}")


def offline_records(path: Path, block: int = 32768) -> Iterator[tuple[str, Any]]:
    """(kind, protobuf Record) of every record in an offline run file (<run>/wandb/offline-run-*/run-ID.wandb).

    The format: a 7-byte header (":W&B", magic, version), then LevelDB-log style 32 KiB blocks of chunks
    (crc32 4 bytes, length 2, type 1: full / first / middle / last) holding wandb_internal.proto Records.
    A torn tail (a killed writer) ends the scan.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:                      # a block tail too short for a chunk header is padding
            pos += left
            continue
        n, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if n == 0 and kind == 0:          # zero padding up to the next block
            pos += left
            continue
        if pos + 7 + n > len(data):
            return
        chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind == 2:
            buf = chunk
            continue
        if kind == 3:
            buf += chunk
            continue
        rec = pb.Record()  # type: ignore[attr-defined]
        rec.ParseFromString(chunk if kind == 1 else buf + chunk)
        yield rec.WhichOneof("record_type"), rec


def offline_last_step(run_path: Path, run_id: str) -> int:
    """The highest history step in the offline files of W&B run `run_id` (0 when none, or unreadable)."""
    last = 0
    for f in sorted(run_path.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb")):
        try:
            for kind, rec in offline_records(f):
                if kind == "history":
                    last = max([last] + [int(json.loads(i.value_json)) for i in rec.history.item
                                         if (i.key or "/".join(i.nested_key)) == "_step"])
        except Exception:  # noqa: BLE001 - a file wandb wrote differently: count it as empty
            continue
    return last


def per_class_table(wandb: Any, result: Mapping[str, Any]) -> Any:
    """Per-class test accuracy with class size, group and classifier weight norm, as a W&B table."""
    group_of = {c: g for g, cs in result["groups"].items() for c in cs}
    norms = (result.get("analysis") or {}).get("weight_norms") or [None] * len(result["class_counts"])
    cols = ["class", "name", "train_images", "group", "test_acc", "weight_norm"]
    rows = [[c, result["class_names"][c], n, group_of[c], result["per_class_acc"][c], norms[c]]
            for c, n in enumerate(result["class_counts"])]
    return wandb.Table(columns=cols, data=rows)
