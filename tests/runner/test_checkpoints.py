"""One way to find checkpoints (affiner.runner.run.checkpoints), asked by resume, runs and the playground."""

from __future__ import annotations

from pathlib import Path

import pytest

from affiner.planner.errors import AffinerError
from affiner.runner.inference import find_adapter
from affiner.runner.run import RunDir, latest_checkpoint, list_checkpoints, saved_weights
from affiner.runner.run.checkpoints import (
    checkpoint_folder,
    checkpoint_step,
)
from affiner.runner.run.runs import summarize
from tests.test_import_graph import affiner_graph


def save(rd: RunDir, step: int, *, complete: bool = True) -> Path:
    """A checkpoint folder as the Trainer leaves it: weights first, trainer_state.json last."""
    folder = checkpoint_folder(rd.checkpoints, step)
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    if complete:
        (folder / "trainer_state.json").write_text("{}")
    return folder


def test_folder_names_and_steps() -> None:
    assert checkpoint_folder("out", 12) == Path("out/checkpoint-12")
    assert checkpoint_step(Path("out/checkpoint-12")) == 12
    for name in ("best", "checkpoint-", "checkpoint-x", "checkpoint-3.tmp"):
        assert checkpoint_step(Path(name)) is None


def test_only_complete_checkpoints_count(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    save(rd, 4)
    save(rd, 8)
    save(rd, 12, complete=False)  # a save cut short
    (rd.best).mkdir()
    (rd.checkpoints / "checkpoint-16").write_text("a file, not a folder")
    assert [s for s, _ in list_checkpoints(rd)] == [4, 8]
    assert latest_checkpoint(rd) == (8, rd.checkpoints / "checkpoint-8")
    assert latest_checkpoint(str(tmp_path)) == latest_checkpoint(rd)  # a plain path works too
    assert latest_checkpoint(RunDir(tmp_path / "none")) is None


def test_every_reader_agrees_on_the_newest(tmp_path: Path) -> None:
    """Resume, ``affiner runs`` and the playground all name checkpoint-8, never the torn 12."""
    rd = RunDir(tmp_path)
    rd.path.mkdir(exist_ok=True)
    save(rd, 4)
    save(rd, 8)
    save(rd, 12, complete=False)
    assert summarize(rd).last_checkpoint_step == 8
    assert find_adapter(rd.path) == rd.checkpoints / "checkpoint-8"
    assert saved_weights(rd) == [
        rd.adapter,
        rd.best,
        rd.checkpoints / "checkpoint-8",
        rd.checkpoints / "checkpoint-4",
    ]


def test_the_playground_prefers_the_final_adapter_then_best(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    with pytest.raises(AffinerError, match="no saved weights"):
        find_adapter(rd.path)
    save(rd, 4)
    rd.best.mkdir(parents=True)
    (rd.best / "adapter_config.json").write_text("{}")
    assert find_adapter(rd.path) == rd.best
    rd.adapter.mkdir()
    (rd.adapter / "config.json").write_text("{}")
    assert find_adapter(rd.path) == rd.adapter


def test_the_checkpoint_rules_do_not_pull_in_the_summariser() -> None:
    """The training process asks checkpoints.py; runs.py (the screens' summariser) asks it too."""
    graph = affiner_graph()
    assert graph["affiner.runner.run.checkpoints"] <= {"affiner.runner.run.rundir"}
    assert "affiner.runner.run.checkpoints" in graph["affiner.runner.run.runs"]
