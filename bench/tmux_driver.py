"""Drive a real terminal: start a command in a detached tmux session and read its screen.

Shared by the end-to-end test and ``bench/tui_startup.py``. Each session gets its own
tmux server socket (``-L``), so nothing touches a user's tmux.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Mapping


def tmux_available() -> bool:
    return shutil.which("tmux") is not None


def app_env(repo: str, **extra: str) -> dict[str, str]:
    """The environment affiner runs with inside tmux: the checkout on the path, a colour
    terminal, no hub, and only the caller's PATH and HOME from this process (plus `extra`)."""
    return {
        "PYTHONPATH": repo,
        "TERM": "xterm-256color",
        "HF_HUB_OFFLINE": "1",
        **extra,
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
    }


class TmuxSession:
    """One detached tmux session running ``argv`` at a fixed size."""

    def __init__(
        self,
        argv: list[str],
        *,
        env: Mapping[str, str],
        cwd: str,
        width: int = 80,
        height: int = 24,
    ) -> None:
        self.socket = f"affiner-{uuid.uuid4().hex[:8]}"
        self.name = "affiner"
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        command = f"cd {shlex.quote(cwd)} && env {exports} {shlex.join(argv)}"
        self._tmux(
            "new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height), command
        )

    def _tmux(self, *args: str) -> str:
        out = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10
        )
        return out.stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", self.name)

    def send(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", self.name, *keys)

    def wait_for(self, text: str, timeout: float = 20.0, poll: float = 0.02) -> float:
        """Seconds until ``text`` is on the screen; raises TimeoutError with the screen."""
        start = time.perf_counter()
        while True:
            if text in self.screen():
                return time.perf_counter() - start
            if time.perf_counter() - start > timeout:
                raise TimeoutError(f"{text!r} not on screen after {timeout}s:\n{self.screen()}")
            time.sleep(poll)

    def wait_for_prose(self, text: str, timeout: float = 20.0, poll: float = 0.5) -> float:
        """Like `wait_for`, with the screen read as prose: a sentence the app wraps over two
        lines still counts (lines joined, borders and runs of spaces collapsed)."""
        start = time.perf_counter()
        while True:
            screen = self.screen()
            prose = " ".join(" ".join(line.strip(" ▊▎").split()) for line in screen.splitlines())
            if text in prose:
                return time.perf_counter() - start
            if time.perf_counter() - start > timeout:
                raise TimeoutError(f"{text!r} not on screen after {timeout}s:\n{screen}")
            time.sleep(poll)

    def alive(self) -> bool:
        return self.name in self._tmux("list-sessions", "-F", "#{session_name}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)

    def __enter__(self) -> TmuxSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
