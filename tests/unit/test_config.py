"""Config loading: defaults <- YAML <- overrides, one-line errors, resolution from dataset cards."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.config import Config, ConfigError, parse_override
from bench.experiment import load_config
from tests.conftest import REPO


def test_smoke_config_loads_and_resolves(repo):
    cfg = load_config(repo / "configs" / "smoke.yaml")
    assert cfg.data.dataset == "synthetic" and cfg.data.n_max == 190     # 200 per class - 10 val
    assert cfg.model.name == "resnet8_cifar"


def test_card_defaults_fill_thresholds_and_n_max():
    cfg = load_config(None, ["data.dataset=fashion-mnist"])
    assert (cfg.groups.many, cfg.groups.few, cfg.data.n_max) == (1000, 200, 5980)
    # HS: 20 val images per class leave n_max = 480; without val the WB profile keeps 500
    cfg = load_config(None, ["data.dataset=cifar100"])
    assert (cfg.groups.many, cfg.groups.few, cfg.data.n_max) == (100, 20, 480)
    cfg = load_config(None, ["data.dataset=cifar100", "data.val_per_class=0", "eval.selection_split=test"])
    assert cfg.data.n_max == 500
    cfg = load_config(None, ["data.dataset=cifar100", "data.n_max=300"])
    assert cfg.data.n_max == 300
    cfg = load_config(None, ["data.dataset=cifar100", "groups.many=50"])
    assert cfg.groups.many == 50


def test_overrides_parse_yaml_values():
    assert parse_override("train.lr=5e-3") == (["train", "lr"], "5e-3")
    assert parse_override("data.root=null") == (["data", "root"], None)
    cfg = load_config(None, ["train.weight_decay=5e-3", "eval.tta_flip=true", "train.epochs=3"])
    assert cfg.train.weight_decay == 5e-3 and cfg.eval.tta_flip is True and cfg.train.epochs == 3


@pytest.mark.parametrize("override, message", [
    ("train.lrr=0.1", "unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
    ("bogus=1", "unknown config key 'bogus'"),
    ("train.epochs=abc", "config key 'train.epochs': expected an integer, got 'abc'"),
    ("train.epochs=2.5", "config key 'train.epochs': expected an integer, got 2.5"),
    ("train.epochs=-1", "config key 'train.epochs': value -1 out of range (must be >= 0)"),   # 0 = evaluate as built
    ("train.lr=0", "config key 'train.lr': value 0.0 out of range (must be > 0)"),
    ("train.wd_scope=some", "config key 'train.wd_scope': expected one of 'all', 'no_norm_bias', got 'some'"),
    ("eval.tta_flip=maybe", "config key 'eval.tta_flip': expected true/false, got 'maybe'"),
    ("data.dataset=imagenet", "config key 'data.dataset': expected one of"),
    ("train=3", "config key 'train': expected a mapping, got 3"),
    ("groups.few=2000", "config key 'groups.few': 2000 is above groups.many = 1000"),
    ("stage2.train.wd_in_loss=5", "config key 'stage2.train.wd_in_loss': 5.0 is not used by stage 2"),
    ("stage2.train.feature_reg=0.01", "config key 'stage2.train.feature_reg': 0.01 is not used by stage 2"),
    ("stage2.train.mixup_alpha=1", "config key 'stage2.train.mixup_alpha': 1.0 is not used by stage 2"),
    ("train.loss.las_shape=convex", "config key 'train.loss.las_shape': expected one of 'concave', 'linear'"),
    ("data.val_per_class=0", "config key 'data.val_per_class': 0 leaves no validation split"),
    ("train.schedule=step", "config key 'train.lr_milestones': []: schedule=step needs increasing epochs"),
    ("train.lr_milestones=[5]", "config key 'train.lr_milestones': [5] is used by schedule=step only"),
    ("train.epoch_length=dataset", "config key 'train.epoch_length': dataset cuts a class_aware or class_balanced"),
    ("train.loss.name=sade", "config key 'train.loss.name': sade trains several experts; set model.experts"),
    ("model.experts=0", "config key 'model.experts': value 0 out of range (must be >= 1)"),
    ("stage2.lws_rows_lr_factor=0.2", "config key 'stage2.lws_rows_lr_factor': 0.2 sets the lr of LWS's classifier"),
    # no RRC in memory
    ("data.augment=rrc_flip", "config key 'data.augment': rrc_flip needs shard data (data.shards)"),
    ("train.lr", "override 'train.lr': expected key=value"),
])
def test_bad_values_give_one_line_errors(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_yaml_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train: {epochs: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml line \d+: invalid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_run_hash_ignores_runtime_only():
    a = load_config(None, [])
    b = load_config(None, ["runtime.threads=1", "runtime.progress=off"])
    c = load_config(None, ["train.weight_decay=0"])
    assert a.run_hash() == b.run_hash() != c.run_hash()
    assert a.run_name().startswith("ce-seed0-")


def test_hash_neutral_fields_keep_old_run_names_until_set():
    """data.to_rgb (and the foundation-model fields) came after run directories were named: at their defaults the
    hash is the one computed without the fields (the hash of the same config dict, fields removed); set, they
    name another run."""
    import hashlib
    import json

    a = load_config(None, ["data.dataset=fashion-mnist"])
    d = a.result_dict()
    for key in ("to_rgb", "input_stats", "resize", "views", "randaugment_n"):
        del d["data"][key]
    for key in ("embedding", "zeroshot", "peft", "experts", "expert_width", "expert_scale", "cosine_scale",
                "zero_init_last", "reinit_last_blocks"):
        del d["model"][key]
    for key in ("mixup_alpha", "lr_milestones", "lr_step_gamma", "warmup_unit", "epoch_length", "contrast",
                "distill", "backbone_lr_factor", "freeze_convs", "train_only_last_blocks"):
        del d["train"][key]
    for key in ("las_head", "las_tail", "las_shape", "ride_diversity", "ride_temperature", "ride_temperature_factor",
                "sade_tau"):
        del d["train"]["loss"][key]
    assert a.run_hash() == hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]
    for other in ("data.to_rgb=true", "data.resize=32", "model.peft.method=lora", "model.zeroshot.templates=['{}']",
                  "train.mixup_alpha=1", "train.loss.las_head=0.3", "train.warmup_unit=epoch",
                  "train.backbone_lr_factor=0.5", "train.train_only_last_blocks=1"):
        assert load_config(None, ["data.dataset=fashion-mnist", other]).run_hash() != a.run_hash()
    # data.randaugment_n: only with a view that has timm's RandAugment, and then it names another run
    paco = ["data.dataset=fashion-mnist", "data.augment=none", "data.views=[rrc_randaugment,rrc_sim]",
            "train.contrast.method=paco", "train.drop_last=true"]
    assert load_config(None, [*paco, "data.randaugment_n=3"]).run_hash() != load_config(None, paco).run_hash()
    with pytest.raises(ConfigError, match=r"config key 'data.randaugment_n': 3 sets timm's RandAugment of the "):
        load_config(None, ["data.dataset=fashion-mnist", "data.randaugment_n=3"])


def test_to_rgb_only_on_one_channel_data():
    cfg = load_config(None, ["data.dataset=fashion-mnist", "data.to_rgb=true", "data.mean=[0.1,0.2,0.3]",
                             "data.std=[1,1,1]"])
    assert cfg.data.to_rgb and len(cfg.data.mean) == 3     # one value per repeated channel is allowed
    with pytest.raises(ConfigError, match="config key 'data.to_rgb': cifar10 has 3 channels already"):
        load_config(None, ["data.dataset=cifar10", "data.to_rgb=true"])


def test_rrc_flip_is_refused_in_memory_even_with_a_crop_size():
    # the in-memory loader has no RandomResizedCrop: this config used to train on flips alone
    with pytest.raises(ConfigError, match=r"config key 'data.augment': rrc_flip needs shard data \(data.shards\)"):
        load_config(None, ["data.dataset=fashion-mnist", "data.augment=rrc_flip", "data.image_size=28"])


def test_resolved_config_round_trips(tmp_path):
    import yaml

    from bench.config import dump_yaml, stored_config

    cfg = load_config(None, ["seed=3"])
    again = stored_config(yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg and isinstance(again, Config)


def test_protocol_wb_reference_sets_and_guards_its_settings():
    cfg = load_config(None, ["protocol=wb-reference", "data.dataset=cifar100"])
    assert ((cfg.data.val_per_class, cfg.eval.selection_split, cfg.eval.tta_flip, cfg.data.n_max)
            == (0, "test", True, 500))
    assert cfg.train.schedule_step_at_epoch_start is True
    # the WB code picks the best epoch on plain logits and reports with flip TTA
    assert cfg.eval.select_tta_flip is False and cfg.eval.select == "best"
    with pytest.raises(ConfigError, match="'eval.select_tta_flip': True conflicts with protocol wb-reference"):
        load_config(None, ["protocol=wb-reference", "eval.select_tta_flip=true"])
    with pytest.raises(ConfigError, match="config key 'eval.tta_flip': False conflicts with protocol wb-reference"):
        load_config(None, ["protocol=wb-reference", "eval.tta_flip=false"])
    with pytest.raises(ConfigError, match="conflicts with protocol clean"):
        load_config(None, ["protocol=clean", "eval.selection_split=test"])


def test_base_files_merge_underneath(tmp_path):
    (tmp_path / "a.yaml").write_text("train: {epochs: 7, lr: 0.2}\nseed: 1\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain: {lr: 0.3}\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert (cfg.train.epochs, cfg.train.lr, cfg.seed) == (7, 0.3, 1)
    (tmp_path / "c.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(tmp_path / "c.yaml")


def test_partial_stage2_train_keeps_the_stage2_defaults():
    from bench.config import Config, describe_fields

    cfg = load_config(None, ["stage2.train.lr=0.02"])
    assert (cfg.stage2.train.epochs, cfg.stage2.train.weight_decay, cfg.stage2.train.loss.name) == (10, 0.1, "cb_ce")
    assert cfg.stage2.train.lr == 0.02 and cfg.train.epochs == Config().train.epochs
    rows = dict((k, d) for k, d, _ in describe_fields())
    assert rows["stage2.train.epochs"] == "10" and rows["stage2.train.loss.name"] == "'cb_ce'"


def test_hs_weight_decay_is_not_applied_twice():
    with pytest.raises(ConfigError, match="'train.wd_in_loss': 0.005 with train.weight_decay = 0.005 decays twice"):
        load_config(None, ["train.wd_in_loss=5e-3", "train.weight_decay=5e-3"])


def test_wb_reference_fixes_the_profile_construction():
    with pytest.raises(ConfigError, match="'data.rounding': 'round' conflicts with protocol wb-reference"):
        load_config(None, ["protocol=wb-reference", "data.rounding=round"])
    with pytest.raises(ConfigError, match="'data.n_max': 480 conflicts"):
        load_config(None, ["protocol=wb-reference", "data.n_max=480"])


def test_child_protocol_must_match_its_parent(repo):
    with pytest.raises(ConfigError, match="'protocol': clean but the parent run follows wb-reference"):
        load_config(repo / "configs" / "paper" / "cifar100_lt_if100" / "l2norm.yaml", ["protocol=clean"])


def test_bad_stage_under_a_protocol_is_a_config_error():
    with pytest.raises(ConfigError, match="config key 'stage': expected one of"):
        load_config(None, ["protocol=clean", "stage=stage3"])


def test_data_root_does_not_change_the_run():
    a = load_config(None, ["data.dataset=fashion-mnist"])
    b = load_config(None, ["data.dataset=fashion-mnist", "data.root=/usr/share/datasets/fashion-mnist"])
    assert a.run_hash() == b.run_hash()


def test_auto_workers_by_cores_per_process():
    from bench.runtime.process import auto_workers

    # none up to 2 cores; else half the cores, a divisor of data.streams
    assert [auto_workers(c, 4) for c in (1, 2, 3, 4, 6, 8, 64)] == [0, 0, 1, 2, 2, 4, 4]
    assert auto_workers(16, 6) == 6 and auto_workers(10, 6) == 3
    # GPU training: every core but the one feeding the device decodes
    assert [auto_workers(c, 16, gpu=True) for c in (1, 2, 4, 16, 17, 64)] == [1, 1, 2, 8, 16, 16]



_FAULTS_PER_ROUND = """
import resource, sys, torch
from bench.runtime.process import keep_freed_memory

def faults(rounds):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        torch.empty(10 << 20).fill_(1.0)         # 40 MB, allocated, touched and freed
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / rounds

default = faults(10)
assert keep_freed_memory() is True
faults(10)                                       # the heap's free blocks settle (see the test's docstring)
print(default, faults(20))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_keep_freed_memory_reuses_the_pages_of_freed_activations():
    """After keep_freed_memory, allocating and filling a 40 MB tensor (an activation of the eval batch 500) again
    and again reuses the same pages: under 1,000 page faults a round in the steady state, against glibc's default
    of an mmap + munmap per block over 32 MB, 10,240 faults (every 4 KiB page) a round, measured first in the
    same process as the baseline. A fresh process, as `ltbench run` calls this at start-up: in a process whose
    heap is already fragmented (a pytest worker after other tests), the first few rounds still take fresh
    pages, since torch's 64-byte-aligned request is a little larger than the block it freed, until freed
    neighbours merge (seen in CI: 7 such rounds, then none)."""
    out = subprocess.run([sys.executable, "-c", _FAULTS_PER_ROUND], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    default, kept = (float(x) for x in out.stdout.split())
    assert default > 9000 and kept < 1000, out.stdout


@pytest.mark.parametrize("deterministic", [True, False])
def test_deterministic_runs_do_not_fill_new_tensors_with_nan(deterministic, monkeypatch):
    """runtime.deterministic switches torch's deterministic algorithms, but not the NaN fill of every
    torch.empty that comes with them (6-8 % of a CPU step, BENCHMARKS.md; no effect on the numbers)."""
    import torch

    from bench.runtime.process import setup_runtime

    monkeypatch.setenv("WANDB_MODE", "disabled")
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.utils.deterministic.fill_uninitialized_memory, torch.get_num_threads())
    try:
        # the other setting first: the switch must follow this config whatever the process ran before
        torch.use_deterministic_algorithms(not deterministic, warn_only=True)
        setup_runtime(load_config(None, [f"runtime.deterministic={str(deterministic).lower()}", "runtime.device=cpu",
                                         "runtime.threads=1"]))
        assert torch.are_deterministic_algorithms_enabled() is deterministic
        if deterministic:
            assert torch.utils.deterministic.fill_uninitialized_memory is False
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.utils.deterministic.fill_uninitialized_memory = before[2]
        torch.set_num_threads(before[3])


CIFAR10_COPIED = ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010])   # what both reference codes use on CIFAR-100


def test_protocol_hs_reference_sets_and_guards_its_settings():
    cfg = load_config(None, ["protocol=hs-reference", "data.dataset=cifar100", "train.wd_in_loss=5e-3"])
    d, t, e = cfg.data, cfg.train, cfg.eval
    # n_max = pool - 20 with round(), the next 20 images of each class as validation, first in file order
    assert (d.n_max, d.rounding, d.val_per_class, d.selection) == (480, "round", 20, "first")
    # SGD momentum 0.9 without weight_decay: WD lives in the loss; cosine stepped before each epoch
    assert (t.weight_decay, t.momentum, t.nesterov, t.wd_in_loss) == (0.0, 0.9, False, 5e-3)
    assert ((t.schedule, t.schedule_unit, t.schedule_step_at_epoch_start, t.warmup_epochs)
            == ("cosine", "epoch", True, 0))
    # the best epoch on val, no TTA anywhere
    assert (e.selection_split, e.select, e.tta_flip, e.select_tta_flip) == ("val", "best", False, False)
    assert (d.mean, d.std) == CIFAR10_COPIED
    # what the HS paper sets per dataset stays free
    free = load_config(None, ["protocol=hs-reference", "train.lr=0.05", "train.epochs=7", "train.feature_reg=0.1"])
    assert (free.train.lr, free.train.epochs, free.train.feature_reg) == (0.05, 7, 0.1)
    for override, value in (("train.weight_decay=0.005", "0.005"), ("eval.select=last", "'last'"),
                            ("train.schedule_step_at_epoch_start=false", "False"), ("data.val_per_class=0", "0"),
                            ("data.rounding=floor", "'floor'"), ("eval.tta_flip=true", "True")):
        key = override.split("=")[0]
        with pytest.raises(ConfigError, match=f"config key '{key}': {value} conflicts with protocol hs-reference"):
            load_config(None, ["protocol=hs-reference", override])


def test_protocol_mislas_reference_sets_and_guards_its_settings(repo):
    """The MiSLAS code: LDAM-DRW's CIFAR cut (shuffle, seed 0, int()), no val, the best TEST epoch in both stages, the
    copied CIFAR-10 statistics for both CIFARs, per-epoch warm-up; stage 2 = LWS on the stage-1 rows, class-aware
    crop+flip batches cut after ceil(N / B) + 1, cosine per epoch from the full lr."""
    cfg = load_config(None, ["protocol=mislas-reference", "data.dataset=cifar10"])
    d, t, e = cfg.data, cfg.train, cfg.eval
    assert (d.selection, d.selection_seed, d.rounding, d.val_per_class, d.n_max) == ("shuffle", 0, "floor", 0, 5000)
    assert (e.selection_split, e.select, e.tta_flip) == ("test", "best", False) and (d.mean, d.std) == CIFAR10_COPIED
    assert (t.wd_scope, t.warmup_unit, t.schedule_step_at_epoch_start) == ("all", "epoch", False)
    mislas = repo / "configs" / "paper" / "cifar10_lt_if100" / "mislas.yaml"
    s2 = load_config(mislas).stage2
    assert s2.lws and not s2.maxnorm and not s2.reinit_classifier and s2.augment == "crop_flip"
    assert (s2.train.sampler, s2.train.epoch_length, s2.train.schedule) == ("class_aware", "dataset_plus_one",
                                                                           "cosine")
    for override, value in (("stage2.lws=false", "False"), ("stage2.train.epoch_length=dataset", "'dataset'"),
                            ("eval.selection_split=val", "'val'")):
        key = override.split("=")[0]
        with pytest.raises(ConfigError, match=f"config key '{key}': {value} conflicts with protocol mislas-reference"):
            load_config(mislas, [override])


@pytest.mark.parametrize("overrides, message", [
    (["model.experts=2", "train.loss.name=sade"], "config key 'model.experts': 2; the sade loss trains exactly 3"),
    (["model.experts=3", "model.classifier=etf"], "config key 'model.experts': 3 experts bring their own cosine"),
    (["model.experts=3", "train.loss.name=ride", "train.loss.ldam_scale=1"], "config key 'train.loss.ldam_scale': 1.0 "
                                                                              "differs from model.expert_scale = 30.0"),
])
def test_multi_expert_combinations_that_name_no_method(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)


@pytest.mark.parametrize("name", ["ride-reference", "sade-reference", "paco-reference"])
def test_protocols_of_the_expert_and_contrastive_codes(name):
    """RIDE, SADE and PaCo: LDAM-DRW's CIFAR cut, the copied statistics, the best TEST epoch on CIFAR, the lr set per
    epoch (warm-up (e + 1) / w), weight decay on every parameter, no flip at test time. On the datasets with split
    files each code's own loaders decide: RIDE has no validation loader on ImageNet-LT / iNaturalist (the last epoch),
    SADE validates on ImageNet-LT's and Places-LT's val lists, PaCo on Places-LT's val list and on the test list
    elsewhere."""
    cfg = load_config(None, [f"protocol={name}", "data.dataset=cifar100"])
    d, t, e = cfg.data, cfg.train, cfg.eval
    assert (d.selection, d.selection_seed, d.rounding, d.val_per_class, d.n_max) == ("shuffle", 0, "floor", 0, 500)
    assert (e.selection_split, e.select, e.tta_flip) == ("test", "best", False) and (d.mean, d.std) == CIFAR10_COPIED
    assert (t.wd_scope, t.warmup_unit, t.schedule_unit, t.schedule_step_at_epoch_start) == ("all", "epoch", "epoch",
                                                                                           False)
    for override, value in (("eval.select=last", "'last'"), ("data.val_per_class=20", "20"),
                            ("train.warmup_unit=step", "'step'")):
        key = override.split("=")[0]
        with pytest.raises(ConfigError, match=f"config key '{key}': {value} conflicts with protocol {name}"):
            load_config(None, [f"protocol={name}", override])
    from bench.config.protocols import apply_protocol
    chosen = {}
    for dataset in ("imagenet-lt", "places-lt", "inat2018"):
        raw = apply_protocol({"protocol": name, "data": {"dataset": dataset}}, file_split=True)
        assert "val_per_class" not in raw["data"]      # the split files fix the long-tailed set
        chosen[dataset] = (raw["eval"]["selection_split"], raw["eval"]["select"])
    assert chosen == {"ride-reference": {"imagenet-lt": ("test", "last"), "places-lt": ("test", "best"),
                                         "inat2018": ("test", "last")},
                      "sade-reference": {"imagenet-lt": ("val", "best"), "places-lt": ("val", "best"),
                                         "inat2018": ("test", "last")},
                      "paco-reference": {"imagenet-lt": ("test", "best"), "places-lt": ("val", "best"),
                                         "inat2018": ("test", "best")}}[name]


def test_every_protocol_name_is_in_the_schema():
    import typing

    from bench.config import Config
    from bench.config.protocols import PROTOCOL_NAMES

    assert set(typing.get_args(typing.get_type_hints(Config)["protocol"])) == set(PROTOCOL_NAMES)


def test_reference_protocols_pin_the_reference_input_statistics():
    # CIFAR-100: both codes use the copied CIFAR-10 numbers; clean keeps the card's true CIFAR-100 statistics
    for protocol in ("wb-reference", "hs-reference"):
        cfg = load_config(None, [f"protocol={protocol}", "data.dataset=cifar100"])
        assert (cfg.data.mean, cfg.data.std) == CIFAR10_COPIED
        with pytest.raises(ConfigError, match=f"config key 'data.std': .* conflicts with protocol {protocol}"):
            load_config(None, [f"protocol={protocol}", "data.dataset=cifar100", "data.std=[0.2673, 0.2564, 0.2762]"])
    clean = load_config(None, ["protocol=clean", "data.dataset=cifar100"])
    assert (clean.data.mean, clean.data.std) == ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762])
    # CIFAR-10: the HS code uses CIFAR-10's true statistics (= the card); the WB code has no CIFAR-10 (card)
    card10 = ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])
    for protocol in ("hs-reference", "wb-reference", "clean", "custom"):
        cfg = load_config(None, [f"protocol={protocol}", "data.dataset=cifar10"])
        assert (cfg.data.mean, cfg.data.std) == card10, protocol
    # the statistics are part of the run: another mean is another run directory
    a = load_config(None, ["data.dataset=cifar100"])
    b = load_config(None, ["data.dataset=cifar100", "data.mean=[0.4914, 0.4822, 0.4465]"])
    assert a.run_hash() != b.run_hash() and "mean" in a.result_dict()["data"]


@pytest.mark.parametrize("override, message", [
    ("data.mean=[0.5, 0.5]", "config key 'data.mean': 2 values for the 3 channels of cifar100"),
    ("data.std=[0.2, 0.0, 0.2]", "config key 'data.std': [0.2, 0.0, 0.2] must be > 0 in every channel"),
    ("data.std=[0.25]", "config key 'data.std': 1 values, but data.mean has 3"),
])
def test_bad_input_statistics(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, ["data.dataset=cifar100", override])


def test_cb_normalizer_is_named_and_checked():
    cfg = load_config(None, [])
    assert cfg.train.loss.cb_normalizer == "batch" and cfg.stage2.train.loss.cb_normalizer == "batch"
    assert load_config(None, ["stage2.train.loss.cb_normalizer=weights"]).stage2.train.loss.cb_normalizer == "weights"
    with pytest.raises(ConfigError, match="config key 'stage2.train.loss.cb_normalizer': weights does not apply to "
                                          "cb_bce_softmax"):
        load_config(None, ["stage2.train.loss.name=cb_bce_softmax", "stage2.train.loss.cb_normalizer=weights"])
    with pytest.raises(ConfigError, match="config key 'train.loss.cb_normalizer': expected one of 'batch', 'weights'"):
        load_config(None, ["train.loss.cb_normalizer=sum"])


def test_hs_reference_children_select_on_val_without_tta(tmp_path):
    (tmp_path / "s1.yaml").write_text("protocol: hs-reference\ndata: {dataset: synthetic}\n")
    (tmp_path / "s2.yaml").write_text("protocol: hs-reference\nstage: stage2\nparent: s1.yaml\n")
    (tmp_path / "la.yaml").write_text("protocol: hs-reference\nstage: posthoc\nparent: s1.yaml\n"
                                      "posthoc: {kind: la_mult, tau: null}\n")
    s2 = load_config(tmp_path / "s2.yaml")
    assert ((s2.eval.selection_split, s2.eval.select, s2.eval.tta_flip, s2.eval.select_tta_flip)
            == ("val", "best", False, False))
    t = s2.stage2.train
    assert (t.loss.cb_normalizer, t.schedule_step_at_epoch_start, s2.stage2.maxnorm_cadence) == ("batch", True, "epoch")
    la = load_config(tmp_path / "la.yaml")
    assert (la.eval.selection_split, la.eval.tta_flip, la.eval.select_tta_flip) == ("val", False, False)
    with pytest.raises(ConfigError, match="'stage2.maxnorm_cadence': 'step' conflicts with protocol hs-reference"):
        load_config(tmp_path / "s2.yaml", ["stage2.maxnorm_cadence=step"])
    with pytest.raises(ConfigError, match="'eval.selection_split': 'test' conflicts with protocol hs-reference"):
        load_config(tmp_path / "la.yaml", ["eval.selection_split=test"])


def test_the_parent_lineage_is_resolved_once_when_the_child_config_loads(repo, tmp_path, monkeypatch):
    """A stage-2 config names its parent by YAML: loading it records the parent's run directory (not part of
    the hash), and stage 2 finds the parent there without loading the parent's config again."""
    import bench.train.features as stage2

    child = load_config(repo / "configs" / "smoke_stage2.yaml")
    parent = load_config(repo / "configs" / "smoke.yaml")
    assert child.parent_run == f"smoke/{parent.run_name()}" and child.parent_hash == parent.run_hash()
    assert "parent_run" not in child.result_dict()
    d = tmp_path / child.parent_run
    d.mkdir(parents=True)

    def no_second_load(*a, **k):
        raise AssertionError("the parent config was loaded again")
    monkeypatch.setattr(stage2, "load_parent", no_second_load)
    # the directory is found (and reported incomplete: no result.json yet), without a second load
    with pytest.raises(ConfigError, match=f"needs its parent run {d} to be complete"):
        stage2.parent_run(child, tmp_path, repo / "configs")


@pytest.mark.parametrize("key,value", [("name", "../escape"), ("name", "/abs/path"), ("name", "a/b"),
                                       ("name", "two\nlines"), ("name", "x\ntouch /tmp/owned"), ("name", ".hidden"),
                                       ("name", "_submitit"), ("name", ".."), ("name", "a..b"), ("name", ""),
                                       ("method", "wb/../../x"), ("method", "tab\tname"), ("method", "sp ace")])
def test_names_that_become_folders_are_plain(key, value):
    """An experiment name or method is a folder under the runs root and part of a SLURM job name: a value that
    would leave that folder or break a script line is a one-line error naming the key, before anything runs."""
    from bench.config.build import build_config

    with pytest.raises(ConfigError) as e:
        build_config({key: value})
    msg = str(e.value)
    assert msg.startswith(f"config key '{key}': ") and "is not a plain name" in msg and "\n" not in msg.replace(
        repr(value), "")


def test_a_config_file_with_a_newline_in_its_name_is_refused(tmp_path):
    (tmp_path / "bad.yaml").write_text('base: %s\nname: "exp\\ntouch /tmp/owned"\n'
                                       % (REPO / "configs" / "smoke.yaml"))
    with pytest.raises(ConfigError, match=r"^config key 'name': 'exp\\ntouch /tmp/owned' is not a plain name"):
        load_config(tmp_path / "bad.yaml")


def test_plain_names_pass():
    cfg = load_config(REPO / "configs" / "smoke.yaml", ["name=cifar100-lt_if.100", "method=hs-stage1"])
    assert cfg.name == "cifar100-lt_if.100" and cfg.method == "hs-stage1"


def test_mixup_with_a_sum_of_weights_normaliser_is_refused():
    with pytest.raises(ConfigError, match="'train.mixup_alpha': mixup with class weights needs train.loss"):
        load_config(None, ["train.mixup_alpha=1", "train.loss.name=cb_ce", "train.loss.cb_normalizer=weights"])
    load_config(None, ["train.mixup_alpha=1", "train.loss.name=cb_ce"])            # batch: the two losses add up
