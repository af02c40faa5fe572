"""Random access to the shards: the class-aware and class-balanced samplers read each drawn sample at its offset
(bench/data/shards/access.py), in the in-memory loader's order, under DDP, with bad data, and the stage-2 methods
that need them (RIDE's router; MiSLAS's stage 2 runs in test_shards' large-image test)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli
from tests.integration.test_shards import _copy_shards, _run_ddp
from tests.shardtools import SMOKE, make_split_file_tree

pytestmark = pytest.mark.slow


@pytest.mark.ddp
def test_ddp_class_aware_from_shards_splits_each_global_batch(smoke_shards, tmp_path):
    """Random access under 2-process DDP: at every step the ranks read the two halves of the global batch one
    process reads, so a class-aware epoch holds the same samples for any number of ranks."""
    from bench.data.lt import build_lt_data
    from bench.experiment import load_config

    ranks = _run_ddp(smoke_shards, (2,), tmp_path / "ca", 29700 + os.getpid() % 1000, "class_aware", (1,))[2]
    data = build_lt_data(load_config(SMOKE, [f"data.shards={smoke_shards}"]).data)
    one = data.train_loader(16, 0, "crop_flip", False, "class_aware", 0)
    for epoch in (1,):
        keys = []
        for _ in one.epoch(epoch):
            keys.append(list(one.batch_keys))
        per_rank = [r["train"][str(epoch)]["keys"] for r in ranks]
        assert len(keys) == len(one) == len(per_rank[0]) == len(per_rank[1]) == 119   # max n_c 190 x 10 / 16
        assert [a + b for a, b in zip(*per_rank)] == keys
        assert all(len(a) == 8 for a in per_rank[0][:-1])


def test_class_aware_from_shards_reads_the_in_memory_order(smoke_shards, tmp_path):
    """class_aware / class_balanced from shards (random access to the samples): step s holds the samples the
    in-memory loader draws from the same labels (the manifest's order), pixel for pixel; the same with 0 and 2
    workers and when an epoch resumes at a step. A damaged sample is named when a batch reads it (the manifest's
    offsets) or before the first batch (shards without offsets: the header scan stops there), or with
    data.on_error=skip counted as holes; a sample whose label is not the manifest's is named."""
    import numpy as np

    from bench.data.batches import InMemoryLoader, Split
    from bench.data.cards import DatasetError
    from bench.data.lt import build_lt_data
    from bench.data.prepare import TRAIN_ORDER_SEED
    from bench.data.shards.tar import shard_spans
    from bench.experiment import load_config

    mem = build_lt_data(load_config(SMOKE, []).data)
    data = build_lt_data(load_config(SMOKE, [f"data.shards={smoke_shards}"]).data)
    perm = torch.from_numpy(np.random.default_rng(TRAIN_ORDER_SEED).permutation(len(mem.train)))
    ordered = Split(mem.train.x[perm], mem.train.y[perm])     # `prepare` shuffles the training set once
    assert torch.equal(ordered.y, data.labels("train"))
    for sampler in ("class_aware", "class_balanced"):
        want = list(InMemoryLoader(ordered, 16, seed=3, normalize=mem.normalizer(), sampler=sampler,
                                   num_classes=10).epoch(1))
        loader = data.train_loader(16, 3, "none", False, sampler, 0)
        got = list(loader.epoch(1))
        assert len(got) == len(want) == len(loader) and loader.layout() == {"world_size": 1, "batch_size": 16}
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, want))
        two = list(data.train_loader(16, 3, "none", False, sampler, 2).epoch(1))
        tail = list(loader.epoch(1, start_step=5))
        assert all(torch.equal(a[0], b[0]) for a, b in zip(two, got)) and len(two) == len(got)
        assert all(torch.equal(a[0], b[0]) for a, b in zip(tail, got[5:])) and len(tail) == len(got) - 5
    drawn = torch.bincount(torch.cat([y for _, y in got]), minlength=10)    # class_balanced: 772 uniform draws
    assert drawn.min() > 40
    aware = torch.bincount(torch.cat([y for _, y in data.train_loader(16, 3, "crop_flip", False, "class_aware",
                                                                      0).epoch(0)]), minlength=10)
    assert aware.max() - aware.min() <= 4 and aware.sum() == 1900      # class turns of 4 in cycles: balanced
    manifest = json.loads((smoke_shards / "manifest.json").read_text())
    assert all(len(sh["offsets"]) == sh["samples"] + 1 for sh in manifest["splits"]["train"]["shards"])
    first = manifest["splits"]["train"]["shards"][0]
    spans, _ = shard_spans(str(smoke_shards / first["name"]))              # what a scan of the headers finds
    assert [a for a, _ in spans] + [spans[-1][1]] == first["offsets"]

    def epoch(shards: Path, on_error: str = "raise"):
        d = build_lt_data(load_config(SMOKE, [f"data.shards={shards}", f"data.on_error={on_error}"]).data)
        loader = d.train_loader(16, 3, "none", False, "class_aware", 2)
        return sum(len(y) for _, y in loader.epoch(1)), loader

    s = _copy_shards(smoke_shards, tmp_path / "s")
    tar = bytearray((s / "train-000003.tar").read_bytes())
    tar[tar.index(b"00000340.png")] ^= 0xFF        # a bad header checksum at the 41st sample: the size is unchanged
    (s / "train-000003.tar").write_bytes(bytes(tar))
    # the manifest's offsets (`prepare` records them): the damage is found when a batch reads the sample
    with pytest.raises(DatasetError, match=r"train-000003.tar at byte \d+: unreadable sample \(InvalidHeaderError"):
        epoch(s)
    n, loader = epoch(s, "skip")
    assert n + loader.skipped == 1900 and loader.skipped > 0
    # shards prepared before the offsets were recorded: the header scan finds the damage before the first batch
    for sh in manifest["splits"]["train"]["shards"]:
        del sh["offsets"]
    (s / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=r"train-000003.tar: InvalidHeaderError: bad checksum; 40 readable "
                                           r"samples, the manifest says 100$"):
        epoch(s)
    n, loader = epoch(s, "skip")
    assert n + loader.skipped == 1900 and loader.skipped > 0
    assert "train-000003.tar: InvalidHeaderError: bad checksum" in loader.pop_skipped()[1][0]
    # a label that is not the manifest's (the shard changed since `prepare`): the balance would be wrong
    s = _copy_shards(smoke_shards, tmp_path / "s2")
    tar = bytearray((s / "train-000001.tar").read_bytes())
    at = tar.index(b"00000150.cls") + 512             # the label's data block
    tar[at] = ord("0") + (int(chr(tar[at])) + 1) % 10
    (s / "train-000001.tar").write_bytes(bytes(tar))
    with pytest.raises(DatasetError, match=r"train-000001.tar at byte \d+ \(key 00000150\): label \d, the "
                                           r"manifest says \d \(the shard changed since `ltbench prepare`"):
        epoch(s)


def test_ride_router_trains_on_class_balanced_batches_from_shards(cards, tmp_path):
    """RIDE's expert-assignment router on a fake ImageNet-LT: its class-balanced batches of the stage-1 transform are
    read from the shards at random (as configs/paper/imagenet_lt/ride_ea.yaml)."""
    images = make_split_file_tree(tmp_path / "src", "imagenet-lt")
    env = {"LTBENCH_DATASETS_DIR": str(cards)}
    out = tmp_path / "shards"
    assert run_cli("prepare", "imagenet-lt", "--src", str(images), "--splits", str(tmp_path / "src" / "splits"),
                   "--out", str(out), "--samples-per-shard", "8", env=env).returncode == 0
    ride, ea = tmp_path / "ride.yaml", tmp_path / "ea.yaml"
    ride.write_text(f"""
name: fake-inlt
method: ride
protocol: clean
data: {{dataset: imagenet-lt, shards: {out}, augment: rrc_flip_jitter}}
model: {{name: resnet8_cifar, experts: 3, expert_width: 0.75}}
train: {{epochs: 1, batch_size: 8, lr: 0.05, loss: {{name: ride}}}}
runtime: {{threads: 1, workers: 2}}
""")
    ea.write_text(f"""
name: fake-inlt
method: ride-ea
protocol: clean
stage: stage2
parent: {ride}
stage2: {{router: true, router_top: 3, maxnorm: false, augment: rrc_flip_jitter, bn_mode: eval,
          train: {{epochs: 1, batch_size: 8, lr: 0.01, sampler: class_balanced}}}}
""")
    for c in (ride, ea):
        r = run_cli("run", str(c), "--runs-root", str(tmp_path / "runs"), env=env)
        assert r.returncode == 0, r.stderr
    res = json.loads(next((tmp_path / "runs").glob("fake-inlt/ride-ea-*/result.json")).read_text())
    assert res["stage"] == "stage2" and res["steps_per_epoch"] == 4 and 1 <= res["experts_used_mean"] <= 3
