"""Start, resume and stop runs: the training process lives on its own, detached from the terminal.

`start_run` writes a complete run folder (``run.toml``, ``command.txt``, ``status.json``) and
only then starts ``python -m affiner.runner.worker RUN_DIR`` in a new session, its output appended to
``train.log``. The folder is built under a hidden temporary name in the runs root and renamed
into place, so an invalid configuration or a crash never leaves a half-written run behind.

`resume_run` relaunches a run's worker with ``--resume`` in the same folder. A run with no
checkpoint yet is started again from step 0 in the same folder (its config and data are
already there, and a from-scratch start is what a user means by "resume" when nothing was saved);
the message says so. A run that is still running, or has already finished, is refused.

`stop_run` sends SIGTERM (the worker saves a checkpoint and ends ``stopped``), after checking the
pid in ``status.json`` really is this run's worker; ``force`` escalates to SIGKILL of its group.

One worker per run folder (`affiner.runner.run.lock`): `launch_worker` takes the folder's lock
before it spawns and hands the locked descriptor to the worker, which holds it until it exits.
A second launch at the same instant (two resumes, the app and the CLI) is refused with who holds
the run; `stop_run` signals the lock's holder, even one that has not written ``status.json``
yet, and waits until the lock is free, not only until a pid is gone.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from affiner.planner.errors import AffinerError
from affiner.runner.config import RunConfig
from affiner.runner.run.checkpoints import latest_checkpoint
from affiner.runner.run.diskspace import check_space_for_run
from affiner.runner.run.events import EventWriter, RunFinished, RunStatus, read_status, write_status
from affiner.runner.run.lock import (
    LOCK_FD_ENV,
    LockHolder,
    Purpose,
    RunBusy,
    acquire,
    holder,
    wait_released,
)
from affiner.runner.run.process import (
    is_worker_of,
    pid_alive,
    send_signal,
    spawn_detached,
    wait_gone,
    worker_argv,
)
from affiner.runner.run.rundir import RunDir, model_name, new_run_id
from affiner.runner.run.rundir import runs_root as default_runs_root
from affiner.runner.run.runs import resolve_run, summarize

#: Seconds `stop_run` waits for a graceful stop (the worker may be writing a checkpoint).
DEFAULT_STOP_TIMEOUT = 120.0
#: With ``force``, seconds SIGTERM gets before SIGKILL.
FORCE_GRACE_SECONDS = 10.0
#: Seconds `stop_run` waits for a launcher that holds a run's lock to start its worker.
HANDOVER_SECONDS = 10.0

# Workers this Python process started and may still be running, by pid: `stop_run` and the
# foreground follower wait on the Popen. Each is reaped by `spawn_detached`'s reaper thread the
# moment it ends (a run that finishes while the TUI stays open leaves no zombie); an ended one
# is dropped here at the next launch or stop, so a recycled pid never finds a stale Popen.
_children: dict[int, subprocess.Popen[bytes]] = {}


def _forget_ended() -> None:
    for pid, child in list(_children.items()):
        if child.poll() is not None:
            _children.pop(pid, None)


@dataclass
class PreparedRun:
    """A run folder written and ready to launch, with the configuration's warnings."""

    run_dir: RunDir
    config: RunConfig
    warnings: list[str] = field(default_factory=list)


def _load(cfg_or_path: RunConfig | str | os.PathLike[str]) -> tuple[RunConfig, list[str]]:
    """A checked configuration with absolute local paths, and its warnings.

    Besides run.toml's own rules, the model's config and every data row are checked here
    (`affiner.runner.run.validate`), before any run folder exists: a mistake a worker would
    only find after the launch is refused now, with the same ``file:line`` message.

    Raises:
        AffinerError: ConfigError for run.toml, DataError for the data, or the model's problem.
    """
    from affiner.runner.config import load_config, resolve_paths, validate_config
    from affiner.runner.run.validate import check_before_launch

    if isinstance(cfg_or_path, RunConfig):
        cfg = cfg_or_path
        resolve_paths(cfg, Path.cwd())
        warnings = validate_config(cfg, where="run configuration")
    else:
        cfg = load_config(cfg_or_path)  # resolves paths against the file's folder
        warnings = validate_config(cfg, where=str(cfg_or_path))
    source = None if isinstance(cfg_or_path, RunConfig) else cfg_or_path
    return cfg, warnings + check_before_launch(cfg, source=source)


def run_label(cfg: RunConfig) -> str:
    """``lora-smollm2-135m-instruct`` style: the method, then the model's own name
    (`model_name`: never a generic folder such as ``model`` or a cache's hash)."""
    return f"{cfg.method.name}-{model_name(cfg.model.name_or_path)}"


def prepare_run(
    cfg_or_path: RunConfig | str | os.PathLike[str],
    *,
    runs_root: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
    preflight: bool | None = None,
    node_rank: int | None = None,
) -> PreparedRun:
    """Validate the configuration and write the run folder, all or nothing (no process yet).

    Args:
        cfg_or_path: a `RunConfig` (relative paths read from the current folder) or a ``run.toml``.
        runs_root: the folder of run folders (default `affiner.runner.run.rundir.runs_root()`).
        run_id: the folder's name; default a new sortable id labelled with method and model.
        preflight: overrides ``[training].preflight`` when not None.
        node_rank: overrides ``[distributed].node_rank`` (the other machines of a multi-node
            run start from the same run.toml); written into the run's own run.toml.

    Raises:
        AffinerError: the configuration is invalid, or the run id is taken or not a plain name.
    """
    cfg, warnings = _load(cfg_or_path)
    if preflight is not None:
        cfg.training.preflight = preflight
    if node_rank is not None:
        from affiner.runner.config import validate_config

        cfg.distributed.node_rank = node_rank
        validate_config(cfg, where="--node-rank")
    root = default_runs_root(runs_root).resolve()
    # a disk too full for the first checkpoint is refused now, not hours into the run
    check_space_for_run(cfg, root)
    run_id = run_id or new_run_id(run_label(cfg))
    if not run_id or run_id != Path(run_id).name or run_id.startswith("."):
        raise AffinerError(
            f"run id {run_id!r} is not a plain folder name",
            hint="use letters, digits, '-' and '_' (no '/', not starting with '.')",
        )
    final = root / run_id
    if final.exists():
        raise AffinerError(
            f"a run named {run_id} already exists in {root}", hint="pick another --run-id"
        )
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".creating-{run_id}-", dir=root))
    try:
        rd = RunDir(final)
        _write_run_files(RunDir(staging), cfg, final_dir=final)
        try:
            os.rename(staging, final)
        except OSError as exc:
            raise AffinerError(
                f"cannot create the run folder {final}: {exc.strerror}",
                hint="pick another --run-id",
            ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return PreparedRun(rd, cfg, warnings)


def _write_run_files(staging: RunDir, cfg: RunConfig, *, final_dir: Path) -> None:
    from affiner.runner.config import save_config

    command = [
        "# Start a new run from this configuration:",
        f"affiner train {shlex.quote(str(final_dir / 'run.toml'))}",
        "# The process affiner started for this run (add --resume to continue it):",
        shlex.join(worker_argv(final_dir)),
        *_distributed_commands(cfg, final_dir),
        "",
    ]
    staging.command.write_text("\n".join(command), encoding="utf-8")
    now = time.time()
    write_status(
        staging.path,
        RunStatus(run_id=final_dir.name, state="starting", started=now, message="created"),
    )
    save_config(cfg, staging.config)


def _distributed_commands(cfg: RunConfig, final_dir: Path) -> list[str]:
    """command.txt's lines on a multi-process run: how its worker starts the ranks, and the
    command each other node runs."""
    from affiner.runner.run.distributed import ACCELERATE_FILE, launch_argv, node_commands

    d = cfg.distributed
    if not d.enabled:
        return []
    rd = RunDir(final_dir)
    port = d.main_port or 0
    argv = launch_argv(rd, node_rank=d.node_rank, port=port, resume=False)
    lines = [
        f"# That process starts the {d.world_size} ranks ({d.strategy}) with accelerate, from "
        f"{ACCELERATE_FILE} in this folder"
        + (" (port 0: a free one, chosen at launch)" if not port else "")
        + ":",
        shlex.join(argv),
    ]
    if d.nodes > 1 and d.node_rank == 0:
        lines.append(
            f"# This run spans {d.nodes} nodes; run on each other node (same paths there):"
        )
        lines += node_commands(cfg, rd)[1:]
    return lines


def start_run(
    cfg_or_path: RunConfig | str | os.PathLike[str],
    *,
    runs_root: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
    foreground: bool = False,
    preflight: bool | None = None,
) -> RunDir:
    """Create the run folder and start training in a detached process; return the folder.

    With `foreground`, the worker still runs as its own process but this call streams its log
    and waits; use `launch_worker` directly to get its exit code.
    """
    prepared = prepare_run(cfg_or_path, runs_root=runs_root, run_id=run_id, preflight=preflight)
    launch_worker(prepared.run_dir, foreground=foreground)
    return prepared.run_dir


def child_env() -> dict[str, str]:
    """The worker's environment: ours, unbuffered output, and this checkout on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    source_root = str(Path(__file__).resolve().parent.parent)
    if Path(source_root).name not in ("site-packages", "dist-packages"):
        parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if source_root not in parts:
            env["PYTHONPATH"] = os.pathsep.join([source_root, *parts])
    return env


def launch_worker(
    run_dir: RunDir,
    *,
    resume: bool = False,
    foreground: bool = False,
    out: TextIO | None = None,
    message: str = "launching the training process",
) -> int:
    """Start the run's worker detached and record its pid; with `foreground`, follow it.

    Even in the foreground the worker is its own session writing ``train.log``: if this
    terminal goes away the run goes on, and Ctrl-C becomes a graceful stop (see
    `affiner.runner.run.follow.follow_worker`).

    The run folder's lock is taken first and handed to the worker (see the module docstring);
    a resume checks again, under the lock, that the run can be resumed, so of two resumes at
    the same instant exactly one starts a worker.

    Returns:
        0 once a detached worker is started; in the foreground, the worker's exit code.

    Raises:
        RunBusy: another process holds the run (a worker, or a launch under way).
        AffinerError: a resume the run no longer allows (it finished meanwhile).
    """
    from affiner.runner.run.follow import Follower, follow_worker

    purpose: Purpose = "resume" if resume else "train"
    argv = worker_argv(run_dir.path, *(["--resume"] if resume else []))
    lock = acquire(run_dir.path, role="launcher", purpose=purpose)
    try:
        if resume:
            _resumable(run_dir)
        with open(run_dir.log, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"\n=== {stamp} affiner: {shlex.join(argv)}\n".encode())
        follower = Follower(run_dir, out or sys.stdout) if foreground else None
        env = child_env()
        fds: tuple[int, ...] = ()
        if lock is not None:
            env[LOCK_FD_ENV], fds = str(lock.fd), (lock.fd,)
        child = spawn_detached(argv, log_path=run_dir.log, cwd=run_dir.path, env=env, pass_fds=fds)
        if lock is not None:
            lock.record(child.pid, "worker", purpose)  # `stop` finds the worker from now on
        _forget_ended()
        _children[child.pid] = child
        _record_pid(run_dir, child.pid, message)
    finally:
        if lock is not None:
            lock.release()  # the worker's inherited descriptor keeps the run locked
    if follower is None:
        return 0
    code = follow_worker(run_dir, child, follower=follower)
    _children.pop(child.pid, None)
    return code


def _record_pid(run_dir: RunDir, pid: int, message: str) -> None:
    """Put the new worker's pid into ``status.json`` unless the worker already wrote its own."""
    status = read_status(run_dir.path) or RunStatus(run_id=run_dir.run_id)
    if status.pid == pid and status.state != "starting":
        return
    status.state, status.pid, status.message = "starting", pid, message
    status.started = status.started or time.time()
    write_status(run_dir.path, status)


def check_resumable(
    ref: str | RunDir, *, runs_root: str | os.PathLike[str] | None = None
) -> tuple[RunDir, str]:
    """The run to resume and what the resume will do, in words; raises when it cannot be resumed.

    This is the early answer, for the message before a launch; `launch_worker` asks again under
    the run's lock, which settles a race between two resumes.

    Raises:
        RunBusy: another process holds the run's lock (a worker, or a resume under way).
        AffinerError: the run is unknown, still running, already finished, or its ``run.toml``
            no longer loads (it may have been edited since).
    """
    rd = ref if isinstance(ref, RunDir) else resolve_run(ref, runs_root)
    try:
        message = _resumable(rd)
    except AffinerError:
        # A run seen live may be one a racing resume has just started: say who holds it.
        held = holder(rd.path)
        if held is not None:
            raise RunBusy(rd.run_id, held) from None
        raise
    # Asked after the state: a launch that began in between holds the lock by now.
    held = holder(rd.path)
    if held is not None:
        raise RunBusy(rd.run_id, held)
    return rd, message


def _resumable(rd: RunDir) -> str:
    """What a resume of `rd` does, in words; raises when its state does not allow one."""
    from affiner.runner.config import load_config

    summary = summarize(rd)
    if summary.live:
        raise AffinerError(
            f"run {rd.run_id} is still {summary.state} (pid {summary.pid})",
            hint=f"follow it with `affiner attach {rd.run_id}`, or stop it first with `affiner stop {rd.run_id}`",
        )
    if summary.state == "finished":
        raise AffinerError(
            f"run {rd.run_id} already finished; there is nothing to resume",
            hint=f"start a new run from its configuration: `affiner train {rd.config}`",
        )
    if not rd.config.exists():
        raise AffinerError(f"{rd.path} has no run.toml, so it cannot be resumed")
    cfg = load_config(rd.config)  # an edited run.toml must still be valid before anything starts
    if cfg.distributed.nodes > 1:
        raise AffinerError(
            f"run {rd.run_id} spans {cfg.distributed.nodes} nodes, and resuming one is not "
            "supported: each node's folder holds only its own part of a checkpoint",
            hint=f"start a new run from its configuration (`affiner train {rd.config}` on every "
            "node); its last checkpoint is in checkpoints/ on the main node",
        )
    checkpoint = latest_checkpoint(rd)
    if checkpoint is None:
        return "no checkpoint was saved, so the run starts again from step 0"
    return f"resuming from the checkpoint at step {checkpoint[0]}"


def resume_run(
    ref: str | RunDir,
    *,
    runs_root: str | os.PathLike[str] | None = None,
    foreground: bool = False,
) -> RunDir:
    """Continue a stopped, failed or interrupted run in its own folder from its newest checkpoint.

    Raises:
        AffinerError: see `check_resumable` (`RunBusy` when another resume won the race).
    """
    rd, message = check_resumable(ref, runs_root=runs_root)
    launch_worker(rd, resume=True, foreground=foreground, message=message)
    return rd


@dataclass
class StopResult:
    """What `stop_run` did.

    Attributes:
        run_dir: the run.
        state: the run's state afterwards (``stopping`` when it had not ended within the timeout).
        signalled: the signals sent, by name.
        message: one line for people.
    """

    run_dir: RunDir
    state: str
    signalled: list[str] = field(default_factory=list)
    message: str = ""

    @property
    def stopped(self) -> bool:
        return self.state not in ("starting", "running", "stopping")


def stop_run(
    ref_or_rundir: str | RunDir,
    *,
    timeout: float | None = None,
    force: bool = False,
    runs_root: str | os.PathLike[str] | None = None,
) -> StopResult:
    """Ask a run to stop: SIGTERM, then wait for its final state.

    The worker to signal is the holder of the run's lock when there is one (a resume just
    launched has not written ``status.json`` yet; a launch under way is given
    `HANDOVER_SECONDS` to start its worker), else the pid in ``status.json``. The wait ends when
    that process is gone *and* the lock is free, so nothing of the run is still writing.

    Args:
        ref_or_rundir: a run reference (id, unique prefix/suffix, path) or a `RunDir`.
        timeout: seconds to wait for the worker to end (default 120; with `force`, 10 before SIGKILL).
        force: after the grace period, SIGKILL the worker's whole process group; the run is then
            marked ``stopped`` (resume continues from its last checkpoint).

    Raises:
        AffinerError: the pid in ``status.json`` is alive but is not this run's worker, or the
            run's lock is held by a launch that never started a worker, or by another stop.
    """
    rd = (
        ref_or_rundir
        if isinstance(ref_or_rundir, RunDir)
        else resolve_run(ref_or_rundir, runs_root)
    )
    pid = _locked_worker(rd)
    if pid is None:
        summary = summarize(rd)
        if summary.final:
            return StopResult(
                rd,
                summary.state,
                message=f"run {rd.run_id} already {summary.state}; nothing to stop",
            )
        pid = summary.pid
        if not summary.pid_alive or pid is None:
            if pid_alive(pid):
                raise AffinerError(
                    f"status.json of {rd.run_id} names pid {pid}, which is running but is not this run's worker",
                    hint="the pid was probably reused after the worker died; nothing was signalled",
                )
            return StopResult(
                rd,
                summary.state,
                message=f"run {rd.run_id} is not running ({summary.state}); nothing to stop",
            )
    if timeout is None:
        timeout = FORCE_GRACE_SECONDS if force else DEFAULT_STOP_TIMEOUT
    _forget_ended()
    child = _children.get(pid)
    result = StopResult(rd, "stopping")
    send_signal(pid, signal.SIGTERM)
    result.signalled.append("SIGTERM")
    gone = _worker_ended(rd, pid, timeout, child)
    if not gone and force:
        send_signal(pid, signal.SIGKILL, group=True)
        result.signalled.append("SIGKILL")
        gone = _worker_ended(rd, pid, 5.0, child)
    if gone:
        _children.pop(pid, None)
        result.state, after = _settle_final_state(rd, killed="SIGKILL" in result.signalled)
        result.message = f"run {rd.run_id} {result.state}{after}"
        ckpt = latest_checkpoint(rd)
        if ckpt is not None and result.state != "finished" and not after:
            result.message += (
                f"; `affiner train --resume {rd.run_id}` continues from step {ckpt[0]}"
            )
    else:
        result.message = (
            f"run {rd.run_id} is still stopping after {timeout:g} s (saving a checkpoint can take a while); "
            f"check with `affiner runs`, or `affiner stop --force {rd.run_id}`"
        )
    return result


def _locked_worker(rd: RunDir) -> int | None:
    """The pid of the worker that holds the run's lock; None when nobody holds it.

    A launcher holds the lock for the moment between taking it and spawning the worker (or a
    spawned process has not yet become the worker): that is waited for, `HANDOVER_SECONDS` at
    most, so a stop racing a resume stops the resumed worker instead of answering "not running".

    Raises:
        AffinerError: the holder never became a worker within that time, or it is another stop.
    """
    deadline = time.monotonic() + HANDOVER_SECONDS
    held = holder(rd.path)
    while held is not None:
        if held.role == "stop":
            raise AffinerError(
                f"run {rd.run_id} is already being stopped by pid {held.pid}",
                hint="wait for it: `affiner runs` shows the run's state once it has ended",
            )
        if held.role == "worker" and is_worker_of(held.pid, rd.path):
            return held.pid
        if time.monotonic() >= deadline:
            raise _not_handed_over(rd, held)
        time.sleep(0.05)
        held = holder(rd.path)
    return None


def _not_handed_over(rd: RunDir, held: LockHolder) -> AffinerError:
    who = f"pid {held.pid}" if held.pid else "a process that does not say which"
    return AffinerError(
        f"run {rd.run_id} is locked by {who}, which is not its worker "
        f"(it has been {held.doing()} for over {HANDOVER_SECONDS:g} s); nothing was signalled",
        hint=(
            f"try `affiner stop {rd.run_id}` again in a moment; if it stays locked, a process "
            f"left over from its worker still holds {rd.path / '.lock'} (`fuser` names it)"
        ),
    )


def _worker_ended(
    rd: RunDir, pid: int, timeout: float, child: subprocess.Popen[bytes] | None
) -> bool:
    """Within `timeout` seconds: `pid` has exited and nothing holds the run's lock any more."""
    deadline = time.monotonic() + timeout
    if not wait_gone(pid, timeout, child=child):
        return False
    return wait_released(rd.path, deadline - time.monotonic())


def _settle_final_state(rd: RunDir, *, killed: bool) -> tuple[str, str]:
    """After the worker exited: its own final state, or ``stopped`` written on its behalf; and
    what happened since, when another launch took the run over at once ("" otherwise).

    A worker killed by SIGKILL, or stopped before it installed its SIGTERM handler (still
    loading the model), never writes a final state; without one the run would read as
    ``interrupted``. It was stopped on purpose, so say so in both status and events. That is
    written under the run's lock, so it never lands in a run a new worker has just taken.
    """
    # A worker that exited on its own wrote status.json before exiting; a killed one never will.
    deadline = time.monotonic() + (0.0 if killed else 2.0)
    while True:
        status = read_status(rd.path)
        if status is not None and status.final:
            return status.state, ""
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    how = (
        "killed (SIGKILL) by `affiner stop --force`"
        if killed
        else "stopped by `affiner stop` before it saved"
    )
    try:
        lock = acquire(rd.path, role="stop", purpose="train")
    except RunBusy as busy:
        return "stopped", f", and was started again at once ({busy.message})"
    try:
        status = read_status(rd.path) or RunStatus(run_id=rd.run_id)
        if status.final:
            return status.state, ""
        status.state, status.message = "stopped", how
        with EventWriter(rd.path) as writer:
            writer.write(RunFinished(state="stopped", step=status.step, message=how))
        write_status(rd.path, status)
    finally:
        if lock is not None:
            lock.release()
    return "stopped", ""
