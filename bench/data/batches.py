"""Deterministic, resumable batches from an in-memory split, with batched augmentation.

The order of epoch e is a permutation seeded by (seed, e) and the augmentation of step s by
(seed, e, s). The stream is therefore a pure function of its position (epoch, step): a checkpoint
only stores that position, and a resumed epoch neither repeats nor skips a sample.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from bench.runtime.dist import rank_slice


@dataclass
class Split:
    """uint8 images (N, C, H, W) as a tensor, int64 labels (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


def derived_generator(*keys: int) -> torch.Generator:
    """A torch.Generator whose seed mixes `keys` (numpy SeedSequence: no correlated streams)."""
    seed = int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(seed)


def center_pad(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Zero-pad NCHW images to size x size, centred (data.pad_to: 28 -> 32 for Fashion-MNIST, as the measured
    WB reference run did); unchanged when they are that large already."""
    if size is None or size <= x.shape[-1]:
        return x
    p = size - x.shape[-1]
    return F.pad(x, (p // 2, p - p // 2, p // 2, p - p // 2))


def crop_flip_draws(gen: torch.Generator, n: int, padding: int, flip: bool
                    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """random_crop_flip's random draws for n images, in its order: row offsets and column offsets in
    0..2*padding (None for padding 0), then the flips (None without flip)."""
    oy = ox = flips = None
    if padding > 0:
        oy = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
        ox = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
    if flip:
        flips = torch.rand(n, generator=gen) < 0.5
    return oy, ox, flips


def apply_crop_flip(x: torch.Tensor, padding: int, oy: torch.Tensor | None, ox: torch.Tensor | None,
                    flips: torch.Tensor | None) -> torch.Tensor:
    """uint8 NCHW zero-padded by `padding`, cropped back to H x W at (oy, ox), then flipped where `flips`,
    on x's device (data.decode=gpu draws in the worker and applies here on the GPU)."""
    b, _, h, w = x.shape
    if padding > 0:
        assert oy is not None and ox is not None, "padding needs crop offsets"
        xp = F.pad(x, (padding, padding, padding, padding))
        ar = functools.partial(torch.arange, device=x.device)
        rows = (oy.to(x.device)[:, None] + ar(h))[:, :, None]          # B,H,1
        cols = (ox.to(x.device)[:, None] + ar(w))[:, None, :]          # B,1,W
        x = xp.permute(0, 2, 3, 1)[ar(b)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    if flips is not None:
        x = torch.where(flips.to(x.device)[:, None, None, None], x.flip(3), x)
    return x.contiguous()


def apply_rotation(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW, image i rotated counter-clockwise by degrees[i] about its centre, nearest neighbour, black fill,
    the size kept: torchvision's rotate on tensors (its inverse affine matrix and pixel-centre grid), for the whole
    batch in one grid_sample."""
    b, _, h, w = x.shape
    rad = torch.deg2rad(degrees.to(torch.float64))
    cos, sin = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(cos)
    # the inverse map output -> input pixel offsets from the centre: [[cos, -sin, 0], [sin, cos, 0]]
    theta = torch.stack([cos, -sin, zero, sin, cos, zero], 1).to(torch.float32).view(b, 2, 3).to(x.device)
    ys = torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, h, device=x.device)
    xs = torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, w, device=x.device)
    base = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w), torch.ones(h, w, device=x.device)], -1)
    scale = torch.tensor([0.5 * w, 0.5 * h], device=x.device)
    grid = base.view(1, h * w, 3).expand(b, -1, -1).bmm(theta.transpose(1, 2) / scale).view(b, h, w, 2)
    out = F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.round_().to(x.dtype)


def random_crop_flip(x: torch.Tensor, gen: torch.Generator, padding: int, flip: bool, batch: int | None = None,
                     offset: int = 0, rotate: float = 0.0) -> torch.Tensor:
    """Batched RandomCrop(size, padding) with zero fill + RandomHorizontalFlip(0.5) on uint8 NCHW, then
    RandomRotation(rotate) where rotate > 0 (RIDE's and SADE's CIFAR transform: angle uniform in [-rotate, rotate]).

    Matches torchvision's per-image transforms of the WB/CIFAR pipeline (padding before ToTensor, so
    the fill is a black pixel), done for the whole batch at once.
    """
    # The random draws are made for the whole (global) batch of `batch` images and this x is the part
    # starting at `offset`: a DDP rank augments its slice exactly as one process would.
    n = len(x) if batch is None else batch
    part = slice(offset, offset + len(x))
    draws = crop_flip_draws(gen, n, padding, flip)
    x = apply_crop_flip(x, padding, *(d if d is None else d[part] for d in draws))
    if rotate > 0:
        angles = (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * rotate
        x = apply_rotation(x, angles[part])
    return x


class Normalize:
    """uint8 NCHW -> float32, (x/255 - mean) / std per channel, computed on `device`.

    The uint8 batch travels to the device first and is converted there: a quarter of the bytes of a
    float batch cross the bus, and the conversion (a 224-px batch of 256 is 38 M elements) runs on the
    GPU instead of in the training process's host thread, where it would stall the next step. The
    result is the same on any device: a subtraction and a division are exact IEEE operations.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], channels: int,
                 device: torch.device | None = None, resize: int | None = None) -> None:
        # data.resize: bilinear to resize x resize after normalising (a foundation model's input)
        self.resize = resize
        if len(mean) == 1:
            mean, std = mean * channels, std * channels
        self.device = device or torch.device("cpu")
        self.mean = (torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0).to(self.device)
        self.std = (torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0).to(self.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:            # (B, V, C, H, W): several views of each image (data.views)
            return self(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        if x.device != self.device:
            if self.device.type == "cuda" and not x.is_pinned():
                x = x.pin_memory()          # page-locked: the copy below is asynchronous to the host
            x = x.to(self.device, non_blocking=True)
        if x.shape[1] == 1 and self.mean.shape[1] == 3:
            x = x.expand(-1, 3, -1, -1)     # data.to_rgb: grey repeated to three channels, as the WB reference run
        x = (x.float() - self.mean) / self.std
        if self.resize is not None and tuple(x.shape[-2:]) != (self.resize, self.resize):
            # normalising first is the same as resizing first (bilinear is affine per channel), on fewer pixels
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        return x


# The augmentations that add a RandomRotation after crop + flip, with its range in degrees
ROTATE = {"crop_flip_rotate": 15.0}   # RIDE / SADE: RandomCrop(32, 4), RandomHorizontalFlip, RandomRotation(15)


# data.views (bench/data/views.py): (uint8 b images, (seed, epoch, step), global batch size, offset of this rank's part)
# -> uint8 (b, V, C, H, W)
ViewFn = Callable[[torch.Tensor, tuple[int, int, int], int, int], torch.Tensor]


class SampleOrder:
    """Which training samples each step of an epoch reads: a pure function of (seed, epoch), the labels and the
    sampler; the in-memory loader and the shard loader's random access (bench.data.shards.access) share it.

    `batch_size` is the global batch; `steps` the batches per epoch; `samples` the draws per epoch.
    """

    def __init__(self, labels: torch.Tensor, batch_size: int, seed: int, sampler: str = "instance",
                 num_classes: int | None = None, drop_last: bool = False, epoch_length: str = "sampler") -> None:
        self.seed, self.sampler, self.batch_size = seed, sampler, batch_size
        self.samples = len(labels)          # per epoch
        if sampler in ("class_balanced", "class_aware"):
            nc = num_classes or int(labels.max()) + 1
            # each class's indices in ascending order (a stable sort: one pass, not one scan per class)
            sizes = torch.bincount(labels, minlength=nc).tolist()
            self.by_class = list(torch.argsort(labels, stable=True).split(sizes))
            if any(len(ix) == 0 for ix in self.by_class):
                raise ValueError(f"{sampler} sampling needs at least one training image per class")
            if sampler == "class_aware":    # Decoupling's ClassAwareSampler: an epoch of max_c n_c x C samples
                self.samples = max(len(ix) for ix in self.by_class) * nc
        n = self.samples
        self.steps = n // batch_size if drop_last else -(-n // batch_size)
        if epoch_length != "sampler":
            # MiSLAS stage 2 breaks out of its class-aware loader after batch ceil(N / B) (+ 1: `if i > end_steps`);
            # the epoch draws at least that many samples (a long-tailed set's max_c n_c x C always has them)
            self.steps = -(-len(labels) // batch_size) + (epoch_length == "dataset_plus_one")
            self.samples = max(self.samples, self.steps * batch_size)

    def rank_part(self, order: torch.Tensor, step: int, rank: int, world: int) -> tuple[torch.Tensor, int, int]:
        """(this rank's sample indices at `step` of the epoch `order`, the global batch size, where the part starts
        in it): a contiguous slice of the global batch. When the epoch's last batch holds fewer samples than there
        are ranks, a rank left without one takes the epoch's first sample at place 0 (as the stream pads; counted
        by `padded`): every rank must step, or the collectives its model and loss run (DDP's buffer broadcast, a
        contrast set's gather) would leave the others waiting for it."""
        idx = order[step * self.batch_size:(step + 1) * self.batch_size]
        start, length = rank_slice(len(idx), rank, world)
        if length == 0:
            return order[:1], len(idx), 0
        return idx[start:start + length], len(idx), start

    def padded(self, world: int) -> int:
        """Samples repeated per epoch by rank_part: world - n when the last batch holds 0 < n < world samples."""
        last = min(self.samples, self.steps * self.batch_size) - (self.steps - 1) * self.batch_size
        return world - last if 0 < last < world else 0

    def order(self, epoch: int) -> torch.Tensor:
        """The sample indices of epoch `epoch` (N of them; class_aware: max_c n_c x C).

        instance: a fresh permutation of the training set every epoch (instance-balanced sampling).
        class_balanced: each draw picks a class uniformly, then one of its images uniformly, with
        replacement, so every class is seen equally often in expectation.
        class_aware: the Decoupling code's ClassAwareSampler (data/ClassAwareSampler.py, num_samples_cls 4):
        classes come in random cycles (every class once per cycle), and each turn of a class yields the next
        4 images of that class's own random cycle.
        """
        gen = derived_generator(self.seed, epoch)
        n = self.samples
        if self.sampler == "instance":
            return torch.randperm(n, generator=gen)
        if self.sampler == "class_aware":
            return self._class_aware(gen)
        classes = torch.randint(0, len(self.by_class), (n,), generator=gen)
        u = torch.rand(n, generator=gen, dtype=torch.float64)
        sizes = torch.tensor([len(ix) for ix in self.by_class])
        within = (u * sizes[classes]).long().clamp_max(sizes[classes] - 1)
        flat = torch.cat(self.by_class)
        offsets = torch.cumsum(sizes, 0) - sizes
        return flat[offsets[classes] + within]

    def _class_aware(self, gen: torch.Generator, per_turn: int = 4) -> torch.Tensor:
        """Decoupling's class-aware order, its cycles restarted every epoch (the reference keeps them running
        across epochs; restarting makes an epoch's order a function of (seed, epoch), for exact resume)."""
        nc = len(self.by_class)
        turns = -(-self.samples // per_turn)
        cycles = torch.cat([torch.randperm(nc, generator=gen) for _ in range(-(-turns // nc))])[:turns]
        per_class = torch.bincount(cycles, minlength=nc).tolist()
        picks: list[torch.Tensor] = []          # class c's images for its turns, per_turn at a time
        for c, ix in enumerate(self.by_class):
            need = per_turn * per_class[c]
            reps = -(-need // len(ix))
            picks.append(torch.cat([ix[torch.randperm(len(ix), generator=gen)] for _ in range(reps)])[:need]
                         .view(-1, per_turn) if need else torch.zeros(0, per_turn, dtype=torch.long))
        # the k-th turn of class c takes row k of picks[c]; in the stacked picks that is the turn's position
        # when the turns are sorted by class, stably (c's earlier classes' turns, then its k earlier ones)
        by_class_turns = torch.sort(cycles, stable=True).indices
        row = torch.empty(turns, dtype=torch.long)
        row[by_class_turns] = torch.arange(turns)
        return torch.cat(picks)[row].flatten()[:self.samples]


class InMemoryLoader:
    """Training batches of one split (a TrainLoader); `epoch(e, start_step)` yields (images, labels) from that
    position. Keyword-only after the batch size: eleven arguments, several of them ints."""

    def __init__(self, split: Split, batch_size: int, *, seed: int, normalize: Normalize | None,
                 augment: str = "none", crop_padding: int = 0, drop_last: bool = False,
                 sampler: str = "instance", num_classes: int | None = None, rank: int = 0, world: int = 1,
                 epoch_length: str = "sampler", views: ViewFn | None = None) -> None:
        # batch_size is the GLOBAL batch: under DDP each rank takes a contiguous slice of every global
        # batch, so the data order is the same for any number of processes.
        self.split, self.batch_size, self.seed = split, batch_size, seed
        self.rank, self.world = rank, world
        self.normalize, self.augment, self.crop_padding, self.drop_last = normalize, augment, crop_padding, drop_last
        self.views = views                 # data.views: (B, V, C, H, W) batches, one augmentation per view
        self.sampling = SampleOrder(split.y, batch_size, seed, sampler, num_classes, drop_last, epoch_length)
        self.samples = self.sampling.samples

    def __len__(self) -> int:
        return self.sampling.steps

    def order(self, epoch: int) -> torch.Tensor:
        """The sample indices of epoch `epoch` (SampleOrder.order)."""
        return self.sampling.order(epoch)

    def layout(self) -> dict[str, int]:
        return {"world_size": self.world, "batch_size": self.batch_size}

    def padded(self) -> int:
        """Samples repeated per epoch so that every rank has one in the last step (SampleOrder.rank_part)."""
        return self.sampling.padded(self.world)

    def pop_skipped(self) -> tuple[int, list[str]]:
        """(0, []): tensors in memory have no unreadable samples."""
        return 0, []

    def may_drop(self) -> bool:
        """False: nothing in memory is unreadable, and every rank has a sample at every step (rank_part)."""
        return False

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.order(epoch)
        for step in range(start_step, len(self)):
            mine, batch, start = self.sampling.rank_part(order, step, self.rank, self.world)
            x = self.split.x[mine]
            if self.views is not None:
                x = self.views(x, (self.seed, epoch, step), batch, start)
            elif self.augment != "none":
                gen = derived_generator(self.seed, epoch, step, 1)
                x = random_crop_flip(x, gen, self.crop_padding if self.augment.startswith("crop_flip") else 0,
                                     flip=True,
                                     batch=batch, offset=start, rotate=ROTATE.get(self.augment, 0.0))
            yield (self.normalize(x) if self.normalize else x), self.split.y[mine]


def eval_batches(split: Split, batch_size: int, normalize: Normalize | None, rank: int = 0,
                 world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The split in order, no augmentation; under DDP this rank's contiguous part (in rank order)."""
    start, length = rank_slice(len(split), rank, world)
    for i in range(start, start + length, batch_size):
        j = min(i + batch_size, start + length)
        x = split.x[i:j]
        yield (normalize(x) if normalize else x), split.y[i:j]
