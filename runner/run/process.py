"""The training process as an OS process: start it detached, tell whether it lives, signal it.

A run's worker is started in its own session (``start_new_session=True``), so closing the
terminal or the SSH connection that launched it sends it no SIGHUP, and Ctrl-C in that
terminal never reaches it. Its pid is recorded in ``status.json``. Pids are recycled, though
(after a reboot, or days later), so before signalling a pid we check that the process there
really is *this run's* worker: its command line must name ``affiner.runner.worker`` and the run folder.

Only the standard library and psutil: this module is imported by the CLI and the TUI.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

#: The module the detached training process runs (``python -m affiner.runner.worker RUN_DIR``).
WORKER_MODULE = "affiner.runner.worker"
#: Every name a worker's command line may carry: 0.1 installed the rooms as top-level packages,
#: so a run it started shows ``-m runner.worker`` and must still be recognised (to be stopped).
WORKER_MODULES = (WORKER_MODULE, "runner.worker")


def pid_alive(pid: int | None) -> bool:
    """True when a process with this pid exists and has not exited.

    A zombie (exited, not yet reaped by its parent) counts as gone: it will never write
    another event, and that is what callers want to know.
    """
    if not pid or pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        # AccessDenied means it exists but belongs to someone else: not our worker either way.
        return False


def is_worker_of(pid: int | None, run_dir: str | os.PathLike[str]) -> bool:
    """True when `pid` is a live ``affiner.runner.worker`` process for the run in `run_dir`.

    Guards every signal against pid reuse: a pid from an old ``status.json`` may belong to an
    unrelated process now. The check matches the resolved run folder against the command
    line's arguments (the launcher always passes an absolute path).
    """
    if not pid_alive(pid):
        return False
    try:
        cmdline = psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    if not any(name in cmdline for name in WORKER_MODULES):
        return False
    target = _resolved(run_dir)
    return any(_resolved(arg) == target for arg in cmdline if os.sep in arg)


def _resolved(path: str | os.PathLike[str]) -> str:
    try:
        return str(Path(path).expanduser().resolve())
    except (OSError, RuntimeError):
        return str(path)


def worker_argv(
    run_dir: str | os.PathLike[str], *extra: str, python: str | None = None
) -> list[str]:
    """The command that runs a run's worker: ``python -m affiner.runner.worker RUN_DIR [extra...]``."""
    import sys

    return [python or sys.executable, "-m", WORKER_MODULE, _resolved(run_dir), *extra]


def spawn_detached(
    argv: Sequence[str],
    *,
    log_path: str | os.PathLike[str],
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    stdin: int = subprocess.DEVNULL,
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    """Start `argv` in a new session, stdin from /dev/null, stdout and stderr appended to `log_path`.

    The child keeps running when the caller exits, the terminal closes or the SSH connection
    drops. File descriptors other than 0-2 are closed so the child holds no pipe of ours.
    With ``stdin=subprocess.PIPE`` it holds one on purpose: the pipe closes when the caller
    ends, however it ends, and a worker started with ``--exit-with-parent`` then stops (a
    pre-flight must not outlive the TUI that asked for it). `pass_fds` are kept open in the
    child on purpose too: the run folder's lock, which the worker holds from then on.

    While the caller lives, the child is still its child: one that ends by itself (a run that
    finishes while the TUI that started it stays open) would linger as a zombie of the caller.
    So a daemon thread waits on it (`reap_when_done`); ``poll()``, ``wait()`` and ``returncode``
    work as usual, and other subprocesses of the caller are left alone.
    """
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            list(argv),
            stdin=stdin,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            close_fds=True,
            pass_fds=tuple(pass_fds),
        )
    reap_when_done(child)
    return child


def reap_when_done(child: subprocess.Popen[bytes]) -> threading.Thread:
    """Reap `child` the moment it exits, from a daemon thread that ``wait()``s on it.

    ``Popen.wait`` waits for this one pid under the Popen's own lock, so it neither steals the
    exit status of other children (as a SIGCHLD handler or ``waitpid(-1)`` would from
    ``subprocess.run`` elsewhere) nor races the caller's own ``poll()``/``wait()`` on `child`.
    """
    thread = threading.Thread(target=child.wait, name=f"affiner-reap-{child.pid}", daemon=True)
    thread.start()
    return thread


def send_signal(pid: int, sig: int, *, group: bool = False) -> bool:
    """Send `sig` to `pid` (or, with `group`, to its whole process group). False if it is gone.

    The worker leads its own session, so its process group holds it and whatever it started
    (data loader workers, torchrun's ranks): a forced stop kills the group so nothing is
    left holding GPU memory.
    """
    try:
        if group:
            os.killpg(os.getpgid(pid), sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_gone(
    pid: int, timeout: float, *, poll: float = 0.1, child: subprocess.Popen | None = None
) -> bool:
    """Wait until `pid` has exited; True if it did within `timeout` seconds.

    Pass `child` when the caller started the process, so it is reaped (and does not linger as a
    zombie) the moment it exits.
    """
    deadline = time.monotonic() + max(timeout, 0.0)
    while True:
        if child is not None and child.poll() is not None:
            return True
        if not pid_alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def stop_process_group(child: subprocess.Popen, grace: float) -> None:
    """SIGINT to `child`'s process group (it leads one), then SIGKILL if it is still there.

    For the children a screen starts and must not outlive (the pre-flight, the playground's
    model): SIGINT lets them leave through their ``finally`` blocks, SIGKILL after `grace`
    seconds makes sure nothing is left holding a model or GPU memory.
    """
    if child.poll() is not None:
        return
    send_signal(child.pid, signal.SIGINT, group=True)
    if not wait_gone(child.pid, grace, child=child):
        send_signal(child.pid, signal.SIGKILL, group=True)
        wait_gone(child.pid, 5.0, child=child)


def exit_words(code: int) -> str:
    """How a child ended, in words: ``exited with code 1``, ``was killed by SIGKILL (...)``."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = " (out of memory? the system kills the largest process)" if code == -9 else ""
        return f"was killed by {name}{why}"
    return f"exited with code {code}"
