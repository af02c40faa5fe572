"""The run directory: one per (experiment, resolved config), written by rank 0 only.

<runs-root>/<name>/<method>-seed<seed>-<hash>/
    config.yaml        fully resolved config (what produced every number in this directory)
    run.json           class counts, selection hash, versions, host, command
    metrics.jsonl      one JSON line per finished epoch
    checkpoints/last.pt   everything needed to continue exactly (atomic)
    checkpoints/best.pt   model weights of the best epoch on the selection split
    checkpoints/final.pt  weights of the reported model (what stage2 / posthoc children start from)
    result.json        final metrics; its presence with status=complete marks the run done
                       (status=failed: the last attempt's one-line error; the run resumes on rerun)
    wandb.json         the W&B run id (reused on resume) and the last step logged
    wandb/             W&B's files (offline runs: `wandb sync <run>/wandb/offline-run-*`)
    per_class.png      per-class accuracy against training class size
    features/          pooled features of final.pt per split, cached for stage2 / posthoc children

This module imports no torch at module level: bench.launch.submit imports it, and a SLURM job unpickles its RunJob
(importing bench.launch.submit) before submitit installs the preemption handler, so a signal then would kill the
job (tests/unit/test_layers.py checks that `import bench.launch.submit` loads no torch).
"""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Collection
from typing import Any, TypedDict

import yaml

from bench.config import Config, ConfigError, dump_yaml, stored_config
from bench.runtime.atomic import write_atomic

Metrics = dict[str, float | None]      # all / many / medium / few (%); None for an empty group


class Result(TypedDict, total=False):
    """result.json, written by the stages through RunDir.write_result and read through RunDir.read_result.

    status "failed" carries only `error`; a complete result carries the rest. Stage-specific keys: epochs,
    data_padded_per_epoch (trained stages), parent, cached_features, trained_blocks, maxnorm_radius (stage 2),
    posthoc {kind, tau, chosen_on, grid} (post-hoc), trainable_params, zeroshot, peft (stage 1)."""

    status: str                         # "complete" | "failed"
    error: str
    name: str
    dataset: str
    imbalance_factor: float | None
    method: str
    protocol: str
    seed: int
    stage: str
    model: str
    experts: int                        # model.experts (RIDE / SADE); absent from results written before it
    metrics: Metrics                    # test, of the reported model
    val_metrics: Metrics | None
    metrics_last_epoch: Metrics
    selected_epoch: int | None
    selection: dict[str, Any]           # split, select, tta_flip, select_tta_flip
    per_class_acc: list[float | None]
    per_class_acc_last_epoch: list[float | None]   # the last epoch's (= per_class_acc unless another epoch is reported)
    class_counts: list[int]
    class_names: list[str]
    groups: dict[str, list[int]]
    group_thresholds: dict[str, Any]
    analysis: dict[str, Any]
    selection_hash: str
    data_manifest: str | None
    data_errors: dict[str, Any] | None
    world_size: int
    config_hash: str
    parent_hash: str | None
    wall_time_s: float
    cost: dict[str, Any]                # device, gpu, processes, seconds, device_hours
    epochs: int
    data_padded_per_epoch: int
    parent: str
    cached_features: bool
    trained_blocks: int
    maxnorm_radius: float | None
    posthoc: dict[str, Any]
    # source (card | model), mean, std, to_rgb, pad_to, resize, image_size, eval_resize
    preprocessing: dict[str, Any]
    trainable_params: dict[str, Any]    # stage 1: trainable, total, share (adapters and classifier under model.peft)
    zeroshot: dict[str, Any]            # stage 1 with model.classifier=zeroshot: logit_scale, templates, text tower
    peft: dict[str, Any]                # stage 1 with model.peft: method, merged_layers


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.config_hash: str | None = None     # the run's config hash, set by prepare(): stamped into every file

    @classmethod
    def for_config(cls, cfg: Config, runs_root: str | Path) -> RunDir:
        return cls(Path(runs_root) / cfg.name / cfg.run_name())

    # paths
    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def last_ckpt(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    @property
    def best_ckpt(self) -> Path:
        return self.path / "checkpoints" / "best.pt"

    @property
    def final_ckpt(self) -> Path:
        return self.path / "checkpoints" / "final.pt"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def result_file(self) -> Path:
        return self.path / "result.json"

    def is_complete(self) -> bool:
        try:
            return self.read_result(RESULT_STATE).get("status") == "complete"
        except ConfigError:        # damaged: not complete (reading it for a table names the problem)
            return False

    def read_result(self, keys: Collection[str] | None = None, skip: Collection[str] = ()) -> Result:
        """result.json ({} when there is none yet); a damaged one is a one-line error naming the file.
        With `keys` (only those top-level keys) or `skip` (all but those), the rest is left undecoded where the
        file has one key per line, as write_result writes it: `ltbench status` over 1,000 runs of 8,142 classes
        reads their state without decoding the per-class lists (~10 ms a run). A file in another layout (written
        by an earlier version) is decoded whole."""
        if not self.result_file.is_file():
            return {}
        text = self.result_file.read_text()
        try:
            result = _decode_keys(text, keys, skip) if keys is not None or skip else None
            if result is None:
                result = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{self.result_file}: not valid JSON ({e}); delete it and rerun the run") from None
        if not isinstance(result, dict):
            raise ConfigError(f"{self.result_file}: expected a JSON object, got a {type(result).__name__}; delete "
                              "it and rerun the run")
        if result.get("status") == "complete" and not isinstance(result.get("metrics"), dict):
            raise ConfigError(f"{self.result_file}: a complete result without 'metrics'; delete it and rerun the run")
        return result  # type: ignore[return-value]

    def complete_for(self, config_hash: str) -> bool:
        """Is this directory a complete run of the config with `config_hash`? A complete run of another config
        is an error (its numbers would be reported as this config's), never a silent "nothing to do"."""
        try:
            result = self.read_result()
        except ConfigError:        # damaged: not complete (as is_complete says)
            return False
        if result.get("status") != "complete":
            return False
        check_owner(self.result_file, result.get("config_hash"), config_hash)
        return True

    def prepare(self, cfg: Config) -> None:
        """Create the directory and write config.yaml; refuse a directory that holds another config."""
        from bench.runtime import dist  # local: see the module docstring (bench.launch.submit imports this module)
        self.config_hash = cfg.run_hash()
        if not dist.is_main():
            return
        self.path.mkdir(parents=True, exist_ok=True)
        text = dump_yaml(cfg)
        if self.config_file.is_file():
            old = stored_config(yaml.safe_load(self.config_file.read_text()) or {}).result_dict()
            new = cfg.result_dict()
            if old != new:
                diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise ConfigError(f"run directory {self.path} holds a run of a different config "
                                  f"(sections differ: {', '.join(diff)}); choose another --run-dir")
        write_text_atomic(self.config_file, text)

    def write_result(self, result: Result) -> None:
        """result.json as JSON with one top-level key per line, each value compact (see read_result)."""
        from bench.runtime import dist  # local: see the module docstring (bench.launch.submit imports this module)
        if dist.is_main():
            lines = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in result.items()]
            write_text_atomic(self.result_file, "{\n" + ",\n".join(lines) + "\n}\n")

    def record_failure(self, error: BaseException) -> None:
        """result.json with status=failed and the one-line error, in a run directory that exists and is
        not complete (is_complete stays False, so running the same command again resumes the run)."""
        from bench.runtime import dist  # local: see the module docstring (bench.launch.submit imports this module)
        if dist.is_main() and self.config_file.is_file() and not self.is_complete():
            text = " ".join(f"{type(error).__name__}: {error}".split())
            try:
                self.write_result({"status": "failed", "error": text[:1000]})
            except OSError:
                pass     # a full or read-only disk: the error itself still reaches the user

    def write_json(self, name: str, obj: Any) -> None:
        from bench.runtime import dist  # local: see the module docstring (bench.launch.submit imports this module)
        if not dist.is_main():
            return
        write_text_atomic(self.path / name, json.dumps(obj, indent=2, sort_keys=False) + "\n")

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """Rewritten whole from the checkpointed history, so it never holds an epoch the checkpoint lacks."""
        write_text_atomic(self.metrics_file, "".join(json.dumps(h) + "\n" for h in history))


RESULT_STATE = ("status", "metrics", "error")    # what a run's state needs of its result.json


def _decode_keys(text: str, keys: Collection[str] | None, skip: Collection[str]) -> dict[str, Any] | None:
    """The top-level `keys` (None: all) but `skip` of a result.json written one key per line (json.dumps never
    writes a raw newline inside a value, so each line is one "key": value pair); None when the text is not in
    that layout."""
    lines = text.split("\n")
    if len(lines) < 3 or lines[0] != "{" or lines[-2:] != ["}", ""]:
        return None
    decoder, out = json.JSONDecoder(), {}
    for line in lines[1:-2]:
        if not line.startswith('"'):
            return None
        key, end = decoder.raw_decode(line)
        if not line.startswith(": ", end):
            return None
        if (keys is None or key in keys) and key not in skip:
            value, stop = decoder.raw_decode(line, end + 2)
            if line[stop:] not in ("", ","):
                return None
            out[key] = value
    return out


def check_owner(path: Path, recorded: str | None, expected: str, what: str = "config") -> None:
    """A file of a run directory (checkpoint, result.json) must carry the config hash of the run reading it:
    a file copied in from another run, or left by one, is refused with both hashes rather than continued."""
    if recorded is None:
        raise ConfigError(f"{path} records no config hash (not written by this version of ltbench, or not for "
                          f"this run); move it away to rerun {what} {expected} from scratch")
    if recorded != expected:
        raise ConfigError(f"{path} belongs to {what} {recorded}, not to this run's {what} {expected} (copied in "
                          "or left by another run?); move it away, or use the run directory of that config")


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode()))
