"""The arithmetic of the shard stream: rank ranges, streams, reads, shuffling, RandomResizedCrop boxes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bench.data.shards import (_buffer_shuffle, _rrc_box, batch_sizes, batches_per_rank, epoch_shard_order, rank_ranges,
                               segments, stream_pieces)


@pytest.mark.parametrize("n,world,batch", [(95, 2, 8), (100, 4, 5), (7, 3, 2), (95, 2, 47), (9, 2, 4), (5, 4, 1)])
def test_training_ranks_run_equal_batches_and_cover_everything(n, world, batch):
    ranges = rank_ranges(n, world, batch, drop_last=False, train=True)
    nb = batches_per_rank(n, world, batch, drop_last=False)
    assert all(len(batch_sizes(length, batch)) == nb for _, length in ranges)   # no DDP hang
    positions = [p % n for start, length in ranges for p in range(start, start + length)]
    assert set(positions) == set(range(n))                                     # every sample seen
    repeats = len(positions) - n
    rem = n - world * (nb - 1) * batch
    # repeats only when fewer than `world` samples are left for the last step, and then < world of them
    assert repeats == (world - rem if rem < world else 0)


def test_padding_case_by_hand():
    # 95 samples, 2 ranks, batch 47: one full step of 94, then 1 sample for 2 ranks -> rank 1 repeats sample 0
    assert rank_ranges(95, 2, 47, drop_last=False, train=True) == [(0, 48), (48, 48)]


def test_drop_last_gives_full_batches_only():
    ranges = rank_ranges(95, 2, 8, drop_last=True, train=True)
    assert ranges == [(0, 40), (40, 40)]   # 5 batches of 8 per rank, 15 samples dropped this epoch


@pytest.mark.parametrize("n,world", [(10, 3), (3, 4), (100, 2), (0, 2)])
def test_eval_ranges_count_each_sample_exactly_once(n, world):
    ranges = rank_ranges(n, world, 4, drop_last=False, train=False)
    positions = [p for start, length in ranges for p in range(start, start + length)]
    assert positions == list(range(n))


def test_stream_pieces_interleave_batches():
    pieces = stream_pieces(length=23, batch=4, streams=3)   # batches 4,4,4,4,4,3
    assert [p[2] for p in pieces] == [[(0, 4), (3, 4)], [(1, 4), (4, 4)], [(2, 4), (5, 3)]]
    assert [(p[0], p[1]) for p in pieces] == [(0, 8), (8, 8), (16, 7)]   # contiguous pieces of the rank range


def test_segments_cross_shards_and_wrap():
    sizes, order = [5, 3, 4], [2, 0, 1]            # epoch sequence: shard 2 (4), shard 0 (5), shard 1 (3)
    assert segments(sizes, order, 2, 6) == [(2, 2, 2), (0, 0, 4)]
    assert segments(sizes, order, 10, 4) == [(1, 1, 2), (2, 0, 2)]   # positions 12, 13 wrap to 0, 1


def test_shard_order_depends_on_seed_and_epoch_only():
    a = epoch_shard_order(20, seed=0, epoch=3, shuffle=True)
    assert a == epoch_shard_order(20, seed=0, epoch=3, shuffle=True)
    assert a != epoch_shard_order(20, seed=0, epoch=4, shuffle=True)
    assert sorted(a) == list(range(20))
    assert epoch_shard_order(5, 0, 0, shuffle=False) == [0, 1, 2, 3, 4]


def test_buffer_shuffle_is_a_seeded_permutation():
    out = list(_buffer_shuffle(iter(range(50)), 8, np.random.default_rng(0)))
    assert sorted(out) == list(range(50)) and out != list(range(50))
    assert out == list(_buffer_shuffle(iter(range(50)), 8, np.random.default_rng(0)))
    # a buffer of 8 delays or advances an item by a bounded amount at the front: item k >= 8 leaves after k - 7
    assert all(out.index(k) >= k - 7 for k in range(8, 50))


def test_rrc_box_within_image_and_scale():
    rng = np.random.default_rng(0)
    for w, h in itertools.product((40, 300), (30, 500)):
        for _ in range(50):
            left, top, cw, ch = _rrc_box(w, h, rng)
            assert 0 <= left and left + cw <= w and 0 <= top and top + ch <= h and cw > 0 and ch > 0
            assert cw * ch <= w * h


def test_class_folder_names():
    from bench.data.prepare import _class_folder

    assert _class_folder("train/n01440764/n01440764_10026.JPEG") == "n01440764"           # ImageNet
    assert _class_folder("/a/abbey/00000001.jpg") == "abbey"                                 # Places-LT
    assert _class_folder("/a/apartment_building/outdoor/00000001.jpg") == "apartment_building/outdoor"
