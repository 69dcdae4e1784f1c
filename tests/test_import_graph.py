"""The import contract of python/flashparity: layers import downward only, and no module imports
itself back through others (a circle). Every import between the package's modules counts, lazy
(inside a function) ones included, read from the source with ast: a deferred import is still a
dependency, only a later one.

Our own check rather than import-linter's `layers` contract: the same rule in ~100 lines with no
new dependency (import-linter brings grimp and needs the package installed to build its graph),
run in the test stage every CI configuration already has, and it reports the offending line."""

from __future__ import annotations

import ast
import os

PKG = os.path.join(os.path.dirname(__file__), os.pardir, "python", "flashparity")

# Top to bottom. A module may import modules of its own unit (its subpackage) and of any unit in a
# lower layer; never a unit of its own layer or of a higher one. The units of one layer are
# independent of each other (kernels and models know nothing of each other).
LAYERS = [
    {"__main__"},  # python -m flashparity
    {"cli"},  # the command line: nothing else imports it
    {"flashparity", "testing", "pytest_plugin", "torch"},  # the public API (fp, flashparity.torch), test plug-ins
    {"kernels", "models"},  # attention kernels, adapters, conformance | model-level comparison
    {"compare"},  # file comparison: tasks, streaming, engines
    {"io", "distributed"},  # tensor file formats | parity across torch.distributed ranks
    {"parity"},  # the fused parity reductions' Python face
    {"_tensor", "_build", "_write", "_optional", "classify"},  # views of arrays, build facts, utilities
    {"_core"},  # the compiled core
]


def package_modules(root: str = PKG) -> dict[str, str]:
    """Every module of the package by dotted name relative to it ('' is the package itself,
    'compare' a subpackage's __init__, 'compare.files' a module), to its path; '_core' too."""
    out = {"_core": ""}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
        rel = os.path.relpath(folder, root)
        prefix = "" if rel == "." else rel.replace(os.sep, ".")
        for f in files:
            if f.endswith(".py"):
                stem = f[:-3]
                name = prefix if stem == "__init__" else (f"{prefix}.{stem}" if prefix else stem)
                out[name] = os.path.join(folder, f)
    return out


def _resolve(base: str, module: str | None, names: list[str], modules: dict[str, str]) -> set[str]:
    target = ".".join(p for p in (base, module) if p)
    found = set()
    for n in names:  # (from pkg import submodule: the submodule; from pkg import name: the package)
        sub = f"{target}.{n}" if target else n
        found.add(sub if sub in modules else target)
    return found if names else {target}


def _module_imports(path: str, name: str, modules: dict[str, str]) -> dict[str, int]:
    """The package's modules that module `name` imports anywhere in its source, each with the line
    of its first import."""
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), path)
    is_package = os.path.basename(path) == "__init__.py"
    out: dict[str, int] = {}
    for node in ast.walk(tree):
        found: set[str] = set()
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = name.split(".") if name else []
                package = parts if is_package else parts[:-1]
                if node.level - 1 > len(package):
                    raise AssertionError(f"{path}:{node.lineno}: a relative import above the package")
                base = ".".join(package[:len(package) - (node.level - 1)])
                found = _resolve(base, node.module, [a.name for a in node.names], modules)
            elif node.module and (node.module == "flashparity" or node.module.startswith("flashparity.")):
                found = _resolve("", node.module.partition(".")[2] or None, [a.name for a in node.names], modules)
        elif isinstance(node, ast.Import):
            found = {a.name.partition(".")[2] for a in node.names if a.name.startswith("flashparity")}
        for m in found:
            if m in modules and m != name:
                out.setdefault(m, node.lineno)
    return out


def import_graph(root: str = PKG) -> dict[str, dict[str, int]]:
    modules = package_modules(root)
    return {name: _module_imports(path, name, modules) if path else {} for name, path in modules.items()}


def unit(module: str) -> str:
    return module.split(".")[0] or "flashparity"


def contract_breaches(graph: dict[str, dict[str, int]], layers=LAYERS) -> list[str]:
    """Every import that goes up a layer or across units of one layer, and every unit in no layer."""
    rank = {u: i for i, layer in enumerate(layers) for u in layer}
    out = [f"{m}: its unit {unit(m)!r} is in no layer of the contract" for m in sorted(graph) if unit(m) not in rank]
    for m, targets in sorted(graph.items()):
        for t, line in sorted(targets.items()):
            um, ut = unit(m), unit(t)
            if um != ut and um in rank and ut in rank and rank[um] >= rank[ut]:
                how = "across its layer" if rank[um] == rank[ut] else "up"
                out.append(f"{m or 'flashparity'} (line {line}) imports {t} ({ut}): {how}")
    return out


def circles(graph) -> list[list[str]]:
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
    assert {"kernels.attention", "kernels.conformance", "kernels.adapters", "compare.files", "compare.engines",
            "io.npy", "cli", "cli.compare", "models.modules"} <= set(graph)
    assert {"compare.tasks", "io.tree", "parity"} <= set(graph["compare.files"])  # (the reader sees real edges)
    found = circles(graph)
    assert not found, "import circles: " + "; ".join(
        " <-> ".join(c) + " (" + ", ".join(f"{a} imports {sorted(set(graph[a]) & set(c))}" for a in c) + ")"
        for c in found)


def test_layers_import_downward_only():
    breaches = contract_breaches(import_graph())
    assert not breaches, "import contract broken:\n" + "\n".join(breaches)


def test_nothing_imports_the_cli():
    graph = import_graph()
    assert [m for m, targets in graph.items() if unit(m) not in ("cli", "__main__")
            and any(unit(t) == "cli" for t in targets)] == []


def test_the_contract_checker_finds_breaches(tmp_path):
    # a package with an upward import, an import across a layer, a unit in no layer and a circle
    pkg = tmp_path / "flashparity"
    for rel, text in {"__init__.py": "from .low import f\n", "low/__init__.py": "", "low/a.py": "from ..high import g\n",
                      "low/b.py": "def f():\n    from .. import side\n", "high.py": "from .low import a\n",
                      "side.py": "", "stray.py": "from . import side\n"}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    graph = import_graph(str(pkg))
    assert graph["low.a"] == {"high": 1} and graph["low.b"] == {"side": 2} and graph["high"] == {"low.a": 1}
    found = contract_breaches(graph, [{"flashparity"}, {"high"}, {"low", "side"}, {"_core"}])
    assert found == ["stray: its unit 'stray' is in no layer of the contract",
                     "low.a (line 1) imports high (high): up",
                     "low.b (line 2) imports side (side): across its layer"]
    assert circles(graph) == [["high", "low.a"]]


def test_the_circle_finder_finds_circles():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
