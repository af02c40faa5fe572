"""Random access to a ShardSplit: the class-aware and class-balanced samplers over shards.

The stream loader (loader.py) reads each shard front to back, which is all an instance-balanced epoch
needs. A class-aware epoch (Decoupling's cRT, MiSLAS's stage 2, RIDE's router) draws a rare class's few
images many times, in an order no stream follows, so this loader reads each sample where it lies: once
per process the manifest's offsets (what `ltbench prepare` records for the training shards) or else the
shards' headers (tar.shard_spans; no image is read) give every sample's byte span, and a worker seeks to
the spans of its batches; each sample's label is checked against the manifest's, which drew the order.

The order is SampleOrder's (bench.data.batches): the same labels and seed give the same samples at every
step as the in-memory loader. Under DDP each rank reads its contiguous slice of every global batch, as in
memory; its part is decoded and augmented as the stream loader's batches (loader._make_batch, seeded by
(seed, epoch, rank, step)), so the pixels, though not the samples, depend on the world size, which
`layout` records for the resume check.
"""

from __future__ import annotations

import os
import tarfile
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import torch

from bench.data.batches import SampleOrder
from bench.data.cards import DatasetError
from bench.data.shards.loader import ShardLoader, _make_batch
from bench.data.shards.manifest import ShardSplit
from bench.data.shards.plan import StreamSpec
from bench.data.shards.tar import Hole, read_span, shard_spans

_SPANS: dict[tuple[str, int, int], tuple[list[tuple[int, int]], str | None]] = {}   # (path, size, mtime) -> scan


@dataclass
class SampleIndex:
    """Where each sample of a split lies, by its position in manifest order (the order of ShardSplit.y)."""

    shard: np.ndarray       # the shard's number in the manifest
    start: np.ndarray       # first byte of its first member's header
    end: np.ndarray         # end of its last member; -1: not readable (data.on_error=skip)
    damage: dict[int, str]  # shard number -> what cut its scan short

    def where(self, split: ShardSplit, pos: int) -> str:
        k = int(self.shard[pos])
        return f"shard {split.path(k)}: {self.damage.get(k, 'unreadable')}"


def _spans(path: str) -> tuple[list[tuple[int, int]], str | None]:
    """shard_spans, scanned once per process while the file is unchanged (a run builds a loader per stage)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _SPANS:
        _SPANS[key] = shard_spans(path)
    return _SPANS[key]


def sample_index(split: ShardSplit, on_error: str) -> SampleIndex:
    """The byte span of every sample of the split: the manifest's offsets, or else a scan of the shard's headers.
    A shard that holds fewer samples than the manifest says raises a DatasetError naming it, unless
    on_error=skip (its missing ones are holes)."""
    shard, start, end, damage = [], [], [], {}
    for k, s in enumerate(split.shards):
        path, want = split.path(k), s["samples"]
        offsets = s.get("offsets")
        if offsets is not None and len(offsets) == want + 1 and offsets[-1] <= s["bytes"]:
            # `ltbench prepare` records where each training sample starts: no scan (the file's size was checked)
            spans, problem = list(zip(offsets[:-1], offsets[1:])), None
        else:
            try:
                spans, problem = _spans(path)
            except OSError as e:
                spans, problem = [], f"{type(e).__name__}: {e}"
        spans = spans[:want]
        if len(spans) < want:
            problem = f"{problem}; " if problem else ""
            damage[k] = f"{problem}{len(spans)} readable samples, the manifest says {want}"
            if on_error != "skip":
                raise DatasetError(f"shard {path}: {damage[k]}")
            spans = spans + [(0, -1)] * (want - len(spans))
        shard.append(np.full(want, k, dtype=np.int32))
        start.append(np.array([a for a, _ in spans], dtype=np.int64))
        end.append(np.array([b for _, b in spans], dtype=np.int64))
    cat = (lambda parts, dt: np.concatenate(parts) if parts else np.zeros(0, dt))  # noqa: E731
    return SampleIndex(cat(shard, np.int32), cat(start, np.int64), cat(end, np.int64), damage)


class _OpenShards:
    """The shard files a worker has open (the 64 last used): random reads jump between shards."""

    def __init__(self, split: ShardSplit, keep: int = 64) -> None:
        self.split, self.keep = split, keep
        self.files: OrderedDict[int, IO[bytes]] = OrderedDict()

    def get(self, k: int) -> IO[bytes]:
        if k in self.files:
            self.files.move_to_end(k)
        else:
            # a local file only, as read_shard: never an opener that interprets the name
            self.files[k] = open(self.split.path(k), "rb")  # noqa: SIM115 - closed on eviction / close()
            if len(self.files) > self.keep:
                self.files.popitem(last=False)[1].close()
        return self.files[k]

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()


def _label(sample: dict[str, Any]) -> int | None:
    try:
        return int(sample["cls"])
    except (KeyError, ValueError):
        return None


class _Sampled(torch.utils.data.IterableDataset):
    """The batches of one rank and epoch, read by random access; worker w of k serves the steps
    start_step + w, + w + k, ..., so torch's round-robin returns them in order."""

    def __init__(self, spec: StreamSpec, sampling: SampleOrder, index: SampleIndex, labels: torch.Tensor) -> None:
        super().__init__()
        self.spec, self.sampling, self.index = spec, sampling, index
        self.order, self.steps = sampling.order(spec.epoch), sampling.steps
        self.labels = labels        # the manifest's, which drew the order

    def _item(self, files: _OpenShards, pos: int) -> Any:
        spec, ix = self.spec, self.index
        k = int(ix.shard[pos])
        path = spec.split.path(k)
        if ix.end[pos] < 0:
            return Hole(ix.where(spec.split, pos))
        where = f"shard {path} at byte {int(ix.start[pos])}"
        try:
            sample = read_span(files.get(k), int(ix.start[pos]), int(ix.end[pos]))
            problem = None
        except (tarfile.TarError, EOFError, OSError) as e:
            problem = f"{where}: unreadable sample ({type(e).__name__}: {e})"
        label, want = (_label(sample), int(self.labels[pos])) if problem is None else (None, None)
        if label not in (None, want):
            # the sampler balanced the classes by the manifest's labels: a sample that disagrees means the shard
            # is not the one the manifest describes (a missing or bad label is decode_sample's error)
            problem = (f"{where} (key {sample['__key__']}): label {label}, the manifest says {want} (the shard "
                       "changed since `ltbench prepare`; prepare it again)")
        if problem is None:
            return sample, path
        if spec.on_error != "skip":
            raise DatasetError(problem)
        return Hole(problem)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        k, w = (1, 0) if info is None else (info.num_workers, info.id)
        spec, files = self.spec, _OpenShards(self.spec.split)
        try:
            for step in range(spec.start_step + w, self.steps, k):
                mine = self.sampling.rank_part(self.order, step, spec.rank, spec.world)[0]
                yield _make_batch([self._item(files, int(p)) for p in mine], spec, step)
        except DatasetError as e:
            yield {"error": str(e)}    # raised in the main process as it is (see loader._Streams)
        finally:
            files.close()


class SampledShardLoader(ShardLoader):
    """Training batches of a ShardSplit in a class_aware / class_balanced order (a TrainLoader).

    `batch` is the global batch size; spec.batch is unused (each rank takes its slice of every global batch).
    """

    def __init__(self, spec: StreamSpec, normalize: Any | None, workers: int, *, batch: int, sampler: str,
                 num_classes: int, epoch_length: str = "sampler") -> None:
        super().__init__(spec, normalize, workers)
        self.batch = batch
        self.labels = spec.split.y            # the manifest's, built once (437,513 of them at iNaturalist's size)
        self.sampling = SampleOrder(self.labels, batch, spec.seed, sampler, num_classes, spec.drop_last, epoch_length)
        self.index = sample_index(spec.split, spec.on_error)

    def __len__(self) -> int:
        return self.sampling.steps

    def layout(self) -> dict[str, int]:
        return {"world_size": self.spec.world, "batch_size": self.batch}

    def padded(self) -> int:
        """Samples repeated per epoch so that every rank has one in the last step, as in memory."""
        return self.sampling.padded(self.spec.world)

    def _dataset(self, spec: StreamSpec) -> tuple[torch.utils.data.IterableDataset, int]:
        return (_Sampled(spec, self.sampling, self.index, self.labels),
                self.workers)
