"""The shape of the code (docs: README, Architecture): one concern per file, short functions, imports only go down.

Read with `ast` from the source files (tests excluded); nothing is imported.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60
#: Rooms from the top; a module may import its own room and the rooms below it (a higher number).
ROOMS = {"apps": 0, "bench": 0, "<scripts>": 0,
         "spikingbert.run": 1, "spikingbert.cli": 2, "spikingbert.training": 3, "spikingbert.evaluation": 4,
         "spikingbert.data": 5, "spikingbert.runtime": 6,
         "models": 7, "modules": 8, "transformer": 9, "core": 10}
#: The top-level folders of the published layout, imported as ``spikingbert.<name>`` (one namespace).
LAYOUT_PACKAGES = ("apps", "models", "modules", "transformer", "core")
#: Calls that import a module by name (a string the import check above cannot see).
DYNAMIC_IMPORTS = {("runpy", "run_module"), ("runpy", "run_path"), ("importlib", "import_module"),
                   ("builtins", "__import__")}


def _sources() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(REPO.rglob("*.py")):
        relative = path.relative_to(REPO)
        if relative.parts[0] in ("tests", "runs") or any(part.startswith(".") for part in relative.parts):
            continue
        found[relative.as_posix()] = ast.parse(path.read_text(encoding="utf-8"))
    return found


def _room_of_module(module: str) -> str | None:
    """The room of a dotted module name (its longest prefix in `ROOMS`), None outside the project."""
    parts = module.split(".")
    if parts[:1] == ["spikingbert"] and parts[1:2] and parts[1] in LAYOUT_PACKAGES:
        parts = parts[1:]                                   # spikingbert.models.x lives in the room `models`
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in ROOMS:
            return ".".join(parts[:n])
    return None


def _room(relative: str) -> str:
    if "/" not in relative:
        return "<scripts>"
    return _room_of_module(relative[:-3].replace("/", ".")) or relative.split("/")[0]


def _imported_modules(relative: str, tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(absolute module, imported names) of every import statement."""
    package = relative.rsplit("/", 1)[0].replace("/", ".") if "/" in relative else ""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                module = base + ("." + module if module else "")
            found.append((module, [alias.name for alias in node.names]))
            found += [(f"{module}.{alias.name}", []) for alias in node.names]     # `from pkg import submodule`
    return found


def test_no_file_or_function_too_long():
    sources = _sources()
    assert len(sources) > 50
    long_files = {name: len((REPO / name).read_text(encoding="utf-8").splitlines()) for name in sources}
    long_files = {name: n for name, n in long_files.items() if n > MAX_FILE_LINES}
    long_functions = []
    for name, tree in sources.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                if node.end_lineno - start + 1 > MAX_FUNCTION_LINES:
                    long_functions.append(f"{name}:{start} {node.name} ({node.end_lineno - start + 1} lines)")
    assert long_files == {} and long_functions == []


def test_imports_only_go_down_and_never_reach_private_names():
    upward, private = [], []
    for name, tree in _sources().items():
        here = _room(name)
        for module, names in _imported_modules(name, tree):
            target = _room_of_module(module)
            if target is not None and ROOMS[target] < ROOMS.get(here, 0):
                upward.append(f"{name} imports {module}")
            if target is not None:
                private += [f"{name} imports {module}.{n}" for n in names if n.startswith("_")]
    assert upward == [] and private == []


def test_the_layout_folders_are_imported_through_the_namespace_only():
    """``from models.x import`` beside ``from spikingbert.models.x import`` would load a second copy of a module
    (two classes of one name): the code names the top-level folders only as ``spikingbert.<folder>``."""
    bare = [f"{name} imports {module}" for name, tree in _sources().items()
            for module, _ in _imported_modules(name, tree)
            if module.split(".")[0] in LAYOUT_PACKAGES and not _relative_inside(name, module)]
    assert bare == []


def _relative_inside(relative: str, module: str) -> bool:
    """A relative import inside a layout folder resolves to that folder's own (top-level) name: not a bare import."""
    return "/" in relative and relative.split("/")[0] == module.split(".")[0]


def test_nothing_imports_a_module_by_name():
    """runpy, importlib and __import__ would reach any room (upwards too) past the check above."""
    found = []
    for name, tree in _sources().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    isinstance(node.func.value, ast.Name) and (node.func.value.id, node.func.attr) in DYNAMIC_IMPORTS:
                found.append(f"{name}:{node.lineno} {node.func.value.id}.{node.func.attr}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
                found.append(f"{name}:{node.lineno} __import__")
    assert found == []
