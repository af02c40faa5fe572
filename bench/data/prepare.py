"""`ltbench prepare`: write a dataset as webdataset tar shards (train / val / test) plus manifest.json.

Each sample is `<key>.png|.jpg|.npy` (image bytes; .npy: a raw uint8 array, `--array-format npy`), `<key>.cls` (label,
ASCII) and, for image files, `<key>.json` (where it came from). Training samples are shuffled once (seeded) before
sharding so every shard mixes classes; val / test keep the source order. Shards are written by parallel processes,
each to a temporary file renamed into place, and a finished shard leaves a record (sha256, size, a digest of its
planned contents) under `.prepare/`: running the same command again verifies finished shards by hash and only writes
the missing or damaged ones, so a crashed preparation resumes where it stopped.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import io
import json
import multiprocessing as mp
import os
import tarfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.data.cards import FILE_SPLIT_SOURCES, DatasetError, load_card
from bench.data.lt import lt_selection
from bench.data.profiles import indices_hash, profile_config
from bench.data.shards.manifest import FORMAT, MANIFEST, file_sha256
from bench.data.shards.tar import shard_spans
from bench.data.sources import in_memory, load_raw
from bench.runtime.progress import Progress, log

PREP_DIR = ".prepare"   # per-shard records of finished shards (idempotence, crash resume)
TRAIN_ORDER_SEED = 0    # the one-off shuffle of the training samples before sharding


@dataclass(frozen=True)
class Item:
    """One planned sample: its label and where its image comes from (a file, or a row of an array)."""

    label: int
    path: str | None = None     # image file (split-file and JSON datasets)
    row: int | None = None      # index into the in-memory array of the split (CIFAR, Fashion-MNIST)
    origin: str = ""            # human-readable provenance, stored in the sample's .json


@dataclass
class Plan:
    dataset: str
    splits: dict[str, list[Item]]
    class_names: list[str]
    channels: int
    selection: dict[str, Any]
    sources: dict[str, str]                  # source file -> sha256
    arrays: dict[str, np.ndarray] | None     # split -> uint8 (N, H, W, C) for array sources


# --- planning: what goes into which split ----------------------------------------------------

def plan_profile_dataset(dataset: str, data_cfg: Any) -> Plan:
    """CIFAR-10/100 and Fashion-MNIST: cut the long-tailed train / val split exactly as the in-memory path does."""
    raw = load_raw(data_cfg)
    counts, train_idx, val_idx = lt_selection(raw, data_cfg)
    card = load_card(dataset)
    sources = {}
    if raw.root:
        for f in (card.get("files") or {}).values():
            for p in (Path(raw.root) / f, Path(raw.root) / f.removesuffix(".gz")):
                if p.is_file():
                    sources[p.name] = file_sha256(p)
                    break
            else:
                folder = Path(raw.root) / f
                if folder.is_dir():
                    for p in sorted(folder.iterdir()):
                        if p.is_file():
                            sources[f"{f}/{p.name}"] = file_sha256(p)
    # Shuffle the training rows once so that every shard holds all classes (the source is class-sorted).
    order = np.random.default_rng(TRAIN_ORDER_SEED).permutation(len(train_idx))
    arrays = {"train": raw.train_x[train_idx[order]], "val": raw.train_x[val_idx], "test": raw.test_x}
    labels = {"train": raw.train_y[train_idx[order]], "val": raw.train_y[val_idx], "test": raw.test_y}
    pools = {"train": train_idx[order], "val": val_idx, "test": np.arange(len(raw.test_y))}
    splits = {}
    for s in ("train", "val", "test"):
        if s == "val" and not data_cfg.val_per_class:
            continue
        pool = "test" if s == "test" else "train"
        splits[s] = [Item(int(y), row=i, origin=f"{pool}[{int(p)}]")
                     for i, (y, p) in enumerate(zip(labels[s], pools[s]))]
    selection = {key: getattr(data_cfg, key) for key in
                 ("imbalance_factor", "profile", "n_max", "rounding", "selection", "selection_seed", "val_per_class")}
    if dataset == "synthetic":
        selection["synthetic"] = dict(vars(data_cfg.synthetic))
    selection["class_counts"] = counts
    selection["selection_hash"] = indices_hash(train_idx, val_idx)  # equal to the in-memory run's
    return Plan(dataset, splits, list(raw.class_names), int(raw.train_x.shape[-1]), selection, sources, arrays)


def _read_split_file(path: Path) -> list[tuple[str, int]]:
    """OLTR split file: one `relative/path label` per line."""
    if not path.is_file():
        raise DatasetError(f"split file {path} not found")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DatasetError(f"{path}:{n}: expected 'relative/path label', got {line!r}")
        out.append((parts[0], int(parts[1])))
    return out


def _read_inat_json(path: Path) -> tuple[list[tuple[str, int]], dict[int, str]]:
    """iNat COCO-style JSON: (file_name, category_id) per image in image-id order, and category names."""
    if not path.is_file():
        raise DatasetError(f"annotation file {path} not found")
    try:
        doc = json.loads(path.read_text())
        files = {im["id"]: im["file_name"] for im in doc["images"]}
        labels = {a["image_id"]: int(a["category_id"]) for a in doc["annotations"]}
        names = {int(c["id"]): str(c.get("name", c["id"])) for c in doc.get("categories", [])}
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DatasetError(f"{path}: not an iNaturalist COCO-style JSON ({type(e).__name__}: {e})") from None
    missing = [i for i in files if i not in labels]
    if missing:
        raise DatasetError(f"{path}: image id {missing[0]} ({files[missing[0]]}) has no annotation (label)")
    return [(files[i], labels[i]) for i in sorted(files)], names


def _class_folder(rel: str) -> str:
    """The class part of an image path: its folders without a leading split folder or one-letter index."""
    parts = list(Path(rel.lstrip("/")).parent.parts)
    while parts and (parts[0] in ("train", "val", "test") or len(parts[0]) == 1):
        parts.pop(0)
    return "/".join(parts)


def plan_file_dataset(dataset: str, card: dict[str, Any], src: Path, splits_dir: Path) -> Plan:
    """ImageNet-LT / Places-LT (split files) and iNaturalist 2018 (JSON): every listed image, as listed."""
    splits: dict[str, list[Item]] = {}
    sources: dict[str, str] = {}
    names: dict[int, str] = {}
    for split, fname in card["splits"].items():
        path = splits_dir / fname
        if card["source"] == "split_files":
            entries = _read_split_file(path)
        else:
            entries, names = _read_inat_json(path)
        sources[fname] = file_sha256(path)
        items = []
        for rel, label in entries:
            if not 0 <= label < card["num_classes"]:
                raise DatasetError(f"{path}: label {label} of {rel} outside 0..{card['num_classes'] - 1}")
            # Places-LT lines start with '/', yet are relative to the image root
            items.append(Item(label, path=str(src / rel.lstrip("/")), origin=rel))
        missing = [it.path for it in items if not os.path.isfile(it.path)]  # type: ignore[arg-type]
        if missing:
            raise DatasetError(f"{dataset} {split}: {len(missing)} images listed in {path} are missing, e.g. "
                               f"{missing[0]} (check --src)")
        if split == "train":
            order = np.random.default_rng(TRAIN_ORDER_SEED).permutation(len(items))
            items = [items[i] for i in order]
        splits[split] = items
    nc = card["num_classes"]
    if not names:
        # ImageNet / Places paths name the class folder (train/n01440764/x.JPEG, /a/apartment_building/outdoor/x.jpg):
        # use it when unambiguous.
        folder: dict[int, set[str]] = {}
        for it in splits["train"]:
            folder.setdefault(it.label, set()).add(_class_folder(it.origin))
        names = {c: next(iter(f)) for c, f in folder.items() if len(f) == 1}
    class_names = [names.get(c, str(c)) for c in range(nc)]
    counts = Counter(it.label for it in splits["train"])
    selection = {"profile": "files", **{k: card["lt"][k] for k in ("imbalance_factor", "n_max", "val_per_class")},
                 "class_counts": [counts.get(c, 0) for c in range(nc)],
                 "selection_hash": hashlib.sha256("|".join(sorted(sources.values())).encode()).hexdigest()[:16]}
    return Plan(dataset, splits, class_names, int(card.get("channels", 3)), selection, sources, None)


def card_deviations(plan: Plan, card: dict[str, Any]) -> list[str]:
    """Differences between the planned splits and the card's expected statistics (empty = all as expected)."""
    out = []
    for split, exp in (card.get("expected") or {}).items():
        items = plan.splits.get(split)
        if items is None:
            out.append(f"{split}: missing, card expects {exp.get('samples')} samples")
            continue
        counts = Counter(it.label for it in items)
        have = {"samples": len(items), "classes": len(counts),
                "max_per_class": max(counts.values(), default=0), "min_per_class": min(counts.values(), default=0)}
        out += [f"{split} {key} {have[key]} (card: {value})" for key, value in exp.items() if have[key] != value]
    return out


# --- writing --------------------------------------------------------------------------------

_ARRAYS: dict[str, np.ndarray] | None = None   # set before the worker pool forks (array sources)


def _encode(item: Item, split: str, resize_shorter: int | None, jpeg_quality: int | None,
            array_format: str = "png") -> tuple[str, bytes]:
    """(extension, image bytes): arrays as PNG or raw .npy (both lossless; npy skips PIL when training,
    which matters for small images and models, BENCHMARKS.md), the file's own bytes, or a re-encoded JPEG."""
    from PIL import Image

    if item.row is not None:
        assert _ARRAYS is not None
        a = _ARRAYS[split][item.row]
        buf = io.BytesIO()
        if array_format == "npy":
            np.save(buf, np.ascontiguousarray(a[..., 0] if a.shape[-1] == 1 else a), allow_pickle=False)
            return "npy", buf.getvalue()
        Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(buf, format="PNG", optimize=False)
        return "png", buf.getvalue()
    assert item.path is not None
    ext = Path(item.path).suffix.lower().lstrip(".")
    ext = "jpg" if ext in ("jpeg", "jpg") else ext
    if resize_shorter is None and jpeg_quality is None:
        return ext, Path(item.path).read_bytes()
    im: Image.Image
    try:
        with Image.open(item.path) as im:
            im = im.convert("RGB")   # CMYK / greyscale / PNG-in-.JPEG files of ImageNet included
            if resize_shorter is not None and min(im.size) > resize_shorter:
                s = resize_shorter / min(im.size)
                im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))),
                               Image.BICUBIC)  # type: ignore[attr-defined]
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=jpeg_quality or 90)
    except Exception as e:  # PIL raises many types on bad files
        raise DatasetError(f"{item.path}: cannot decode for re-encoding ({type(e).__name__}: {e})") from None
    return "jpg", buf.getvalue()


def _shard_digest(split: str, items: list[Item], encoding: dict[str, Any], sources: dict[str, str],
                  selection: dict[str, Any]) -> str:
    """What a shard is made of: a finished shard with another digest is rewritten."""
    h = hashlib.sha256(json.dumps([split, encoding, sorted(sources.items()), selection], sort_keys=True).encode())
    for it in items:
        h.update(f"{it.label}|{it.origin}\n".encode())
    return h.hexdigest()


def _write_shard(out: str, name: str, split: str, first_key: int, items: list[Item], encoding: dict[str, Any],
                 digest: str) -> dict[str, Any]:
    """Write one shard to a temporary file, fsync, rename; then its record. Runs in a worker process."""
    import webdataset as wds

    path = Path(out) / name
    tmp = path.with_name(f".{name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        # mtime 0 and fixed owner: the same plan gives byte-identical shards (stable sha256); plain USTAR
        # headers (an integer mtime, no pax records) halve the members a reader parses
        writer = wds.TarWriter(f, mtime=0, format=tarfile.USTAR_FORMAT)  # type: ignore[arg-type]
        for k, it in enumerate(items):
            ext, data = _encode(it, split, encoding["resize_shorter"], encoding["jpeg_quality"],
                                encoding.get("array_format", "png"))
            sample = {"__key__": f"{first_key + k:08d}", ext: data, "cls": str(it.label).encode()}
            if it.path is not None:  # file sources: where the image came from (arrays: the manifest's selection)
                sample["json"] = json.dumps({"origin": it.origin}).encode()
            writer.write(sample)
        writer.close()
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    record = {"name": name, "samples": len(items), "bytes": path.stat().st_size, "sha256": file_sha256(path),
              "labels": [it.label for it in items], "digest": digest}
    if split == "train":
        # where each sample starts (and the last one ends): the class-aware samplers read them at random
        # (bench.data.shards.access) without scanning every header first
        spans, problem = shard_spans(str(path))
        if problem is not None or len(spans) != len(items):
            raise RuntimeError(f"prepare: {path} reads back as {len(spans)} samples ({problem}), wrote {len(items)}")
        record["offsets"] = [a for a, _ in spans] + [spans[-1][1] if spans else 0]
    rec = Path(out) / PREP_DIR / f"{name}.json"
    rec.write_text(json.dumps(record))
    return record


def _finished(out: Path, name: str, digest: str) -> dict[str, Any] | None:
    """The record of a finished shard whose planned contents and file hash both still match, else None."""
    rec, path = out / PREP_DIR / f"{name}.json", out / name
    if not rec.is_file() or not path.is_file():
        return None
    try:
        record = json.loads(rec.read_text())
    except json.JSONDecodeError:
        return None
    if record.get("digest") != digest or record.get("bytes") != path.stat().st_size:
        return None
    return record if file_sha256(path) == record.get("sha256") else None


def write_shards(plan: Plan, out: Path, card: dict[str, Any], samples_per_shard: int = 1000, workers: int = 2,
                 resize_shorter: int | None = None, jpeg_quality: int | None = None,
                 deviations: list[str] | None = None, progress: str = "auto",
                 array_format: str = "png") -> dict[str, Any]:
    """Write (or complete) the shards of `plan` under `out` and return the manifest, also written there."""
    global _ARRAYS
    out.mkdir(parents=True, exist_ok=True)
    (out / PREP_DIR).mkdir(exist_ok=True)
    for stale in out.glob(".*.tmp*"):
        stale.unlink()  # torn temporary files of a crashed earlier run
    encoding: dict[str, Any] = {"resize_shorter": resize_shorter, "jpeg_quality": jpeg_quality}
    if array_format != "png":
        encoding["array_format"] = array_format   # absent = png, so earlier shards keep their digests
    planned = []
    for split, items in plan.splits.items():
        for s, start in enumerate(range(0, max(1, len(items)), samples_per_shard)):
            chunk = items[start:start + samples_per_shard]
            name = f"{split}-{s:06d}.tar"
            planned.append((str(out), name, split, start, chunk, encoding,
                            _shard_digest(split, chunk, encoding, plan.sources, plan.selection)))
    # Verify finished shards by hash, in parallel (a rerun over ImageNet re-reads every shard once).
    with cf.ThreadPoolExecutor(max(1, workers)) as pool:
        done = list(pool.map(lambda j: _finished(out, j[1], j[6]), planned))
    jobs, records = [], {}
    for job, rec in zip(planned, done):
        if rec is not None:
            records[job[1]] = rec
        else:
            jobs.append(job)
    total = sum(len(j[4]) for j in jobs)
    log(f"prepare {plan.dataset}: {len(records)} shards already done and verified, {len(jobs)} to write "
        f"({total} samples) with {workers} processes")
    _ARRAYS = plan.arrays
    bar = Progress(len(jobs), "shards", progress)
    t0 = time.time()
    if workers > 1 and len(jobs) > 1:
        # fork: workers inherit the in-memory arrays; nothing heavy runs in torch before this point
        with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
            for rec in pool.map(_write_shard_job, jobs):
                records[rec["name"]] = rec
                bar.update()
    else:
        for job in jobs:
            rec = _write_shard_job(job)
            records[rec["name"]] = rec
            bar.update()
    bar.close()
    _ARRAYS = None
    if jobs:
        log(f"wrote {len(jobs)} shards in {time.time() - t0:.1f} s")
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "dataset": plan.dataset,
        "num_classes": int(card.get("num_classes", len(plan.class_names))),
        "class_names": plan.class_names,
        "channels": plan.channels,
        "selection": plan.selection,
        "sources": plan.sources,
        "encoding": encoding,
        "card_check": {"deviations": deviations or [], "allowed": bool(deviations)},
        "splits": {},
    }
    for split, items in plan.splits.items():
        shards = [records[f"{split}-{s:06d}.tar"] for s in range(-(-max(1, len(items)) // samples_per_shard))]
        counts = Counter(it.label for it in items)
        manifest["splits"][split] = {
            "num_samples": len(items),
            "class_counts": [counts.get(c, 0) for c in range(manifest["num_classes"])],
            "shards": [{k: r[k] for k in ("name", "samples", "bytes", "sha256", "labels", "offsets") if k in r}
                       for r in shards],
        }
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / MANIFEST)
    return manifest


def _write_shard_job(job: tuple) -> dict[str, Any]:
    return _write_shard(*job)


def prepare(dataset: str, out: Path, src: Path | None = None, splits_dir: Path | None = None,
            data_overrides: list[str] | tuple[str, ...] = (), samples_per_shard: int = 1000, workers: int = 2,
            resize_shorter: int | None = None, jpeg_quality: int | None = None,
            allow_deviation: bool = False, progress: str = "auto", array_format: str = "png") -> dict[str, Any]:
    """Plan from the source, check it against the dataset card, write the shards and manifest."""
    card = load_card(dataset)
    if array_format != "png" and not in_memory(dataset):
        raise DatasetError(f"prepare {dataset}: --array-format applies to array datasets (CIFAR, Fashion-MNIST, "
                           "synthetic); image files keep their own encoding")
    if card.get("source") in FILE_SPLIT_SOURCES:
        if src is None:
            raise DatasetError(f"prepare {dataset}: --src IMAGE_ROOT is required ({card['how_to_get']})")
        if data_overrides:
            raise DatasetError(f"prepare {dataset}: its split files fix the long-tailed set; drop "
                               f"{' '.join(data_overrides)}")
        plan = plan_file_dataset(dataset, card, src, splits_dir or src)
    elif in_memory(dataset):
        overrides = [f"data.dataset={dataset}"] + [o if o.startswith("data.") else f"data.{o}" for o in data_overrides]
        if src is not None:
            overrides.append(f"data.root={src}")
        plan = plan_profile_dataset(dataset, profile_config(overrides))
    else:
        raise DatasetError(f"prepare: {dataset} has no files to shard (source {card.get('source')!r})")
    deviations = card_deviations(plan, card)
    if deviations and not allow_deviation:
        raise DatasetError(f"{dataset} source does not match datasets/{dataset}.yaml: {'; '.join(deviations)} "
                           "(pass --allow-deviation to prepare it anyway; the manifest records the deviation)")
    if deviations:
        log(f"prepare {dataset}: known deviations from the card, recorded in the manifest: {'; '.join(deviations)}")
    existing = out / MANIFEST
    if existing.is_file():
        try:
            old = json.loads(existing.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("dataset") not in (None, dataset) or old.get("selection") not in (None, plan.selection):
            raise DatasetError(f"{out} holds shards of a different preparation ({old.get('dataset')}, "
                               f"{old.get('selection', {}).get('selection_hash')}); choose another --out")
    return write_shards(plan, out, card, samples_per_shard, workers, resize_shorter, jpeg_quality, deviations,
                        progress, array_format)
