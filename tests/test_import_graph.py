"""The house's import rules, read from the source with `ast` (every import, at any depth).

- No import cycles between affiner's modules, whether the import sits at module level or inside
  a function: an import moved into a function to dodge a cycle still ties the two modules.
- Every import names ``affiner.…``: the rooms are installed under one name, so a bare
  ``planner``, ``runner`` or ``tui`` would find some other distribution's package, or nothing.
- The TUI and the CLI reach the runner only through its rooms' faces, and never the training
  room: torch and the model live in worker processes.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOMS = {"planner": "affiner.planner", "runner": "affiner.runner", "tui": "affiner.tui"}
ROOT_PACKAGE_DIR = REPO / "tui" / "_root"


def module_files() -> dict[str, Path]:
    """Every module of the installed namespace, by its dotted name."""
    found = {"affiner": ROOT_PACKAGE_DIR / "__init__.py"}
    for folder, package in ROOMS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            if ROOT_PACKAGE_DIR in path.parents:
                continue
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    for path in sorted(ROOT_PACKAGE_DIR.glob("*.py")):
        if path.stem != "__init__":
            found[f"affiner.{path.stem}"] = path
    return found


def imports_of(path: Path, modules: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, module) for every import statement in the file, at any depth."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.append((node.lineno, submodule if submodule in modules else node.module))
    return found


def affiner_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {
        name: {target for _, target in imports_of(path, modules) if target in modules}
        for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles() -> None:
    cycle = find_cycle(affiner_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_import_names_the_affiner_namespace() -> None:
    bare = []
    folders = [*ROOMS, "tests", "bench"]
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            for line, target in imports_of(path, {}):
                if target.split(".")[0] in ROOMS:
                    bare.append(f"{path.relative_to(REPO)}:{line} imports {target}")
    assert not bare, "\n".join(bare)


def test_the_tui_reaches_the_runner_only_through_faces() -> None:
    modules = module_files()
    faces = {
        name
        for name, path in modules.items()
        if name.startswith("affiner.runner") and path.name == "__init__.py"
    } | {"affiner.runner.inference"}
    inside = []
    for name, path in modules.items():
        if not name.startswith("affiner.tui"):
            continue
        for line, target in imports_of(path, modules):
            if target.startswith("affiner.runner") and target not in faces:
                inside.append(f"{path.relative_to(REPO)}:{line} imports {target}")
    assert not inside, "\n".join(inside)


def test_the_tui_never_imports_the_training_room() -> None:
    """Training (torch, models, CUDA) happens in worker processes: the pre-flight too, so a TUI or
    CLI that imported it would hold a model and a CUDA context for the rest of its life."""
    modules = module_files()
    found = [
        f"{path.relative_to(REPO)}:{line} imports {target}"
        for name, path in modules.items()
        if name.startswith("affiner.tui")
        for line, target in imports_of(path, modules)
        if target == "affiner.runner.training" or target.startswith("affiner.runner.training.")
    ]
    assert not found, "\n".join(found)


def test_every_room_has_a_face_that_names_its_public_names() -> None:
    """Each package's ``__init__`` has a docstring and an ``__all__`` whose names all exist."""
    import importlib

    modules = module_files()
    for name, path in modules.items():
        if path.name != "__init__.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), f"{name} has no docstring saying what the room is for"
        face = importlib.import_module(name)
        assert hasattr(face, "__all__"), f"{name} has no __all__"
        for public in face.__all__:
            assert hasattr(face, public) or f"{name}.{public}" in modules, f"{name}.{public}"
