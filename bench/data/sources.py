"""Raw datasets as uint8 arrays: Fashion-MNIST (IDX files), CIFAR-10/100 (python pickles), synthetic.

Each loader returns the full, balanced training pool and the test set; the long-tailed subset is cut
from the pool by bench.data.lt. A card's `source` names its reader (bench/registry.py READERS; the readers are at
the end): a new dataset in a format read here is its card alone (datasets/<name>.yaml); a new format is a reader
here and its entry there. Datasets read from image files (ImageNet-LT, ...) have none: `ltbench prepare` shards
them from their split files.
"""

from __future__ import annotations

import gzip
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.config import DataConfig
from bench.data.cards import DatasetError, load_card
from bench.registry import DATASETS, READERS


@dataclass
class RawData:
    """Images as uint8 (N, H, W, C) and labels as int64 (N,)."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    root: str | None


def _search(card: dict, root: str | None, marker) -> Path:
    """The first candidate directory for which marker(dir) is true, or a DatasetError listing all tried."""
    candidates = [Path(root).expanduser()] if root else [Path(p).expanduser() for p in card.get("search_paths", [])]
    if not root and os.environ.get("LTBENCH_DATA"):
        candidates.insert(0, Path(os.environ["LTBENCH_DATA"]).expanduser() / card["name"])
    for d in candidates:
        if marker(d):
            return d
    tried = ", ".join(str(c) for c in candidates)
    raise DatasetError(f"{card['title']} not found (looked in: {tried}); to get it: {card['how_to_get']}")


# --- Fashion-MNIST ----------------------------------------------------------------------------

def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): magic 0x0000 08 D (ubyte, D dims), D big-endian sizes, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path}: not an unsigned-byte IDX file (bad magic {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(raw) - offset != expected:
        raise DatasetError(f"{path}: truncated or corrupt IDX file ({len(raw) - offset} bytes of data, header says "
                           f"{expected})")
    return np.frombuffer(bytearray(raw), dtype=np.uint8, offset=offset).reshape(shape)  # writable copy


def load_fashion_mnist(root: str | None = None) -> RawData:
    return load_idx_dataset("fashion-mnist", root)


def load_idx_dataset(name: str, root: str | None = None) -> RawData:
    """A dataset of gzipped IDX files (Fashion-MNIST, MNIST-like): the files, classes and statistics its card
    names."""
    card = load_card(name)
    files = card["files"]

    def present(d: Path) -> bool:
        return all((d / f).is_file() or (d / f.removesuffix(".gz")).is_file() for f in files.values())

    d = _search(card, root, present)

    def get(key: str) -> np.ndarray:
        p = d / files[key]
        return read_idx(p if p.is_file() else p.with_suffix(""))

    train_x, train_y = get("train_images"), get("train_labels")
    test_x, test_y = get("test_images"), get("test_labels")
    for x, y, split in ((train_x, train_y, "train"), (test_x, test_y, "test")):
        if len(x) != len(y):
            raise DatasetError(f"{name} {split} in {d}: {len(x)} images but {len(y)} labels")
    return RawData(train_x[..., None], train_y.astype(np.int64), test_x[..., None], test_y.astype(np.int64),
                   card["num_classes"], list(card["class_names"]), tuple(card["mean"]), tuple(card["std"]), str(d))


# --- CIFAR-10 / CIFAR-100 ---------------------------------------------------------------------

class _CifarUnpickler(pickle.Unpickler):
    """pickle.Unpickler that builds only what the CIFAR archives hold: dicts, lists, bytes, numbers and numpy
    arrays. A pickle can name any callable (os.system, ...) and have it called on load; an archive from the
    internet or a shared disk must not run code, so every other global is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR archive")
        return super().find_class(module, name)


def _unpickle(blob: bytes, where: str) -> dict:
    import io

    try:
        return _CifarUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as e:  # pickle raises many types on corrupt input
        raise DatasetError(f"{where}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from None


def load_cifar(num_classes: int, root: str | None = None, name: str | None = None) -> RawData:
    """CIFAR python version: a directory holding the extracted folder, the folder itself, or the .tar.gz; `name`:
    the card that names its files (default cifar10 / cifar100)."""
    name = name or f"cifar{num_classes}"
    card = load_card(name)
    folder, archive = card["files"]["folder"], card["files"]["archive"]
    if num_classes == 10:
        train_members = [f"data_batch_{i}" for i in range(1, 6)]
        test_members, label_key, meta_member, names_key = ["test_batch"], b"labels", "batches.meta", b"label_names"
    else:
        train_members, test_members, label_key = ["train"], ["test"], b"fine_labels"
        meta_member, names_key = "meta", b"fine_label_names"

    def present(d: Path) -> bool:
        return (d / folder).is_dir() or (d / archive).is_file() or (d / train_members[0]).is_file()

    d = _search(card, root, present)
    if (d / folder).is_dir():
        base = d / folder
    elif (d / train_members[0]).is_file():
        base = d
    else:
        base = None

    def read(member: str) -> dict:
        if base is not None:
            p = base / member
            if not p.is_file():
                raise DatasetError(f"{p}: missing CIFAR file (expected {', '.join(train_members + test_members)})")
            return _unpickle(p.read_bytes(), str(p))
        try:
            with tarfile.open(d / archive) as tf:
                f = tf.extractfile(f"{folder}/{member}")
                assert f is not None
                return _unpickle(f.read(), f"{d / archive}:{folder}/{member}")
        except (KeyError, tarfile.TarError, OSError, EOFError) as e:
            raise DatasetError(f"{d / archive}: cannot read {folder}/{member} ({e})") from None

    def split(members: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for m in members:
            entry = read(m)
            if b"data" not in entry or label_key not in entry:
                raise DatasetError(f"{m} in {d}: missing key {b'data' if b'data' not in entry else label_key!r}")
            xs.append(np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(np.asarray(entry[label_key], dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    train_x, train_y = split(train_members)
    test_x, test_y = split(test_members)
    try:
        names = [n.decode() for n in read(meta_member)[names_key]]
    except DatasetError:
        names = card.get("class_names") or [str(i) for i in range(num_classes)]
    return RawData(train_x, train_y, test_x, test_y, num_classes, names,
                   tuple(card["mean"]), tuple(card["std"]), str(d))


# --- synthetic --------------------------------------------------------------------------------

def make_synthetic(num_classes: int, train_per_class: int, test_per_class: int, image_size: int,
                   channels: int, noise: float, seed: int) -> RawData:
    """Class templates (smooth random images) plus Gaussian pixel noise, quantised to uint8.

    Classes overlap through the noise, so accuracy is informative rather than trivially 100 %.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.random((num_classes, max(2, image_size // 4), max(2, image_size // 4), channels))
    reps = -(-image_size // coarse.shape[1])
    templates = coarse.repeat(reps, axis=1).repeat(reps, axis=2)[:, :image_size, :image_size]

    def draw(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(num_classes), per_class)
        x = templates[y] + noise * rng.standard_normal((len(y), image_size, image_size, channels))
        return (np.clip(x, 0, 1) * 255).round().astype(np.uint8), y.astype(np.int64)

    train_x, train_y = draw(train_per_class)
    test_x, test_y = draw(test_per_class)
    card = load_card("synthetic")
    mean = tuple(card["mean"]) * channels if len(card["mean"]) == 1 else tuple(card["mean"])
    std = tuple(card["std"]) * channels if len(card["std"]) == 1 else tuple(card["std"])
    return RawData(train_x, train_y, test_x, test_y, num_classes, [f"class{c}" for c in range(num_classes)],
                   mean, std, None)


# --- the readers a card's `source` names (bench/registry.py READERS) ---------------------------------------

def read_idx_dataset(cfg: DataConfig) -> RawData:
    """Gzipped IDX files (Fashion-MNIST), as the dataset's card names them."""
    return load_idx_dataset(cfg.dataset, cfg.root)


def read_cifar_dataset(cfg: DataConfig) -> RawData:
    """CIFAR's python pickles; 10 or 100 classes as the card says."""
    return load_cifar(int(load_card(cfg.dataset)["num_classes"]), cfg.root, cfg.dataset)


def read_synthetic_dataset(cfg: DataConfig) -> RawData:
    """Generated in memory from data.synthetic (tests and smoke runs)."""
    s = cfg.synthetic
    return make_synthetic(s.num_classes, s.train_per_class, s.test_per_class, s.image_size, s.channels,
                          s.noise, s.seed)


def in_memory(dataset: str) -> bool:
    """Is `dataset` read into memory by a reader (else its image files are sharded by `ltbench prepare`)?"""
    return load_card(dataset).get("source") in READERS


def load_raw(cfg: DataConfig) -> RawData:
    """The raw pool and test set of data.dataset, by the reader its card's `source` names."""
    if not in_memory(cfg.dataset):
        known = ", ".join(n for n in DATASETS if in_memory(n))
        raise DatasetError(f"{cfg.dataset} is not read into memory (datasets that are: {known}); "
                           f"prepare its shards with `ltbench prepare {cfg.dataset}` and set data.shards")
    return READERS[load_card(cfg.dataset)["source"]](cfg)
