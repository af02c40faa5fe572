"""Each stage recipe and the training loop in this process, on tiny synthetic data (seconds, no subprocess):
a change to the loop or a stage is checked here before the slow tier runs the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.config import load_config
from bench.run import run_experiment
from bench.rundir import RunDir

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
QUIET = ["runtime.threads=1", "runtime.progress=off", "runtime.plot=false", "wandb.mode=disabled"]
TINY = ["data.synthetic.train_per_class=40", "data.synthetic.test_per_class=10", "data.synthetic.image_size=8",
        "data.val_per_class=5", "train.epochs=2", "train.batch_size=16", *QUIET]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cfg = load_config(CONFIGS / "smoke.yaml", TINY)
    run = RunDir.for_config(cfg, root)
    return root, cfg, run, run_experiment(cfg, run, runs_root=root)


def test_stage1_trains_reports_and_is_not_retrained(stage1):
    root, cfg, run, result = stage1
    assert result["status"] == "complete" and result["epochs"] == 2 and result["config_hash"] == cfg.run_hash()
    assert len(result["per_class_acc"]) == 10 and 0 <= result["metrics"]["all"] <= 100
    assert [json.loads(line)["epoch"] for line in run.metrics_file.read_text().splitlines()] == [1, 2]
    before = run.final_ckpt.stat().st_mtime_ns
    assert run_experiment(cfg, run, runs_root=root) == result          # complete: reported, not retrained
    assert run.final_ckpt.stat().st_mtime_ns == before


def test_stage2_retrains_only_the_classifier_within_the_maxnorm_ball(stage1):
    root, _, parent, _ = stage1
    cfg = load_config(CONFIGS / "smoke_stage2.yaml", [*QUIET, f"parent={parent.path}", "stage2.train.epochs=2"])
    result = run_experiment(cfg, RunDir.for_config(cfg, root), runs_root=root)
    before = torch.load(parent.final_ckpt, weights_only=False)["model"]
    after = torch.load(RunDir.for_config(cfg, root).final_ckpt, weights_only=False)["model"]
    head = [k for k in after if k.endswith(".weight") and after[k].dim() == 2][-1]
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith(head.rsplit(".", 1)[0]))
    assert not torch.equal(before[head], after[head])
    # MaxNorm per step: no row of the trained classifier leaves the ball
    assert float(after[head].norm(dim=1).max()) <= result["maxnorm_radius"] * (1 + 1e-6)


@pytest.mark.parametrize("kind", ["taunorm", "la_mult"])
def test_posthoc_chooses_tau_on_val(stage1, kind):
    root, _, parent, _ = stage1
    cfg = load_config(CONFIGS / "smoke_taunorm.yaml", [*QUIET, f"parent={parent.path}", f"posthoc.kind={kind}"])
    result = run_experiment(cfg, RunDir.for_config(cfg, root), runs_root=root)
    ph = result["posthoc"]
    assert ph["kind"] == kind and ph["chosen_on"] == "val" and str(ph["tau"]) in ph["grid"]
    assert ph["grid"][str(ph["tau"])] == max(ph["grid"].values())    # the best tau on val


def test_crt_starts_from_a_fresh_classifier(stage1):
    """cRT (stage2.reinit_classifier): the classifier is re-initialised (seeded) before training, not the
    stage-1 rows; two runs of the same config are identical."""
    root, _, parent, _ = stage1
    # one epoch at a negligible lr and no weight decay: the final classifier is where training started
    args = [*QUIET, f"parent={parent.path}", "stage2.train.epochs=1", "stage2.train.lr=1e-12",
            "stage2.train.weight_decay=0", "stage2.maxnorm=false"]
    fresh = load_config(CONFIGS / "smoke_stage2.yaml", [*args, "stage2.reinit_classifier=true"])
    kept = load_config(CONFIGS / "smoke_stage2.yaml", args)
    assert fresh.run_hash() != kept.run_hash()
    for cfg in (fresh, kept):
        run_experiment(cfg, RunDir.for_config(cfg, root), runs_root=root)
    w = {name: torch.load(RunDir.for_config(c, root).final_ckpt, weights_only=False)["model"]["fc.weight"]
         for name, c in (("fresh", fresh), ("kept", kept))}
    stage1_w = torch.load(parent.final_ckpt, weights_only=False)["model"]["fc.weight"]
    assert torch.allclose(w["kept"], stage1_w, atol=1e-6)
    assert (w["fresh"] - stage1_w).abs().max() > 0.01
    other = root / "again"                                     # the same config in another runs root
    run_experiment(fresh, RunDir.for_config(fresh, other), runs_root=other)
    again = torch.load(RunDir.for_config(fresh, other).final_ckpt, weights_only=False)["model"]["fc.weight"]
    assert torch.equal(again, w["fresh"])
