"""The package's modules import each other without cycles (function-level imports included):
a cycle means two modules that cannot be understood, tested or changed one without the other."""
import ast
import os
import re

from libs.utils.paths import REPO_ROOT

LIBS = os.path.join(REPO_ROOT, "libs")


def module_name(path: str) -> str:
    rel = os.path.relpath(path, REPO_ROOT)[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def imports_of(path: str, modules: set) -> set:
    """The ``libs`` modules ``path`` imports, anywhere in the file (``from pkg import mod`` counts
    as importing ``pkg.mod`` when that is a module, else ``pkg``)."""
    name = module_name(path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in modules else base)
    return {m for m in found if m in modules and m != name}


def extension_modules() -> set:
    """The compiled modules setup.py declares (``libs.utils._nms_cpu``, ...): importing one from
    its package (``from libs.modeling import _layer_norm_cpu``) imports that leaf, not the package,
    whether or not it was built here."""
    with open(os.path.join(REPO_ROOT, "setup.py")) as f:
        return set(re.findall(r'"(libs(?:\.\w+)*\._\w+)"', f.read()))


def import_graph() -> dict:
    paths = [os.path.join(folder, f) for folder, _, files in os.walk(LIBS) for f in files if f.endswith(".py")]
    extensions = extension_modules()
    modules = {module_name(p) for p in paths} | extensions
    return {**{name: set() for name in extensions}, **{module_name(p): imports_of(p, modules) for p in paths}}


def cycles(graph: dict) -> list:
    """Every strongly connected group of more than one module (Tarjan)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_libs_has_no_import_cycles():
    graph = import_graph()
    assert "libs.modeling.meta_archs" in graph and "libs.datasets.collate" in graph["libs.modeling.meta_archs"]
    assert cycles(graph) == []
