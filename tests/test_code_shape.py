"""The shape of the code (docs: README, Architecture): one concern per file, short functions, imports only go down.

Read with `ast` from the source files (tests excluded); nothing is imported.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 60
#: Rooms from the top; a module may import its own room and the rooms below it.
ROOMS = {"apps": 0, "bench": 0, "<scripts>": 0, "spikingbert": 1, "models": 2, "modules": 3, "transformer": 4}


def _sources() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(REPO.rglob("*.py")):
        relative = path.relative_to(REPO)
        if relative.parts[0] in ("tests", "runs") or any(part.startswith(".") for part in relative.parts):
            continue
        found[relative.as_posix()] = ast.parse(path.read_text(encoding="utf-8"))
    return found


def _room(relative: str) -> str:
    return relative.split("/")[0] if "/" in relative else "<scripts>"


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
        for module, names in _imported_modules(name, tree):
            target = module.split(".")[0]
            if target in ROOMS and ROOMS[target] < ROOMS[_room(name)]:
                upward.append(f"{name} imports {module}")
            if target in ROOMS:
                private += [f"{name} imports {module}.{n}" for n in names if n.startswith("_")]
    assert upward == [] and private == []
