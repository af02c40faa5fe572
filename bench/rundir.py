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
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from bench import dist
from bench.atomic import write_atomic
from bench.config import Config, ConfigError, dump_yaml, from_dict


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.config_hash: str | None = None     # the run's config hash, set by prepare(): stamped into every file

    @classmethod
    def for_config(cls, cfg: Config, runs_root: str | Path) -> "RunDir":
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
        if not self.result_file.is_file():
            return False
        try:
            return json.loads(self.result_file.read_text()).get("status") == "complete"
        except json.JSONDecodeError:
            return False

    def read_result(self) -> dict[str, Any]:
        return json.loads(self.result_file.read_text())

    def complete_for(self, config_hash: str) -> bool:
        """Is this directory a complete run of the config with `config_hash`? A complete run of another config
        is an error (its numbers would be reported as this config's), never a silent "nothing to do"."""
        if not self.is_complete():
            return False
        check_owner(self.result_file, json.loads(self.result_file.read_text()).get("config_hash"), config_hash)
        return True

    def prepare(self, cfg: Config) -> None:
        """Create the directory and write config.yaml; refuse a directory that holds another config."""
        self.config_hash = cfg.run_hash()
        if not dist.is_main():
            return
        self.path.mkdir(parents=True, exist_ok=True)
        text = dump_yaml(cfg)
        if self.config_file.is_file():
            old = from_dict(yaml.safe_load(self.config_file.read_text()) or {}).result_dict()
            new = cfg.result_dict()
            if old != new:
                diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise ConfigError(f"run directory {self.path} holds a run of a different config "
                                  f"(sections differ: {', '.join(diff)}); choose another --run-dir")
        write_text_atomic(self.config_file, text)

    def record_failure(self, error: BaseException) -> None:
        """result.json with status=failed and the one-line error, in a run directory that exists and is
        not complete (is_complete stays False, so running the same command again resumes the run)."""
        if dist.is_main() and self.config_file.is_file() and not self.is_complete():
            text = " ".join(f"{type(error).__name__}: {error}".split())
            try:
                self.write_json("result.json", {"status": "failed", "error": text[:1000]})
            except OSError:
                pass     # a full or read-only disk: the error itself still reaches the user

    def write_json(self, name: str, obj: Any) -> None:
        if not dist.is_main():
            return
        write_text_atomic(self.path / name, json.dumps(obj, indent=2, sort_keys=False) + "\n")

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """Rewritten whole from the checkpointed history, so it never holds an epoch the checkpoint lacks."""
        write_text_atomic(self.metrics_file, "".join(json.dumps(h) + "\n" for h in history))


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
