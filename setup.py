"""Build step that ships the project's data with the package (everything else is in pyproject.toml).

A wheel gets copies of configs/ and datasets/ (dataset cards, published numbers, shipped experiment
configs) as bench/_data/configs and bench/_data/datasets, where bench/paths.py finds them when ltbench
is installed without its checkout. An editable install (and running from the checkout) reads the
checkout's folders instead, so nothing is copied then.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SHIPPED = ("configs", "datasets")   # bench/paths.py SHIPPED


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for name in SHIPPED:
            dst = Path(self.build_lib) / "bench" / "_data" / name
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(HERE / name, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithData})
