"""The rooms stay light: planner and runner import without Textual, planner without torch.

Each check runs in a fresh interpreter so that modules other tests imported do not hide a leak.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "accelerate")


def loaded_after(statement: str) -> set[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "statement",
    [
        # the planner's faces and modules
        "import affiner.planner, affiner.planner.hardware, affiner.planner.models, affiner.planner.memory",
        "import affiner.planner.recommend, affiner.planner.sequence_fit, affiner.planner.timing",
        "import affiner.planner.models.meta_count, affiner.planner.hardware.nvml",
        # every runner face the TUI and the CLI use
        "import affiner.runner, affiner.runner.run, affiner.runner.config, affiner.runner.data",
        "import affiner.runner.demo",
        # the CLI as `affiner hw` starts it
        "import affiner.tui.cli; affiner.tui.cli.build_parser()",
    ],
)
def test_light_modules_import_nothing_heavy(statement: str) -> None:
    loaded = loaded_after(statement)
    assert not [name for name in HEAVY if name in loaded]


def test_planner_and_runner_do_not_import_textual() -> None:
    loaded = loaded_after(
        "import affiner.planner, affiner.planner.hardware, affiner.runner.run, affiner.runner.config"
    )
    assert "textual" not in loaded
