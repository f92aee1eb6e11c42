"""The package's shape: no import cycle, a docstring on every module, ``__all__`` on every public package.

The import graph is read from the source, not from ``sys.modules``: every module is
parsed, relative imports are resolved, and an edge is drawn for each import that runs
when the module is imported (module level, including the bodies of module-level
``if``/``try``/``with``/``class`` statements). Imports under ``if TYPE_CHECKING:`` and
inside functions are not edges: they never run at import time. ``from pkg import name``
is an edge to ``pkg.name`` when that is a module, else to ``pkg``.

A public package is one whose dotted name has no part starting with ``_``; its
``__all__`` must be a list of names it defines (possibly empty: nothing public there).
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

import cachewatch

PACKAGE_ROOT = Path(cachewatch.__file__).parent


def _modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package) for every module under ``root`` (a package directory)."""
    found: dict[str, tuple[Path, bool]] = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_time_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements that run when a module with this body is imported."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _import_time_imports(node.body)
            yield from _import_time_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from _import_time_imports(block)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            yield from _import_time_imports(node.body)
        # def / async def: their imports run when they are called, not at import time.


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports at import time."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in _import_time_imports(ast.parse(path.read_text(encoding="utf-8")).body):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
                continue
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                edges.add(submodule if submodule in modules else source)
        graph[name] = {target for target in edges if target in modules and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None when it has none."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path = [start]
        on_path = {start}
        pending = [iter(sorted(graph[start]))]
        while pending:
            target = next(pending[-1], None)
            if target is None:
                pending.pop()
                done.add(path[-1])
                on_path.discard(path.pop())
            elif target in on_path:
                return [*path[path.index(target) :], target]
            elif target not in done:
                path.append(target)
                on_path.add(target)
                pending.append(iter(sorted(graph[target])))
    return None


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph(PACKAGE_ROOT)
    assert len(graph) > 50  # the walk found the package, not an empty directory
    assert "cachewatch.transport._transport" in graph["cachewatch"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def _write(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "pkg"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param(
            {
                "pkg/__init__.py": "",
                "pkg/a.py": "from .sub import b\n",
                "pkg/sub/__init__.py": "",
                "pkg/sub/b.py": "from ..c import name\n",
                "pkg/c.py": "import pkg.a\nname = 1\n",
            },
            ["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"],
            id="relative-and-absolute",
        ),
        pytest.param(
            {
                "pkg/__init__.py": "from ._x import f\n",
                "pkg/_x.py": "try:\n    from . import g\nexcept ImportError:\n    pass\ndef f(): ...\n",
            },
            ["pkg", "pkg._x", "pkg"],
            id="package-name-inside-try",
        ),
    ],
)
def test_a_cycle_is_found_and_named(tmp_path: Path, files: dict[str, str], expected: list[str]) -> None:
    assert find_cycle(import_graph(_write(tmp_path, files))) == expected


def test_type_checking_and_function_imports_are_not_edges(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from .b import x\n",
            "pkg/b.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from .a import y\n"
                "else:\n    from . import c\n"
                "def later():\n    from .a import y\n"
                "x = 1\n"
            ),
            "pkg/c.py": "",
        },
    )
    graph = import_graph(root)
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.c"}
    assert find_cycle(graph) is None


def test_every_module_has_a_docstring() -> None:
    modules = _modules(PACKAGE_ROOT)
    assert len(modules) > 50
    missing = [
        name
        for name, (path, _) in modules.items()
        if not (ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or "").strip()
    ]
    assert missing == [], f"modules without a docstring: {missing}"


def _public_packages() -> list[str]:
    return sorted(
        name
        for name, (_, is_package) in _modules(PACKAGE_ROOT).items()
        if is_package and not any(part.startswith("_") for part in name.split("."))
    )


def test_public_packages_are_found() -> None:
    packages = _public_packages()
    assert {"cachewatch", "cachewatch.proxy", "cachewatch.planning", "cachewatch.sinks"} <= set(packages)


@pytest.mark.parametrize("name", _public_packages())
def test_every_public_package_declares_all(name: str) -> None:
    package = importlib.import_module(name)
    exported = package.__dict__.get("__all__")
    assert isinstance(exported, list), f"{name} has no __all__ list"
    assert all(isinstance(item, str) for item in exported)
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"
    undefined = [item for item in exported if not hasattr(package, item)]
    assert undefined == [], f"{name}.__all__ names what it does not define: {undefined}"


def test_no_merge_conflict_marker_is_left_in_the_package() -> None:
    markers = ("<<<<<<< ", ">>>>>>> ", "=======\n")
    found = [
        f"{path.relative_to(PACKAGE_ROOT)}:{n}"
        for path in sorted(PACKAGE_ROOT.rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(keepends=True), 1)
        if line.lstrip().startswith(markers)
    ]
    assert found == []
