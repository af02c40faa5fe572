"""bench.paths: the shipped configs/ and datasets/ folders; bench.config.find_config: CONFIG arguments naming a
shipped config."""

from pathlib import Path

import pytest

from bench import paths
from bench.config import ConfigError, find_config


def test_checkout_folders(repo):
    # from a checkout (no bench/_data), the folders beside the package
    assert paths.repo_or_package_dir("configs") == repo / "configs"
    assert paths.repo_or_package_dir("datasets") == repo / "datasets"
    with pytest.raises(ValueError):
        paths.repo_or_package_dir("tests")


def test_packaged_copy_wins(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    monkeypatch.setattr(paths, "PACKAGED", tmp_path)
    assert paths.repo_or_package_dir("configs") == tmp_path / "configs"
    assert paths.repo_or_package_dir("datasets") == paths.CHECKOUT / "datasets"   # no copy of it: the checkout's


def test_find_config(repo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = repo / "configs"
    assert find_config("smoke") == str(shipped / "smoke.yaml")
    assert find_config("smoke.yaml") == str(shipped / "smoke.yaml")
    assert find_config("configs/smoke_stage2.yaml") == str(shipped / "smoke_stage2.yaml")
    assert find_config("demo/fmnist_wd") == str(shipped / "demo" / "fmnist_wd.yaml")
    # a file that exists is taken as given, even where a shipped config has its name
    (tmp_path / "smoke.yaml").write_text("name: mine\n")
    assert find_config("smoke.yaml") == "smoke.yaml"
    with pytest.raises(ConfigError, match="nope: not found"):
        find_config("nope")
    with pytest.raises(ConfigError, match="not found"):
        find_config(str(Path(tmp_path) / "none.yaml"))
