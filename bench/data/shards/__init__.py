"""Streaming webdataset tar shards written by `ltbench prepare`: exact epochs under DDP and resume.

The data order is a pure function of (seed, epoch, rank, world size, data.streams) and the position
(epoch, step), as for in-memory data:

1. Epoch e reads the shards in an order shuffled by (seed, e) (eval: manifest order); call the
   concatenated samples the epoch sequence, N long.
2. Each rank takes one contiguous range of it. Training: every rank runs the same number of batches
   nb = ceil(N / (W B)) (floor with drop_last) -- unequal counts hang DDP -- and the N samples are
   spread so each rank's last batch is non-empty. Only when fewer than W samples are left for the
   last step (N mod (W B) < W) do the ranks that would get none take one sample from the start of the
   sequence again: at most W - 1 repeats per epoch, reported as `padded`. Evaluation ranges are split
   without padding, so every test sample is counted exactly once across ranks.
3. A rank's batch i belongs to stream i mod S (S = data.streams). Stream c reads one contiguous
   piece of the rank's range, shuffles it through a buffer seeded by (seed, e, rank, c) and cuts
   its batches in order. DataLoader worker w serves the streams c with (c - start_step) mod K = w,
   so the round-robin order of torch's DataLoader returns batches 0, 1, 2, ... whatever K is; the
   main process checks every index.
4. Resuming at step s: each stream replays its reads and buffer without decoding and drops the
   batches before s, so a resumed epoch neither repeats nor skips a sample.

The class-aware and class-balanced samplers (cRT, MiSLAS's stage 2, RIDE's router) are no streams: they
draw the order the in-memory loader draws and read each sample at its byte offset (access.py).

Bad data (a truncated tar, an undecodable image, a missing label) raises a DatasetError naming the
shard and key; with data.on_error=skip it leaves a hole that is dropped from its batch, counted and
reported, so batch counts (and DDP) are unaffected.

Modules, each leaning only on the ones above it:
    manifest  manifest.json: reading and checking it, the shard files it names (imports no bench.config)
    decode    image bytes and labels -> uint8 arrays; crops and resizes
    tar       the samples of one tar shard, grouped by key
    plan      which shard positions each rank and stream reads in an epoch (StreamSpec)
    loader    ShardLoader: workers, batches, the DataLoader glue
    access    SampledShardLoader: class-aware / class-balanced batches read by random access (each sample's
              byte span from the headers), in the in-memory loader's order (bench.data.batches.SampleOrder)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The names below load lazily (PEP 562): reading a manifest (`ltbench submit` / `status` resolve configs with
# shards on login nodes) must not import decode / loader, which load torch.
_HOME = {
    **dict.fromkeys(("IMAGE_EXTS", "_load_npy", "_rrc_box", "decode_sample"), "decode"),
    **dict.fromkeys(("ShardLoader", "stream_batches"), "loader"),
    **dict.fromkeys(("FORMAT", "MANIFEST", "Manifest", "ShardSplit", "check_shard_files", "file_sha256",
                     "load_manifest", "verify_shards"), "manifest"),
    **dict.fromkeys(("StreamSpec", "_buffer_shuffle", "batch_sizes", "batches_per_rank", "epoch_shard_order",
                     "rank_ranges", "segments", "stream_pieces"), "plan"),
    **dict.fromkeys(("Hole", "read_shard", "read_span", "shard_spans"), "tar"),
    **dict.fromkeys(("SampledShardLoader", "sample_index"), "access"),
}
# _load_npy, _rrc_box and _buffer_shuffle are re-exported for the unit tests that import them from here; the
# function plan() is imported from its module (the package's attribute `plan` is that module).

if TYPE_CHECKING:
    from bench.data.shards.decode import IMAGE_EXTS, _load_npy, _rrc_box, decode_sample  # noqa: F401
    from bench.data.shards.loader import ShardLoader, stream_batches
    from bench.data.shards.manifest import (FORMAT, MANIFEST, Manifest, ShardSplit, check_shard_files, file_sha256,
                                            load_manifest, verify_shards)
    from bench.data.shards.plan import (StreamSpec, _buffer_shuffle,  # noqa: F401
                                        batch_sizes, batches_per_rank, epoch_shard_order,
                                        rank_ranges, segments, stream_pieces)
    from bench.data.shards.access import SampledShardLoader, sample_index
    from bench.data.shards.tar import Hole, read_shard, read_span, shard_spans


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"bench.data.shards.{_HOME[name]}"), name)
    raise AttributeError(f"module 'bench.data.shards' has no attribute {name!r}")


__all__ = ["FORMAT", "IMAGE_EXTS", "MANIFEST", "Hole", "Manifest", "SampledShardLoader", "ShardLoader", "ShardSplit",
           "StreamSpec", "batch_sizes", "batches_per_rank", "check_shard_files", "decode_sample", "epoch_shard_order",
           "file_sha256", "load_manifest", "rank_ranges", "read_shard", "read_span", "sample_index", "segments",
           "shard_spans", "stream_batches", "stream_pieces", "verify_shards"]
