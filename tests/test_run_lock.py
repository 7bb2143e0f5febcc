"""One writer per run folder: real concurrent resumes, a stop racing a resume, stale locks.

The workers are the real ``affiner.runner.worker`` entry point with training swapped for a
cheap loop (`tests.lock_fakes`), so the lock is adopted, held and released as in a real run.
The races are real too: separate processes (the ``affiner`` CLI) or threads, released at the
same instant.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from affiner.planner.errors import AffinerError
from affiner.runner.run import launch
from affiner.runner.run.events import RunStarted, read_events, read_status
from affiner.runner.run.lock import LOCK_FD_ENV, LOCK_FILE, RunBusy, acquire, holder
from affiner.runner.run.process import spawn_detached
from affiner.runner.run.rundir import RunDir
from tests.lock_fakes import REPO, fake_worker_argv, write_stopped_run


@pytest.fixture
def fake_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch, "worker_argv", fake_worker_argv)


@pytest.fixture
def stopped_run(runs_dir: Path) -> Iterator[RunDir]:
    rd = RunDir(write_stopped_run(runs_dir))
    yield rd
    for proc in workers_of(rd):  # a failed test leaves no worker behind
        proc.kill()


def workers_of(rd: RunDir) -> list[psutil.Process]:
    """Live worker processes whose command line names this run folder."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if "affiner.runner.worker" in cmdline and str(rd.path.resolve()) in cmdline:
            found.append(proc)
    return found


def wait_for(condition, what: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def status_is(rd: RunDir, state: str) -> bool:
    status = read_status(rd.path)
    return status is not None and status.state == state


def run_started_count(rd: RunDir) -> int:
    return sum(isinstance(e, RunStarted) for e in read_events(rd.path))


def stop_and_check(rd: RunDir) -> None:
    result = launch.stop_run(rd, timeout=20)
    assert result.state == "stopped", result.message
    assert holder(rd.path) is None and workers_of(rd) == []


RACER = """
import os, sys, time
sys.path.insert(0, {repo!r})
from affiner.runner.run import launch
from tests.lock_fakes import fake_worker_argv
from affiner.tui.cli.entry import main
launch.worker_argv = fake_worker_argv
go = sys.argv[2]
print("ready", flush=True)
while not os.path.exists(go):
    pass
sys.exit(main(["train", "--resume", sys.argv[1]]))
"""


def test_two_cli_resumes_at_the_same_instant_start_exactly_one_worker(
    stopped_run: RunDir, tmp_path: Path
) -> None:
    rd = stopped_run
    go = tmp_path / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER.format(repo=str(REPO)), rd.run_id, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
        )
        for _ in range(2)
    ]
    try:
        for racer in racers:
            assert racer.stdout is not None and racer.stdout.readline() == "ready\n"
        go.touch()  # both leave their spin at the same instant
        results = [racer.communicate(timeout=60) for racer in racers]
        codes = [racer.returncode for racer in racers]
        assert sorted(codes) == [0, 2], results
        _out, err = results[codes.index(2)]
        assert f"run {rd.run_id} is already being resumed by pid" in err
        assert "affiner stop" in err and "Traceback" not in err
        wait_for(lambda: run_started_count(rd) == 2, "the winner's worker to start")
        time.sleep(0.3)  # a second worker, had one started, would have logged by now
        assert run_started_count(rd) == 2  # the first attempt's and exactly one resume's
        (worker,) = workers_of(rd)
        held = holder(rd.path)
        assert held is not None and held.pid == worker.pid and held.role == "worker"
    finally:
        for racer in racers:
            racer.kill()
    stop_and_check(rd)


def test_resumes_from_four_threads_at_once_start_one_worker(
    stopped_run: RunDir, fake_workers: None
) -> None:
    rd = stopped_run
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def resume() -> None:
        barrier.wait()
        try:
            launch.resume_run(rd)
            outcomes.append("resumed")
        except AffinerError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=resume) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert outcomes.count("resumed") == 1, outcomes
    assert all("already being resumed" in o or "is still" in o for o in outcomes if o != "resumed")
    wait_for(lambda: len(workers_of(rd)) == 1, "one worker")
    stop_and_check(rd)


def test_a_second_worker_started_by_hand_writes_nothing_and_exits_2(
    stopped_run: RunDir, fake_workers: None
) -> None:
    rd = stopped_run
    launch.resume_run(rd)
    wait_for(lambda: status_is(rd, "running"), "the worker to run")
    before_status = rd.status.read_bytes()
    events_before = run_started_count(rd)
    # the real worker module, as command.txt tells a user to start it
    second = subprocess.run(
        [sys.executable, "-m", "affiner.runner.worker", str(rd.path), "--resume"],
        capture_output=True,
        text=True,
        timeout=60,
        env=launch.child_env(),
    )
    assert second.returncode == 2
    assert f"run {rd.run_id} is already being resumed by pid" in second.stderr
    assert run_started_count(rd) == events_before
    status = read_status(rd.path)
    assert status is not None and status.state == "running"
    assert rd.status.read_bytes() != b"" and before_status  # untouched by the loser
    with pytest.raises(RunBusy, match="already being resumed") as busy:
        launch.check_resumable(rd.run_id)
    assert busy.value.exit_code == 2
    stop_and_check(rd)


def test_stop_racing_a_resume_stops_the_worker_being_handed_the_lock(
    stopped_run: RunDir,
) -> None:
    """The launcher holds the lock and the status still says ``stopped``: stop must wait for the
    hand-over and stop the new worker, not answer "already stopped" and leave it running."""
    rd = stopped_run
    lock = acquire(rd.path, role="launcher", purpose="resume")
    assert lock is not None
    results: list[launch.StopResult] = []
    stopper = threading.Thread(target=lambda: results.append(launch.stop_run(rd, timeout=20)))
    stopper.start()
    time.sleep(0.3)
    assert stopper.is_alive()  # waiting for the launcher's worker, not "nothing to stop"
    env = {**launch.child_env(), LOCK_FD_ENV: str(lock.fd)}
    argv = fake_worker_argv(rd.path, "--resume")
    child = spawn_detached(argv, log_path=rd.log, cwd=rd.path, env=env, pass_fds=(lock.fd,))
    lock.record(child.pid, "worker", "resume")
    lock.release()
    stopper.join(30)
    (result,) = results
    assert result.signalled == ["SIGTERM"] and result.state == "stopped", result.message
    assert child.wait(timeout=10) is not None
    assert holder(rd.path) is None and workers_of(rd) == []


def test_stop_waits_for_the_lock_not_only_for_the_worker_pid(
    stopped_run: RunDir, fake_workers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    rd = stopped_run
    monkeypatch.setenv("AFFINER_TEST_LINGER", "1.0")  # a child keeps the lock 1 s after the worker
    launch.resume_run(rd)
    wait_for(lambda: status_is(rd, "running"), "the worker to run")
    started = time.monotonic()
    result = launch.stop_run(rd, timeout=20)
    assert result.state == "stopped"
    assert time.monotonic() - started >= 0.9
    assert holder(rd.path) is None  # nothing of the old worker still holds the run
    assert launch.check_resumable(rd)[0] == rd  # so it can be resumed at once


def test_a_stale_lock_from_a_killed_worker_blocks_nothing(
    stopped_run: RunDir, fake_workers: None
) -> None:
    rd = stopped_run
    launch.resume_run(rd)
    wait_for(lambda: status_is(rd, "running"), "the worker to run")
    (worker,) = workers_of(rd)
    os.kill(worker.pid, signal.SIGKILL)  # the kernel drops its lock; the lock file stays
    wait_for(lambda: not workers_of(rd), "the killed worker to go")
    assert (rd.path / LOCK_FILE).exists() and holder(rd.path) is None
    assert launch.check_resumable(rd)[0] == rd  # "interrupted": resumable
    launch.resume_run(rd)
    wait_for(lambda: len(workers_of(rd)) == 1, "the resumed worker")
    stop_and_check(rd)


def test_a_lock_file_with_garbage_in_it_is_taken_and_rewritten(stopped_run: RunDir) -> None:
    rd = stopped_run
    (rd.path / LOCK_FILE).write_bytes(b"\x00not json{")
    lock = acquire(rd.path, role="launcher", purpose="train")
    assert lock is not None
    try:
        held = holder(rd.path)
        assert held is not None and held.pid == os.getpid() and held.role == "launcher"
        with pytest.raises(RunBusy, match=f"run {rd.run_id} is being started by pid {os.getpid()}"):
            acquire(rd.path, role="launcher", purpose="train", patience=0.05)
    finally:
        lock.release()
    assert holder(rd.path) is None
