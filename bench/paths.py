"""Where the shipped folders configs/ and datasets/ are, from a checkout or from an installed wheel.

In a source checkout (and an editable install) they sit beside the package: <checkout>/configs,
<checkout>/datasets. A wheel carries copies of them inside the package, as bench/_data/configs and
bench/_data/datasets (setup.py copies them there at build time), so a non-editable install finds its
dataset cards, published numbers and shipped configs without the checkout.
"""

from __future__ import annotations

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


def find_config(arg: str) -> str:
    """A CONFIG argument as a file path: the file itself when it exists, else a shipped config of that name.

    `smoke`, `smoke.yaml`, `demo/fmnist_wd` and `configs/smoke.yaml` all name shipped configs, so the
    commands in the README work from any directory once ltbench is installed. A name that is neither
    stops with a one-line error.
    """
    if Path(arg).expanduser().exists():
        return arg
    shipped = repo_or_package_dir("configs")
    rel = arg.removeprefix("configs/")
    for cand in (shipped / rel, shipped / f"{rel}.yaml"):
        if cand.is_file():
            return str(cand)
    from bench.config import ConfigError

    raise ConfigError(f"config file {arg}: not found (neither a file here nor a shipped config in {shipped}; "
                      "e.g. `ltbench config smoke` names configs/smoke.yaml)")
