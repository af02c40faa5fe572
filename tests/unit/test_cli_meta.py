"""The command's own metadata: `ltbench --version` prints the single-sourced version."""

import bench
from tests.conftest import run_cli


def test_version_is_the_package_version():
    r = run_cli("--version", timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"ltbench {bench.__version__}"
