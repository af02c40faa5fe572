"""In-memory batches: exact positions for resume, augmentation equal to the per-image transforms."""

import torch
import torch.nn.functional as F

from bench.data.batches import InMemoryLoader, Normalize, derived_generator, random_crop_flip
from bench.data.lt import Split


def _split(n=50, c=1, s=8):
    x = torch.arange(n * c * s * s, dtype=torch.int64).remainder(251).to(torch.uint8).view(n, c, s, s)
    return Split(x, torch.arange(n) % 5)


def test_epoch_is_a_permutation_and_differs_between_epochs():
    loader = InMemoryLoader(_split(), 8, seed=0, normalize=Normalize((0.0,), (1 / 255,), 1))
    assert len(loader) == 7
    o0, o1 = loader.order(0), loader.order(1)
    assert sorted(o0.tolist()) == list(range(50)) and not torch.equal(o0, o1)
    assert torch.equal(o0, InMemoryLoader(_split(), 8, seed=0, normalize=loader.normalize).order(0))   # reproducible


def test_resume_from_a_step_yields_the_same_tail():
    loader = InMemoryLoader(_split(), 8, seed=3, normalize=Normalize((0.5,), (0.25,), 1), augment="crop_flip",
                            crop_padding=2)
    full = list(loader.epoch(2))
    tail = list(loader.epoch(2, start_step=4))
    assert len(tail) == 3
    for (xa, ya), (xb, yb) in zip(full[4:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_normalize_repeats_a_grey_channel_for_to_rgb():
    """data.to_rgb: (x/255 - m) / s of the grey image in each of three identical channels."""
    x = torch.tensor([[[[0, 51], [102, 255]]]], dtype=torch.uint8)          # 1 x 1 x 2 x 2
    out = Normalize((0.2,), (0.5,), 3)(x)
    expected = torch.tensor([[-0.4, 0.0], [0.4, 1.6]])                       # (v/255 - 0.2) / 0.5 by hand
    assert out.shape == (1, 3, 2, 2)
    for c in range(3):
        assert torch.allclose(out[0, c], expected, atol=1e-6)


def test_drop_last():
    assert len(InMemoryLoader(_split(), 8, seed=0, normalize=Normalize((0.0,), (1.0,), 1), drop_last=True)) == 6


def test_crop_flip_equals_per_image_pad_crop_flip():
    x = torch.randint(0, 256, (16, 3, 6, 6), dtype=torch.uint8)
    pad = 2
    out = random_crop_flip(x, derived_generator(7), pad, flip=True)
    # Redraw the same random numbers and apply torchvision-style per-image ops by hand.
    g = derived_generator(7)
    oy = torch.randint(0, 2 * pad + 1, (16,), generator=g)
    ox = torch.randint(0, 2 * pad + 1, (16,), generator=g)
    fl = torch.rand(16, generator=g) < 0.5
    for i in range(16):
        img = F.pad(x[i], (pad, pad, pad, pad))[:, oy[i]:oy[i] + 6, ox[i]:ox[i] + 6]
        if fl[i]:
            img = img.flip(2)
        assert torch.equal(out[i], img)
    assert not torch.equal(out, x)


def test_normalize():
    n = Normalize((0.5,), (0.25,), 3)
    y = n(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    assert torch.allclose(y, torch.full_like(y, 2.0))


def test_data_mean_and_std_reach_the_normalizer(tmp_path):
    """data.mean / data.std replace the card's statistics in memory and from shards (a white pixel of
    255 becomes (1 - mean) / std per channel)."""
    from bench.experiment import load_config
    from bench.data.lt import build_lt_data
    from bench.data.prepare import prepare

    small = ["data.dataset=synthetic", "data.imbalance_factor=2", "data.val_per_class=2",
             "data.synthetic.train_per_class=12", "data.synthetic.test_per_class=2", "data.synthetic.num_classes=2",
             "data.synthetic.image_size=4"]
    white = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    card = load_config(None, small).data                # card: mean 0.5, std 0.25 -> (1 - 0.5) / 0.25 = 2
    assert (card.mean, card.std) == ([0.5], [0.25])
    assert torch.allclose(build_lt_data(card).normalizer()(white), torch.full((1, 3, 2, 2), 2.0))
    # (1 - 0.1) / 0.5 = 1.8, (1 - 0.2) / 0.25 = 3.2, (1 - 0.3) / 0.125 = 5.6
    stats = ["data.mean=[0.1, 0.2, 0.3]", "data.std=[0.5, 0.25, 0.125]"]
    expected = torch.tensor([1.8, 3.2, 5.6]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    in_memory = build_lt_data(load_config(None, small + stats).data)
    assert torch.allclose(in_memory.normalizer()(white), expected)
    prepare("synthetic", tmp_path / "shards", data_overrides=[o for o in small if o != "data.dataset=synthetic"],
            workers=1, progress="off")
    shards = build_lt_data(load_config(None, small + stats + [f"data.shards={tmp_path / 'shards'}"]).data)
    assert shards.streamed and torch.allclose(shards.normalizer()(white), expected)


def test_class_balanced_sampler_draws_classes_uniformly():
    y = torch.tensor([0] * 90 + [1] * 9 + [2] * 1)
    split = Split(torch.zeros(100, 1, 2, 2, dtype=torch.uint8), y)
    loader = InMemoryLoader(split, 10, seed=0, normalize=None, sampler="class_balanced", num_classes=3)
    drawn = torch.cat([y[loader.order(e)] for e in range(200)])      # 20,000 draws
    freq = torch.bincount(drawn, minlength=3).double() / len(drawn)
    assert torch.allclose(freq, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.015)
    assert torch.equal(loader.order(5), loader.order(5)) and not torch.equal(loader.order(5), loader.order(6))
    # every image of a class is reachable
    assert set(loader.order(0).tolist()) | set(loader.order(1).tolist()) >= {99}


def test_ddp_ranks_split_each_global_batch_exactly_as_one_process_sees_it():
    """batch_size is global: rank r takes a contiguous slice of every global batch, augmented with the
    draws of the whole batch, so the concatenated ranks reproduce the one-process stream bit for bit."""
    norm = Normalize((0.5,), (0.25,), 1)
    one = InMemoryLoader(_split(), 8, seed=3, normalize=norm, augment="crop_flip", crop_padding=2)
    ranks = [InMemoryLoader(_split(), 8, seed=3, normalize=norm, augment="crop_flip", crop_padding=2,
                            rank=r, world=3) for r in range(3)]
    assert all(len(r) == len(one) == 7 for r in ranks)                     # the same number of steps
    for step, ((x, y), *parts) in enumerate(zip(one.epoch(1), *(r.epoch(1) for r in ranks))):
        real = parts if step < 6 else parts[:2]
        assert torch.equal(torch.cat([p[0] for p in real]), x) and torch.equal(torch.cat([p[1] for p in real]), y)
        assert [len(p[1]) for p in parts] == ([3, 3, 2] if step < 6 else [1, 1, 1])
    # the last batch holds 2 of the 50 images for 3 ranks: the third repeats the epoch's first image, so that
    # every rank steps (a rank without a sample would leave the others waiting in DDP's collectives)
    assert int(parts[2][1]) == int(_split().y[one.order(1)[0]])
    assert [r.padded() for r in ranks] == [1, 1, 1] and one.padded() == 0
    # a last batch of 0 or >= world samples repeats nothing
    assert InMemoryLoader(_split(48), 8, seed=3, normalize=norm, rank=0, world=3).padded() == 0
    assert InMemoryLoader(_split(50), 8, seed=3, normalize=norm, rank=0, world=2).padded() == 0
    assert InMemoryLoader(_split(49), 8, seed=3, normalize=norm, rank=0, world=4).padded() == 3


def test_to_rgb_feeds_three_channels_to_the_model():
    """A one-channel dataset under data.to_rgb: the model is built for 3 channels and every batch has them."""
    from bench.experiment import load_config
    from bench.data.lt import build_lt_data

    cfg = load_config(None, ["data.dataset=synthetic", "data.synthetic.channels=1", "data.synthetic.image_size=8",
                             "data.synthetic.train_per_class=40", "data.to_rgb=true"])
    data = build_lt_data(cfg.data)
    assert data.in_chans == 3 and data.train.x.shape[1] == 1            # stored grey, seen as RGB
    x, _ = next(iter(data.train_loader(16, 0, "crop_flip", False, "instance").epoch(0)))
    xe, _ = next(iter(data.eval_batches("test", 16)))
    for batch in (x, xe):
        assert (batch.shape[1:] == (3, 8, 8) and torch.equal(batch[:, 0], batch[:, 1])
                and torch.equal(batch[:, 0], batch[:, 2]))


def test_class_aware_sampler_is_decouplings():
    """Decoupling's ClassAwareSampler: an epoch of max_c n_c x C samples, classes in random cycles, 4 images of
    one class per turn taken from that class's own random cycle. Sizes [5, 2, 1]: 15 samples in 4 turns (the
    last cut to 3)."""
    y = torch.tensor([0] * 5 + [1] * 2 + [2])
    split = Split(torch.zeros(8, 1, 2, 2, dtype=torch.uint8), y)
    loader = InMemoryLoader(split, 4, seed=0, normalize=None, sampler="class_aware", num_classes=3)
    assert loader.samples == 15 and len(loader) == 4
    for epoch in range(50):
        order = loader.order(epoch)
        assert len(order) == 15
        turns = [order[i:i + 4] for i in range(0, 15, 4)]
        classes = [int(y[t[0]]) for t in turns]
        assert all(bool((y[t] == c).all()) for t, c in zip(turns, classes))   # one class per turn
        assert sorted(classes[:3]) == [0, 1, 2]                                 # a cycle holds every class once
        for c in range(3):                    # a class's images come in cycles: each full cycle a permutation
            members = torch.nonzero(y == c).flatten().tolist()
            seq = torch.cat([t for t, k in zip(turns, classes) if k == c]).tolist()
            for i in range(0, len(seq) - len(members) + 1, len(members)):
                assert sorted(seq[i:i + len(members)]) == members
    assert torch.equal(loader.order(3), loader.order(3)) and not torch.equal(loader.order(3), loader.order(4))


def test_epoch_length_cuts_a_class_aware_epoch_as_mislas_stage2():
    """MiSLAS stage 2 breaks its class-aware loader after batch ceil(N / B) + 1 (`if i > end_steps: break`): sizes
    [5, 2, 1] (N 8, B 2) make the sampler's 15-sample epoch 8 steps, cut to 4 (dataset) or 5 (dataset_plus_one), each
    a full batch and the first steps of the uncut epoch. A balanced set has too few draws for the extra step: it
    draws more, so no step is short."""
    y = torch.tensor([0] * 5 + [1] * 2 + [2])
    split = Split(torch.zeros(8, 1, 2, 2, dtype=torch.uint8), y)
    make = lambda length, s=split: InMemoryLoader(s, 2, seed=0, normalize=None, sampler="class_aware",  # noqa: E731
                                                 num_classes=3, epoch_length=length)
    full, cut, plus = make("sampler"), make("dataset"), make("dataset_plus_one")
    assert (len(full), len(cut), len(plus)) == (8, 4, 5)
    batches = {k: [b for _, b in loader.epoch(1)] for k, loader in (("full", full), ("plus", plus))}
    assert all(len(b) == 2 for b in batches["plus"]) and all(
        torch.equal(a, b) for a, b in zip(batches["plus"], batches["full"]))
    flat = Split(torch.zeros(6, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 0, 1, 1, 2, 2]))
    balanced = make("dataset_plus_one", flat)
    assert len(balanced) == 4 and [len(b) for _, b in balanced.epoch(0)] == [2, 2, 2, 2]


def test_rotation_equals_torchvisions_rotate_image_by_image():
    """crop_flip_rotate (RIDE / SADE): RandomRotation(15) after crop + flip. The batched rotation is torchvision's
    rotate on tensors (nearest, black fill), image by image: exact on random angles, a quarter turn is rot90, 0 is
    the identity, and a pixel rotated out of the frame leaves black behind."""
    from torchvision.transforms.v2 import functional as TF

    from bench.data.batches import apply_rotation

    x = torch.randint(0, 256, (16, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    angles = (torch.rand(16, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1) * 15
    out = apply_rotation(x, angles)
    want = torch.stack([TF.rotate(x[i], float(a)) for i, a in enumerate(angles)])
    assert out.dtype == torch.uint8 and torch.equal(out, want)
    assert torch.equal(apply_rotation(x, torch.zeros(16)), x)
    assert torch.equal(apply_rotation(x[:2], torch.tensor([90.0, 90.0])), torch.rot90(x[:2], 1, (2, 3)))
    assert (out[:, :, 0, 0] == 0).float().mean() > 0.4     # corners: black where a 15-degree turn has no source pixel


def test_crop_flip_rotate_rotates_the_crop_flip_stream_and_splits_over_ranks():
    """The rotation's angles are drawn after the crop and flip draws from the same generator: the crop + flip part
    is the crop_flip stream's, and DDP ranks still reproduce the one-process batch."""
    from bench.data.batches import apply_rotation

    s = _split(n=24, c=1, s=16)
    plain = InMemoryLoader(s, 8, seed=3, normalize=None, augment="crop_flip", crop_padding=2)
    rot = InMemoryLoader(s, 8, seed=3, normalize=None, augment="crop_flip_rotate", crop_padding=2)
    (xp, yp), (xr, yr) = next(iter(plain.epoch(2))), next(iter(rot.epoch(2)))
    gen = derived_generator(3, 2, 0, 1)
    torch.randint(0, 5, (8,), generator=gen), torch.randint(0, 5, (8,), generator=gen), torch.rand(8, generator=gen)
    angles = (torch.rand(8, generator=gen, dtype=torch.float64) * 2 - 1) * 15
    assert torch.equal(yp, yr) and torch.equal(xr, apply_rotation(xp, angles)) and not torch.equal(xr, xp)
    assert angles.abs().max() <= 15
    ranks = [InMemoryLoader(s, 8, seed=3, normalize=None, augment="crop_flip_rotate", crop_padding=2, rank=r, world=2)
             for r in range(2)]
    assert torch.equal(torch.cat([next(iter(r.epoch(2)))[0] for r in ranks]), xr)
