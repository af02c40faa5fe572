"""Several augmented views of every training image (`data.views`): the query and key views of the contrastive
methods (PaCo, GPaCo, BCL).

Each view has its own augmentation, by name (VIEW_AUGMENTS). `crop_flip`, `flip` and `none` are the batched ones
of `data.augment`; the others run torchvision's v2 transforms image by image on uint8 CHW tensors:

- `simclr`: RandomResizedCrop(scale 0.2-1) + flip + ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8 + greyscale with
  p 0.2 + Gaussian blur (PIL's, radius sigma ~ U(0.1, 2)) with p 0.5: MoCo v2's augmentation at the image's size
  (PaCo's `augmentation_sim_cifar`). One-channel images skip the colour steps (jitter of brightness and contrast stays).
- `autoaugment_cutout`: RandomCrop(padding data.crop_padding, 4 in PaCo) + flip + AutoAugment's CIFAR-10 policy +
  Cutout (one 16 x 16 hole, centred on a uniform pixel, clipped at the border, filled black): PaCo's
  `augmentation_regular`. torchvision's
  AutoAugment stands in for the CIFAR10Policy copy in PaCo's autoaug.py (the same policy table; the codes scale
  some magnitudes differently).
- `randaugment`: RandomCrop(padding data.crop_padding) + flip + RandAugment(2 ops, magnitude 10).
- `crop_colour_blur`: RandomCrop(padding data.crop_padding) + the colour jitter and greyscale of `simclr` + Gaussian
  blur with p 0.2 + flip: the views of SADE's test-time aggregation (its test_training_cifar.py).
- `rrc_randaugment`, `rrc_sim`, `rrc_colour`, `rrc_sim_randaugment`, `rrc_colour_randaugment`: PaCo's and BCL's
  ImageNet-LT / iNaturalist views (RandomResizedCrop + jitter + timm's RandAugment; PaCo's RandomResizedCrop + jitter
  + greyscale + blur; BCL's without the blur; GPaCo's key view, jitter + greyscale + blur, then RandAugment; BCL's
  stacked view, its own then RandAugment).
  From shards of large images they crop the decoded image (WHOLE_IMAGE_VIEWS), not its centre crop.

Every image's draws come from its own seed, a function of (run seed, epoch, step, view, its index in the global
batch) in memory and of (run seed, epoch, rank, batch index, view, place) in a shard stream: a DDP rank augments
its slice as one process would, and a run resumed at (epoch, step) draws again what the uninterrupted run drew.
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bench.data.batches import ViewFn, derived_generator, random_crop_flip

BATCHED = ("crop_flip", "flip", "none")


@dataclass(frozen=True)
class ViewOptions:
    """The data.* fields the view augmentations read besides their names."""

    blur: str = "pil"             # data.view_blur
    randaugment_n: int = 2        # data.randaugment_n


DEFAULT = ViewOptions()


def _cutout(length: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def cut(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        x = x.clone()
        x[..., max(0, cy - length // 2):min(h, cy + length // 2), max(0, cx - length // 2):min(w, cx + length // 2)] = 0
        return x
    return cut


def _pil_blur(x: torch.Tensor) -> torch.Tensor:
    """MoCo v2's GaussianBlur as PaCo's and SADE's codes copy it: PIL's GaussianBlur with radius sigma ~ U(0.1, 2)
    drawn from Python's `random`."""
    from PIL import ImageFilter
    from torchvision.transforms.v2 import functional as TF

    sigma = random.uniform(0.1, 2.0)
    return TF.pil_to_tensor(TF.to_pil_image(x).filter(ImageFilter.GaussianBlur(radius=sigma)))


def _colour_and_blur(channels: int, blur: str = "pil") -> tuple[list[Callable[[torch.Tensor], torch.Tensor]],
                                                                  Callable]:
    """MoCo v2's colour jitter (p 0.8) and greyscale (p 0.2), only brightness and contrast on one channel; its
    Gaussian blur (data.view_blur: PIL's, or torchvision's on tensors), for the caller to apply with its own
    probability."""
    from torchvision.transforms import v2

    colour = [v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), v2.RandomGrayscale(p=0.2)] \
        if channels == 3 else [v2.RandomApply([v2.ColorJitter(0.4, 0.4)], p=0.8)]
    return colour, _pil_blur if blur == "pil" else v2.GaussianBlur(13, sigma=(0.1, 2.0))


def _simclr(size: int, channels: int, padding: int,
            opts: ViewOptions = DEFAULT) -> Callable[[torch.Tensor], torch.Tensor]:
    from torchvision.transforms import v2

    colour, blurring = _colour_and_blur(channels, opts.blur)
    return v2.Compose([v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                       *colour, v2.RandomApply([blurring], p=0.5)])


def _autoaugment_cutout(size: int, channels: int, padding: int,
                        opts: ViewOptions = DEFAULT) -> Callable[[torch.Tensor], torch.Tensor]:
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomCrop(size, padding=padding), v2.RandomHorizontalFlip(),
                       v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10), _cutout(16)])


def _crop_colour_blur(size: int, channels: int, padding: int,
                      opts: ViewOptions = DEFAULT) -> Callable[[torch.Tensor], torch.Tensor]:
    from torchvision.transforms import v2

    colour, blurring = _colour_and_blur(channels, opts.blur)
    return v2.Compose([v2.RandomCrop(size, padding=padding), *colour, v2.RandomApply([blurring], p=0.2),
                       v2.RandomHorizontalFlip()])


def _randaugment(size: int, channels: int, padding: int,
                 opts: ViewOptions = DEFAULT) -> Callable[[torch.Tensor], torch.Tensor]:
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomCrop(size, padding=padding), v2.RandomHorizontalFlip(), v2.RandAugment(2, 10)])


def _jitter_no_hue(channels: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """ColorJitter(0.4, 0.4, 0.4, 0) always applied (PaCo's large-image views); brightness and contrast on one
    channel."""
    from torchvision.transforms import v2

    return v2.ColorJitter(0.4, 0.4, 0.4, 0.0) if channels == 3 else v2.ColorJitter(0.4, 0.4)


def _rrc_sim(size: int, channels: int, padding: int,
             opts: ViewOptions = DEFAULT) -> Callable[[torch.Tensor], torch.Tensor]:
    """PaCo's `augmentation_sim` (paco_lt.py, ImageNet-LT / iNaturalist / Places-LT key view)."""
    from torchvision.transforms import v2

    _, blurring = _colour_and_blur(channels, opts.blur)
    grey = [v2.RandomGrayscale(p=0.2)] if channels == 3 else []
    return v2.Compose([v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True), _jitter_no_hue(channels), *grey,
                       v2.RandomApply([blurring], p=0.5), v2.RandomHorizontalFlip()])


def _rrc_colour(size: int, channels: int, padding: int,
                opts: ViewOptions = DEFAULT) -> Callable[[torch.Tensor], torch.Tensor]:
    """BCL's `augmentation_sim` (main.py, its contrastive views on ImageNet-LT / iNaturalist): RandomResizedCrop,
    flip, ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, greyscale with p 0.2; no blur."""
    from torchvision.transforms import v2

    colour, _ = _colour_and_blur(channels, opts.blur)
    return v2.Compose([v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                       *colour])


def _rrc_randaugment(size: int, channels: int, padding: int,
                     opts: ViewOptions = DEFAULT) -> Callable[[torch.Tensor], torch.Tensor]:
    """PaCo's and BCL's `augmentation_randncls` (PaCo's query view, BCL's classifier view on the large datasets):
    RandomResizedCrop, flip, colour jitter, then timm's RandAugment (_timm_randaugment)."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                       _jitter_no_hue(channels), _timm_randaugment(size, channels, opts.randaugment_n)])


def _timm_randaugment(size: int, channels: int, n: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """timm's RandAugment 'rand-n{n}-m10-mstd0.5' on the PIL image (PaCo's randaugment.py is a copy of timm's; n of
    the 15 ops (data.randaugment_n, PaCo's --randaug_n), each applied with p 0.5 at a magnitude drawn from
    N(10, 0.5)), translations up to 45 % of the size and the ImageNet mean as the fill."""
    from timm.data.auto_augment import rand_augment_transform
    from torchvision.transforms.v2 import functional as TF

    fill = (124, 116, 104) if channels == 3 else (124,)
    ra = rand_augment_transform(f"rand-n{n}-m10-mstd0.5", {"translate_const": int(size * 0.45), "img_mean": fill})
    return lambda x: TF.pil_to_tensor(ra(TF.to_pil_image(x)))


def _rrc_sim_randaugment(size: int, channels: int, padding: int,
                         opts: ViewOptions = DEFAULT) -> Callable[[torch.Tensor], torch.Tensor]:
    """PaCo's `augmentation_randnclsstack` (GPaCo's ImageNet-LT key view, aug randcls_randclsstack): RandomResizedCrop,
    flip, colour jitter, greyscale with p 0.2, blur with p 0.5, then timm's RandAugment as `rrc_randaugment`."""
    from torchvision.transforms import v2

    _, blurring = _colour_and_blur(channels, opts.blur)
    grey = [v2.RandomGrayscale(p=0.2)] if channels == 3 else []
    return v2.Compose([v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                       _jitter_no_hue(channels), *grey, v2.RandomApply([blurring], p=0.5),
                       _timm_randaugment(size, channels, opts.randaugment_n)])


def _rrc_colour_randaugment(size: int, channels: int, padding: int,
                            opts: ViewOptions = DEFAULT) -> Callable[[torch.Tensor], torch.Tensor]:
    """BCL's `augmentation_randnclsstack` (main.py, its sim-rand / rand-rand contrastive views): `rrc_colour`, then
    timm's RandAugment as `rrc_randaugment`."""
    from torchvision.transforms import v2

    return v2.Compose([_rrc_colour(size, channels, padding, opts),
                       _timm_randaugment(size, channels, opts.randaugment_n)])


# view augmentation -> (image size, channels, crop padding, ViewOptions) -> a transform of one uint8 CHW image
# drawing from torch's, Python's and NumPy's global RNGs (seeded per image below)
VIEW_AUGMENTS: dict[str, Callable[[int, int, int, ViewOptions], Callable[[torch.Tensor], torch.Tensor]] | None] = {
    "crop_flip": None, "flip": None, "none": None,
    "simclr": _simclr, "autoaugment_cutout": _autoaugment_cutout, "randaugment": _randaugment,
    "crop_colour_blur": _crop_colour_blur, "rrc_sim": _rrc_sim, "rrc_randaugment": _rrc_randaugment,
    "rrc_colour": _rrc_colour, "rrc_sim_randaugment": _rrc_sim_randaugment,
    "rrc_colour_randaugment": _rrc_colour_randaugment,
}
# The views that start with a RandomResizedCrop of the whole image: from shards of large images they read the
# decoded image itself, not its centre crop
WHOLE_IMAGE_VIEWS = ("rrc_sim", "rrc_randaugment", "rrc_colour", "rrc_sim_randaugment", "rrc_colour_randaugment")


def _image_seed(*keys: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint32)[0])


@contextlib.contextmanager
def _global_rngs_kept() -> Iterator[None]:
    """torch's, Python's and NumPy's global RNGs as they were before, whatever is drawn or seeded inside (timm's
    RandAugment draws from `random` and `np.random`, torchvision's transforms from torch's)."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def _each_image(transform: Callable[[torch.Tensor], torch.Tensor], images: Iterable[torch.Tensor],
                keys: tuple[int, ...], start: int, fallback: torch.Tensor) -> torch.Tensor:
    """`transform` of every image, the global RNGs seeded by (*keys, start + its place) for it (start: where these
    images begin in the global batch); `fallback` when there is no image. The RNGs are saved and restored once per
    batch, not per image."""
    out = []
    with _global_rngs_kept():
        for i, img in enumerate(images):
            seed = _image_seed(*keys, start + i)
            # the CPU generator alone: torch.manual_seed also seeds every accelerator's, 0.2 ms an image
            torch.default_generator.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed)
            out.append(transform(img))
    return torch.stack(out) if out else fallback


def colour_jitter(x: torch.Tensor, keys: tuple[int, ...]) -> torch.Tensor:
    """uint8 (b, C, H, W), each image through ColorJitter(0.4, 0.4, 0.4, 0) (data.augment=rrc_flip_jitter: RIDE's
    and SADE's ImageNet-LT transform), seeded by `keys` and its place in the batch."""
    return _each_image(_jitter_no_hue(x.shape[1]), x, (*keys, 1_000), 0, x)


def view_fn(names: Sequence[str], crop_padding: int, opts: ViewOptions = DEFAULT) -> ViewFn:
    """The InMemoryLoader's `views`: each batch as the views `names` (data.views)."""
    return functools.partial(augment_views, names=tuple(names), crop_padding=crop_padding, opts=opts)


def augment_views(x: torch.Tensor, keys: tuple[int, ...], batch: int, offset: int, *, names: Sequence[str],
                  crop_padding: int, whole: Sequence[torch.Tensor] | None = None,
                  opts: ViewOptions = DEFAULT) -> torch.Tensor:
    """uint8 (b, C, H, W), this rank's part (from `offset`) of a global batch of `batch` images -> uint8 (b, V, C, H,
    W), view v augmented as names[v] says. `keys` = (seed, epoch, step) of an in-memory batch, (seed, epoch, rank,
    batch index) of a shard stream's. `whole`: the decoded images x was cut from (shards of large images), which the
    WHOLE_IMAGE_VIEWS crop instead."""
    out = []
    for v, name in enumerate(names):
        if name in BATCHED:
            if name == "none":
                out.append(x)
                continue
            gen = derived_generator(*keys, 1, v)
            out.append(random_crop_flip(x, gen, crop_padding if name == "crop_flip" else 0, flip=True, batch=batch,
                                        offset=offset))
            continue
        build = VIEW_AUGMENTS[name]
        assert build is not None
        transform = build(x.shape[-1], x.shape[1], crop_padding, opts)
        source = whole if whole is not None and name in WHOLE_IMAGE_VIEWS else x
        out.append(_each_image(transform, source, (*keys, 2 + v), offset, x))
    return torch.stack(out, dim=1)
