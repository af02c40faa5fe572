"""Dataset cards: the YAML files in the repository's datasets/ folder (one per dataset)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import yaml

from bench.paths import repo_or_package_dir


class DatasetError(RuntimeError):
    """Missing or malformed data; the message says where we looked and how to get it."""


def cards_dir() -> Path:
    """$LTBENCH_DATASETS_DIR, else datasets/ of the checkout or of the installed wheel (bench.paths)."""
    env = os.environ.get("LTBENCH_DATASETS_DIR")
    return Path(env) if env else repo_or_package_dir("datasets")


@functools.lru_cache(maxsize=None)
def load_card(name: str) -> dict[str, Any]:
    path = cards_dir() / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in cards_dir().glob("*.yaml"))
        raise DatasetError(f"dataset card {path} not found (known datasets: {', '.join(known)})")
    card = yaml.safe_load(path.read_text())
    if card.get("name") != name:
        raise DatasetError(f"dataset card {path}: 'name' is {card.get('name')!r}, expected {name!r}")
    return card


def dataset_title(name: str, imbalance_factor: float | None = None) -> str:
    """A dataset's display name from its card (e.g. "CIFAR-100-LT IF 100"); the name itself without a card."""
    try:
        title = load_card(name).get("title", name)
    except DatasetError:
        title = name
    return f"{title} IF {imbalance_factor:g}" if imbalance_factor is not None else title
