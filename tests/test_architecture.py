"""The layout rules of the package, checked on its source with ``ast``: core names neither Qt nor
napari (not even in a function: test_core_imports.py imports every core module), modules of at
most 500 lines, function bodies of at most 80 lines, no private name imported from another
folder, no import cycle between modules."""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_unet"
MAX_MODULE_LINES = 500
MAX_BODY_LINES = 80

#: Known breaches while these modules are being reworked; each entry must still be a breach
#: (a test fails when it is fixed, so that the entry is removed with the fix).
KNOWN_EXCEPTIONS = {
    "module lines": set(),
    "body lines": set(),
    "private imports": set(),
    "cycles": set(),
}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _package_of(name: str) -> str:
    """The package a module's relative imports start from."""
    return name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]


def _imports(name: str) -> Iterator[tuple[str, list[str]]]:
    """``(absolute module, names)`` of every import of the package's own modules in ``name``,
    module level or inside functions (``import x.y`` gives no names)."""
    for node in ast.walk(_tree(MODULES[name])):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(name).split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] == "napari_unet":
                yield module, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "napari_unet":
                    yield alias.name, []


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's body, from its first statement after the docstring to its end."""
    body = node.body
    if (
        len(body) > 1
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        body = body[1:]
    return (node.end_lineno or body[-1].lineno) - body[0].lineno + 1


def _long_modules() -> set[str]:
    return {
        _rel(path)
        for path in MODULES.values()
        if len(path.read_text(encoding="utf-8").splitlines()) > MAX_MODULE_LINES
    }


def _long_functions() -> set[str]:
    out = set()
    for path in MODULES.values():
        for node in ast.walk(_tree(path)):
            is_function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            if is_function and _body_lines(node) > MAX_BODY_LINES:
                out.add(f"{_rel(path)}:{node.name}")
    return out


def _private_imports() -> set[str]:
    """``file:name`` for each private name (``_x``, not ``__x__``) that a module imports from a
    module of another folder."""
    out = set()
    for name, path in MODULES.items():
        for module, names in _imports(name):
            for imported in names:
                if f"{module}.{imported}" in MODULES:  # a module, not a name in one
                    continue
                private = imported.startswith("_") and not imported.endswith("__")
                if private and module in MODULES and _package_of(module) != _package_of(name):
                    out.add(f"{_rel(path)}:{imported}")
    return out


def _import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name in MODULES:
        for module, names in _imports(name):
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
            if len(targets) < len(names) or not names:  # names from ``module`` itself
                targets.append(module)
            graph[name].update(t for t in targets if t in MODULES and t != name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def _cycle_names() -> set[str]:
    return {" ".join(_rel(MODULES[m]) for m in cycle) for cycle in _cycles(_import_graph())}


GUI_PACKAGES = {"qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "vispy"}


def _gui_imports_in_core() -> set[str]:
    out = set()
    for path in (PACKAGE / "core").rglob("*.py"):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            out.update(f"{_rel(path)}: {n}" for n in names if n.split(".")[0] in GUI_PACKAGES)
    return out


def test_core_names_neither_qt_nor_napari_anywhere():
    assert _gui_imports_in_core() == set()


def test_the_checks_see_the_whole_package():
    assert len(MODULES) > 100
    assert "napari_unet.core.network.registry" in MODULES
    graph = _import_graph()
    assert "napari_unet.core.network.weights" in graph["napari_unet.core.network.registry"]
    assert "napari_unet.core.config" in graph["napari_unet.core.network.weights"]


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": set()}
    assert sorted(_cycles(graph)) == [["a", "b", "c"], ["d", "e"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_body_lines_leave_out_the_docstring():
    source = 'def f():\n    """One\n\n    two."""\n    x = 1\n    return x\n'
    assert _body_lines(ast.parse(source).body[0]) == 2


@pytest.mark.parametrize(
    ("rule", "found"),
    [
        ("module lines", _long_modules),
        ("body lines", _long_functions),
        ("private imports", _private_imports),
        ("cycles", _cycle_names),
    ],
)
def test_layout_rule(rule, found):
    breaches = found()
    known = KNOWN_EXCEPTIONS[rule]
    assert breaches - known == set(), f"{rule}: new breaches"
    assert known - breaches == set(), f"{rule}: fixed, remove from KNOWN_EXCEPTIONS"
