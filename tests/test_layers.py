"""The layers run one way: no import cycle among the project's modules, and `engines/` imports
nothing of `bridge/` but the shared kernel.

The import graph is read from the source with `ast`, every import counted wherever it stands (a
module's top, a function, a class, a try block), since an import placed in a function still runs
and still ties the two modules together. Only imports under `if TYPE_CHECKING:` are left out of
the cycle rule: they never run, so they cannot make an import-time cycle (the engines rule counts
them: a type from `bridge/` is still a dependency on it).
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("bridge", "engines", "ableton_remote")
# The shared kernel, the only part of bridge/ that engines/ may import: the error vocabulary, the
# partial-file and atomic-write helpers, and the package itself (its __init__ runs before either
# anyway, and holds the version). The README's "For contributors" names the same modules.
KERNEL = frozenset({"bridge", "bridge.errors", "bridge.fileio"})


@dataclass(frozen=True)
class Import:
    """One project-internal import: `source` imports `target` at `path:line`."""

    source: str
    target: str
    path: Path
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`

    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def project_modules() -> dict[str, Path]:
    """{dotted module name: file} for every module of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, type_only: bool = False) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement below `tree`, with whether it sits under `if TYPE_CHECKING:`."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append((node, type_only))
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                found.extend(_imports(ast.Module(body=[child], type_ignores=[]), True))
            for child in node.orelse:
                found.extend(_imports(ast.Module(body=[child], type_ignores=[]), type_only))
        else:
            found.extend(_imports(node, type_only))
    return found


def import_graph() -> list[Import]:
    """Every import of one project module by another."""
    modules = project_modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges = []
    for source, path in modules.items():
        package = source if path.name == "__init__.py" else source.rpartition(".")[0]
        for node, type_only in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str | None] = []
            if isinstance(node, ast.Import):
                targets = [resolve(alias.name) for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                # `from bridge import generate` imports the module bridge.generate; `from bridge
                # import __version__` the package bridge.
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else resolve(base)
                           for alias in node.names]
            for target in dict.fromkeys(targets):
                if target is not None and target != source:
                    edges.append(Import(source, target, path, node.lineno, type_only))
    return edges


def _cycles(edges: list[Import]) -> list[list[Import]]:
    """One cycle through each strongly connected group of modules (Tarjan), as its imports."""
    graph: dict[str, list[Import]] = {}
    for edge in edges:
        graph.setdefault(edge.source, []).append(edge)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # recursion depth is bounded by the project's module count
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for edge in graph.get(node, []):
            if edge.target not in index:
                visit(edge.target)
                low[node] = min(low[node], low[edge.target])
            elif edge.target in on_stack:
                low[node] = min(low[node], index[edge.target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    cycles = []
    for group in groups:
        start = min(group)
        # The shortest way back to `start` inside the group (breadth first).
        came: dict[str, Import] = {}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            for edge in graph.get(node, []):
                if edge.target in group and edge.target not in came:
                    came[edge.target] = edge
                    queue.append(edge.target)
        path = [came[start]]
        while path[-1].source != start:
            path.append(came[path[-1].source])
        cycles.append(path[::-1])
    return cycles


def test_the_import_graph_sees_imports_in_functions_and_packages() -> None:
    """The scan itself: imports inside functions, relative imports and `from package import module`."""
    edges = {(e.source, e.target) for e in import_graph()}
    assert ("bridge.cli", "bridge.server") in edges  # in a function: `flowstate serve` loads the server late
    assert ("bridge.separate", "engines.spleeter") in edges  # `from engines import openunmix, spleeter`
    assert ("ableton_remote", "ableton_remote.surface") in edges  # relative, in a function


def test_no_import_cycles() -> None:
    runtime = [edge for edge in import_graph() if not edge.type_only]
    found = [" -> ".join([cycle[0].source, *(f"{e.target} ({e.where()})" for e in cycle)])
             for cycle in _cycles(runtime)]
    if found:
        pytest.fail("import cycles (each import named where it stands; break one edge of each):\n  "
                    + "\n  ".join(found))


def test_engines_import_only_the_kernel_of_bridge() -> None:
    breaches = [f"{edge.where()}: {edge.source} imports {edge.target}" for edge in import_graph()
                if edge.source.split(".")[0] == "engines" and edge.target.split(".")[0] == "bridge"
                and edge.target not in KERNEL]
    if breaches:
        pytest.fail(f"engines/ may import only the kernel of bridge/ ({', '.join(sorted(KERNEL))}):\n  "
                    + "\n  ".join(breaches))


def test_the_kernel_imports_nothing_else_of_the_project() -> None:
    """So that importing the kernel never pulls the rest of bridge/ into engines/."""
    outside = [f"{edge.where()}: {edge.source} imports {edge.target}" for edge in import_graph()
               if edge.source in KERNEL and edge.target not in KERNEL]
    assert outside == []
