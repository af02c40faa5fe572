"""The shard tar reader: the hand-written USTAR path against Python's tarfile, the fallback for pax /
GNU headers, header checksums, torn files; and raw .npy images (`prepare --array-format npy`)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from bench.data.cards import DatasetError
from bench.data.shards import _load_npy, decode_sample, read_shard
from bench.data.shards.tar import read_span, shard_spans


def write_tar(path: Path, n: int, fmt: int = tarfile.USTAR_FORMAT, long_prefix: str = "") -> list[dict]:
    samples = []
    with tarfile.open(path, "w", format=fmt) as tf:
        for i in range(n):
            key = f"{long_prefix}{i:06d}"
            fields = {"png": bytes([i % 256]) * (100 + 37 * i), "cls": str(i % 3).encode()}
            for ext, data in fields.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime = len(data), 0
                if fmt == tarfile.PAX_FORMAT:
                    info.pax_headers = {"comment": "x" * 10}
                tf.addfile(info, io.BytesIO(data))
            samples.append({"__key__": key, **fields})
    return samples


@pytest.mark.parametrize("fmt, prefix", [(tarfile.USTAR_FORMAT, ""), (tarfile.USTAR_FORMAT, "d/" * 60),
                                         (tarfile.PAX_FORMAT, ""), (tarfile.GNU_FORMAT, "long" * 40)])
def test_every_format_reads_the_same_samples(tmp_path, fmt, prefix):
    path = tmp_path / "s.tar"
    samples = write_tar(path, 7, fmt, prefix)
    assert list(read_shard(str(path), 0, 7, "raise")) == samples
    assert list(read_shard(str(path), 3, 2, "raise")) == samples[3:5]      # skip seeks over data


@pytest.mark.parametrize("fmt, prefix", [(tarfile.USTAR_FORMAT, ""), (tarfile.USTAR_FORMAT, "d/" * 60),
                                         (tarfile.PAX_FORMAT, ""), (tarfile.PAX_FORMAT, "päx/" * 40),
                                         (tarfile.GNU_FORMAT, "long" * 40)])
def test_sample_spans_read_each_sample_alone(tmp_path, fmt, prefix):
    """Random access (class-aware sampling from shards): the headers give each sample's byte span, and the span
    parsed alone is the sample read_shard streams, in any format."""
    path = tmp_path / "s.tar"
    samples = write_tar(path, 7, fmt, prefix)
    spans, problem = shard_spans(str(path))
    assert problem is None and len(spans) == 7
    # back to back from the first byte: each span starts at its sample's first header (a pax or GNU long-name one
    # included), where the previous one ends
    assert spans[0][0] == 0 and all(b == c for (_, b), (c, _) in zip(spans, spans[1:]))
    with open(path, "rb") as f:
        assert [read_span(f, a, b) for a, b in reversed(spans)] == samples[::-1]


def test_sample_spans_of_a_torn_shard_keep_the_whole_samples(tmp_path):
    path = tmp_path / "s.tar"
    write_tar(path, 5)
    data = path.read_bytes()
    third = data.index(b"000002.png")
    (tmp_path / "torn.tar").write_bytes(data[:third + 600])            # inside the third sample's data
    spans, problem = shard_spans(str(tmp_path / "torn.tar"))
    assert len(spans) == 2 and problem == "the file ends inside its last sample"
    (tmp_path / "torn2.tar").write_bytes(data[:third + 300])           # inside the third sample's header
    spans, problem = shard_spans(str(tmp_path / "torn2.tar"))
    assert len(spans) == 2 and problem == "ReadError: unexpected end of data (torn header)"
    # a file that ends between the members of a sample (at a block boundary): the half sample is left out
    cls = data.index(b"000002.cls")                     # the header of the third sample's label
    (tmp_path / "half.tar").write_bytes(data[:cls])
    spans, problem = shard_spans(str(tmp_path / "half.tar"))
    assert len(spans) == 2 and problem.startswith("its last sample has no label or no image")
    with open(path, "rb") as f, pytest.raises(tarfile.ReadError, match="two samples"):
        read_span(f, 0, spans[1][1])


def test_bad_header_checksum_and_tear_are_named(tmp_path):
    path = tmp_path / "s.tar"
    write_tar(path, 4)
    data = bytearray(path.read_bytes())
    bad = tmp_path / "bad.tar"
    third = data.index(b"000002.png")                  # the header of the third sample
    data[third + 1] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(DatasetError,
                       match=r"bad.tar after key 000001: unreadable tar \(InvalidHeaderError: bad checksum\)"):
        list(read_shard(str(bad), 0, 4, "raise"))
    torn = tmp_path / "torn.tar"
    torn.write_bytes(path.read_bytes()[:third + 600])   # inside the third sample's data
    got = list(read_shard(str(torn), 0, 4, "skip"))
    assert [g["__key__"] for g in got[:2]] == ["000000", "000001"] and len(got) == 4
    assert all("unreadable tar" in h.where for h in got[2:])


def test_npy_images_decode_without_pil():
    for a in (np.arange(784, dtype=np.uint8).reshape(28, 28), np.arange(3072, dtype=np.uint8).reshape(32, 32, 3) % 251):
        buf = io.BytesIO()
        np.save(buf, a)
        assert np.array_equal(_load_npy(buf.getvalue()), a)
        channels = 1 if a.ndim == 2 else 3
        img, label = decode_sample({"__key__": "k", "npy": buf.getvalue(), "cls": b"4"}, channels, "s.tar", 10)
        assert label == 4 and img.shape == (*a.shape[:2], channels)
    with pytest.raises(DatasetError, match=r"s.tar key k: .npy is uint8 \(28, 28, 1\), expected uint8 H x W x 3"):
        decode_sample({"__key__": "k", "npy": buf.getvalue()[:0] or _npy(np.zeros((28, 28), np.uint8)), "cls": b"1"},
                      3, "s.tar", 10)
    with pytest.raises(DatasetError, match=r"s.tar key k: cannot decode .npy"):
        decode_sample({"__key__": "k", "npy": b"garbage", "cls": b"1"}, 1, "s.tar", 10)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


@pytest.mark.parametrize("name", ["pipe:touch ran", "../outside.tar", "/abs/x.tar", "sub/x.tar", "http://h/x.tar",
                                  ".hidden.tar", "x.tar.gz"])
def test_a_manifest_names_only_plain_shard_files(tmp_path, name):
    import json

    from bench.data.cards import DatasetError
    from bench.data.shards import FORMAT, load_manifest

    shard = {"samples": 1, "bytes": 1024, "sha256": "0", "labels": [0]}
    doc = {"format": FORMAT, "dataset": "synthetic", "num_classes": 1, "class_names": ["a"], "channels": 3,
           "selection": {}, "splits": {"train": {"num_samples": 2, "class_counts": [2], "shards": [
               {"name": "train-000000.tar", **shard}, {"name": name, **shard}]}}}
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match="is not a plain file name"):
        load_manifest(tmp_path)
    assert not (tmp_path / "ran").exists()
