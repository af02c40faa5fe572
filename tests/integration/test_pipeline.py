"""Stage 1 -> stage 2 (WB) -> post-hoc, and the HS single-stage method, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow
CFG = REPO / "configs"
FIXED = ["runtime.threads=1"]


def run_ok(config: str, root: Path, *extra: str) -> dict:
    r = run_cli("run", str(CFG / config), *FIXED, *extra, "--runs-root", str(root))
    assert r.returncode == 0, r.stdout + r.stderr
    done = [line for line in r.stdout.splitlines() if "-> " in line and "result.json" in line]
    return json.loads(Path(done[-1].split("-> ")[-1]).read_text())


def final_state(root: Path, method: str) -> dict:
    (run_dir,) = [p for p in (root / "smoke").iterdir() if p.name.startswith(method + "-seed")]
    return torch.load(run_dir / "checkpoints" / "final.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("pipe")
    results = {c: run_ok(c + ".yaml", root) for c in
               ("smoke", "smoke_stage2", "smoke_taunorm", "smoke_hs", "smoke_hs_la")}
    return root, results


def test_stage2_retrains_only_the_classifier_under_maxnorm(pipeline):
    root, res = pipeline
    s1, s2 = final_state(root, "ce"), final_state(root, "wb")
    assert res["smoke_stage2"]["stage"] == "stage2" and res["smoke_stage2"]["cached_features"] is True
    # frozen backbone: every tensor but the classifier is bit-identical to stage 1
    for k in s1:
        if not k.startswith("fc."):
            assert torch.equal(s1[k], s2[k]), k
    assert not torch.equal(s1["fc.weight"], s2["fc.weight"])
    # MaxNorm radius from the stage-1 rows: min + 0.1 (max - min), and every row ends inside it
    norms = s1["fc.weight"].norm(dim=1)
    radius = float(norms.min() + 0.1 * (norms.max() - norms.min()))
    assert res["smoke_stage2"]["maxnorm_radius"] == pytest.approx(radius, rel=1e-6)
    assert float(s2["fc.weight"].norm(dim=1).max()) <= radius * (1 + 1e-6)
    assert res["smoke_stage2"]["analysis"]["weight_norms"] == pytest.approx(s2["fc.weight"].norm(dim=1).tolist(),
                                                                            rel=1e-5)


def test_posthoc_tau_norm_is_chosen_on_val_and_applied(pipeline):
    root, res = pipeline
    ph = res["smoke_taunorm"]["posthoc"]
    assert ph["kind"] == "taunorm" and ph["chosen_on"] == "val"
    assert ph["grid"][str(ph["tau"])] == max(ph["grid"].values())
    s1, adj = final_state(root, "ce"), final_state(root, "tau-norm")
    n = s1["fc.weight"].norm(dim=1, keepdim=True)
    assert torch.allclose(adj["fc.weight"], s1["fc.weight"] / n ** ph["tau"], atol=1e-6)
    assert torch.equal(adj["fc.bias"], s1["fc.bias"])


def test_hs_keeps_the_etf_fixed_and_adjusts_logits(pipeline):
    root, res = pipeline
    w = final_state(root, "hs-stage1")["fc.weight"]
    c = w.shape[0]
    assert torch.allclose(w.norm(dim=1), torch.ones(c), atol=1e-5)
    cos = (w @ w.T)[~torch.eye(c, dtype=torch.bool)]
    assert torch.allclose(cos, torch.full_like(cos, -1 / (c - 1)), atol=1e-5)
    assert res["smoke_hs_la"]["posthoc"]["kind"] == "la_mult" and res["smoke_hs_la"]["posthoc"]["chosen_on"] == "val"
    for r in res.values():
        a = r["analysis"]
        assert a["fdr"] > 0 and -1 <= a["cosine"]["between"] <= a["cosine"]["within"] <= 1


def test_cached_and_recomputed_stage2_train_the_same_classifier(pipeline, tmp_path):
    root, _ = pipeline
    import shutil
    shutil.copytree(root, tmp_path / "r")
    res = run_ok("smoke_stage2.yaml", tmp_path / "r", "stage2.cache_features=false")
    assert res["cached_features"] is False
    runs = {p.name: p for p in (tmp_path / "r" / "smoke").iterdir() if p.name.startswith("wb-seed")}
    assert len(runs) == 2
    a, b = (torch.load(p / "checkpoints" / "final.pt", weights_only=True)["model"] for p in runs.values())
    assert torch.allclose(a["fc.weight"], b["fc.weight"], atol=1e-5)
    assert torch.allclose(a["fc.bias"], b["fc.bias"], atol=1e-5)


def test_stage2_without_its_stage1_is_a_clear_error(tmp_path):
    r = run_cli("run", str(CFG / "smoke_stage2.yaml"), "--runs-root", str(tmp_path))
    assert r.returncode == 2
    assert "stage2 needs its parent run" in r.stderr and "does not exist" in r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert not (tmp_path / "smoke").exists() or not any((tmp_path / "smoke").glob("wb-*"))


def test_stage2_config_may_not_change_the_data(tmp_path):
    r = run_cli("run", str(CFG / "smoke_stage2.yaml"), "data.imbalance_factor=50", "--runs-root", str(tmp_path))
    assert r.returncode == 2 and "takes 'data' from its parent" in r.stderr


def test_stage2_can_retrain_the_last_block(pipeline, tmp_path):
    root, _ = pipeline
    import shutil
    shutil.copytree(root, tmp_path / "r")
    res = run_ok("smoke_stage2.yaml", tmp_path / "r", "stage2.train_blocks=1")
    assert res["cached_features"] is False and res["trained_blocks"] == 1
    s1 = final_state(tmp_path / "r", "ce")
    run_dir = tmp_path / "r" / "smoke" / f"wb-seed0-{res['config_hash']}"
    s2 = torch.load(run_dir / "checkpoints" / "final.pt", weights_only=True)["model"]
    # resnet8_cifar: the last block is layer3.0; everything before it is untouched
    changed = {k for k in s1 if k.endswith(("weight", "bias")) and not torch.equal(s1[k], s2[k])}
    assert changed and all(k.startswith(("layer3.", "fc.")) for k in changed)
    assert any(k.startswith("layer3.") for k in changed)
    r = run_cli("run", str(CFG / "smoke_stage2.yaml"), "stage2.train_blocks=9", "--runs-root", str(tmp_path / "r"))
    assert r.returncode == 2 and "stage2.train_blocks': 9 is more than the 4 blocks" in r.stderr


def test_a_logit_adjustment_run_is_not_a_parent(pipeline):
    root, res = pipeline
    hs_dir = root / "smoke" / f"hs-seed0-{res['smoke_hs_la']['config_hash']}"
    r = run_cli("run", str(CFG / "smoke_taunorm.yaml"), f"parent={hs_dir}", "--runs-root", str(root))
    assert r.returncode == 2 and "is a logit-adjustment run" in r.stderr


def _evaluate_final(run_dir: Path, tta: bool, features: bool = False) -> dict:
    """Test metrics of a run's final model, with or without flip TTA (features: on the parent's cached ones)."""
    import yaml

    from bench.config import stored_config
    from bench.data.lt import build_lt_data
    from bench.evaluation.metrics import shot_groups
    from bench.methods.classifiers import make_model
    from bench.models.parts import encode, head_of
    from bench.train.features import feature_batches
    from bench.train.select import Evaluator

    cfg = stored_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
    data = build_lt_data(cfg.data)
    model = make_model(cfg, data)
    model.load_state_dict(torch.load(run_dir / "checkpoints" / "final.pt", weights_only=True)["model"])
    model.eval()
    groups = shot_groups(data.class_counts, cfg.groups.many, cfg.groups.few, cfg.groups.inclusive)
    if features:
        parent = Path(json.loads((run_dir / "result.json").read_text())["parent"])
        saved = torch.load(parent / "features" / f"test{'-tta' if tta else ''}.pt", weights_only=True)
        from bench.data.lt import Split
        batches = lambda s: feature_batches(Split(saved["x"], saved["y"]), 500)  # noqa: E731
        return Evaluator(lambda h: h, head_of(model), batches, data.num_classes, groups, torch.device("cpu"))("test")
    return Evaluator(lambda x: encode(model, x), head_of(model), lambda s: data.eval_batches(s, 500),
                     data.num_classes, groups, torch.device("cpu"), tta)("test")


def test_selection_on_plain_logits_reporting_with_flip_tta(pipeline, tmp_path):
    """wb-reference's evaluation: the best epoch is picked on test without TTA, then reported with it."""
    root, _ = pipeline
    peek = ["eval.selection_split=test", "eval.select=best", "eval.tta_flip=true", "eval.select_tta_flip=false"]
    s1 = run_ok("smoke.yaml", tmp_path, "method=sel", "train.epochs=2", *peek)
    parent = root / "smoke" / next(p.name for p in (root / "smoke").iterdir() if p.name.startswith("ce-seed"))
    s2 = run_ok("smoke_stage2.yaml", tmp_path, f"parent={parent}", "method=sel2", *peek)
    for res, features in ((s1, False), (s2, True)):
        assert res["selection"] == {"split": "test", "select": "best", "tta_flip": True, "select_tta_flip": False}
        run_dir = tmp_path / "smoke" / f"{res['method']}-seed0-{res['config_hash']}"
        plain, tta = _evaluate_final(run_dir, False, features), _evaluate_final(run_dir, True, features)
        assert plain != tta                     # else this test could not tell them apart
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        # the final model is the selected epoch's: its metrics.jsonl row was computed without TTA ...
        assert rows[res["selected_epoch"] - 1]["test"] == plain
        assert res["metrics"] == tta            # ... and the reported metrics with it
