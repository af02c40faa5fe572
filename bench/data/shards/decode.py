"""Decoding a shard's samples: image bytes (JPEG / PNG / WebP / .npy) and labels to uint8 H x W x C arrays,
and the crops and resizes that bring them to one size. PIL is imported inside the functions that use it:
reading a manifest or a tar (which import IMAGE_EXTS from here) needs none of it."""

from __future__ import annotations

import functools
import io
import math
from typing import Any

import numpy as np
import torch

from bench.data.cards import DatasetError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "npy")
PIL_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


@functools.lru_cache(maxsize=64)
def _npy_header(header: bytes) -> tuple[np.dtype, tuple[int, ...], bool]:
    """dtype, shape, fortran order of an .npy header, parsed by numpy once per distinct header (a dataset
    of equal-sized images has one): np.load re-parses it with ast.literal_eval every time (~100 us)."""
    f = io.BytesIO(header)
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(f)
    return dtype, shape, fortran


def _load_npy(data: bytes) -> np.ndarray:
    """np.load of an uncompressed, non-object .npy without re-parsing its header."""
    if data[:6] != b"\x93NUMPY":
        raise ValueError("not an .npy file")
    hlen = int.from_bytes(data[8:10], "little") if data[6] == 1 else int.from_bytes(data[8:12], "little")
    offset = (10 if data[6] == 1 else 12) + hlen
    dtype, shape, fortran = _npy_header(data[:offset])
    if dtype.hasobject:
        raise ValueError("object arrays are not images")
    a = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=offset)
    return a.reshape(shape, order="F" if fortran else "C")


def _label(sample: dict[str, Any], path: str, num_classes: int) -> int:
    """The sample's class index; a DatasetError names the shard and key."""
    key = sample.get("__key__")
    if "cls" not in sample:
        raise DatasetError(f"shard {path} key {key}: no label (.cls)")
    try:
        label = int(sample["cls"])
    except ValueError:
        raise DatasetError(f"shard {path} key {key}: label {sample['cls'][:20]!r} is not an integer") from None
    if not 0 <= label < num_classes:
        raise DatasetError(f"shard {path} key {key}: label {label} outside 0..{num_classes - 1}")
    return label


def decode_sample(sample: dict[str, Any], channels: int, path: str, num_classes: int):
    """(PIL image, label) of one sample; a DatasetError names the shard and key."""
    from PIL import Image

    key = sample.get("__key__")
    label = _label(sample, path, num_classes)
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None:
        raise DatasetError(f"shard {path} key {key}: no image (.jpg / .png / .npy)")
    if ext == "npy":
        # a raw uint8 array (H, W) or (H, W, C) written by `prepare --array-format npy`: no PIL at all
        try:
            a = _load_npy(sample["npy"])
        except Exception as e:  # noqa: BLE001 - ValueError / EOFError / OSError on bad bytes
            raise DatasetError(f"shard {path} key {key}: cannot decode .npy ({type(e).__name__}: {e})") from None
        a = a[..., None] if a.ndim == 2 else a
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[-1] != channels:
            raise DatasetError(f"shard {path} key {key}: .npy is {a.dtype} {a.shape}, "
                               f"expected uint8 H x W x {channels}")
        return a, label
    mode = "L" if channels == 1 else "RGB"
    try:
        try:
            # the format the extension names first: PIL then skips probing every plugin (~25 us per image)
            img = Image.open(io.BytesIO(sample[ext]), formats=(PIL_FORMATS[ext],))
        except Exception:  # noqa: BLE001 - e.g. a JPEG named .png: let PIL find out what it is
            img = Image.open(io.BytesIO(sample[ext]))
        img.load()
        return (img if img.mode == mode else img.convert(mode)), label
    except Exception as e:  # PIL raises many types on bad bytes (OSError, SyntaxError, DecompressionBombError...)
        raise DatasetError(f"shard {path} key {key}: cannot decode .{ext} ({type(e).__name__}: {e})") from None


def _rrc_box(w: int, h: int, rng: np.random.Generator, scale=(0.08, 1.0),
             ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop.get_params with an explicit generator: (left, top, width, height)."""
    area = w * h
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1)), cw, ch
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif in_ratio > ratio[1]:
        ch, cw = h, round(h * ratio[1])
    else:
        cw, ch = w, h
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def _to_fixed_size(img, size: int | None, eval_resize: int | None, rrc: bool, rng: np.random.Generator) -> np.ndarray:
    """Small images (size None) as they are; large ones RandomResizedCrop to size x size (rrc: training with
    rrc_flip, box drawn from `rng`) or resized (shorter side eval_resize, default size) and centre-cropped."""
    from PIL import Image

    if isinstance(img, np.ndarray):        # .npy: already H x W x C uint8
        if size is None:
            return img
        img = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
    if size is None:
        a = np.asarray(img)
        return a[..., None] if a.ndim == 2 else a
    s = size
    if rrc:
        left, top, cw, ch = _rrc_box(img.width, img.height, rng)
        img = img.resize((s, s), Image.BILINEAR, box=(left, top, left + cw, top + ch))  # type: ignore[attr-defined]
    else:
        r = eval_resize or s
        f = r / min(img.size)
        img = img.resize((max(s, round(img.width * f)), max(s, round(img.height * f))),
                         Image.BILINEAR)  # type: ignore[attr-defined]
        left, top = (img.width - s) // 2, (img.height - s) // 2
        img = img.crop((left, top, left + s, top + s))
    a = np.asarray(img)
    return a[..., None] if a.ndim == 2 else a


def _jpeg_for_gpu(sample: dict[str, Any], path: str, rng: np.random.Generator, *, size: int | None, channels: int,
                  num_classes: int, rrc: bool):
    """decode=gpu: (bytes as a uint8 tensor, training crop box or None, label) of a JPEG the GPU decoder
    takes (baseline or progressive, RGB or greyscale), read from its header alone; None = decode it here
    (a PNG, CMYK JPEG, ...). The crop box (rrc) is drawn from `rng` exactly as _to_fixed_size draws it."""
    from PIL import Image

    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext not in ("jpg", "jpeg") or size is None or "cls" not in sample:
        return None
    try:
        head = Image.open(io.BytesIO(sample[ext]), formats=("JPEG",))   # parses the header, decodes nothing
    except Exception:  # noqa: BLE001 - not a JPEG after all: the CPU path decides (and reports) what it is
        return None
    if head.mode not in ("RGB", "L") or (head.mode == "L") != (channels == 1):
        return None
    label = _label(sample, path, num_classes)
    box = _rrc_box(head.width, head.height, rng) if rrc else None
    return torch.frombuffer(bytearray(sample[ext]), dtype=torch.uint8), box, label
