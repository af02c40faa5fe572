"""The layering of config and data: config imports without data, one loader protocol, one dataset registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.data.cards import FILE_SPLIT_SOURCES
from bench.data.batches import InMemoryLoader, Split
from bench.data.cards import cards_dir, load_card
from bench.data.loaders import TrainLoader
from bench.data.shards import ShardLoader, ShardSplit, StreamSpec
from bench.data.sources import in_memory
from bench.registry import READERS
from tests.conftest import REPO


def _modules_after(statement: str) -> list[str]:
    """The bench.* modules a fresh interpreter holds after `statement` (run from the repo root: this tree)."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith('bench'))))"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def test_config_imports_without_the_data_package():
    loaded = _modules_after("import bench.config")
    assert "bench.config" in loaded
    assert [m for m in loaded if m.startswith("bench.data")] == []


def test_reading_a_manifest_does_not_import_config_or_lt():
    # the config reads a manifest's digest: that must not come back round to the config (the old circle)
    loaded = _modules_after("import bench.data.shards.manifest")
    assert "bench.config" not in loaded and "bench.data.lt" not in loaded


def _shard_loader(n: int, world: int, batch: int) -> ShardLoader:
    split = ShardSplit(Path("."), "train", [{"name": "a.tar", "samples": n, "labels": [0] * n}])
    spec = StreamSpec(split=split, train=True, seed=0, epoch=0, rank=0, world=world, batch=batch, drop_last=False,
                      streams=1, buffer=4, on_error="raise", channels=1, num_classes=1, pad_to=None, image_size=None,
                      eval_resize=None, augment="none", crop_padding=0)
    return ShardLoader(spec, None, 0)


def test_both_loaders_satisfy_the_training_loop_protocol():
    memory = InMemoryLoader(Split(torch.zeros(10, 1, 4, 4, dtype=torch.uint8), torch.zeros(10, dtype=torch.int64)),
                            4, seed=0, normalize=None)
    shards = _shard_loader(95, 2, 47)
    for loader in (memory, shards):
        assert isinstance(loader, TrainLoader)
        assert loader.pop_skipped() == (0, [])
    assert memory.padded() == 0
    assert shards.padded() == 1    # 95 samples, 2 ranks of 47: rank 1 repeats one (see test_padding_case_by_hand)


def test_stream_spec_is_keyword_only():
    with pytest.raises(TypeError):
        StreamSpec(ShardSplit(Path("."), "train", []), True)  # type: ignore[misc]


def test_every_card_names_a_registered_reader_or_split_files():
    """A card's `source` is a reader of bench/registry.py READERS (read into memory) or split files (sharded)."""
    sources = {n: load_card(n).get("source") for n in (p.stem for p in cards_dir().glob("*.yaml"))}
    assert all(s in READERS or s in FILE_SPLIT_SOURCES for s in sources.values()), sources
    assert {n for n, s in sources.items() if s in READERS} == {n for n in sources if in_memory(n)}
