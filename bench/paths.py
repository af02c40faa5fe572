"""Where the shipped folders configs/ and datasets/ are, from a checkout or from an installed wheel.

In a source checkout (and an editable install) they sit beside the package: <checkout>/configs,
<checkout>/datasets. A wheel carries copies of them inside the package, as bench/_data/configs and
bench/_data/datasets (setup.py copies them there at build time), so a non-editable install finds its
dataset cards, published numbers and shipped configs without the checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
PACKAGED = PACKAGE / "_data"     # filled by setup.py's build step; absent in a checkout
CHECKOUT = PACKAGE.parent
SHIPPED = ("configs", "datasets")


def repo_or_package_dir(name: str) -> Path:
    """The shipped folder `name` (configs or datasets): the wheel's copy when installed, else the checkout's."""
    if name not in SHIPPED:
        raise ValueError(f"not a shipped folder: {name!r} (known: {', '.join(SHIPPED)})")
    packaged = PACKAGED / name
    return packaged if packaged.is_dir() else CHECKOUT / name


def cards_dir() -> Path:
    """Where the dataset cards are: $LTBENCH_DATASETS_DIR, else the shipped datasets/ folder."""
    env = os.environ.get("LTBENCH_DATASETS_DIR")
    return Path(env) if env else repo_or_package_dir("datasets")
