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
        "import planner.hardware, planner.model_spec, planner.device, planner.errors",
        "import planner.model_shapes, planner.model_sizes, planner.model_resolve, planner.meta_count",
        "import planner.gpu_catalog, planner.offline_models, planner.nvml_reader",
        "import runner.config_io, runner.data, runner.launch, runner.runs, runner.follow",
        "import runner.events, runner.rundir, runner.config",
        "import tui.cli; tui.cli.build_parser()",
    ],
)
def test_light_modules_import_nothing_heavy(statement: str) -> None:
    loaded = loaded_after(statement)
    assert not [name for name in HEAVY if name in loaded]


def test_planner_and_runner_do_not_import_textual() -> None:
    loaded = loaded_after("import planner.hardware, runner.events, runner.rundir, runner.config")
    assert "textual" not in loaded
