"""The published-experiment configs: up to date with their generator, loadable, honest about protocol."""

import importlib.util

import pytest

from bench.config import load_config


def _generator(repo):
    spec = importlib.util.spec_from_file_location("gen", repo / "configs" / "paper" / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_configs_match_the_generator(repo, tmp_path):
    gen = _generator(repo)
    for p in gen.write(tmp_path):
        committed = repo / "configs" / "paper" / p.relative_to(tmp_path)
        assert committed.is_file() and committed.read_text() == p.read_text(), f"rerun generate.py: {committed}"


@pytest.mark.parametrize("exp", ["cifar100_lt_if100", "cifar100_lt_if50", "cifar100_lt_if10", "cifar10_lt_if100"])
def test_every_paper_config_loads_with_its_protocol(repo, exp):
    d = repo / "configs" / "paper" / exp
    cfgs = {p.stem: load_config(p) for p in sorted(d.glob("*.yaml"))}
    assert len(cfgs) == 9
    wd, wb, hs = cfgs["wd"], cfgs["wb"], cfgs["hs_stage1"]
    # WB rows: the reference protocol (test selection, TTA, first-n), CIFAR-100 WD 5e-3 on all params
    assert wd.protocol == "wb-reference" and wd.eval.selection_split == "test" and wd.eval.tta_flip
    assert wd.data.n_max == (500 if "cifar100" in exp else 5000) and wd.train.wd_scope == "all"
    assert wb.stage == "stage2" and wb.stage2.maxnorm and wb.stage2.train.weight_decay == 0.1
    assert wb.stage2.maxnorm_cadence == "epoch" and wb.stage2.train.loss.name == "cb_bce_softmax"
    assert wb.parent_hash == wd.run_hash() and wb.data == wd.data
    assert not cfgs["cb_wd"].stage2.maxnorm and cfgs["cb_maxnorm"].stage2.train.weight_decay == 0.0
    # HS: clean protocol, 20 val images held out (n_max = pool - 20), ETF + WD in loss + FR
    assert hs.protocol == "clean" and hs.eval.selection_split == "val" and not hs.eval.tta_flip
    assert hs.data.n_max == (480 if "cifar100" in exp else 4980) and hs.data.rounding == "round"
    assert hs.model.classifier == "etf" and hs.train.wd_in_loss == 5e-3 and hs.train.feature_reg == 0.01
    assert cfgs["hs"].posthoc.kind == "la_mult" and cfgs["hs"].posthoc.tau is None


def test_every_config_in_the_repo_loads(repo):
    paths = [p for p in sorted((repo / "configs").rglob("*.yaml")) if not p.name.startswith("_")]
    assert len(paths) > 40
    for p in paths:
        cfg = load_config(p)
        assert cfg.name and cfg.method, p
