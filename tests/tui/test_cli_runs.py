"""The run commands through `affiner.tui.cli.entry.main`: user mistakes are one clear message and exit code 2.

No training here: runs are hand-written folders (see tests/test_runs.py); the commands that
start real workers are exercised in tests/test_launch.py and tests/test_resume_kill.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from affiner.runner.run.events import EvalResult, RunFinished, RunStarted, TrainLog
from affiner.tui.cli.entry import main
from tests.runner.test_runs import make_run


@pytest.fixture
def two_runs(runs_dir: Path) -> Path:
    events = [
        RunStarted(run_id="a", model="tiny", method="lora", total_steps=10, t=1000),
        TrainLog(step=10, epoch=1.0, loss=1.5, total_steps=10, t=1001),
        EvalResult(step=10, loss=1.75, perplexity=5.75, t=1002),
        RunFinished(state="finished", step=10, t=1003),
    ]
    make_run(runs_dir, "20260101-000000-lora-tiny-aaaa", events=events, started=1000.0)
    make_run(runs_dir, "20260102-000000-qlora-tiny-bbbb", state="stopped", started=2000.0)
    return runs_dir


def test_runs_json_and_table(two_runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in data] == [
        "20260102-000000-qlora-tiny-bbbb",
        "20260101-000000-lora-tiny-aaaa",
    ]
    assert data[1]["state"] == "finished" and data[1]["best_eval_loss"] == 1.75
    assert main(["runs", "--limit", "1", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
    assert main(["runs"]) == 0
    table = capsys.readouterr().out
    assert "20260101-000000-lora-tiny-aaaa" in table and "finished" in table and "stopped" in table
    assert "10/10 100%" in table and "1.7500" in table


def test_runs_on_an_empty_root(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs"]) == 0
    assert "No runs in" in capsys.readouterr().out


def test_train_needs_exactly_one_of_config_and_resume(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train"]) == 2
    assert "no run configuration given" in capsys.readouterr().err
    assert main(["train", "run.toml", "--resume", "x"]) == 2
    assert "not both" in capsys.readouterr().err


def test_bad_config_is_a_message_not_a_traceback(
    runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('[model]\nname_or_path = "m"\n[methd]\nname = "lora"\n')
    assert main(["train", str(toml)]) == 2
    err = capsys.readouterr().err
    assert "run.toml:3" in err and "unknown section [methd]" in err and "Traceback" not in err
    assert list(runs_dir.iterdir()) == []


def test_unknown_and_ambiguous_runs(two_runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["attach", "zzz"], ["stop", "zzz"], ["train", "--resume", "zzz"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "no run matches 'zzz'" in err and "20260102-000000-qlora-tiny-bbbb" in err
    assert main(["attach", "2026010"]) == 2
    assert "matches 2 runs" in capsys.readouterr().err


def test_stop_attach_and_resume_on_ended_runs(
    two_runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["stop", "aaaa"]) == 0
    assert "already finished; nothing to stop" in capsys.readouterr().out
    assert main(["attach", "aaaa"]) == 0
    out = capsys.readouterr().out
    assert "finished" in out and "best eval loss 1.7500 at step 10" in out
    assert main(["train", "--resume", "aaaa"]) == 2
    assert "already finished" in capsys.readouterr().err


def test_runs_dir_option_points_at_another_root(
    two_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert main(["--runs-dir", str(other), "runs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_stop_on_an_interrupted_run_points_to_resume(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.runner.test_runs import dead_pid

    make_run(
        runs_dir,
        "gone",
        state="running",
        pid=dead_pid(),
        events=[RunStarted(total_steps=5, t=1000)],
    )
    assert main(["stop", "gone"]) == 0
    assert "is not running (interrupted); nothing to stop" in capsys.readouterr().out
    assert main(["runs", "--json"]) == 0
    [run] = json.loads(capsys.readouterr().out)
    assert run["state"] == "interrupted" and "resume starts from scratch" in run["message"]
