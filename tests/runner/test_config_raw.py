"""affiner.runner.config.raw: run.toml as written, read through the one TOML parser import.

Its readers: the checked loader (`affiner.runner.config.io`), the preflight's write-back,
the run summary's labels and the monitor's planned peak; each is exercised here.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from affiner.runner.config import load_config, read_raw_config
from affiner.runner.config.io import ConfigError
from affiner.runner.run.events import Preflight
from affiner.runner.run.rundir import RunDir
from affiner.runner.run.runs import summarize

RUN_TOML = """\
[model]
name_or_path = "models/tiny"
[method]
name = "lora"
[data]
train = "data/train.jsonl"
[plan]
predicted_peak_bytes = 123456789
"""


@pytest.fixture
def rd(tmp_path: Path) -> RunDir:
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    rd.config.write_text(RUN_TOML, encoding="utf-8")
    return rd


def test_raw_tables_keep_what_was_written(rd: RunDir) -> None:
    data = read_raw_config(rd.config)
    assert data["model"] == {"name_or_path": "models/tiny"}  # relative, no defaults added
    assert data["plan"]["predicted_peak_bytes"] == 123456789


def test_broken_or_missing_files_raise_what_callers_catch(rd: RunDir, tmp_path: Path) -> None:
    rd.config.write_text("[model\n", encoding="utf-8")
    with pytest.raises(ValueError):
        read_raw_config(rd.config)
    with pytest.raises(OSError):
        read_raw_config(tmp_path / "nowhere.toml")
    with pytest.raises(ConfigError, match=r"run.toml:1: not valid TOML"):  # with the line
        load_config(rd.config)


def test_the_summary_and_the_monitor_read_the_raw_tables(rd: RunDir) -> None:
    from affiner.tui.screens.monitor import MonitorScreen

    summary = summarize(rd)
    assert (summary.model, summary.method) == ("models/tiny", "lora")
    planned = MonitorScreen._planned_peak(SimpleNamespace(run_dir=rd.path))  # type: ignore[arg-type]
    assert planned == 123456789
    rd.config.write_text("not toml [", encoding="utf-8")
    assert (summarize(rd).model, summarize(rd).method) == ("", "")
    assert MonitorScreen._planned_peak(SimpleNamespace(run_dir=rd.path)) is None  # type: ignore[arg-type]


def test_the_preflight_writes_back_into_the_raw_tables(rd: RunDir) -> None:
    from affiner.runner.training.preflight import write_back

    event = Preflight(measured_peak_bytes=42, measured_step_seconds=0.123456)
    write_back(rd, micro=2, accum=3, event=event)
    data = read_raw_config(rd.config)
    assert data["data"]["train"] == "data/train.jsonl"  # still relative
    assert data["plan"]["measured_peak_bytes"] == 42
    assert (data["training"]["micro_batch"], data["training"]["grad_accum"]) == (2, 3)
