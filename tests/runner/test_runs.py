"""Run summaries from hand-written run folders: no training, no torch.

Each folder is written the way the worker writes one (status.json through `write_status`,
events one JSON line each), then damaged the ways real folders get damaged: a torn last
line, a worker killed without a final state, a pid reused by another process, no status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from affiner.planner.errors import AffinerError
from affiner.runner.run.events import (
    Checkpoint,
    EvalResult,
    EventWriter,
    RunFinished,
    RunStarted,
    RunStatus,
    TrainLog,
    Warning_,
    clean_number,
    write_status,
)
from affiner.runner.run.rundir import RunDir
from affiner.runner.run.runs import (
    INTERRUPTED,
    UNKNOWN,
    list_runs,
    resolve_run,
    summarize,
)

RUN_TOML = '[model]\nname_or_path = "/models/tiny-llama"\n\n[method]\nname = "lora"\n'


def dead_pid() -> int:
    """A pid that has exited (and been reaped), so no process has it right now."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def make_run(
    root: Path,
    run_id: str,
    *,
    state: str | None = "finished",
    pid: int | None = None,
    events: list | None = None,
    started: float = 1_000.0,
    toml: str = RUN_TOML,
) -> RunDir:
    rd = RunDir(root / run_id)
    rd.path.mkdir(parents=True)
    rd.config.write_text(toml, encoding="utf-8")
    with EventWriter(rd.path) as writer:
        for event in events or []:
            writer.write(event)
    if state is not None:
        write_status(
            rd.path, RunStatus(run_id=run_id, state=state, pid=pid, started=started, step=0)
        )
    return rd


def finished_events() -> list:
    return [
        RunStarted(
            run_id="r", model="tiny-llama", method="lora", total_steps=10, epochs=2, pid=1, t=1000
        ),
        TrainLog(step=5, epoch=1.0, loss=2.5, total_steps=10, eta_seconds=30, t=1001),
        EvalResult(step=5, epoch=1.0, loss=2.4, perplexity=11.0, t=1002),
        Warning_(code="overfitting", message="eval loss rose", t=1003),
        TrainLog(step=10, epoch=2.0, loss=2.0, total_steps=10, eta_seconds=0, t=1004),
        EvalResult(step=10, epoch=2.0, loss=2.1, perplexity=8.2, t=1005),
        Checkpoint(step=10, path="checkpoints/checkpoint-10", t=1006),
        RunFinished(state="finished", step=10, message="done", t=1007),
    ]


def test_summarize_a_finished_run(runs_dir: Path) -> None:
    rd = make_run(runs_dir, "20260101-000000-lora-tiny-aaaa", events=finished_events())
    s = summarize(rd)
    assert s.state == "finished" and s.final and not s.pid_alive
    assert (s.model, s.method) == ("tiny-llama", "lora")
    assert (s.step, s.total_steps, s.progress) == (10, 10, 1.0)
    assert s.epoch == 2.0
    assert s.best_eval_loss == pytest.approx(2.1)
    assert (s.best_metric_name, s.best_metric) == ("perplexity", pytest.approx(8.2))
    assert s.warnings == 1
    assert s.last_loss == 2.0
    assert s.to_dict()["path"] == str(rd.path)
    json.dumps(s.to_dict())  # --json must always serialise


def test_torn_last_line_is_ignored(runs_dir: Path) -> None:
    rd = make_run(runs_dir, "torn", state="running", pid=os.getpid(), events=finished_events()[:3])
    with open(rd.events, "a", encoding="utf-8") as handle:
        handle.write('{"type": "train_log", "step": 7, "lo')  # the writer died mid-line
    s = summarize(rd)
    assert s.step == 5
    assert s.best_eval_loss == pytest.approx(2.4)


def test_nan_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """JSON has no NaN: the writer raises instead of logging a line no reader can parse."""
    import numpy as np

    with EventWriter(tmp_path) as writer:
        for bad in (float("nan"), np.float32("nan"), float("inf")):
            with pytest.raises(ValueError):
                writer.write(TrainLog(step=1, epoch=0.1, loss=bad, total_steps=10))
        writer.write(TrainLog(step=1, epoch=0.1, loss=clean_number(float("nan")), total_steps=10))
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["loss"] is None


def test_running_status_with_dead_pid_is_interrupted(runs_dir: Path) -> None:
    rd = make_run(runs_dir, "killed", state="running", pid=dead_pid(), events=finished_events()[:2])
    (rd.checkpoints / "checkpoint-5").mkdir(parents=True)
    (rd.checkpoints / "checkpoint-5" / "trainer_state.json").write_text("{}")
    s = summarize(rd)
    assert s.state == INTERRUPTED and not s.final and not s.live
    assert s.last_checkpoint_step == 5
    assert "step 5" in s.message


def test_reused_pid_is_not_taken_for_the_worker(runs_dir: Path) -> None:
    # This test process is alive, but it is not `affiner.runner.worker` for this folder.
    rd = make_run(
        runs_dir, "reused", state="running", pid=os.getpid(), events=finished_events()[:2]
    )
    s = summarize(rd)
    assert s.state == INTERRUPTED and not s.pid_alive
    assert "no checkpoint" in s.message


def test_final_event_without_final_status_counts(runs_dir: Path) -> None:
    rd = make_run(runs_dir, "late", state="running", pid=dead_pid(), events=finished_events())
    # status.json older than the run_finished event: the worker died between the two writes
    status = json.loads(rd.status.read_text())
    status["updated"] = 500.0
    rd.status.write_text(json.dumps(status))
    assert summarize(rd).state == "finished"


def test_relaunch_that_died_before_logging_is_interrupted_not_stopped(runs_dir: Path) -> None:
    events = [*finished_events()[:2], RunFinished(state="stopped", step=5, t=1003)]
    rd = make_run(runs_dir, "relaunch", state="starting", pid=dead_pid(), events=events)
    assert summarize(rd).state == INTERRUPTED


def test_starting_without_pid_waits_a_while(runs_dir: Path) -> None:
    rd = make_run(runs_dir, "fresh", state="starting")
    assert summarize(rd).state == "starting"
    assert summarize(rd, now=time.time() + 3600).state == INTERRUPTED


def test_missing_status(runs_dir: Path) -> None:
    bare = make_run(runs_dir, "bare", state=None)
    s = summarize(bare)
    assert s.state == UNKNOWN and "status.json" in s.message
    logged = make_run(runs_dir, "logged", state=None, events=finished_events()[:2])
    assert summarize(logged).state == INTERRUPTED
    done = make_run(runs_dir, "done", state=None, events=finished_events())
    assert summarize(done).state == "finished"


def test_list_runs_newest_first_without_staging_folders(runs_dir: Path) -> None:
    make_run(runs_dir, "20260101-000000-lora-a-0001", started=1000.0)
    make_run(runs_dir, "20260102-000000-lora-b-0002", started=2000.0)
    make_run(runs_dir, "custom-name", started=3000.0)
    staging = runs_dir / ".creating-x-123"
    staging.mkdir()
    (staging / "run.toml").write_text(RUN_TOML)
    ids = [s.run_id for s in list_runs()]
    assert ids == ["custom-name", "20260102-000000-lora-b-0002", "20260101-000000-lora-a-0001"]
    assert list_runs(runs_dir / "absent") == []


def test_resolve_run_references(runs_dir: Path) -> None:
    a = make_run(runs_dir, "20260101-000000-lora-a-0001")
    b = make_run(runs_dir, "20260101-000500-lora-b-0002")
    assert resolve_run("20260101-000000-lora-a-0001") == a
    assert resolve_run("0002") == b  # unique suffix
    assert resolve_run(str(a.path)).path == a.path.resolve()  # a path
    with pytest.raises(AffinerError) as ambiguous:
        resolve_run("20260101")
    assert "matches 2 runs" in str(ambiguous.value)
    assert a.run_id in str(ambiguous.value) and b.run_id in str(ambiguous.value)
    with pytest.raises(AffinerError) as unknown:
        resolve_run("nope")
    text = str(unknown.value)
    assert "no run matches 'nope'" in text and a.run_id in text and "recent runs" in text
    with pytest.raises(AffinerError, match="not a run folder"):
        resolve_run(str(runs_dir.parent))


def test_classification_headline_is_never_perplexity(runs_dir: Path) -> None:
    """The task comes from run.toml, else from the evaluations; perplexity is for LMs only."""
    events = [
        RunStarted(run_id="r", model="bert", method="lora", total_steps=4, t=1000),
        EvalResult(step=4, loss=0.3, perplexity=1.35, t=1001),  # no scores logged
    ]
    toml = RUN_TOML.replace("[method]", 'task = "classification"\n\n[method]')
    head = summarize(make_run(runs_dir, "20260101-000000-lora-bert-aaaa", events=events, toml=toml))
    assert (head.task, head.best_eval_loss, head.best_metric_name) == ("classification", 0.3, None)
    lm = summarize(make_run(runs_dir, "20260101-000000-lora-tiny-bbbb", events=events))
    assert (lm.task, lm.best_metric_name) == ("causal_lm", "perplexity")
    scored = [events[0], EvalResult(step=4, loss=0.3, perplexity=1.35, f1=0.8, t=1001)]
    by_events = summarize(make_run(runs_dir, "20260101-000000-lora-bert-cccc", events=scored))
    assert (by_events.task, by_events.best_metric_name) == ("classification", "f1")
