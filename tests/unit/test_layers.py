"""The import graph of bench/: no circle, and the layers point one way.

Every `import` counts, function-local ones included: a local import hides a circle from Python's import
machinery, not from the design. Read from the source (AST), so the test imports nothing of bench/.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "bench"

# Reporting and entry points: training, methods, models and data never import these.
REPORTING = {"bench.report.table", "bench.report.plots", "bench.report.claims", "bench.report.published", "bench.report.stats"}
ENTRY = {"bench.cli", "bench.__main__", "bench.launch.run", "bench.launch.submit", "bench.launch.demo", "bench.devtools.perf", "bench.devtools.gpucheck"}
LOWER = ("bench.train", "bench.methods", "bench.models", "bench.data", "bench.config", "bench.runtime.rundir",
         "bench.runtime.tracking", "bench.evaluation.counts", "bench.evaluation.analysis", "bench.evaluation.metrics")


def modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The bench modules `path` imports (`from bench.x import y` is bench.x.y when that is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        out |= {n for n in names if n in known}
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports_of(p, set(mods)) - {m} for m, p in mods.items()}


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


def test_find_cycle_finds_one_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_has_no_circle():
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()) or [])


def test_training_and_data_never_import_reporting_or_entry_points():
    bad = [(m, n) for m, deps in graph().items() if m.startswith(LOWER) for n in deps if n in REPORTING | ENTRY]
    assert not bad, bad


def test_a_slurm_job_unpickles_its_runjob_without_loading_torch():
    """submitit unpickles RunJob (importing bench.launch.submit) before it installs its preemption handler: a
    signal in that window kills the job, so that import must stay fast and must not load torch (~3 s)."""
    import subprocess
    import sys

    code = "import sys, bench.launch.submit; print(sorted(m for m in ('torch', 'timm', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PKG.parent, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
