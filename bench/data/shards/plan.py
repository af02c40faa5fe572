"""The plan of an epoch: which shard positions each rank and stream reads, in which order.

Pure functions of (seed, epoch, rank, world size, streams, batch size) and the manifest's shard sizes; the
rules are in the package docstring (bench.data.shards). Nothing here reads a file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.data.shards.manifest import ShardSplit


def epoch_shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    if not shuffle:
        return list(range(num_shards))
    return np.random.default_rng([seed, epoch, 7]).permutation(num_shards).tolist()


def batches_per_rank(n: int, world: int, batch: int, drop_last: bool) -> int:
    return n // (world * batch) if drop_last else -(-n // (world * batch))


def rank_ranges(n: int, world: int, batch: int, drop_last: bool, train: bool) -> list[tuple[int, int]]:
    """(start, length) in the epoch sequence of each rank (positions >= n wrap around: padding)."""
    if not train:
        sizes = [n // world + (r < n % world) for r in range(world)]
    else:
        nb = batches_per_rank(n, world, batch, drop_last)
        if drop_last:
            sizes = [nb * batch] * world
        else:
            full = (nb - 1) * batch
            rem = n - world * full
            # every rank's last batch holds >= 1 sample; fewer than `world` left means a few repeats
            sizes = [full + max(1, rem // world + (r < rem % world)) for r in range(world)]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()
    return [(int(a), int(b)) for a, b in zip(starts, sizes)]


def batch_sizes(length: int, batch: int) -> list[int]:
    nb = -(-length // batch)
    return [min(batch, length - i * batch) for i in range(nb)]


def stream_pieces(length: int, batch: int, streams: int) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """Per stream c: (offset in the rank range, length, [(batch index, size)]) for batches i = c mod S."""
    sizes = batch_sizes(length, batch)
    out, offset = [], 0
    for c in range(streams):
        mine = [(i, sizes[i]) for i in range(c, len(sizes), streams)]
        n = sum(sz for _, sz in mine)
        out.append((offset, n, mine))
        offset += n
    return out


def segments(shard_sizes: list[int], order: list[int], start: int, length: int) -> list[tuple[int, int, int]]:
    """(shard, skip, count) reads covering positions start .. start+length-1 of the epoch sequence."""
    n = sum(shard_sizes)
    bounds = np.cumsum([0] + [shard_sizes[k] for k in order]).tolist()
    out = []
    pos, left = start % n if n else 0, length
    while left > 0:
        j = int(np.searchsorted(bounds, pos, side="right")) - 1
        k = order[j]
        skip = pos - bounds[j]
        take = min(left, shard_sizes[k] - skip)
        out.append((k, skip, take))
        left -= take
        pos = (pos + take) % n
    return out


@dataclass(kw_only=True)
class StreamSpec:
    """Everything a worker needs to produce its batches (picklable). Keyword-only: 18 fields by position
    were one swapped pair away from a silently different data order."""

    split: ShardSplit
    train: bool
    seed: int
    epoch: int
    rank: int
    world: int
    batch: int
    drop_last: bool
    streams: int
    buffer: int
    on_error: str
    channels: int
    num_classes: int
    pad_to: int | None
    image_size: int | None
    eval_resize: int | None
    augment: str
    crop_padding: int
    start_step: int = 0
    decode: str = "cpu"               # gpu: JPEGs leave the worker as bytes + crop box (bench.data.gpu_decode)
    views: tuple[str, ...] = ()       # data.views: (B, V, C, H, W) training batches (bench.data.views)
    view_blur: str = "pil"            # data.view_blur
    randaugment_n: int = 2            # data.randaugment_n


def plan(spec: StreamSpec) -> tuple[list[tuple[list[tuple[int, int, int]], list[tuple[int, int]]]], int]:
    """Per stream: (reads, [(batch index, size)]); and the number of batches of this rank."""
    sizes = [s["samples"] for s in spec.split.shards]
    n = sum(sizes)
    order = epoch_shard_order(len(sizes), spec.seed, spec.epoch, spec.train)
    start, length = rank_ranges(n, spec.world, spec.batch, spec.drop_last, spec.train)[spec.rank]
    out = []
    for offset, count, batches in stream_pieces(length, spec.batch, spec.streams):
        if spec.train:
            # one contiguous piece per stream, shuffled through the stream's buffer
            reads = segments(sizes, order, start + offset, count) if count else []
        else:
            # evaluation keeps the epoch order: batch i is positions i*B .. of the rank's range, so the
            # batches come out in manifest order (seeking over the other streams' samples is cheap)
            reads = [r for i, size in batches for r in segments(sizes, order, start + i * spec.batch, size)]
        out.append((reads, batches))
    return out, len(batch_sizes(length, spec.batch))


def _buffer_shuffle(items: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Reservoir-style shuffle: hold `size` items, emit a random one as each new one arrives (a training
    stream's order within its piece, seeded by (seed, epoch, rank, stream))."""
    buf: list[Any] = []
    for it in items:
        if len(buf) < size:
            buf.append(it)
            continue
        j = int(rng.integers(len(buf)))
        buf[j], it = it, buf[j]
        yield it
    while buf:
        j = int(rng.integers(len(buf)))
        buf[j], buf[-1] = buf[-1], buf[j]
        yield buf.pop()
