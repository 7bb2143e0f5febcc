"""No decimal "GB" left in what affiner writes: memory is GiB, from `affiner.planner.units`.

A plan that said "1.76 GB" beside a monitor that says "1.64 GiB" read as a wrong prediction
(issue 10). This reads every string literal in the three rooms (f-string pieces included)
with `ast` and fails on a decimal memory unit. Names of cards keep their marketing figure
glued to the number ("A100 80GB", "H100 NVL 94GB"), and bandwidth stays GB/s as data
sheets give it; neither is a memory figure affiner computed.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOMS = ("planner", "runner", "tui")
#: The module that explains the difference, and so names the unit it replaces.
EXEMPT = {REPO / "planner" / "units.py"}
#: "GB", "MB" or "TB" as a word, except a rate ("GB/s").
DECIMAL_UNIT = re.compile(r"\b[GMT]B\b(?!/s)")


def decimal_units() -> list[str]:
    found = []
    for room in ROOMS:
        for path in sorted((REPO / room).rglob("*.py")):
            if path in EXEMPT:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    for line in node.value.splitlines():
                        if DECIMAL_UNIT.search(line):
                            where = path.relative_to(REPO)
                            found.append(f"{where}:{node.lineno}: {line.strip()}")
    return found


def test_no_decimal_memory_units_in_source_strings() -> None:
    assert decimal_units() == []


def test_the_check_sees_what_it_should() -> None:
    assert DECIMAL_UNIT.search("needs 44.1 GB; you have")
    assert DECIMAL_UNIT.search("plan with --vram GB")
    assert not DECIMAL_UNIT.search("A100 80GB PCIe")
    assert not DECIMAL_UNIT.search("bandwidth 3350 GB/s")
    assert not DECIMAL_UNIT.search("needs 41.1 GiB of 22.1 GiB")
