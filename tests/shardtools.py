"""Tiny but real ImageNet-LT / Places-LT / iNaturalist-2018 source trees for the shard tests.

Images are real JPEG files (a class colour plus noise, varied sizes); the split files and JSON use the
real formats. `fake_cards` writes dataset cards whose expected statistics match these trees (the real
cards describe the full datasets, so against them these trees are a deliberate mismatch).
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import yaml

from tests.conftest import REPO

SMOKE = str(REPO / "configs" / "smoke.yaml")
# The smoke config's long-tailed cut of the synthetic dataset, as `ltbench prepare` arguments.
SMOKE_DATA = ["imbalance_factor=10", "val_per_class=10", "synthetic.train_per_class=200",
              "synthetic.test_per_class=40", "synthetic.image_size=16"]
TRAIN = [12, 8, 5, 3, 2]   # long-tailed training counts of the 5 fake classes
VAL, TEST = 2, 3           # per class


def _jpeg(path: Path, label: int, k: int, rng: np.random.Generator) -> None:
    from PIL import Image

    w, h = 36 + 4 * (k % 3), 30 + 2 * (k % 4)      # varied sizes and aspect ratios
    colour = np.array([(label * 53) % 256, (label * 101) % 256, (label * 197) % 256], dtype=np.float64)
    img = np.clip(colour + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, format="JPEG", quality=90)


def make_split_file_tree(root: Path, kind: str) -> Path:
    """ImageNet-LT (kind 'imagenet-lt') or Places-LT ('places-lt') layout; returns the image root.

    Split files go to root/splits. Places-LT lines start with '/', as in the OLTR files.
    """
    rng = np.random.default_rng(0)
    images = root / "images"
    prefix = "ImageNet_LT" if kind == "imagenet-lt" else "Places_LT"
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    k = 0
    for c, n_train in enumerate(TRAIN):
        for split, n in (("train", n_train), ("val", VAL), ("test", TEST)):
            for _i in range(n):
                if kind == "imagenet-lt":
                    rel = f"val/ILSVRC2012_val_{k:08d}.JPEG" if split == "test" else f"train/n{c:08d}/n{c:08d}_{k}.JPEG"
                else:
                    rel = f"/val_256/Places365_val_{k:08d}.jpg" if split == "test" else f"/c/class{c}/{k:08d}.jpg"
                _jpeg(images / rel.lstrip("/"), c, k, rng)
                lines[split].append(f"{rel} {c}")
                k += 1
    (root / "splits").mkdir(parents=True, exist_ok=True)
    for split, ls in lines.items():
        (root / "splits" / f"{prefix}_{split}.txt").write_text("\n".join(ls) + "\n")
    return images


def make_inat_tree(root: Path) -> Path:
    """iNaturalist 2018 layout: train2018.json / val2018.json (COCO style) + train_val2018/ images."""
    rng = np.random.default_rng(1)
    images = root / "images"
    docs = {s: {"images": [], "annotations": [], "categories": [{"id": c, "name": f"Species {c}",
                                                                 "supercategory": "Plantae"} for c in range(5)]}
            for s in ("train", "val")}
    k = 0
    for c, n_train in enumerate(TRAIN):
        for split, n in (("train", max(2, n_train)), ("val", TEST)):
            for _ in range(n):
                rel = f"train_val2018/Plantae/{c}/{k:06d}.jpg"
                _jpeg(images / rel, c, k, rng)
                docs[split]["images"].append({"id": k, "file_name": rel, "width": 40, "height": 30})
                docs[split]["annotations"].append({"id": k, "image_id": k, "category_id": c})
                k += 1
    (root / "splits").mkdir(parents=True, exist_ok=True)
    for split, doc in docs.items():
        (root / "splits" / f"{split}2018.json").write_text(json.dumps(doc))
    return images


def fake_cards(dest: Path) -> Path:
    """A copy of datasets/ whose ImageNet-LT, Places-LT and iNat cards describe the fake trees."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in (REPO / "datasets").glob("*.yaml"):
        shutil.copy(p, dest / p.name)
    inat_train = [max(2, n) for n in TRAIN]
    for name, train, val in (("imagenet-lt", TRAIN, VAL), ("places-lt", TRAIN, VAL), ("inat2018", inat_train, 0)):
        card = yaml.safe_load((dest / f"{name}.yaml").read_text())
        card["num_classes"] = 5
        card["lt"] = {"imbalance_factor": max(train) / min(train), "n_max": max(train), "val_per_class": val}
        card["expected"] = {"train": {"samples": sum(train), "classes": 5, "max_per_class": max(train),
                                      "min_per_class": min(train)},
                            "test": {"samples": 5 * TEST, "classes": 5, "max_per_class": TEST, "min_per_class": TEST}}
        if val:
            card["expected"]["val"] = {"samples": 5 * val, "classes": 5, "max_per_class": val, "min_per_class": val}
        card["image_size"], card["eval_resize"] = 24, 28   # small, to keep CPU tests fast
        (dest / f"{name}.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    return dest


def rewrite_shard(shard: Path, manifest: Path, edit) -> None:
    """Rewrite one shard with `edit(samples) -> samples` applied, and update its size / sha256 in the manifest
    (so only the damage inside the tar remains, not a size mismatch)."""
    import webdataset as wds
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    from bench.data.shards import file_sha256

    with open(shard, "rb") as f:
        samples = list(group_by_keys({**x, "__url__": str(shard)} for x in tar_file_iterator(f)))
    samples = edit([{k: v for k, v in s.items() if k != "__url__"} for s in samples])
    buf = io.BytesIO()
    w = wds.TarWriter(buf, mtime=0.0)
    for s in samples:
        w.write(s)
    w.close()
    shard.write_bytes(buf.getvalue())
    doc = json.loads(manifest.read_text())
    for split in doc["splits"].values():
        for s in split["shards"]:
            if s["name"] == shard.name:
                s["bytes"], s["sha256"] = shard.stat().st_size, file_sha256(shard)
    manifest.write_text(json.dumps(doc))


def tar_members(shard: Path) -> list[str]:
    with tarfile.open(shard) as tf:
        return tf.getnames()
