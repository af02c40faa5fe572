"""`ltbench fetch`: make sure a dataset the demo needs is on this machine (today Fashion-MNIST).

Owns finding it, and when it is missing getting it: the Debian package dataset-fashion-mnist when running as
root with apt-get, else the official files downloaded into ~/.cache/ltbench/fashion-mnist. `ltbench demo`
calls the same function before it trains.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

from bench.data.cards import DatasetError, load_card
from bench.data.sources import load_fashion_mnist
from bench.runtime.progress import log

OFFICIAL_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"


def ensure_fashion_mnist() -> str:
    """Find Fashion-MNIST; else install the Debian package (as root) or download the official files."""
    try:
        return str(load_fashion_mnist().root)
    except DatasetError as missing:
        card = load_card("fashion-mnist")
        if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
            log("Fashion-MNIST not found: installing the Debian package dataset-fashion-mnist")
            cmd = ["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"]
            if subprocess.run(cmd).returncode != 0:
                subprocess.run(["apt-get", "update", "-q"])
                subprocess.run(cmd)
        else:
            dest = Path("~/.cache/ltbench/fashion-mnist").expanduser()
            dest.mkdir(parents=True, exist_ok=True)
            log(f"Fashion-MNIST not found: downloading the official files to {dest}")
            try:
                for f in card["files"].values():
                    if not (dest / f).is_file():
                        with urllib.request.urlopen(OFFICIAL_URL + f, timeout=20) as r:
                            (dest / f).write_bytes(r.read())
            except OSError as e:
                raise DatasetError(f"{missing} (download failed: {e})") from None
        return str(load_fashion_mnist().root)
