"""The package has no import cycles.

Every import of one dynamiccl module by another counts -- at module level or inside a function (a
lazy import only hides a cycle) -- and so does the package ``__init__`` that importing a submodule
runs first. Imports under ``if TYPE_CHECKING:`` name types for annotations and never run; they do
not count. The graph is read from the source with ``ast``, so a cycle is caught even on a path no
test executes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dynamiccl"


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _runtime_nodes(tree: ast.AST):
    """Every node but those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the dynamiccl modules (and their enclosing packages) it imports."""
    def known(name: str) -> str | None:  # "dynamiccl.table.load" names the module dynamiccl.table
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in mods}

    def add(source: str, target: str | None) -> None:
        while target and target != "dynamiccl":
            if target in graph and target != source and not source.startswith(target + "."):
                graph[source].add(target)
            target = target.rpartition(".")[0]  # importing a.b.c runs a.b's __init__ first

    for name, path in mods.items():
        is_package = path.name == "__init__.py"
        for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("dynamiccl"):
                        add(name, known(alias.name))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name if is_package else name.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        base = base.rpartition(".")[0]
                    module = f"{base}.{node.module}" if node.module else base
                else:
                    module = node.module or ""
                if not module.startswith("dynamiccl"):
                    continue
                for alias in node.names:
                    add(name, known(f"{module}.{alias.name}"))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycles():
    found = cycles(import_graph(modules()))
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("sources, expected", [
    ({"a": "from dynamiccl import b\n", "b": "def f():\n    from dynamiccl.a import x\n"}, [["dynamiccl.a", "dynamiccl.b"]]),
    ({"a": "from dynamiccl.pkg.c import x\n", "pkg/__init__": "from dynamiccl.a import y\n", "pkg/c": ""},
     [["dynamiccl.a", "dynamiccl.pkg"]]),
    ({"a": "from dynamiccl import b\n", "b": "import json\n"}, []),
    ({"a": "from dynamiccl import b\n", "b": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dynamiccl.a import x\n"},
     []),
])
def test_the_check_finds_lazy_and_package_cycles(tmp_path, sources, expected):
    mods = {}
    for name, text in sources.items():
        path = tmp_path / "dynamiccl" / f"{name}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        dotted = "dynamiccl." + name.replace("/__init__", "").replace("/", ".")
        mods[dotted] = path
    assert cycles(import_graph(mods)) == expected


def test_every_code_directory_is_a_package_a_wheel_includes():
    """setuptools' find_packages (pyproject's [tool.setuptools.packages.find]) skips a directory
    without ``__init__.py``, and an installed (non-editable) dynamiccl would lack its modules."""
    from setuptools import find_packages

    found = set(find_packages(str(ROOT), include=["dynamiccl*"]))
    code_dirs = {".".join(path.parent.relative_to(ROOT).parts) for path in PACKAGE.rglob("*.py")}
    data_dirs = {"dynamiccl.profiler.autostart"}  # sitecustomize.py, put on PYTHONPATH by path (package data)
    assert code_dirs - data_dirs <= found, f"not packages: {sorted(code_dirs - data_dirs - found)}"
