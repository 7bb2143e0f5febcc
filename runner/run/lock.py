"""One writer per run folder: an OS lock on ``<run>/.lock`` that a worker holds for its whole life.

Two resumes of one run at the same instant both read "stopped" in ``status.json``, both
started a worker, and the run logged its steps twice; a pid in a status file cannot prevent
that, as it is written only after the spawn. An OS lock can: ``flock`` is taken atomically by
exactly one open file, and the kernel drops it when the last descriptor of that file closes,
however its process ends (``kill -9`` and the OOM killer included). So a stale lock file left
by a dead worker blocks nobody; only a live holder does.

The launcher takes the lock *before* it spawns the worker and hands the locked descriptor to
the child (`LOCK_FD_ENV` names it; a lock follows its open file description across fork and
exec), so there is no moment when the run is unlocked between the check and the worker. The
worker `adopt`s it (or takes it itself when started by hand from ``command.txt``) and holds it
until it exits. The file names its holder (pid, launcher or worker, train or resume), so the
loser of a race, and `affiner stop`, can say who holds the run.

Linux and other POSIX systems; where the file system refuses ``flock`` (some network mounts),
`acquire` returns None and the run goes on unlocked, as before this lock existed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from affiner.planner.errors import AffinerError

#: The lock file's name inside a run folder (hidden: it is not part of the run's results).
LOCK_FILE = ".lock"
#: The environment variable that tells a worker which inherited descriptor holds its lock.
LOCK_FD_ENV = "AFFINER_RUN_LOCK_FD"
#: How long `acquire` keeps trying: another process's `holder` check holds the lock for
#: microseconds, and must not make a launch fail. A real holder keeps it far longer.
ACQUIRE_PATIENCE_SECONDS = 0.3

Role = Literal["launcher", "worker", "stop"]
Purpose = Literal["train", "resume", "preflight"]


@dataclass(frozen=True)
class LockHolder:
    """Who holds a run's lock, as its lock file says.

    Attributes:
        pid: the holder's process id (0 when the file does not say: it was just taken).
        role: ``launcher`` while affiner is starting the worker, then ``worker``; ``stop`` while
            `affiner stop` writes the final state of a worker that ended without one.
        purpose: what the worker does: ``train``, ``resume`` or ``preflight``.
        since: when it took or adopted the lock (unix time).
    """

    pid: int = 0
    role: str = "worker"
    purpose: str = "train"
    since: float = 0.0

    def doing(self) -> str:
        """``being resumed``, ``being started``, ``running``: what the holder is doing to the run."""
        if self.role == "stop":
            return "being stopped"
        if self.purpose == "resume":
            return "already being resumed"
        if self.purpose == "preflight":
            return "already running a pre-flight check"
        return "being started" if self.role == "launcher" else "already running"


class RunBusy(AffinerError):
    """Another process holds the run folder's lock: a second worker must not start.

    Attributes:
        holder: who holds it (as far as its lock file tells).
    """

    def __init__(self, run_id: str, holder: LockHolder) -> None:
        by = f" by pid {holder.pid}" if holder.pid else ""
        hint = (
            f"follow it with `affiner attach {run_id}`; to start it afresh, stop it first "
            f"with `affiner stop {run_id}`, then resume"
        )
        if holder.role == "stop":
            hint = "wait for the stop to end (`affiner runs` shows it), then try again"
        super().__init__(f"run {run_id} is {holder.doing()}{by}", hint=hint)
        self.holder = holder


class RunLock:
    """A held lock on one run folder; it is released when `release` closes the descriptor, or when
    the process ends. Use it as a context manager, or keep it for the life of the process."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    def record(self, pid: int, role: Role, purpose: Purpose) -> None:
        """Write who holds the lock into the lock file (for the loser's message and `stop`)."""
        data = {"pid": pid, "role": role, "purpose": purpose, "since": time.time()}
        payload = (json.dumps(data) + "\n").encode("utf-8")
        with contextlib.suppress(OSError):  # the lock holds even if its note cannot be written
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, payload, 0)

    def release(self) -> None:
        """Close this process's descriptor (a child that inherited it keeps the lock)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_path(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / LOCK_FILE


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _try_flock(fd: int, kind: int) -> bool | None:
    """True when the lock was taken, False when another holds it, None when flock is refused."""
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        return None  # ENOLCK, EOPNOTSUPP...: a file system without locks
    return True


def acquire(
    run_dir: str | os.PathLike[str],
    *,
    role: Role,
    purpose: Purpose,
    patience: float = ACQUIRE_PATIENCE_SECONDS,
) -> RunLock | None:
    """Take the run folder's lock without waiting for a holder, and record who holds it.

    Returns:
        The lock; None where the file system cannot lock (the caller goes on unlocked).

    Raises:
        RunBusy: another live process holds it (its message says who and what to do).
        AffinerError: the lock file cannot be created (a read-only or missing run folder).
    """
    path = lock_path(run_dir)
    try:
        fd = _open(path)
    except OSError as exc:
        raise AffinerError(
            f"cannot open the run's lock file {path}: {exc.strerror}",
            hint="the run folder must exist and be writable by you",
        ) from None
    deadline = time.monotonic() + patience
    while True:
        taken = _try_flock(fd, fcntl.LOCK_EX)
        if taken is None:
            os.close(fd)
            return None
        if taken:
            lock = RunLock(path, fd)
            lock.record(os.getpid(), role, purpose)
            return lock
        if time.monotonic() >= deadline:
            os.close(fd)
            raise RunBusy(Path(run_dir).name, _read_holder(path))
        time.sleep(0.02)


def adopt(run_dir: str | os.PathLike[str], *, purpose: Purpose) -> RunLock | None:
    """In the worker: the lock its launcher handed down (`LOCK_FD_ENV`), else one it takes now.

    The inherited descriptor is checked to be this run's lock file and to hold the lock; it is
    made non-inheritable again, so the worker's own children (torchrun's ranks) do not keep the
    run locked after it ends. The variable is removed, for the same reason.

    Raises:
        RunBusy: no lock was handed down and another process holds it.
    """
    path = lock_path(run_dir)
    raw = os.environ.pop(LOCK_FD_ENV, "")
    fd = int(raw) if raw.isdigit() else -1
    if fd >= 0 and _is_lock_file(fd, path) and _try_flock(fd, fcntl.LOCK_EX):
        with contextlib.suppress(OSError):
            os.set_inheritable(fd, False)
        lock = RunLock(path, fd)
        lock.record(os.getpid(), "worker", purpose)
        return lock
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)
    lock = acquire(run_dir, role="worker", purpose=purpose)
    return lock


def _is_lock_file(fd: int, path: Path) -> bool:
    try:
        held, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)


def holder(run_dir: str | os.PathLike[str]) -> LockHolder | None:
    """Who holds the run's lock now; None when nobody does (a stale lock file included).

    The test takes a shared lock for an instant on a descriptor of its own: it fails only while
    a holder has it. `acquire` retries briefly, so this never makes a launch fail.
    """
    path = lock_path(run_dir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # no lock file: never locked
    try:
        free = _try_flock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)
    if free is not False:
        return None
    return _read_holder(path)


def wait_released(run_dir: str | os.PathLike[str], timeout: float, *, poll: float = 0.05) -> bool:
    """Wait until nobody holds the run's lock; True if that happened within `timeout` seconds."""
    deadline = time.monotonic() + max(timeout, 0.0)
    while holder(run_dir) is not None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True


def _read_holder(path: Path) -> LockHolder:
    """What the lock file says about its holder; the fields it lacks or garbles keep defaults.

    A holder that has just taken the lock may not have written its note yet: a short wait
    lets the message name it.
    """
    for _ in range(10):
        try:
            data = json.loads(path.read_bytes() or b"null")
        except (OSError, ValueError, RecursionError):
            data = None
        if isinstance(data, dict):
            pid, role, purpose, since = (data.get(k) for k in ("pid", "role", "purpose", "since"))
            return LockHolder(
                pid=pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else 0,
                role=role if role in ("launcher", "worker", "stop") else "worker",
                purpose=purpose if purpose in ("train", "resume", "preflight") else "train",
                since=since
                if isinstance(since, (int, float)) and not isinstance(since, bool)
                else 0.0,
            )
        time.sleep(0.01)
    return LockHolder()
