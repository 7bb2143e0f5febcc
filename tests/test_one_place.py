"""House rule 26, one rule in one place, checked in the source with `ast` (docstrings aside).

Each rule below was once written in several modules that disagreed; now one module owns it,
and a second copy fails here instead of drifting:

- whether the hub is offline (``HF_HUB_OFFLINE`` and friends): `affiner.planner.hub`;
- affiner's cache folder (``AFFINER_CACHE``, ``XDG_CACHE_HOME``): `affiner.planner.locations`;
- which TOML parser reads run.toml (``tomllib`` / ``tomli``): `affiner.runner.config.raw`;
- what a checkpoint folder is called (``checkpoint-<step>``): `affiner.runner.run.checkpoints`.

The behaviour of each is tested beside its room (tests/planner/test_hub.py, test_locations.py,
tests/runner/test_config_raw.py, test_checkpoints.py; the resume rule in
tests/tui/test_history_resume.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOMS = ("planner", "runner", "tui")

OWNERS = {
    "hub offline": (
        "planner/hub.py",
        {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"},
    ),
    "cache folder": ("planner/locations.py", {"AFFINER_CACHE", "XDG_CACHE_HOME"}),
}


def sources() -> list[Path]:
    return [
        p for room in ROOMS for p in sorted((REPO / room).rglob("*.py")) if "_root" not in p.parts
    ]


def environment_reads(tree: ast.AST) -> set[str]:
    """Names read from an environment: ``x.get("NAME")``, ``getenv("NAME")``, ``environ["NAME"]``."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("get", "getenv") and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.ctx, ast.Load)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
            and "environ" in ast.unparse(node.value)
        ):
            found.add(node.slice.value)
    return found


def code_strings(tree: ast.AST) -> list[str]:
    """String constants that are not docstrings."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def test_each_environment_rule_is_read_in_one_module() -> None:
    strays = []
    for path in sources():
        where = path.relative_to(REPO).as_posix()
        reads = environment_reads(ast.parse(path.read_text(encoding="utf-8")))
        for rule, (owner, names) in OWNERS.items():
            if where != owner and reads & names:
                strays.append(f"{where} reads {sorted(reads & names)} ({rule} belongs to {owner})")
    assert not strays, "\n".join(strays)


def test_the_owners_name_them() -> None:
    for owner, names in OWNERS.values():
        assert names <= set(code_strings(ast.parse((REPO / owner).read_text(encoding="utf-8"))))


def test_one_module_imports_the_toml_parser() -> None:
    importers = []
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if {"tomllib", "tomli"} & set(names):
                importers.append(path.relative_to(REPO).as_posix())
    assert sorted(set(importers)) == ["runner/config/raw.py"]


def test_one_module_names_checkpoint_folders() -> None:
    naming = [
        path.relative_to(REPO).as_posix()
        for path in sources()
        if any(
            s.startswith("checkpoint-") for s in code_strings(ast.parse(path.read_text("utf-8")))
        )
    ]
    assert naming == ["runner/run/checkpoints.py"]
