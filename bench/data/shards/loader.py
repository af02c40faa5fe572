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

Bad data (a truncated tar, an undecodable image, a missing label) raises a DatasetError naming the
shard and key; with data.on_error=skip it leaves a hole that is dropped from its batch, counted and
reported, so batch counts (and DDP) are unaffected.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import io
import json
import math
import os
import re
import signal
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.data.cards import DatasetError

FORMAT = "ltbench-shards/1"
MANIFEST = "manifest.json"
MANIFEST_KEYS = ("dataset", "num_classes", "class_names", "channels", "selection", "splits")
SHARD_KEYS = ("name", "samples", "bytes", "sha256", "labels")
SHARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\.tar")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- manifest ---------------------------------------------------------------------------------

@dataclass
class ShardSplit:
    """One split of a prepared dataset: its shards (in manifest order) and labels, without the images."""

    root: Path
    name: str
    shards: list[dict[str, Any]]

    def __len__(self) -> int:
        return sum(s["samples"] for s in self.shards)

    @property
    def y(self) -> torch.Tensor:
        """Labels in manifest order (the evaluation order on one rank)."""
        return torch.tensor([lab for s in self.shards for lab in s["labels"]], dtype=torch.int64)

    def path(self, k: int) -> str:
        return str(self.root / self.shards[k]["name"])


@dataclass
class Manifest:
    root: Path
    doc: dict[str, Any]
    digest: str                      # sha256 of manifest.json: names exactly these shards

    def split(self, name: str) -> ShardSplit | None:
        s = self.doc["splits"].get(name)
        return None if s is None else ShardSplit(self.root, name, s["shards"])


def load_manifest(root: str | Path) -> Manifest:
    root = Path(root).expanduser()
    path = root / MANIFEST
    if not path.is_file():
        raise DatasetError(f"data.shards: {path} not found (prepare the shards with `ltbench prepare`)")
    raw = path.read_bytes()
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise DatasetError(f"{path}: format {got!r}, expected {FORMAT!r} (prepare again)")
    missing = [k for k in MANIFEST_KEYS if k not in doc]
    if missing:
        raise DatasetError(f"{path}: missing {', '.join(missing)} (not written by `ltbench prepare`, or damaged; "
                           "prepare again)")
    for name, split in doc["splits"].items():
        lacking = [k for k in ("num_samples", "class_counts", "shards") if k not in split]
        lacking += sorted({k for s in split.get("shards", []) for k in SHARD_KEYS if k not in s})
        if lacking:
            raise DatasetError(f"{path}: split {name} lacks {', '.join(lacking)} (prepare again)")
        for s in split["shards"]:
            # a manifest travels between users: its names must be plain files in this folder (never
            # "pipe:cmd", "../x" or a URL, which a tar opener might run or follow)
            shard = str(s["name"])
            if not SHARD_NAME.fullmatch(shard):
                raise DatasetError(f"{path}: shard name {shard[:80]!r} is not a plain file name in {root} "
                                   "(letters, digits, '.', '_', '-', ending in .tar)")
    return Manifest(root, doc, hashlib.sha256(raw).hexdigest()[:16])


def check_shard_files(split: ShardSplit, on_error: str) -> list[str]:
    """Compare every shard's size with the manifest (cheap; catches truncated or replaced files up front).

    Returns the problems; raises on the first one unless on_error == 'skip'.
    """
    problems = []
    for s in split.shards:
        p = split.root / s["name"]
        if not p.is_file():
            problems.append(f"shard {p} is missing")
        elif p.stat().st_size != s["bytes"]:
            problems.append(f"shard {p} has {p.stat().st_size} bytes, the manifest says {s['bytes']} "
                            "(truncated or replaced; run `ltbench prepare` again to rewrite it)")
        if problems and on_error != "skip":
            raise DatasetError(problems[0])
    return problems


def verify_shards(root: str | Path) -> list[str]:
    """Full check of every shard against its sha256 in the manifest (`ltbench prepare --verify`)."""
    m = load_manifest(root)
    bad = []
    for name in m.doc["splits"]:
        split = m.split(name)
        assert split is not None
        for s in split.shards:
            p = split.root / s["name"]
            if not p.is_file() or file_sha256(p) != s["sha256"]:
                bad.append(str(p))
    return bad


# --- reading a shard --------------------------------------------------------------------------

@dataclass
class Hole:
    """A sample that could not be read; dropped from its batch and reported."""

    where: str


def _split_name(name: str) -> tuple[str, str]:
    """webdataset naming: the key is the path up to the first dot of the file name, the rest the field."""
    d, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower()


def _complete(sample: dict[str, Any] | None) -> bool:
    return sample is not None and "cls" in sample and any(e in sample for e in IMAGE_EXTS)


class _NotPlainUstar(Exception):
    """A member the fast reader does not parse (pax / GNU long-name headers): use tarfile instead."""


def _ustar_members(f: Any, want: Any) -> Iterator[tuple[str, bytes | None]]:
    """(name, data) of the regular files of a plain USTAR tar, reading headers by hand.

    What `ltbench prepare` writes (USTAR, integer mtime) costs ~5 us per member this way against ~100 us
    through tarfile's generic header parsing (BENCHMARKS.md). The checksum of every header is verified,
    as tarfile does; a short read is a torn file. `want(name)` False: the data is seeked over (None).
    """
    while True:
        hdr = f.read(512)
        if len(hdr) < 512:
            if hdr.strip(b"\0"):
                raise tarfile.ReadError("unexpected end of data (torn header)")
            return                                         # end of file without end-of-archive blocks
        if hdr == bytes(512):
            return                                         # end-of-archive marker
        if hdr[124] & 0x80:
            raise _NotPlainUstar()                         # base-256 size (GNU, > 8 GiB members)
        try:
            chksum = int(hdr[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
            size = int(hdr[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:
            raise tarfile.InvalidHeaderError("bad number in header") from None
        unsigned = sum(hdr) - sum(hdr[148:156]) + 256
        if chksum != unsigned:
            if chksum == unsigned - 2 * sum(b for b in hdr if b > 127):
                raise _NotPlainUstar()                     # a signed checksum (old tars): tarfile takes it
            raise tarfile.InvalidHeaderError("bad checksum")
        kind = hdr[156:157]
        if kind not in (b"0", b"\0", b"5"):
            raise _NotPlainUstar()                         # pax, GNU long names, links: tarfile handles them
        try:
            name = hdr[0:100].split(b"\0", 1)[0].decode("utf-8")
            if hdr[257:262] == b"ustar" and hdr[345]:
                name = hdr[345:500].split(b"\0", 1)[0].decode("utf-8") + "/" + name
        except UnicodeDecodeError:
            raise _NotPlainUstar() from None               # tarfile decodes other encodings
        padded = -(-size // 512) * 512
        if kind == b"5":
            f.seek(padded, os.SEEK_CUR)
            continue
        if want(name):
            data = f.read(size)
            if len(data) < size:
                raise tarfile.ReadError("unexpected end of data")
            f.seek(padded - size, os.SEEK_CUR)
            yield name, data
        else:
            f.seek(padded, os.SEEK_CUR)
            yield name, None


def _tarfile_members(f: Any, want: Any) -> Iterator[tuple[str, bytes | None]]:
    """The same from Python's tarfile: any tar format (pax, GNU)."""
    tf = tarfile.open(fileobj=f, mode="r:")
    for info in tf:
        if info.isreg():
            if want(info.name):
                fobj = tf.extractfile(info)
                assert fobj is not None
                yield info.name, fobj.read()
            else:
                yield info.name, None


def read_shard(path: str, skip: int, count: int, on_error: str) -> Iterator[dict[str, Any] | Hole]:
    """Samples skip .. skip+count-1 of a tar shard as {"__key__", field: bytes}, in file order.

    Members are grouped by key from their headers; the file is opened seekable, so skipped samples
    cost only their headers (their data is seeked over). Plain USTAR (what `ltbench prepare` writes) is
    parsed by hand, anything else by tarfile. A truncated or unreadable tar raises a DatasetError naming
    the shard and the last intact key; with on_error=skip it yields one Hole per sample it could not reach.
    """
    produced, k, last_good = 0, -1, None
    current: dict[str, Any] | None = None

    def want(name: str) -> bool:
        # called before the data is read: is this member part of a sample we yield? (k and current are
        # read at call time: the sample being grouped, which a new key would follow)
        new_sample = current is None or _split_name(name)[0] != current["__key__"]
        return k + new_sample >= skip

    def members(f: Any) -> Iterator[tuple[str, bytes | None]]:
        start, seen = f.tell(), 0
        try:
            for m in _ustar_members(f, want):
                seen += 1
                yield m
        except _NotPlainUstar:
            # restart with tarfile, passing over the members already seen
            f.seek(start)
            for i, m in enumerate(_tarfile_members(f, want)):
                if i >= seen:
                    yield m

    try:
        # a local file only: never an opener that interprets the name (webdataset's gopen runs "pipe:...")
        with open(path, "rb") as f:
            for name, data in members(f):
                key, ext = _split_name(name)
                if current is None or key != current["__key__"]:
                    if current is not None and k >= skip:
                        yield current
                        produced += 1
                        last_good = current["__key__"]
                        if produced == count:
                            return
                    k += 1
                    current = {"__key__": key}
                if k >= skip and data is not None:
                    current[ext] = data
            if current is not None and k >= skip and produced < count:
                yield current
                produced += 1
                last_good = current["__key__"]
    except (tarfile.TarError, EOFError, OSError) as e:
        # The sample being read may still be whole (the damage starts at the next one).
        if k >= skip and produced < count and _complete(current):
            yield current
            produced += 1
            last_good = current["__key__"]  # type: ignore[index]
        if produced == count:
            return
        where = f"shard {path} after key {last_good}" if last_good else f"shard {path}"
        if on_error != "skip":
            raise DatasetError(f"{where}: unreadable tar ({type(e).__name__}: {e})") from None
        for _ in range(count - produced):
            yield Hole(f"{where}: unreadable tar")
        return
    if produced < count:
        where = f"shard {path} after key {last_good}"
        if on_error != "skip":
            raise DatasetError(f"{where}: ends after {skip + produced} samples, the manifest says at least {skip + count}")
        for _ in range(count - produced):
            yield Hole(f"{where}: missing samples")


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
            raise DatasetError(f"shard {path} key {key}: .npy is {a.dtype} {a.shape}, expected uint8 H x W x {channels}")
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


# --- the plan of an epoch ---------------------------------------------------------------------

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


@dataclass
class StreamSpec:
    """Everything a worker needs to produce its batches (picklable)."""

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


# --- producing batches ------------------------------------------------------------------------

def _buffer_shuffle(items: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Reservoir-style shuffle: hold `size` items, emit a random one as each new one arrives."""
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


def _rrc_box(w: int, h: int, rng: np.random.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
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


def _to_fixed_size(img, spec: StreamSpec, rng: np.random.Generator) -> np.ndarray:
    """Small images as they are; large ones RandomResizedCrop (training, rrc_flip) or resize + centre crop."""
    from PIL import Image

    if isinstance(img, np.ndarray):        # .npy: already H x W x C uint8
        if spec.image_size is None:
            return img
        img = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
    if spec.image_size is None:
        a = np.asarray(img)
        return a[..., None] if a.ndim == 2 else a
    s = spec.image_size
    if spec.train and spec.augment == "rrc_flip":
        left, top, cw, ch = _rrc_box(img.width, img.height, rng)
        img = img.resize((s, s), Image.BILINEAR, box=(left, top, left + cw, top + ch))
    else:
        r = spec.eval_resize or s
        f = r / min(img.size)
        img = img.resize((max(s, round(img.width * f)), max(s, round(img.height * f))), Image.BILINEAR)
        left, top = (img.width - s) // 2, (img.height - s) // 2
        img = img.crop((left, top, left + s, top + s))
    a = np.asarray(img)
    return a[..., None] if a.ndim == 2 else a


def _jpeg_for_gpu(sample: dict[str, Any], spec: StreamSpec, path: str, rng: np.random.Generator):
    """decode=gpu: (bytes as a uint8 tensor, training crop box or None, label) of a JPEG the GPU decoder
    takes (baseline or progressive, RGB or greyscale), read from its header alone; None = decode it here
    (a PNG, CMYK JPEG, ...). The crop box is drawn from `rng` exactly as the CPU path draws it."""
    from PIL import Image

    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext not in ("jpg", "jpeg") or spec.image_size is None or "cls" not in sample:
        return None
    try:
        head = Image.open(io.BytesIO(sample[ext]), formats=("JPEG",))   # parses the header, decodes nothing
    except Exception:  # noqa: BLE001 - not a JPEG after all: the CPU path decides (and reports) what it is
        return None
    if head.mode not in ("RGB", "L") or (head.mode == "L") != (spec.channels == 1):
        return None
    label = _label(sample, path, spec.num_classes)
    box = _rrc_box(head.width, head.height, rng) if spec.train and spec.augment == "rrc_flip" else None
    return torch.frombuffer(bytearray(sample[ext]), dtype=torch.uint8), box, label


def _gpu_batch(xs: list[Any], ys: list[int], keys: list[str], holes: list[str], jpegs: list[Any],
               spec: StreamSpec, index: int) -> dict[str, Any]:
    """A batch whose JPEGs the main process decodes on the GPU; images decoded here ride along finished."""
    from bench.data.batches import derived_generator

    done = {i: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1) for i, a in enumerate(xs) if a is not None}
    flip = torch.zeros(len(ys), dtype=torch.bool)
    if spec.train and spec.augment != "none":
        # the flip draw of random_crop_flip (pad 0 after RandomResizedCrop), from the same generator
        flip = torch.rand(len(ys), generator=derived_generator(spec.seed, spec.epoch, spec.rank, index, 1)) < 0.5
    return {"index": index, "y": torch.tensor(ys, dtype=torch.int64), "keys": keys, "holes": holes,
            "gpu": {"jpegs": [j[1] for j in jpegs], "slots": [j[0] for j in jpegs],
                    "boxes": [j[2] for j in jpegs], "done": done, "flip": flip}}


def _make_batch(items: list[Any], spec: StreamSpec, index: int) -> dict[str, Any]:
    from bench.data.batches import derived_generator, random_crop_flip

    rng = np.random.default_rng([spec.seed, spec.epoch, spec.rank, index, 2])
    xs, ys, keys, holes = [], [], [], []
    jpegs: list[tuple[int, torch.Tensor, tuple[int, int, int, int] | None]] = []   # decode=gpu: (slot, bytes, box)
    for it in items:
        if isinstance(it, Hole):
            holes.append(it.where)
            continue
        sample, path = it
        try:
            passed = _jpeg_for_gpu(sample, spec, path, rng) if spec.decode == "gpu" else None
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
            xs.append(_to_fixed_size(img, spec, rng))
        ys.append(label)
        keys.append(f"{os.path.basename(path)}/{sample['__key__']}")
    if jpegs:
        return _gpu_batch(xs, ys, keys, holes, jpegs, spec, index)
    if not xs:  # every sample unreadable (on_error=skip): an empty batch keeps the step count
        return {"index": index, "x": torch.zeros(0, dtype=torch.uint8), "y": torch.zeros(0, dtype=torch.int64),
                "keys": [], "holes": holes}
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2)
    if spec.pad_to is not None and spec.pad_to > x.shape[-1]:
        p = spec.pad_to - x.shape[-1]
        x = torch.nn.functional.pad(x, (p // 2, p - p // 2, p // 2, p - p // 2))
    if spec.train and spec.augment != "none":
        # the same batched crop / flip as the in-memory loader; RandomResizedCrop already cropped
        gen = derived_generator(spec.seed, spec.epoch, spec.rank, index, 1)
        pad = spec.crop_padding if spec.augment == "crop_flip" else 0
        x = random_crop_flip(x, gen, pad, flip=True)
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
    """Training or evaluation batches of a ShardSplit with the InMemoryLoader interface.

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

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        spec = StreamSpec(**{**self.spec.__dict__, "epoch": epoch, "start_step": start_step})
        # Workers serve whole streams; the round-robin order is the batch order only when k divides S.
        k = max((d for d in range(1, spec.streams + 1) if spec.streams % d == 0 and d <= self.workers), default=0)
        loader = torch.utils.data.DataLoader(_Streams(spec), batch_size=None, num_workers=k,
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
                from bench.data.gpu_decode import decode_batch

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
