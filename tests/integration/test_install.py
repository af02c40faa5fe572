"""A non-editable install works without the checkout: the wheel carries the configs, cards and published numbers.

Builds a wheel from a copy of the sources (nothing is written into the checkout), installs it with
`pip install --target`, and runs the CLI from an empty directory with only that folder on PYTHONPATH.
Offline: no build isolation, no index, no dependencies (torch & co. come from this interpreter).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow

SOURCES = ("bench", "configs", "datasets", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md")


def _pip(*args: str, cwd: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pip", *args, "-q", "--no-deps", "--no-index",
                        "--disable-pip-version-check"], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """site-packages-like folder holding the installed wheel."""
    pytest.importorskip("setuptools", reason="building the wheel without isolation needs setuptools")
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    for name in SOURCES:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "_data"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(p, src / name)
    _pip("wheel", "--no-build-isolation", "-w", str(tmp / "wheel"), ".", cwd=src)
    (wheel,) = (tmp / "wheel").glob("ltbench-*.whl")
    _pip("install", "--target", str(tmp / "site"), str(wheel), cwd=tmp)
    shutil.rmtree(src)   # the installed copy must not lean on the sources
    return tmp / "site"


def _run(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LTBENCH_DATASETS_DIR")}
    env["PYTHONPATH"] = str(site)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_installed_package_finds_its_data(installed: Path, tmp_path: Path) -> None:
    r = _run(installed, tmp_path, "-c", "import bench, bench.paths as p, bench.report.published as pub; "
             "print(bench.__file__); print(p.repo_or_package_dir('configs')); "
             "print(p.repo_or_package_dir('datasets')); "
             "print(len(pub.load_published()))")
    assert r.returncode == 0, r.stderr
    module, configs, datasets, n_published = r.stdout.split("\n")[:4]
    assert Path(module).is_relative_to(installed)
    assert Path(configs) == installed / "bench" / "_data" / "configs"
    assert Path(datasets) == installed / "bench" / "_data" / "datasets"
    assert (sorted(p.name for p in Path(datasets).glob("*.yaml"))
            == sorted(p.name for p in (REPO / "datasets").glob("*.yaml")))
    from bench.report.published import load_published
    assert int(n_published) == len(load_published(REPO / "datasets" / "published"))


@pytest.mark.parametrize("name, checkout_path", [
    ("smoke", "configs/smoke.yaml"),                         # a shipped config by name
    ("configs/smoke_stage2.yaml", "configs/smoke_stage2.yaml"),   # the README's path; its parent smoke.yaml beside it
    ("demo/fmnist_wb", "configs/demo/fmnist_wb.yaml"),       # base file + parent + the fashion-mnist card
])
def test_installed_cli_resolves_shipped_configs(installed: Path, tmp_path: Path, name: str, checkout_path: str) -> None:
    r = _run(installed, tmp_path, "-m", "bench", "config", name)
    assert r.returncode == 0, r.stderr
    want = run_cli("config", checkout_path)
    assert want.returncode == 0, want.stderr
    # the same resolved config (card defaults included), so the same run directory as from the checkout
    assert r.stdout == want.stdout
    assert not any(tmp_path.iterdir())


def test_installed_cli_unknown_config_is_one_line(installed: Path, tmp_path: Path) -> None:
    r = _run(installed, tmp_path, "-m", "bench", "config", "no_such_config")
    assert r.returncode == 2
    assert "no_such_config: not found" in r.stderr and "Traceback" not in r.stderr
