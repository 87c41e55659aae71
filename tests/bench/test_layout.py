"""The benchmarks' layout: an experiment imports what it shares from the shared modules, never from another experiment
(each can then be read, run and changed on its own), and the quick flag is read in one place."""

from __future__ import annotations

import ast
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
SHARED = {"bench.setups", "bench.report", "bench.stack", "bench.baselines", "bench.datasets", "bench.toy"}


def bench_imports(path: Path) -> set[str]:
    """The ``bench`` modules ``path`` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "bench":
                found |= {f"bench.{alias.name}" for alias in node.names}
            elif node.module.startswith("bench."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("bench.")}
    return found


def test_experiments_import_only_the_shared_modules():
    offenders = {
        path.name: sorted(bench_imports(path) - SHARED) for path in BENCH.glob("*.py") if bench_imports(path) - SHARED
    }
    assert offenders == {}
    assert all((BENCH / f"{name.split('.')[1]}.py").exists() for name in SHARED)


def test_the_quick_flag_is_read_once():
    readers = [path.name for path in BENCH.glob("*.py") if '"GIF_BENCH_QUICK")' in path.read_text()]
    assert readers == ["report.py"]
