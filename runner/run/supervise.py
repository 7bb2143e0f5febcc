"""The worker of a multi-process run: launch the ranks on accelerate, pass stops on, say who died.

`affiner.runner.worker` runs this instead of training when ``[distributed]`` asks for more than
one process. It is the process `affiner.runner.run.launch` started detached and recorded (it
holds the run's lock, its pid is the run's in ``status.json``), so nothing changes for the
CLI, the TUI or `affiner stop`. It writes the launch files (`affiner.runner.run.distributed`)
and runs ``accelerate launch`` as its child; the ranks train, rank 0 writing the run's events.

A stop (SIGTERM, SIGINT) is passed to every rank, not to the launcher: torchrun's agent would
give the ranks 30 s and then kill them, and a checkpoint of a large model takes longer. The
ranks agree on the step to stop at (`affiner.runner.training.ranks.StopAgreement`), save one
checkpoint together and end ``stopped``.

When the launch ends, the ranks' records say how each ended. A rank that crashed, or vanished
without a word (``kill -9``, the kernel's out-of-memory killer), is the run's cause of failure:
one ``rank_failed`` error names it, its node, pid and step, and the last lines of its log, even
when the other ranks failed after it on a broken collective (their errors say "connection
closed", which is not the cause). A collective that waits longer than
``[distributed].timeout_minutes`` fails in the ranks themselves (the Trainer's ``ddp_timeout``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affiner.planner.errors import AffinerError
from affiner.runner.run.distributed import (
    SUPERVISOR_PID_ENV,
    RankRecord,
    clear_rank_records,
    free_port,
    launch_argv,
    log_tail,
    rank_log,
    read_rank_records,
    signal_from_launcher,
    write_launch_files,
)
from affiner.runner.run.events import (
    Error,
    EventWriter,
    RunFinished,
    RunStatus,
    read_status,
    write_status,
)
from affiner.runner.run.process import exit_words, pid_alive, send_signal
from affiner.runner.run.rundir import RunDir

EXIT_FINISHED, EXIT_FAILED, EXIT_USER_ERROR, EXIT_STOPPED = 0, 1, 2, 3
_EXIT_OF_STATE = {"finished": EXIT_FINISHED, "stopped": EXIT_STOPPED, "failed": EXIT_FAILED}
#: Seconds between looks at the ranks while the launch runs.
POLL_SECONDS = 0.5
#: Seconds the ranks get to end after the launcher ended before they are killed.
ORPHAN_GRACE_SECONDS = 10.0


@dataclass
class RankFailure:
    """The rank that ended the run, and how."""

    record: RankRecord
    how: str
    tail: list[str]
    seen: float

    why: str = ""

    def message(self) -> str:
        r = self.record
        where = f"rank {r.rank} (node {r.node}, pid {r.pid}{', ' + r.host if r.host else ''})"
        text = f"{where.capitalize()} {self.how} at step {r.step}{self.why}"
        if self.tail:
            text += "; its last lines: " + " | ".join(self.tail[-2:])
        return text


_PEER_WORDS = ("connection", "by peer", "gloo", "nccl", "collective", "timed out", "timeout")


def _after_a_peer(record: RankRecord) -> bool:
    """A crash that reads as another rank's absence (a closed connection, a collective that
    gave up): the consequence of some rank's end, not the cause."""
    reason = record.reason.lower()
    return record.exit_code is not None and any(word in reason for word in _PEER_WORDS)


class Supervisor:
    """One launch of the ranks of a run (see the module docstring)."""

    def __init__(self, rd: RunDir, cfg: Any, *, resume: bool, preflight: bool = False) -> None:
        self.rd, self.cfg, self.resume = rd, cfg, resume
        #: the ranks run the pre-flight check (``--preflight-only``) instead of training
        self.preflight = preflight
        self.node_rank = int(cfg.distributed.node_rank)
        self.main = self.node_rank == 0
        self.child: subprocess.Popen[bytes] | None = None
        self.stop_signal: str | None = None
        self._signalled: set[int] = set()
        #: when each rank was first seen gone without writing how it ended
        self._vanished: dict[int, float] = {}
        self._previous: dict[int, Any] = {}

    # ------------------------------------------------------------------ launch and watch
    def run(self) -> int:
        d = self.cfg.distributed
        port = d.main_port or free_port()
        write_launch_files(self.cfg, self.rd, port=port, node_rank=self.node_rank)
        clear_rank_records(self.rd)
        argv = launch_argv(
            self.rd,
            node_rank=self.node_rank,
            port=port,
            resume=self.resume,
            extra=["--preflight-only"] if self.preflight else [],
        )
        self._say(
            f"affiner: {d.world_size} processes ({d.processes} per node x {d.nodes} node"
            f"{'s' if d.nodes > 1 else ''}, {d.strategy}) on port {port}; ranks 1+ log to "
            f"{self.rd.path / 'ranks'}/rank-N.log"
        )
        self._install_handlers()
        try:
            self.child = subprocess.Popen(
                argv, env=self._env(), cwd=self.rd.path, preexec_fn=_end_with_parent
            )
            while self.child.poll() is None:
                self._watch()
                time.sleep(POLL_SECONDS)
            self._watch()
            self._end_orphans()
            return self._outcome(self.child.returncode)
        finally:
            self._restore_handlers()
            if self.child is not None and self.child.poll() is None:
                # leaving early (an exception, the caller gone): nothing may outlive this
                self.stop_signal = self.stop_signal or "SIGTERM"
                self._watch()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.child.wait(ORPHAN_GRACE_SECONDS)
                self.child.kill()
                self._end_orphans()

    def _env(self) -> dict[str, str]:
        from affiner.runner.run.lock import LOCK_FD_ENV

        env = dict(os.environ)
        env.pop(LOCK_FD_ENV, None)  # the lock is this process's; the ranks never take it
        env[SUPERVISOR_PID_ENV] = str(os.getpid())
        env.setdefault("PYTHONUNBUFFERED", "1")
        if "OMP_NUM_THREADS" not in env:  # torchrun would set 1 and warn; share the cores out
            cores = os.cpu_count() or 1
            env["OMP_NUM_THREADS"] = str(max(1, cores // max(1, self.cfg.distributed.processes)))
        return env

    def _watch(self) -> None:
        """Pass a pending stop to ranks that started since, and note ranks that vanished."""
        now = time.time()
        for record in read_rank_records(self.rd):
            alive = pid_alive(record.pid)
            if self.stop_signal and alive and record.pid not in self._signalled:
                self._signalled.add(record.pid)
                send_signal(record.pid, signal.SIGTERM)
            if not alive and record.exit_code is None and record.rank not in self._vanished:
                self._vanished[record.rank] = now

    def _end_orphans(self) -> None:
        """Ranks still alive once the launcher is gone (it was killed) end now: first asked,
        then killed, so none keeps a GPU."""
        deadline = time.monotonic() + ORPHAN_GRACE_SECONDS
        alive = [r for r in read_rank_records(self.rd) if pid_alive(r.pid)]
        for record in alive:
            send_signal(record.pid, signal.SIGTERM)
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = [r for r in alive if pid_alive(r.pid)]
        for record in alive:
            send_signal(record.pid, signal.SIGKILL)

    # ------------------------------------------------------------------ signals
    def _install_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def _restore_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stop_signal is None:
            self.stop_signal = signal.Signals(signum).name
            self._say(f"affiner: {self.stop_signal}: asking every rank to save and stop")
        self._watch()

    # ------------------------------------------------------------------ the end
    def _outcome(self, code: int) -> int:
        records = read_rank_records(self.rd)
        status = read_status(self.rd.path)
        failure = self._failure(records, step=status.step if status is not None else 0)
        final = status is not None and status.final
        if not self.main:
            return self._node_outcome(code, failure)
        if self.preflight:
            return self._preflight_outcome(code, records, failure)
        if failure is None and final:
            if status.state == "stopped":
                self._say(
                    f"affiner: every rank saved and stopped at step {status.step} (the launcher "
                    "above reports their exit code 3 as a failure: it is the stop)"
                )
            return _EXIT_OF_STATE.get(status.state, EXIT_FAILED)
        if self.stop_signal and not final and (failure is None or failure.record.exit_code is None):
            return self._stopped_unsaved()
        if failure is not None:
            message = failure.message()
            code_word = "rank_failed"
        elif not records:
            tail = log_tail(self.rd.log, 6)
            message = f"accelerate launch {exit_words(code)} before any rank started" + (
                "; the last lines of train.log: " + " | ".join(tail[-3:]) if tail else ""
            )
            code_word = "launch"
        else:
            message = (
                f"the ranks ended without a final state (accelerate launch {exit_words(code)})"
            )
            code_word = "rank_failed"
        self._say(f"error: {message}")
        self._record_failure(status, code_word, message, failure)
        return EXIT_FAILED

    def _failure(self, records: list[RankRecord], step: int = 0) -> RankFailure | None:
        """The first rank that ended abnormally: a crash (exit code 1) or a disappearance.

        `step` is the run's last (rank 0's), said for a rank killed before it could say its own.

        Ranks that failed on a broken collective after another rank died come later, so the
        earliest end is the cause. A rank that asked to stop (3) or finished (0) is no failure;
        a user error (2) is, and it comes first whenever it happened.
        """
        try:
            log_text = self.rd.log.read_text(encoding="utf-8", errors="replace")[-200_000:]
        except OSError:
            log_text = ""
        found: list[RankFailure] = []
        for record in records:
            if record.exit_code in (0, 3):
                continue
            tail = log_tail(rank_log(self.rd, record.rank))
            why = ""
            if record.exit_code is None:
                # killed: it never said its step, so the run's (rank 0's) is the best guess
                record.step = max(record.step, step)
                sig = signal_from_launcher(log_text, record.pid)
                how = f"was killed by {sig}" if sig else "ended without a word (killed by a signal)"
                if sig in (None, "SIGKILL"):
                    why = " (`kill -9`, or the kernel's out-of-memory killer: `dmesg` says)"
                seen = self._vanished.get(record.rank, time.time())
            else:
                how = f"failed ({record.reason})" if record.reason else "failed"
                seen = record.ended or time.time()
            found.append(RankFailure(record, how, tail, seen, why))
        if not found:
            return None
        # a rank killed outright is noticed at the next look (half a second), while its peers
        # fail on the broken connection at once: those come after it whatever the clock says
        return min(found, key=lambda f: (f.record.exit_code != 2, _after_a_peer(f.record), f.seen))

    def _record_failure(
        self, status: RunStatus | None, code: str, message: str, failure: RankFailure | None
    ) -> None:
        """The cause as the run's error; the final state too unless rank 0 wrote one."""
        status = status or RunStatus(run_id=self.rd.run_id)
        step = failure.record.step if failure else status.step
        with EventWriter(self.rd.path) as writer:
            writer.write(Error(code=code, message=message, step=step))
            if not status.final:
                writer.write(RunFinished(state="failed", step=status.step, message=message))
        status.state, status.message, status.pid = "failed", message, os.getpid()
        write_status(self.rd.path, status)

    def _stopped_unsaved(self) -> int:
        """Asked to stop before the ranks could save (they were still starting): the run is
        ``stopped`` as asked, and resumes from its last checkpoint."""
        status = read_status(self.rd.path) or RunStatus(run_id=self.rd.run_id)
        message = f"stopped on {self.stop_signal} before the ranks saved; resume to continue"
        with EventWriter(self.rd.path) as writer:
            writer.write(RunFinished(state="stopped", step=status.step, message=message))
        status.state, status.message, status.pid = "stopped", message, os.getpid()
        write_status(self.rd.path, status)
        self._say(f"affiner: {message}")
        return EXIT_STOPPED

    def _preflight_outcome(
        self, code: int, records: list[RankRecord], failure: RankFailure | None
    ) -> int:
        """A check has no final state: 0 when every rank measured, else the cause as an
        ``error`` event (what the caller reads) and the failing rank's exit code."""
        if failure is None and records and all(r.exit_code == 0 for r in records):
            return EXIT_FINISHED
        if failure is not None:
            message, exit_code = failure.message(), failure.record.exit_code or EXIT_FAILED
        else:
            message, exit_code = f"accelerate launch {exit_words(code)} before any rank measured", 1
        self._say(f"error: {message}")
        with EventWriter(self.rd.path) as writer:
            writer.write(Error(code="rank_failed", message=message))
        return exit_code

    def _node_outcome(self, code: int, failure: RankFailure | None) -> int:
        """A node other than the main one: its own folder says how its ranks ended."""
        status = read_status(self.rd.path) or RunStatus(run_id=self.rd.run_id)
        if failure is not None:
            status.state, status.message = "failed", failure.message()
        elif self.stop_signal:
            status.state, status.message = "stopped", f"stopped on {self.stop_signal}"
        else:
            status.state = "finished" if code == 0 else "failed"
            status.message = f"this node's ranks ended: accelerate launch {exit_words(code)}"
        write_status(self.rd.path, status)
        self._say(f"affiner: node {self.node_rank}: {status.message}")
        return _EXIT_OF_STATE.get(status.state, EXIT_FAILED)

    @staticmethod
    def _say(line: str) -> None:
        print(line, flush=True)


def _end_with_parent() -> None:
    """In the launcher, before it runs: SIGTERM when the supervisor dies (Linux), which
    torchrun passes to the ranks as a stop, so a killed supervisor leaves nothing running."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG


def supervise(run_dir: Path, *, resume: bool, preflight: bool = False) -> int:
    """Launch and watch the ranks of the run in `run_dir`; returns the worker's exit code."""
    from affiner.runner.config import load_config
    from affiner.runner.config.io import check_for_this_machine, key_lines

    rd = RunDir(run_dir)
    try:
        cfg = load_config(rd.config)
        # a resume may find a machine with fewer GPUs than the launch had
        lines = key_lines(rd.config.read_text(encoding="utf-8"))
        check_for_this_machine(cfg, where=str(rd.config), lines=lines)
    except AffinerError as exc:
        with EventWriter(rd.path) as writer:
            writer.write(Error(code="config", message=str(exc)))
            writer.write(RunFinished(state="failed", message=str(exc)))
        status = read_status(rd.path) or RunStatus(run_id=rd.run_id)
        status.state, status.message = "failed", str(exc)
        write_status(rd.path, status)
        print(f"error: {exc}", flush=True)
        return EXIT_USER_ERROR
    return Supervisor(rd, cfg, resume=resume, preflight=preflight).run()
