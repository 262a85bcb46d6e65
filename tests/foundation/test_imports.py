"""No import circle between branchops' modules: each concern has one place, and dependencies point one way.

The graph is read from the source (the AST of every module), not from ``sys.modules``: most of branchops
imports inside functions so the CLI starts fast, and such a lazy import hides a circle from Python
without removing it. So every ``import`` counts wherever it stands, except under ``if TYPE_CHECKING:``,
which never runs and exists to name a type without depending on its module.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "src" / "branchops"


def package_modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module importable from the package at ``root``.

    A folder without ``__init__.py`` (``templates/``, data that ``branchops init`` copies) holds no
    modules of the package.
    """
    modules: dict[str, Path] = {}
    for file in sorted(root.rglob("*.py")):
        parts = file.relative_to(root.parent).with_suffix("").parts
        folders = [root.parent.joinpath(*parts[:depth]) for depth in range(1, len(parts))]
        if not all((folder / "__init__.py").is_file() for folder in folders):
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = file
    return modules


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and any(
        isinstance(n, ast.Name)
        and n.id == "TYPE_CHECKING"
        or isinstance(n, ast.Attribute)
        and n.attr == "TYPE_CHECKING"
        for n in ast.walk(node.test)
    )


def _imported_names(tree: ast.Module, module: str, is_package: bool) -> list[str]:
    """Every dotted name the module's import statements reach (``from a import b`` gives ``a.b``)."""
    own_package = module if is_package else module.rpartition(".")[0]
    names: list[str] = []
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        for child in ast.iter_child_nodes(node):
            if _is_type_checking_block(child):
                pending.extend(child.orelse)
                continue
            if isinstance(child, ast.Import):
                names += [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = own_package.split(".")[: len(own_package.split(".")) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                names += [f"{base}.{alias.name}" for alias in child.names]
            pending.append(child)
    return names


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, anywhere in its body."""
    modules = package_modules(root)
    graph: dict[str, set[str]] = {}
    for module, file in modules.items():
        tree = ast.parse(file.read_text(encoding="utf-8"), str(file))
        targets: set[str] = set()
        for name in _imported_names(tree, module, file.name == "__init__.py"):
            # `from pkg import name` names a module or something defined in pkg: the longest module wins.
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per group of modules that import each other, as ``[a, b, ..., a]``."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = lowlink[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph.get(module, ())):
            if target not in index:
                visit(target)
                lowlink[module] = min(lowlink[module], lowlink[target])
            elif target in on_stack:
                lowlink[module] = min(lowlink[module], index[target])
        if lowlink[module] == index[module]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(group)

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return [_circle_through(min(group), group, graph) for group in groups]


def _circle_through(start: str, group: set[str], graph: dict[str, set[str]]) -> list[str]:
    """The shortest way from ``start`` back to itself inside ``group`` (breadth first)."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for module in frontier:
            for target in sorted(graph[module] & group):
                if target == start:
                    path = [module]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if target not in came_from:
                    came_from[target] = module
                    following.append(target)
        frontier = following
    raise AssertionError(f"{start} is in a strongly connected group but no circle leads back to it")


def test_branchops_modules_import_each_other_without_a_circle() -> None:
    graph = import_graph(PACKAGE_ROOT)
    circles = import_circles(graph)
    assert not circles, "import circles between branchops modules (lazy imports included):\n" + "\n".join(
        "  " + " -> ".join(circle) for circle in circles
    )


def test_the_graph_holds_the_imports_the_source_makes() -> None:
    graph = import_graph(PACKAGE_ROOT)
    assert "branchops.templates" not in " ".join(graph), "a folder without __init__.py holds no modules"
    assert "branchops.gitops" in graph["branchops.runner"]  # at module level
    assert "branchops.runner" in graph["branchops.cli"]  # inside a command function
    assert "branchops.notify.console" in graph["branchops.notify"]  # inside the notifier factory
    assert "branchops.notify.base" not in graph["branchops.stages.base"]  # only under TYPE_CHECKING


def test_a_circle_through_a_lazy_import_is_found(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "data").mkdir()
    files = {
        "__init__.py": "",
        "a.py": "from pkg import b\n",
        "b.py": "def later():\n    from .sub.c import thing\n    return thing\n",
        "sub/__init__.py": "",
        "sub/c.py": "import pkg.a\nthing = 1\n",
        "d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import e\n",
        "e.py": "import pkg.d\n",
        "data/f.py": "import pkg.a\n",  # not a module of the package: no __init__.py beside it
    }
    for name, text in files.items():
        (package / name).write_text(textwrap.dedent(text), encoding="utf-8")

    graph = import_graph(package)

    assert "pkg.data.f" not in graph
    assert import_circles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]
