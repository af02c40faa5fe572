"""The import graph of bench/: no circle among modules, and the wings stacked in one order.

Every import counts: function-local ones (a local import hides a circle from Python's import machinery, not
from the design) and relative ones (`from .factory import x` inside bench.models is bench.models.factory).
Read from the source (AST), so the test imports nothing of bench/.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "bench"

# Bottom to top: a module may import its own wing and the wings below it, never one above. The flat modules
# errors and paths are the ground; cli and __main__ (the command line) the roof.
LAYERS = ("bench", "bench.errors", "bench.paths", "bench.registry", "bench.config", "bench.runtime", "bench.models",
          "bench.data", "bench.experiment", "bench.methods", "bench.evaluation", "bench.train", "bench.report",
          "bench.launch", "bench.devtools", "bench.cli", "bench.__main__")


def modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module an ImportFrom names: `from ..x import y` in bench.a.b is bench.x."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The bench modules `module` imports (`from bench.x import y` is bench.x.y when that is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            src = absolute(node, module, path.name == "__init__.py")
            names = [f"{src}.{a.name}" if f"{src}.{a.name}" in known else src for a in node.names]
        out |= {n for n in names if n in known}
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports_of(m, p, set(mods)) - {m} for m, p in mods.items()}


def layer(module: str) -> int:
    """The index in LAYERS of the wing (or flat module) that `module` belongs to."""
    return max(i for i, w in enumerate(LAYERS) if module == w or module.startswith(w + "."))


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One cycle of g as a path a -> ... -> a, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g.get(m, ())):
            # a package's __init__ is imported with its submodules: an edge to the parent package is not a circle
            if m.startswith(n + "."):
                continue
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (c := visit(m)):
            return c
    return None


def upward(g: dict[str, set[str]]) -> list[str]:
    """Every import of a module from a wing above its own, as 'a -> b'."""
    return sorted(f"{m} -> {n}" for m, deps in g.items() for n in deps if layer(n) > layer(m))


def test_find_cycle_finds_one_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_relative_imports_are_read_as_the_modules_they_name():
    """The circle errors -> models -> models.factory -> errors of an earlier tree went unseen: `from .factory
    import x` was skipped. Here it is an edge, and so is an upward import written relatively."""
    src = "from .factory import ModelError\nfrom . import cifar_resnet\nfrom ..config import Config\n"
    node_a, node_b, node_c = ast.parse(src).body
    assert absolute(node_a, "bench.models", True) == "bench.models.factory"
    assert absolute(node_b, "bench.models", True) == "bench.models"
    assert absolute(node_c, "bench.models.clip", False) == "bench.config"


def test_the_checks_fail_on_the_tree_they_were_written_against():
    """A graph shaped like the tree before the wings (errors imported models, config imported data, reporting
    imported the job state of the launchers) fails both checks."""
    old = {"bench.errors": {"bench.models"}, "bench.models": {"bench.models.factory"},
           "bench.models.factory": {"bench.errors"}, "bench.config.defaults": {"bench.data.cards"},
           "bench.report.table": {"bench.launch.jobs"}}
    assert find_cycle(old) == ["bench.errors", "bench.models", "bench.models.factory", "bench.errors"]
    assert upward(old) == ["bench.config.defaults -> bench.data.cards", "bench.errors -> bench.models",
                           "bench.report.table -> bench.launch.jobs"]


def test_every_module_belongs_to_a_known_wing():
    flat = [m for m in modules() if m.count(".") == 1 and m not in LAYERS]
    assert not flat, f"modules outside the wings of LAYERS: {flat}"


def test_the_import_graph_has_no_circle():
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()) or [])


def test_no_wing_imports_a_wing_above_it():
    bad = upward(graph())
    assert not bad, "imports from a wing above (tests/unit/test_layers.py LAYERS):\n" + "\n".join(bad)


def test_a_slurm_job_unpickles_its_runjob_without_loading_torch():
    """submitit unpickles RunJob (importing bench.launch.submit) before it installs its preemption handler: a
    signal in that window kills the job, so that import must stay fast and must not load torch (~3 s)."""
    import subprocess
    import sys

    code = ("import sys, bench.launch.submit; "
            "print(sorted(m for m in ('torch', 'timm', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PKG.parent, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_login_node_commands_load_no_torch(tmp_path):
    """`ltbench status`, `table` and `submit --dry-run` run on a cluster's login node, often: they answer from
    the run directories without loading torch (~1.5 s and ~1 GB each time), here over a finished run."""
    import json
    import subprocess
    import sys

    run = tmp_path / "runs" / "exp" / "ce-seed0-0123456789"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("name: exp\nmethod: ce\ndata: {dataset: synthetic, imbalance_factor: 10.0}\n")
    (run / "result.json").write_text(json.dumps({"status": "complete", "metrics": {
        "all": 50.0, "many": 60.0, "medium": 50.0, "few": 40.0}, "imbalance_factor": 10.0}))
    code = ("import sys; from bench.cli import main; "
            f"rc = [main(['status', 'exp', '--runs-root', {str(tmp_path / 'runs')!r}]), "
            f"main(['table', {str(tmp_path / 'runs' / 'exp')!r}]), "
            f"main(['submit', 'smoke', '--dry-run', '--cluster', 'local', '--runs-root', {str(tmp_path / 'r2')!r}])]; "
            "print(rc, sorted(m for m in ('torch', 'timm', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PKG.parent)
    assert out.stdout.strip().splitlines()[-1] == "[0, 0, 0] []", out.stdout + out.stderr
