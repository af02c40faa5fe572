"""A run directory continues only its own config: checkpoints and results carry the config hash, and a
file of another run is refused with one line naming both hashes, never resumed or reported as this run's."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from bench.experiment import load_config
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow

SMOKE = str(REPO / "configs" / "smoke.yaml")
SHORT = ["train.epochs=1", "runtime.threads=1", "wandb.mode=disabled", "runtime.plot=false"]
OTHER = [*SHORT, "train.lr=0.2"]          # same architecture, another config


def digest(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def one_line_error(r) -> str:
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    return r.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("guard")
    for name, args in (("this", SHORT), ("other", OTHER)):
        r = run_cli("run", SMOKE, *args, "--run-dir", str(root / name))
        assert r.returncode == 0, r.stderr
    return root


def test_a_checkpoint_of_another_config_is_not_resumed(runs, tmp_path):
    d = tmp_path / "run"
    (d / "checkpoints").mkdir(parents=True)
    shutil.copy(runs / "other" / "checkpoints" / "last.pt", d / "checkpoints" / "last.pt")
    before = (d / "checkpoints" / "last.pt").read_bytes()
    err = one_line_error(run_cli("run", SMOKE, *SHORT, "--run-dir", str(d)))
    mine, theirs = load_config(SMOKE, SHORT).run_hash(), load_config(SMOKE, OTHER).run_hash()
    assert f"belongs to config {theirs}, not to this run's config {mine}" in err and "last.pt" in err
    assert (d / "checkpoints" / "last.pt").read_bytes() == before            # nothing lost


def test_a_complete_run_of_another_config_is_not_reported(runs):
    before = digest(runs / "other")
    err = one_line_error(run_cli("run", SMOKE, *SHORT, "--run-dir", str(runs / "other")))
    assert "result.json belongs to config" in err
    assert digest(runs / "other") == before


def test_foreign_torch_files_are_one_line_errors(tmp_path):
    cfg_hash = load_config(SMOKE, SHORT).run_hash()
    from bench.models import build_model

    cases = {
        "records no config hash": {"weights": torch.zeros(3)},
        "does not fit this run": {"model": build_model("resnet20_cifar", num_classes=10).state_dict(),
                                  "config_hash": cfg_hash},
    }
    for message, obj in cases.items():
        d = tmp_path / message.replace(" ", "-")
        (d / "checkpoints").mkdir(parents=True)
        torch.save(obj, d / "checkpoints" / "last.pt")
        assert message in one_line_error(run_cli("run", SMOKE, *SHORT, "--run-dir", str(d)))


def test_a_parent_with_another_runs_weights_is_refused(runs, tmp_path):
    parent = tmp_path / "parent"
    shutil.copytree(runs / "this", parent)
    shutil.copy(runs / "other" / "checkpoints" / "final.pt", parent / "checkpoints" / "final.pt")
    r = run_cli("run", str(REPO / "configs" / "smoke_stage2.yaml"), f"parent={parent}", "stage2.train.epochs=1",
                "--run-dir", str(tmp_path / "child"))
    assert "final.pt belongs to parent config" in one_line_error(r)
