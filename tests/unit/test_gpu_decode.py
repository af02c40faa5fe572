"""data.decode=gpu: the workers pass JPEG bytes + crop boxes and the main process decodes, crops and flips
the batch (bench.data.gpu_decode). Run here on the CPU (torchvision's decoder instead of nvJPEG): the same
samples, crops and flips as the PIL path, pixels within interpolation differences."""

from __future__ import annotations


import pytest
import torch

from bench.config import ConfigError
from bench.experiment import load_config
from bench.data.cards import DatasetError
from bench.data.lt import build_lt_data
from bench.data.shards import ShardLoader
from bench.devtools.gpudata import JPEG, jpeg_shards
from tests.shardtools import rewrite_shard


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return jpeg_shards(tmp_path_factory.mktemp("photos"), {"train": 48, "val": 4, "test": 12}, 2, (120, 90))


def batches(path, train: bool, decode: str, on_error: str = "raise", batch: int = 16, augment: str = "rrc_flip",
            extra: tuple[str, ...] = ()):
    cfg = load_config(JPEG, [f"data.shards={path}", "data.streams=1", f"data.decode={decode}",
                             f"data.on_error={on_error}", *extra])
    data = build_lt_data(cfg.data)
    spec = data._spec(data.train if train else data.test, train, batch, 0, augment if train else "none", False)
    loader = ShardLoader(spec, None, 0)
    out = [(x, y, list(loader.batch_keys)) for x, y in loader.epoch(0)]
    return out, loader


@pytest.mark.parametrize("train", [True, False])
def test_gpu_path_matches_the_pil_path(shards, train):
    for path in shards.values():
        cpu, _ = batches(path, train, "cpu")
        gpu, _ = batches(path, train, "gpu")
        assert [(y.tolist(), k) for _, y, k in cpu] == [(y.tolist(), k) for _, y, k in gpu]   # same samples, order
        a = torch.cat([x for x, _, _ in cpu]).float()
        b = torch.cat([x for x, _, _ in gpu]).float()
        assert a.shape == b.shape == (len(a), 3, 224, 224) and b.dtype == torch.float32
        diff = (a - b).abs()
        # evaluation: one resize of the whole image, as PIL does; training: the same crop box and flip (a
        # wrong box or flip would differ by tens of levels everywhere), borders resampled differently
        assert diff.mean() < (0.2 if train else 0.05), diff.mean()
        if not train:
            assert diff.max() <= 2


@pytest.mark.parametrize("pad", [(), ("data.pad_to=228", "data.crop_padding=8")])
def test_gpu_path_crops_as_the_pil_path(shards, pad):
    """crop_flip: the CPU path's resize, centre crop, centre pad to pad_to, padded random crop and flip."""
    path, size = shards["shorter-256"], 228 if pad else 224
    cpu, _ = batches(path, True, "cpu", augment="crop_flip", extra=pad)
    gpu, _ = batches(path, True, "gpu", augment="crop_flip", extra=pad)
    flip, _ = batches(path, True, "gpu", augment="flip", extra=pad)
    a, b, c = (torch.cat([x for x, _, _ in out]).float() for out in (cpu, gpu, flip))
    assert a.shape == b.shape == c.shape == (48, 3, size, size)
    # the same offsets and flips as the CPU path (one shifted or unflipped image would add ~1 level on
    # average), and not the flip alone (tens of levels)
    assert (a - b).abs().mean() < 0.05, (a - b).abs().mean()
    assert (b - c).abs().mean() > 5, (b - c).abs().mean()
    ev, _ = batches(path, False, "gpu", extra=pad)
    assert ev[0][0].shape[-2:] == (size, size)


def test_gpu_path_reports_an_undecodable_jpeg(shards, tmp_path):
    import shutil

    src = shards["shorter-256"]
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    shard = sorted(bad.glob("test-*.tar"))[0]

    def corrupt(samples):
        s = samples[3]
        data = bytearray(s["jpg"])
        data[len(data) // 2:] = bytes(len(data) - len(data) // 2)   # header intact, entropy data gone
        s["jpg"] = bytes(data)
        return samples

    rewrite_shard(shard, bad / "manifest.json", corrupt)
    with pytest.raises(DatasetError, match="cannot decode"):
        batches(bad, False, "gpu")
    out, loader = batches(bad, False, "gpu", on_error="skip")
    assert sum(len(y) for _, y, _ in out) == 11 and loader.pop_skipped()[0] == 1


def test_gpu_decode_needs_shards_and_a_gpu(tmp_path):
    from bench.train.stage import setup

    cfg = load_config(None, ["data.dataset=synthetic", "data.decode=gpu", "runtime.device=cpu"])
    with pytest.raises(ConfigError, match="data.decode"):
        setup(cfg)
