"""Launching, stopping and refusing runs.

The fast tests use a stand-in worker: a tiny Python process whose command line names
``affiner.runner.worker`` and the run folder (so pid checks accept it) and that handles SIGTERM the
way the real worker does (final event, ``stopped`` status). The real training bars — a LoRA
run started with ``affiner train`` that finishes and leaves a working adapter, and
``affiner preflight`` — are at the end, marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from affiner.planner.errors import AffinerError
from affiner.runner.run import launch
from affiner.runner.run.events import RunFinished, read_events, read_status
from affiner.runner.run.process import is_worker_of, spawn_detached
from affiner.runner.run.rundir import RunDir
from affiner.runner.run.runs import summarize

REPO = Path(__file__).resolve().parents[2]

FAKE_WORKER = """
import os, signal, sys, time
sys.path.insert(0, {repo!r})
from affiner.runner.run.events import EventWriter, RunFinished, RunStarted, RunStatus, read_status, write_status
mode, run_dir = sys.argv[1], sys.argv[-1]
status = read_status(run_dir) or RunStatus(run_id=os.path.basename(run_dir))
writer = EventWriter(run_dir)
writer.write(RunStarted(pid=os.getpid(), total_steps=10))
def on_term(*_):
    writer.write(RunFinished(state="stopped", step=3, message="stopped at step 3"))
    status.state, status.message = "stopped", "stopped at step 3"
    write_status(run_dir, status)
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term if mode == "graceful" else signal.SIG_IGN)
status.state, status.pid, status.step = "running", os.getpid(), 3
write_status(run_dir, status)
while True:
    time.sleep(0.05)
"""


def write_toml(folder: Path, body: str = "") -> Path:
    """A run.toml whose model config and data pass the pre-launch check (no weights: the
    stand-in worker never loads them)."""
    model = folder / "models" / "tiny"
    model.mkdir(parents=True, exist_ok=True)  # else it reads as a hub id
    (model / "config.json").write_text(
        json.dumps({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2})
    )
    (folder / "data").mkdir(exist_ok=True)
    (folder / "data" / "train.jsonl").write_text(
        "".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(20))
    )
    path = folder / "my-run.toml"
    path.write_text(
        '[model]\nname_or_path = "models/tiny"\n\n[method]\nname = "lora"\n\n'
        '[data]\ntrain = "data/train.jsonl"\n' + body,
        encoding="utf-8",
    )
    return path


def start_fake_worker(rd: RunDir, mode: str) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable,
        "-c",
        FAKE_WORKER.format(repo=str(REPO)),
        mode,
        "-m",
        "affiner.runner.worker",
        str(rd.path),
    ]
    proc = spawn_detached(argv, log_path=rd.log, cwd=rd.path)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = read_status(rd.path)
        if status is not None and status.state == "running" and status.pid == proc.pid:
            return proc
        assert proc.poll() is None, rd.log.read_text()
        time.sleep(0.05)
    raise AssertionError("the stand-in worker did not start")


def test_prepare_run_writes_a_complete_self_contained_folder(
    runs_dir: Path, tmp_path: Path
) -> None:
    prepared = launch.prepare_run(write_toml(tmp_path), preflight=False)
    rd = prepared.run_dir
    assert rd.path.parent == runs_dir.resolve()
    assert "-lora-tiny-" in rd.run_id
    assert sorted(p.name for p in rd.path.iterdir()) == ["command.txt", "run.toml", "status.json"]
    from affiner.runner.config.io import load_config

    cfg = load_config(rd.config)
    assert cfg.model.name_or_path == str(tmp_path / "models" / "tiny")  # absolute: movable folder
    assert cfg.data.train == str(tmp_path / "data" / "train.jsonl")
    assert cfg.training.preflight is False
    status = read_status(rd.path)
    assert status is not None and status.state == "starting" and status.started > 0
    command = rd.command.read_text()
    assert (
        f"affiner train {rd.config}" in command and f"-m affiner.runner.worker {rd.path}" in command
    )
    assert [p.name for p in runs_dir.iterdir()] == [rd.run_id]  # no staging folder left


def test_bad_config_leaves_no_run_folder(runs_dir: Path, tmp_path: Path) -> None:
    bad = write_toml(tmp_path, "\n[training]\nmicro_batch = 0\n")
    with pytest.raises(AffinerError) as error:
        launch.start_run(bad)
    assert "micro_batch" in str(error.value) and "my-run.toml:11" in str(error.value)
    assert list(runs_dir.iterdir()) == []
    broken = tmp_path / "broken.toml"
    broken.write_text("[model\n")
    with pytest.raises(AffinerError, match="not valid TOML"):
        launch.start_run(broken)
    with pytest.raises(AffinerError, match="not found"):
        launch.start_run(tmp_path / "missing.toml")
    assert list(runs_dir.iterdir()) == []


def test_run_id_must_be_new_and_plain(runs_dir: Path, tmp_path: Path) -> None:
    toml = write_toml(tmp_path)
    launch.prepare_run(toml, run_id="mine")
    with pytest.raises(AffinerError, match="already exists"):
        launch.prepare_run(toml, run_id="mine")
    with pytest.raises(AffinerError, match="plain folder name"):
        launch.prepare_run(toml, run_id="a/b")
    assert [p.name for p in runs_dir.iterdir()] == ["mine"]


def test_detached_process_has_its_own_session_and_no_stdin(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text("earlier line\n")
    code = "import os, sys; print(os.getsid(0) == os.getpid(), repr(sys.stdin.read()))"
    proc = spawn_detached([sys.executable, "-c", code], log_path=log, cwd=tmp_path)
    assert proc.wait(timeout=30) == 0
    assert log.read_text() == "earlier line\nTrue ''\n"  # appended, new session, /dev/null


def test_a_detached_child_that_ends_by_itself_is_reaped(tmp_path: Path) -> None:
    """A run that finishes while the TUI that started it stays open leaves no zombie behind.

    Nothing here calls ``wait()`` or ``poll()``: the reaper that `spawn_detached` starts must.
    """
    code = "import time; time.sleep(0.3)"
    proc = spawn_detached([sys.executable, "-c", code], log_path=tmp_path / "log", cwd=tmp_path)
    child = psutil.Process(proc.pid)  # remembers its start time: a recycled pid is not it
    deadline = time.monotonic() + 30
    status = psutil.STATUS_RUNNING
    while child.is_running():  # True for a zombie too: only reaping removes it
        try:
            status = child.status()
        except psutil.NoSuchProcess:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"the child is still in the process table ({status}) after 30 s")
        time.sleep(0.05)
    assert proc.wait(timeout=5) == 0  # the exit code is kept for the launcher
    ok = subprocess.run([sys.executable, "-c", "raise SystemExit(3)"], check=False)
    assert ok.returncode == 3  # other subprocesses keep their own exit status


def test_stop_sends_sigterm_and_waits_for_the_final_state(runs_dir: Path, tmp_path: Path) -> None:
    rd = launch.prepare_run(write_toml(tmp_path)).run_dir
    proc = start_fake_worker(rd, "graceful")
    try:
        assert is_worker_of(proc.pid, rd.path)
        assert summarize(rd).state == "running"
        with pytest.raises(AffinerError, match="still running"):
            launch.resume_run(rd.run_id)
        result = launch.stop_run(rd.run_id, timeout=20)
    finally:
        proc.kill()
        proc.wait()
    assert result.stopped and result.state == "stopped" and result.signalled == ["SIGTERM"]
    assert summarize(rd).state == "stopped"
    again = launch.stop_run(rd)
    assert again.signalled == [] and "nothing to stop" in again.message


def test_force_stop_kills_a_stuck_worker_and_marks_it_stopped(
    runs_dir: Path, tmp_path: Path
) -> None:
    rd = launch.prepare_run(write_toml(tmp_path)).run_dir
    proc = start_fake_worker(rd, "stubborn")
    try:
        result = launch.stop_run(rd, timeout=0.5, force=True)
    finally:
        proc.kill()
        proc.wait()
    assert result.signalled == ["SIGTERM", "SIGKILL"] and result.state == "stopped"
    status = read_status(rd.path)
    assert status is not None and status.state == "stopped" and "SIGKILL" in status.message
    last = read_events(rd.path)[-1]
    assert isinstance(last, RunFinished) and last.state == "stopped"


def test_stop_without_force_reports_a_worker_still_stopping(runs_dir: Path, tmp_path: Path) -> None:
    rd = launch.prepare_run(write_toml(tmp_path)).run_dir
    proc = start_fake_worker(rd, "stubborn")
    try:
        result = launch.stop_run(rd, timeout=0.3)
        assert not result.stopped and result.state == "stopping"
        assert "--force" in result.message
    finally:
        proc.kill()
        proc.wait()


def test_stop_and_resume_refuse_sensibly(runs_dir: Path, tmp_path: Path) -> None:
    rd = launch.prepare_run(write_toml(tmp_path)).run_dir
    status = read_status(rd.path)
    assert status is not None
    status.state = "finished"
    from affiner.runner.run.events import write_status

    write_status(rd.path, status)
    result = launch.stop_run(rd.run_id)
    assert result.stopped and result.signalled == [] and "already finished" in result.message
    with pytest.raises(AffinerError, match="already finished"):
        launch.resume_run(rd.run_id)
    # A live pid that is not this run's worker (pid reuse) is never signalled.
    status.state, status.pid = "running", os.getpid()
    write_status(rd.path, status)
    with pytest.raises(AffinerError, match="not this run's worker"):
        launch.stop_run(rd)
    assert json.loads(rd.status.read_text())["state"] == "running"


def test_foreground_follower_prints_new_log_bytes_and_events_as_lines(runs_dir: Path) -> None:
    import io

    from affiner.runner.run.events import EvalResult, EventWriter, RunStarted, TrainLog, Warning_
    from affiner.runner.run.follow import Follower

    rd = RunDir(runs_dir / "r")
    rd.path.mkdir()
    rd.log.write_text("from an earlier attempt\n")
    with EventWriter(rd.path) as writer:
        writer.write(TrainLog(step=1, loss=9.0))  # earlier attempt: not repeated
    out = io.StringIO()
    follower = Follower(rd, out)
    with open(rd.log, "a") as log:
        log.write("UserWarning: something\n")
    with EventWriter(rd.path) as writer:
        writer.write(
            RunStarted(
                method="lora", device="cpu", total_steps=40, train_rows=100, resumed_from_step=5
            )
        )
        writer.write(
            TrainLog(
                step=6,
                epoch=0.5,
                loss=2.31456,
                learning_rate=0.01,
                tokens_per_second=1234.5,
                total_steps=40,
                eta_seconds=12,
            )
        )
        writer.write(EvalResult(step=10, loss=2.5, perplexity=12.18))
        writer.write(Warning_(code="overfitting", message="eval loss rose", action="stop"))
        writer.write(
            RunFinished(state="finished", step=40, best_eval_loss=2.4, message="Training finished.")
        )
    follower.pump()
    assert out.getvalue().splitlines() == [
        "UserWarning: something",
        "[affiner] started: lora on cpu, 40 steps, 100 training rows, resumed from step 5",
        "[affiner] step 6/40  epoch 0.50  loss 2.3146  lr 1.0e-02  1,234 tok/s  ETA 12 s",
        "[affiner] eval at step 10  loss 2.5000  perplexity 12.1800",
        "[affiner] WARNING overfitting: eval loss rose (stop)",
        "[affiner] finished at step 40, best eval loss 2.4000. Training finished.",
    ]


# ------------------------------------------------------------------------ real training runs
# These start the real worker (`python -m affiner.runner.worker`) as a detached process on the tiny
# Llama, through `affiner train` in-process, and wait for it. The helpers are shared with
# tests/runner/test_resume_kill.py.


def write_training_toml(
    folder: Path,
    model: Path,
    *,
    max_steps: int,
    checkpoint_every: int,
    eval_every: int,
) -> Path:
    """A LoRA run on the tiny Llama with tiny text data, logging every step."""
    from tests.tiny_models import corpus, write_jsonl

    lines = corpus(120, seed=3)
    write_jsonl(folder / "train.jsonl", [{"text": t} for t in lines[:100]])
    write_jsonl(folder / "eval.jsonl", [{"text": t} for t in lines[100:]])
    path = folder / "run.toml"
    path.write_text(
        f"""
[model]
name_or_path = "{model}"

[method]
name = "lora"
lora_rank = 4
lora_alpha = 8

[data]
train = "train.jsonl"
eval = "eval.jsonl"
max_seq_len = 24

[training]
max_steps = {max_steps}
micro_batch = 4
learning_rate = 0.01
lr_scheduler = "constant"
warmup_ratio = 0.0
logging_steps = 1
device = "cpu"

[eval]
every_steps = {eval_every}

[checkpoint]
every_steps = {checkpoint_every}
keep_last = 2
""",
        encoding="utf-8",
    )
    return path


def started_run_id(out: str) -> str:
    first = out.splitlines()[0]
    assert first.startswith("Started run "), out
    return first.removeprefix("Started run ").strip()


def wait_until(condition: Callable[[], bool], timeout: float, what: str, rd: RunDir) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    log = rd.log.read_text(errors="replace")[-3000:] if rd.log.exists() else "(no train.log)"
    raise AssertionError(f"timed out waiting for {what}; train.log ends:\n{log}")


def wait_final(rd: RunDir, timeout: float = 150.0) -> str:
    """Wait for the worker to end and reap it; return the run's state."""
    status = read_status(rd.path)
    child = launch._children.get(status.pid) if status and status.pid else None
    wait_until(
        lambda: summarize(rd).state not in ("starting", "running"), timeout, "the run to end", rd
    )
    if child is not None:
        child.wait(timeout=30)
        launch._children.pop(child.pid, None)
    return summarize(rd).state


def train_log_steps(rd: RunDir) -> list[int]:
    from affiner.runner.run.events import TrainLog, effective_events

    return [e.step for e in effective_events(read_events(rd.path)) if isinstance(e, TrainLog)]


# `affiner train` to a working adapter (the loss goes down, evaluations, an adapter that
# changes the logits) is proven by the run tests/runner/test_resume_kill.py interrupts and
# resumes to the end: it shares that run's training processes.


@pytest.mark.slow
def test_affiner_preflight_reports_measured_next_to_estimate(
    tiny_llama: Path,
    runs_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import affiner.runner.run as run_face
    from affiner.runner.run.phases import PREFLIGHT_LOAD, PREFLIGHT_START, PREFLIGHT_TRAIN
    from affiner.tui.cli.entry import main

    # The same real child also proves that it reports its phases as it goes (the one real
    # pre-flight test_preflight_progress relies on): the CLI's call is watched, not replaced.
    seen: list = []
    real = run_face.run_preflight_process

    def watched(cfg, **kwargs):
        return real(cfg, progress=seen.append, poll_seconds=0.05, **kwargs)

    monkeypatch.setattr(run_face, "run_preflight_process", watched)
    toml = write_training_toml(tmp_path, tiny_llama, max_steps=12, checkpoint_every=6, eval_every=6)
    assert main(["preflight", str(toml), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    phases = [p.phase for p in seen]
    assert phases[0] == PREFLIGHT_START
    assert PREFLIGHT_LOAD in phases and PREFLIGHT_TRAIN in phases
    training = [p for p in seen if p.phase == PREFLIGHT_TRAIN]
    assert training[-1].total and training[-1].steps == 3
    assert [p.done for p in training] == sorted(p.done for p in training)  # it counts up
    elapsed = [p.elapsed for p in seen]
    assert elapsed == sorted(elapsed) and elapsed[-1] > 0
    assert data["type"] == "preflight" and data["measured_peak_bytes"] > 0
    assert data["measured_step_seconds"] > 0
    assert data["predicted_peak_bytes"] > 0 and data["predicted_step_seconds"] > 0
    assert data["estimate_source"].startswith("planner")
    assert list(runs_dir.iterdir()) == []  # a pre-flight is not a run

    from rich.console import Console

    from affiner.runner.run.events import Preflight
    from affiner.tui.cli.runs import render_preflight

    event = Preflight(**{k: v for k, v in data.items() if k not in ("type", "estimate_source")})
    console = Console(record=True, width=100, color_system=None)
    console.print(render_preflight(event, None, source=data["estimate_source"]))
    text = console.export_text()
    assert "peak memory (process resident memory)" in text and "step time" in text
    assert "measured/estimate" in text
    assert "×" in text and "N/A" not in text.split("eval peak")[0]
