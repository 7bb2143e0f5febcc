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
        "import affiner.planner.hardware.probe, affiner.planner.models.spec, affiner.planner.hardware.device, affiner.planner.errors",
        "import affiner.planner.models.shapes, affiner.planner.models.sizes, affiner.planner.models.resolve, affiner.planner.models.meta_count",
        "import affiner.planner.hardware.catalog, affiner.planner.models.offline, affiner.planner.hardware.nvml",
        "import affiner.runner.config.io, affiner.runner.data.prepare, affiner.runner.run.launch, affiner.runner.run.runs, affiner.runner.run.follow",
        "import affiner.runner.run.events, affiner.runner.run.rundir, affiner.runner.config.schema",
        "import affiner.tui.cli.entry; affiner.tui.cli.entry.build_parser()",
    ],
)
def test_light_modules_import_nothing_heavy(statement: str) -> None:
    loaded = loaded_after(statement)
    assert not [name for name in HEAVY if name in loaded]


def test_planner_and_runner_do_not_import_textual() -> None:
    loaded = loaded_after(
        "import affiner.planner.hardware.probe, affiner.runner.run.events, affiner.runner.run.rundir, affiner.runner.config.schema"
    )
    assert "textual" not in loaded
