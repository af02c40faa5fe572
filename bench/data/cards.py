"""Dataset cards: the YAML files in the repository's datasets/ folder (one per dataset)."""

from __future__ import annotations

import functools
from typing import Any

import yaml

from bench.errors import UserError
from bench.paths import cards_dir

__all__ = ["FILE_SPLIT_SOURCES", "DatasetError", "cards_dir", "dataset_title", "is_file_split", "load_card"]


# Card `source`s whose split files fix the long-tailed set (ImageNet-LT, Places-LT, iNaturalist 2018).
FILE_SPLIT_SOURCES = ("split_files", "inat_json")


class DatasetError(UserError, RuntimeError):
    """Missing or malformed data; the message says where we looked and how to get it."""


@functools.cache
def load_card(name: str) -> dict[str, Any]:
    path = cards_dir() / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in cards_dir().glob("*.yaml"))
        raise DatasetError(f"dataset card {path} not found (known datasets: {', '.join(known)})")
    card = yaml.safe_load(path.read_text())
    if card.get("name") != name:
        raise DatasetError(f"dataset card {path}: 'name' is {card.get('name')!r}, expected {name!r}")
    return card


def is_file_split(name: object) -> bool:
    """Does the dataset `name` come with split files that fix its long-tailed set? False for an unknown name
    (whoever builds the config reports that)."""
    if not isinstance(name, str):
        return False
    try:
        return load_card(name).get("source") in FILE_SPLIT_SOURCES
    except DatasetError:
        return False


def dataset_title(name: str, imbalance_factor: float | None = None) -> str:
    """A dataset's display name from its card (e.g. "CIFAR-100-LT IF 100"); the name itself without a card."""
    try:
        title = load_card(name).get("title", name)
    except DatasetError:
        title = name
    return f"{title} IF {imbalance_factor:g}" if imbalance_factor is not None else title
