"""The registries (bench/registry.py): every name resolves to an implementation of its kind, and the config
validates each name against its registry, so a forgotten or misspelled registration fails here."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.config import Config, ConfigError, LossConfig
from bench.config.build import build_config
from bench.data.cards import FILE_SPLIT_SOURCES, load_card
from bench.methods.classifiers import Head
from bench.methods.losses import LossFn
from bench.methods.posthoc import PostHoc
from bench.registry import DATASETS, HEADS, LOSSES, POSTHOC, READERS, Registry


def test_every_loss_builds_a_loss_that_runs():
    counts = [50, 20, 5]
    for name in LOSSES:
        loss = LOSSES[name](LossConfig(name=name), counts, None, None)
        assert isinstance(loss, LossFn), name
        logits = torch.randn(4, 3, 3) if loss.multi_expert else torch.randn(4, 3)   # ride / sade: 3 experts
        out = loss(logits, torch.tensor([0, 1, 2, 0]))
        assert out.ndim == 0 and torch.isfinite(out), name


def test_every_head_and_posthoc_step_is_of_its_kind():
    linear = torch.nn.Linear(8, 3)
    for name in HEADS:
        head = HEADS[name]
        assert isinstance(head, Head), name
        assert head.build(linear, 3, 0)(torch.randn(2, 8)).shape == (2, 3), name
    assert all(isinstance(POSTHOC[k], PostHoc) for k in POSTHOC)
    from bench.registry import CONTRAST

    assert all(callable(CONTRAST[k]) for k in CONTRAST)


def test_every_card_is_a_dataset_and_names_a_registered_reader_or_split_files():
    assert set(DATASETS) >= {"fashion-mnist", "cifar10", "cifar100", "imagenet-lt", "places-lt", "inat2018"}
    for name in DATASETS:
        source = load_card(name).get("source")
        assert source in READERS or source in FILE_SPLIT_SOURCES, (name, source)
    assert all(callable(READERS[s]) for s in READERS)


def test_the_schema_checks_every_registered_kind_against_its_registry():
    """Each field that names an extensible kind carries its registry; an unregistered name is a one-line error."""
    checked = {}

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            if isinstance(f.metadata.get("choices"), (Registry, type(DATASETS))):
                checked[prefix + f.name] = f.metadata["choices"]
            elif dataclasses.is_dataclass(f.type) or (isinstance(f.type, str) and f.type.endswith("Config")):
                walk(type(getattr(cls(), f.name)), prefix + f.name + ".")

    walk(Config, "")
    assert checked["data.dataset"] is DATASETS and checked["model.classifier"] is HEADS
    assert checked["posthoc.kind"] is POSTHOC
    assert checked["train.loss.name"] is LOSSES and checked["stage2.train.loss.name"] is LOSSES
    with pytest.raises(ConfigError, match=r"config key 'model.classifier': expected one of 'linear', .* got 'mlp'"):
        build_config({"model": {"classifier": "mlp"}})


def test_a_registry_names_its_targets_without_importing_them():
    reg = Registry("demo.kind", {"a": "no_such_module_anywhere:thing"})
    assert "a" in reg and list(reg) == ["a"] and len(reg) == 1
    with pytest.raises(ModuleNotFoundError):
        reg["a"]
