"""The shape of the code: layers point down, no import cycles, light package imports,
formatted and linted sources, and model state owned by catalogs (not module globals)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("chatbot", "model_adapters", "chains")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), plus self-imports."""
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in sorted(edges):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles_counting_imports_inside_functions() -> None:
    # grimp reads every import statement, including those inside functions; imports
    # under `if TYPE_CHECKING:` never run, so they are left out.
    sys.path.insert(0, str(ROOT))
    try:
        graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True, cache_dir=None)
    finally:
        sys.path.remove(str(ROOT))
    assert graph.direct_import_exists(importer="chatbot.api", imported="chatbot.api.app"), (
        "grimp should see the import inside chatbot.api.__getattr__"
    )
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for name in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(name)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.a")
    graph.add_import(importer="p.b", imported="p.c")
    assert _cycles(graph) == [["p.a", "p.b"]]


def test_layers_contract() -> None:
    """[tool.importlinter] in pyproject.toml: each layer imports only layers below it."""
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    done = subprocess.run(
        [exe, "--no-cache"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("chatbot", ["chatbot.factory", "chatbot.catalog", "langchain_core", "torch"]),
        ("chatbot.api", ["chatbot.api.app", "fastapi"]),
        ("chatbot.api.openai.convert", ["chatbot.api.app", "chatbot.catalog", "torch"]),
        ("chatbot.errors", ["pydantic", "langchain_core"]),
    ],
)
def test_package_imports_stay_light(module: str, absent: list[str]) -> None:
    code = f"import sys, {module}\nprint(','.join(m for m in {absent!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"import {module} loaded {done.stdout.strip()}"


@pytest.mark.parametrize("args", [["format", "--check", "."], ["check", "."]])
def test_ruff(args: list[str]) -> None:
    exe = shutil.which("ruff")
    if exe is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    done = subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
