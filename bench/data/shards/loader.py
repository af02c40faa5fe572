"""The shard loader: a rank's batches of one epoch, produced by DataLoader workers from its streams' reads
(bench.data.shards.plan), read (tar), decoded (decode) and assembled into uint8 batches here."""

from __future__ import annotations

import dataclasses
import heapq
import os
import signal
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from bench.data.batches import ROTATE, center_pad, crop_flip_draws, derived_generator, random_crop_flip
from bench.data.views import WHOLE_IMAGE_VIEWS, ViewOptions, augment_views, colour_jitter
from bench.data.cards import DatasetError
from bench.data.gpu_decode import decode_batch
from bench.data.shards.decode import _jpeg_for_gpu, _to_fixed_size, decode_sample
from bench.data.shards.plan import StreamSpec, _buffer_shuffle, batch_sizes, plan, rank_ranges
from bench.data.shards.tar import Hole, read_shard


def _gpu_batch(xs: list[Any], ys: list[int], keys: list[str], holes: list[str], jpegs: list[Any],
               spec: StreamSpec, index: int) -> dict[str, Any]:
    """A batch whose JPEGs the main process decodes on the GPU; images decoded here ride along finished."""
    done = {i: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1) for i, a in enumerate(xs) if a is not None}
    pad = 0
    draws: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None] = (None, None, None)
    if spec.train and spec.augment != "none":
        # _make_batch's crop / flip draws, from the same generator in the same order; decode_batch applies them
        # after centre-padding to pad_to, as the CPU path does (pad 0 after RandomResizedCrop: the flip only)
        pad = spec.crop_padding if spec.augment.startswith("crop_flip") else 0
        draws = crop_flip_draws(derived_generator(spec.seed, spec.epoch, spec.rank, index, 1), len(ys), pad, True)
    return {"index": index, "y": torch.tensor(ys, dtype=torch.int64), "keys": keys, "holes": holes,
            "gpu": {"jpegs": [j[1] for j in jpegs], "slots": [j[0] for j in jpegs],
                    "boxes": [j[2] for j in jpegs], "done": done, "pad": pad, "oy": draws[0], "ox": draws[1],
                    "flip": draws[2]}}


def _make_batch(items: list[Any], spec: StreamSpec, index: int) -> dict[str, Any]:
    """Batch `index` of the rank: its samples decoded and brought to one size, holes set aside."""
    rng = np.random.default_rng([spec.seed, spec.epoch, spec.rank, index, 2])
    xs: list[Any] = []   # decoded images; None where the GPU decodes
    ys: list[int] = []
    keys, holes = [], []
    jpegs: list[tuple[int, torch.Tensor, tuple[int, int, int, int] | None]] = []   # decode=gpu: (slot, bytes, box)
    rrc = spec.train and spec.augment.startswith("rrc_flip")
    # data.views of large images: the views that RandomResizedCrop read the decoded image, not its centre crop
    whole: list[torch.Tensor] | None = [] if spec.train and spec.views and spec.image_size is not None else None
    # every view crops the decoded image: its centre crop would go unused (a resize of the whole image saved)
    size = spec.image_size
    blank = (np.zeros((size, size, spec.channels), np.uint8)
             if size is not None and whole is not None and all(v in WHOLE_IMAGE_VIEWS for v in spec.views) else None)
    for it in items:
        if isinstance(it, Hole):
            holes.append(it.where)
            continue
        sample, path = it
        try:
            passed = (_jpeg_for_gpu(sample, path, rng, size=spec.image_size, channels=spec.channels,
                                    num_classes=spec.num_classes, rrc=rrc) if spec.decode == "gpu" else None)
            if passed is None:
                img, label = decode_sample(sample, spec.channels, path, spec.num_classes)
        except DatasetError as e:
            if spec.on_error != "skip":
                raise
            holes.append(str(e))
            continue
        if passed is not None:
            data, box, label = passed
            jpegs.append((len(ys), data, box))
            xs.append(None)   # filled on the GPU
        else:
            xs.append(blank if blank is not None else _to_fixed_size(img, spec.image_size, spec.eval_resize, rrc, rng))
            if whole is not None:
                a = np.asarray(img)
                a = np.ascontiguousarray(a[..., None] if a.ndim == 2 else a)
                whole.append(torch.from_numpy(a).permute(2, 0, 1))
        ys.append(label)
        keys.append(f"{os.path.basename(path)}/{sample['__key__']}")
    if jpegs:
        return _gpu_batch(xs, ys, keys, holes, jpegs, spec, index)
    if not xs:  # every sample unreadable (on_error=skip): an empty batch keeps the step count
        return {"index": index, "x": torch.zeros(0, dtype=torch.uint8), "y": torch.zeros(0, dtype=torch.int64),
                "keys": [], "holes": holes}
    x = center_pad(torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2), spec.pad_to)
    if spec.train and spec.views:
        # seeded by (seed, epoch, rank, batch index) and the image's place in the batch: a pure function of the
        # stream position, as the crops below, so a resumed epoch draws the same views
        x = augment_views(x, (spec.seed, spec.epoch, spec.rank, index), len(x), 0, names=spec.views,
                          crop_padding=spec.crop_padding, whole=whole,
                          opts=ViewOptions(spec.view_blur, spec.randaugment_n))
    elif spec.train and spec.augment != "none":
        # the same batched crop / flip as the in-memory loader; RandomResizedCrop already cropped
        gen = derived_generator(spec.seed, spec.epoch, spec.rank, index, 1)
        pad = spec.crop_padding if spec.augment.startswith("crop_flip") else 0
        x = random_crop_flip(x, gen, pad, flip=True, rotate=ROTATE.get(spec.augment, 0.0))
        if spec.augment == "rrc_flip_jitter":   # colour is per pixel: after the flip as before it
            x = colour_jitter(x, (spec.seed, spec.epoch, spec.rank, index))
    return {"index": index, "x": x.contiguous(), "y": torch.tensor(ys, dtype=torch.int64), "keys": keys,
            "holes": holes}


def stream_batches(spec: StreamSpec, c: int, reads: list[tuple[int, int, int]],
                   batches: list[tuple[int, int]]) -> Iterator[dict[str, Any]]:
    """Batches of stream c at or after spec.start_step; earlier ones are replayed without decoding."""
    def raw() -> Iterator[Any]:
        for k, skip, count in reads:
            path = spec.split.path(k)
            for s in read_shard(path, skip, count, spec.on_error):
                yield s if isinstance(s, Hole) else (s, path)

    items = raw()
    if spec.train:
        items = _buffer_shuffle(items, spec.buffer, np.random.default_rng([spec.seed, spec.epoch, spec.rank, c, 3]))
    for index, size in batches:
        chunk = [next(items) for _ in range(size)]
        if index >= spec.start_step:
            yield _make_batch(chunk, spec, index)


class _Streams(torch.utils.data.IterableDataset):
    """The batches of one rank and epoch; each DataLoader worker serves whole streams."""

    def __init__(self, spec: StreamSpec) -> None:
        super().__init__()
        self.spec = spec

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        k, w = (1, 0) if info is None else (info.num_workers, info.id)
        pieces, _ = plan(self.spec)
        mine = [c for c in range(self.spec.streams) if (c - self.spec.start_step) % k == w]
        # Each stream's batches ascend; merged, this worker's batches ascend too.
        try:
            yield from heapq.merge(*(stream_batches(self.spec, c, *pieces[c]) for c in mine),
                                   key=lambda b: b["index"])
        except DatasetError as e:
            # Raised in the main process as it is: torch would wrap it in a multi-line worker traceback.
            yield {"error": str(e)}


def _worker_init(_: int) -> None:
    # SLURM sends SIGUSR2 to the whole process group before preemption: only the trainer handles it.
    # The parent blocks it around the fork (see ShardLoader.epoch), so there is no window before this.
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})
    torch.set_num_threads(1)


class ShardLoader:
    """Training or evaluation batches of a ShardSplit (a TrainLoader, as InMemoryLoader).

    `epoch(e, start_step)` yields normalised (images, labels); `len()` is the batches per rank and epoch.
    """

    def __init__(self, spec: StreamSpec, normalize: Any | None, workers: int) -> None:
        self.spec, self.normalize, self.workers = spec, normalize, workers
        self.skipped = 0                      # holes since the last pop_skipped()
        self.skipped_examples: list[str] = []
        self.batch_keys: list[str] = []       # "<shard>/<key>" of the batch last yielded (tests, debugging)

    def __len__(self) -> int:
        sizes = [s["samples"] for s in self.spec.split.shards]
        rng = rank_ranges(sum(sizes), self.spec.world, self.spec.batch, self.spec.drop_last, self.spec.train)
        return len(batch_sizes(rng[self.spec.rank][1], self.spec.batch))

    def layout(self) -> dict[str, int]:
        """What the order depends on beyond (seed, epoch, step); a resumed run must match it."""
        return {"world_size": self.spec.world, "streams": self.spec.streams, "batch_size": self.spec.batch}

    def padded(self) -> int:
        """Samples repeated per epoch so that every rank runs the same number of batches."""
        n = len(self.spec.split)
        return sum(b for _, b in rank_ranges(n, self.spec.world, self.spec.batch, self.spec.drop_last,
                                             self.spec.train)) - n if self.spec.train and not self.spec.drop_last else 0

    def pop_skipped(self) -> tuple[int, list[str]]:
        out = (self.skipped, self.skipped_examples)
        self.skipped, self.skipped_examples = 0, []
        return out

    def may_drop(self) -> bool:
        return self.spec.on_error == "skip"

    def _dataset(self, spec: StreamSpec) -> tuple[torch.utils.data.IterableDataset, int]:
        """The epoch's batches as a dataset for the DataLoader, and how many workers serve them."""
        # Workers serve whole streams; the round-robin order is the batch order only when k divides S.
        k = max((d for d in range(1, spec.streams + 1) if spec.streams % d == 0 and d <= self.workers), default=0)
        return _Streams(spec), k

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        spec = dataclasses.replace(self.spec, epoch=epoch, start_step=start_step)
        dataset, k = self._dataset(spec)
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=k,
                                             worker_init_fn=_worker_init if k else None,
                                             pin_memory=torch.cuda.is_available(),
                                             prefetch_factor=4 if k else None)
        if k:
            old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
            try:
                batches = iter(loader)  # forks the workers
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
        else:
            batches = iter(loader)
        expected = start_step
        for b in batches:
            if "error" in b:
                raise DatasetError(b["error"])
            if b["index"] != expected:  # the DataLoader's round-robin order is what makes the order exact
                raise RuntimeError(f"shard loader: batch {b['index']} arrived where {expected} was due")
            expected += 1
            if "gpu" in b:   # data.decode=gpu: JPEG bytes + crop boxes, finished on the normaliser's device
                b = decode_batch(b, spec, self.normalize.device if self.normalize else torch.device("cpu"))
            if b["holes"]:
                self.skipped += len(b["holes"])
                self.skipped_examples += b["holes"][: max(0, 10 - len(self.skipped_examples))]
            x, self.batch_keys = b["x"], b["keys"]
            if len(b["y"]) == 0:
                if self.spec.train:
                    yield x, b["y"]  # the loop counts the step without training on it
                continue
            yield (self.normalize(x) if self.normalize else x), b["y"]
        if expected != len(self):
            raise RuntimeError(f"shard loader: {expected} batches in epoch {epoch + 1}, planned {len(self)}")
