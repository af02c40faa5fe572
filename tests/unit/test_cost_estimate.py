"""`ltbench submit --dry-run` estimates a plan's device-hours from completed runs of the same stage, dataset
and model (their device-hours per epoch x the planned epochs), or says it has none."""

from __future__ import annotations

import json

from bench.launch.submit import estimate_cost, plan
from tests.conftest import REPO

SMOKE = str(REPO / "configs" / "smoke.yaml")        # stage 1, synthetic, resnet8_cifar, 3 epochs


def test_estimate_from_completed_runs(tmp_path):
    runs = tmp_path / "runs"
    nodes = plan(SMOKE, [], str(runs))
    assert estimate_cost(nodes, str(runs)) == [
        f"cost estimate: none for stage1/synthetic/resnet8_cifar (no completed run of that stage, dataset and model "
        f"under {runs})"]
    for i, (hours, epochs) in enumerate(((0.02, 2), (0.06, 3), (0.01, 1))):    # per epoch 0.01, 0.02, 0.01
        d = runs / "other" / f"r{i}"
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({"status": "complete", "stage": "stage1", "dataset": "synthetic",
                                                   "model": "resnet8_cifar", "epochs": epochs,
                                                   "cost": {"device_hours": hours}}))
    (runs / "other" / "r9").mkdir()
    (runs / "other" / "r9" / "result.json").write_text("[broken")                # ignored, not an error
    # median 0.01 device-hours per epoch x 3 planned epochs = 0.03
    assert estimate_cost(nodes, str(runs)) == [
        f"cost estimate: 0.03 device-hours for 1 of 1 runs to train (device-hours per epoch of completed runs under "
        f"{runs} x planned epochs)"]
