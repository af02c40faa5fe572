"""data.decode=gpu: a batch's JPEGs decoded, cropped, resized and flipped on the device.

The DataLoader workers only read the tar and parse each JPEG header (bench.data.shards.decode._jpeg_for_gpu):
they draw the RandomResizedCrop box (rrc_flip), crop_flip's padded-crop offsets and the flip from the same
generators in the same order as the CPU path, so both paths train on the same crops. Here the main process
decodes the whole batch with nvJPEG (torchvision.io.decode_jpeg on a list, on the device), resizes each crop
with antialiased bilinear interpolation (torchvision's tensor resize, built to match PIL's filter), then,
as the CPU path, centre-pads to data.pad_to, crops (crop_flip) and flips. The pixels differ
slightly from PIL's (another IDCT and resampler), which is why it is a config field, not a speed switch.
"""

from __future__ import annotations

from typing import Any

import torch

from bench.data.batches import apply_crop_flip, center_pad
from bench.data.cards import DatasetError


def _decode(jpegs: list[torch.Tensor], channels: int, device: torch.device) -> list[torch.Tensor | Exception]:
    """Decoded C x H x W uint8 images in order; an undecodable one is its exception (found one by one)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    try:
        return list(decode_jpeg(jpegs, mode=mode, device=device))
    except RuntimeError:
        out: list[torch.Tensor | Exception] = []
        for j in jpegs:    # one bad image fails the batched call: find it
            try:
                out.append(decode_jpeg(j, mode=mode, device=device))
            except RuntimeError as e:
                out.append(e)
        return out


def _fit(img: torch.Tensor, box: tuple[int, int, int, int] | None, size: int, eval_resize: int | None) -> torch.Tensor:
    """Training: the worker's crop box resized to size x size. Evaluation: the shorter side resized to
    eval_resize, then the centre size x size (the CPU path's rounding)."""
    from torchvision.transforms.v2 import functional as TF

    if box is not None:
        left, top, w, h = box
        return TF.resized_crop(img, top, left, h, w, [size, size], antialias=True)
    r = eval_resize or size
    h, w = img.shape[-2:]
    f = r / min(h, w)
    img = TF.resize(img, [max(size, round(h * f)), max(size, round(w * f))], antialias=True)
    top, left = (img.shape[-2] - size) // 2, (img.shape[-1] - size) // 2
    return img[:, top:top + size, left:left + size]


def decode_batch(b: dict[str, Any], spec: Any, device: torch.device) -> dict[str, Any]:
    """The worker's batch with its JPEGs finished on `device`: {"index", "x" (N, C, S, S) uint8, "y", "keys",
    "holes"}. An undecodable JPEG raises a DatasetError naming shard and key, or with data.on_error=skip
    is dropped from the batch and reported as a hole, as on the CPU path."""
    g = b["gpu"]
    n, s = len(b["y"]), spec.image_size
    out = torch.empty((n, spec.channels, s, s), dtype=torch.uint8, device=device)
    bad: dict[int, str] = {}
    for slot, img, box in zip(g["slots"], _decode(g["jpegs"], spec.channels, device), g["boxes"]):
        if isinstance(img, Exception):
            bad[slot] = f"shard key {b['keys'][slot]}: cannot decode .jpg on {device} ({img})"
            continue
        out[slot] = _fit(img, box, s, spec.eval_resize)
    for slot, x in g["done"].items():
        out[slot] = x.to(device, non_blocking=True)
    # the CPU path's centre pad and padded random crop / flip, with the worker's draws (_gpu_batch)
    out = apply_crop_flip(center_pad(out, spec.pad_to), g["pad"], g["oy"], g["ox"], g["flip"])
    if bad and spec.on_error != "skip":
        raise DatasetError(next(iter(bad.values())))
    holes = list(b["holes"]) + list(bad.values())
    if bad:
        keep = torch.tensor([i not in bad for i in range(n)])
        out, y = out[keep.to(device)], b["y"][keep]
        keys = [k for i, k in enumerate(b["keys"]) if i not in bad]
    else:
        y, keys = b["y"], b["keys"]
    return {"index": b["index"], "x": out, "y": y, "keys": keys, "holes": holes}
