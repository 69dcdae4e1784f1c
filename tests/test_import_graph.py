"""The import graph of python/flashparity has no circle: every import between its modules, lazy
(inside a function) ones included, read from the source with ast. (A circle is a tangle of two
layers: the first step of the layered package of issue 30.)"""

from __future__ import annotations

import ast
import os

PKG = os.path.join(os.path.dirname(__file__), os.pardir, "python", "flashparity")


def _module_imports(path: str, name: str, modules: set[str]) -> set[str]:
    """The package's modules that module `name` imports anywhere in its source."""
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .x import ... / from .x.y import ...
                out.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x, y
                out.update(a.name for a in node.names)
            elif node.level == 0 and node.module and node.module.startswith("flashparity."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("flashparity."))
    return {m for m in out if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    files = {f[:-3]: os.path.join(PKG, f) for f in os.listdir(PKG) if f.endswith(".py")}
    return {name: _module_imports(path, name, set(files)) for name, path in files.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_circle():
    graph = import_graph()
    assert {"attention", "conformance", "adapters", "files", "_parallel", "cli"} <= set(graph)
    found = circles(graph)
    assert not found, "import circles: " + "; ".join(
        " <-> ".join(c) + " (" + ", ".join(f"{a} imports {sorted(graph[a] & set(c))}" for a in c) + ")" for c in found)


def test_the_circle_finder_finds_circles():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
