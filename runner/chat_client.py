"""The TUI's client for the chat child: `ChatProcess`, standard library only.

The playground must never hold torch, the model's memory or a CUDA context, so it talks to
the run's models through a child process, ``python -m affiner.runner.chat RUN_DIR`` (the
other end, in ``runner/chat.py``, which documents the protocol). This module is that client,
importing only the standard library (and affiner's light modules), so importing it costs the
TUI nothing. It also holds what the client and `affiner.runner.inference` share: `Message`,
`Prediction`, `find_adapter` and the run's chat settings; `affiner.runner.inference` imports
them from here and re-exports `ChatProcess`, so ``from affiner.runner.inference import
ChatProcess`` keeps working (the TUI imports it from there, the runner's face for it).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affiner.planner.errors import AffinerError
from affiner.runner.run import child_env, exit_words, saved_weights, stop_process_group

Message = dict[str, str]


@dataclass(frozen=True)
class Prediction:
    """One text's predicted class and every class's probability (they sum to 1)."""

    label: str
    probabilities: dict[str, float]


def find_adapter(run_dir: str | Path) -> Path:
    """The weights a run left: ``adapter/``, else the best checkpoint, else the newest complete one.

    The folders and their order are `affiner.runner.run.saved_weights`'s; the first that
    holds a model (``adapter_config.json`` or ``config.json``) is the answer.

    Raises:
        AffinerError: the run has saved nothing yet.
    """
    root = Path(run_dir)
    for folder in saved_weights(root):
        if (folder / "adapter_config.json").exists() or (folder / "config.json").exists():
            return folder
    raise AffinerError(
        f"the run in {root} has no saved weights yet",
        hint="wait for the first checkpoint (or the end of training), then open the playground again",
        where=str(root),
    )


def _run_settings(run_dir: str | Path) -> dict[str, Any]:
    """What chatting with a run loads (base, weights, task, labels), read from its ``run.toml``.

    Raises:
        AffinerError: the configuration cannot be read, or the run has saved nothing yet.
    """
    from affiner.runner.config import load_config
    from affiner.runner.run import RunDir

    run = RunDir(Path(run_dir))
    cfg = load_config(run.config)
    return {
        "base": cfg.model.name_or_path,
        "adapter": find_adapter(run.path),
        "task": cfg.model.task,
        "labels": cfg.data.labels,
        "trust_remote_code": cfg.model.trust_remote_code,
    }


#: The module the chat process runs (`affiner.runner.chat`).
CHAT_MODULE = "affiner.runner.chat"
#: Seconds the chat process gets to leave once its stdin closes, then SIGINT, then SIGKILL.
CHAT_STOP_GRACE_SECONDS = 5.0
#: Exit codes after which the chat process's log says nothing worth keeping (it ended as
#: asked, or said why in words): 0, a load error (2), SIGINT (130, or killed by it).
_CLEAN_EXITS = (0, 2, 130, -2)


class ChatProcess:
    """`ChatSession`'s calls (`load`, `stream`, `generate`, `classify`) answered by a child process.

    The child (``python -m affiner.runner.chat RUN_DIR --exit-with-parent``) runs in its own
    session with its stdin and stdout as pipes, one JSON object a line each way; it loads the
    models once, on `load`. Its errors come back as `AffinerError` in its words; if it dies, the
    error says how, and its log (stderr, in the temporary folder) is kept and named.

    The child ends with `close` (stdin closed, then SIGINT, then SIGKILL to its group), when
    this object is garbage-collected or this interpreter exits, and, when the caller dies
    outright, because the closed stdin pipe ends a child started with ``--exit-with-parent``.

    Only the standard library is imported here: the TUI uses this.

    Args:
        run_dir: the run folder; its ``run.toml`` says the base, task and labels, and its saved
            weights (`find_adapter`) are loaded. Both are read now, so a run with nothing saved
            fails here, before a process is started.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``, for the child.
        python: the interpreter for the child (default this one).
    """

    def __init__(
        self, run_dir: str | Path, *, device: str = "auto", python: str | None = None
    ) -> None:
        self.run_dir = Path(run_dir).expanduser().resolve()
        settings = _run_settings(self.run_dir)
        self.base: str = str(settings["base"])
        self.adapter: Path | None = settings["adapter"]
        self.task: str = settings["task"]
        self.labels: list[str] = list(settings["labels"])
        #: whether a classifier's base side has a new, random head (known once loaded)
        self.base_head_untrained: bool | None = None
        self.requested_device = device
        self.device: str | None = None  # the child's, once loaded
        self.python = python
        self.log: Path | None = None
        self._ready: dict[str, Any] = {}
        self._child: subprocess.Popen[str] | None = None
        self._stopper: weakref.finalize | None = None
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # one request (and its answer) at a time
        self._closed = False

    @classmethod
    def from_run(cls, run_dir: str | Path, **kwargs: Any) -> ChatProcess:
        """The same as the constructor; named as `ChatSession.from_run` is."""
        return cls(run_dir, **kwargs)

    @property
    def is_peft(self) -> bool:
        return self.adapter is not None and (self.adapter / "adapter_config.json").exists()

    @property
    def has_chat_template(self) -> bool:
        self.load()
        return bool(self._ready.get("has_chat_template"))

    @property
    def pid(self) -> int | None:
        """The child's process id, once started."""
        return self._child.pid if self._child is not None else None

    # -- the child -------------------------------------------------------------------------
    def load(self) -> ChatProcess:
        """Start the child and wait until it has loaded the models (once; later calls return).

        Raises:
            AffinerError: the child could not load them (its words), or it died.
        """
        with self._lock:
            if self._closed:
                raise AffinerError("this chat was closed", hint="open the run again")
            if self._child is None:
                self._start()
            elif self._child.poll() is not None:
                raise self._died()
        return self

    def _start(self) -> None:
        argv = [
            self.python or sys.executable,
            "-m",
            CHAT_MODULE,
            str(self.run_dir),
            "--device",
            self.requested_device,
            "--exit-with-parent",
        ]
        fd, name = tempfile.mkstemp(prefix=f"affiner-chat-{self.run_dir.name}-", suffix=".log")
        self.log = Path(name)
        with os.fdopen(fd, "w", encoding="utf-8") as log:
            log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} affiner: {' '.join(argv)}\n")
            log.flush()
            self._child = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=self.run_dir,
                env=child_env(),
                start_new_session=True,
                close_fds=True,
                text=True,
                encoding="utf-8",
                bufsize=1,
            )
        self._stopper = weakref.finalize(self, _stop_child, self._child, self.log)
        answer = self._read()
        if answer.get("type") != "ready":
            self._closed = True
            self._stopper()
            raise _error(answer)
        self._ready = answer
        self.device = answer.get("device")
        # the child knows the label names training found when run.toml lists none
        self.labels = list(answer.get("labels") or self.labels)
        self.base_head_untrained = answer.get("base_head_untrained")

    def close(self) -> None:
        """Stop the child (if started) and give its memory back; later calls raise."""
        self._closed = True
        if self._stopper is not None:
            self._stopper()

    def __enter__(self) -> ChatProcess:
        return self.load()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ---------------------------------------------------------------------------
    def stream(
        self,
        messages: Sequence[Message],
        use_adapter: bool = True,
        max_new_tokens: int = 256,
        temperature: float = 0.7,
    ) -> Iterator[str]:
        """Yield the reply piece by piece as the child's model writes it (see `ChatSession.stream`).

        Leaving the loop early (closing the iterator) cancels the reply: the child stops
        generating and the next request starts at once.
        """
        self.load()
        with self._lock:
            request_id = self._send(
                "stream",
                messages=[dict(m) for m in messages],
                use_adapter=use_adapter,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
            )
            finished = False
            try:
                while True:
                    answer = self._answer_to(request_id)
                    if answer["type"] == "piece":
                        yield str(answer.get("text", ""))
                    elif answer["type"] == "done":
                        finished = True
                        return
                    else:
                        finished = True
                        raise _error(answer)
            finally:
                if not finished:
                    self._abandon(request_id)

    def generate(self, messages: Sequence[Message], use_adapter: bool = True, **kwargs: Any) -> str:
        """The whole reply at once (`stream` joined)."""
        return "".join(self.stream(messages, use_adapter, **kwargs))

    def classify(self, texts: Sequence[str], use_adapter: bool = True) -> list[Prediction]:
        """Each text's predicted label with the probability of every label (see `ChatSession.classify`)."""
        self.load()
        with self._lock:
            request_id = self._send("classify", texts=list(texts), use_adapter=use_adapter)
            answer = self._answer_to(request_id)
        if answer["type"] != "predictions":
            raise _error(answer)
        return [
            Prediction(str(p["label"]), {str(k): float(v) for k, v in p["probabilities"].items()})
            for p in answer.get("predictions", [])
        ]

    # -- the pipes -------------------------------------------------------------------------
    def _send(self, op: str, **fields: Any) -> int:
        request_id = next(self._ids)
        child = self._child
        assert child is not None and child.stdin is not None
        try:
            child.stdin.write(json.dumps({"op": op, "id": request_id, **fields}) + "\n")
            child.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise self._died() from None
        return request_id

    def _read(self) -> dict[str, Any]:
        """The child's next answer; its end (it died, or was stopped) raises `AffinerError`."""
        child = self._child
        assert child is not None and child.stdout is not None
        while True:
            try:
                line = child.stdout.readline()
            except (OSError, ValueError):
                line = ""
            if not line:
                raise self._died()
            try:
                answer = json.loads(line)
            except json.JSONDecodeError:
                continue  # not the protocol's (the child sends only whole JSON lines)
            if isinstance(answer, dict) and "type" in answer:
                return answer

    def _answer_to(self, request_id: int) -> dict[str, Any]:
        """The next answer to `request_id` (an answer to an abandoned request is skipped)."""
        while True:
            answer = self._read()
            if answer.get("id") == request_id or answer.get("id") is None:
                return answer

    def _abandon(self, request_id: int) -> None:
        """Cancel a reply nobody reads any more and wait for its end, so the next one is clean."""
        child = self._child
        if child is None or child.stdin is None or self._closed:
            return
        with contextlib.suppress(AffinerError, BrokenPipeError, OSError, ValueError):
            child.stdin.write(json.dumps({"op": "cancel", "id": request_id}) + "\n")
            child.stdin.flush()
            while self._answer_to(request_id)["type"] == "piece":
                pass

    def _died(self) -> AffinerError:
        if self._closed:
            return AffinerError("this chat was closed", hint="open the run again")
        child = self._child
        code = None
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = child.wait(timeout=5)
        how = exit_words(code) if code is not None else "stopped answering"
        return AffinerError(
            f"the chat process {how}",
            hint=f"its log is {self.log}" if self.log is not None else None,
        )


def _error(answer: dict[str, Any]) -> AffinerError:
    """The child's ``error`` answer, raised again here as it was raised there."""
    if answer.get("type") != "error":
        return AffinerError(f"the chat process answered {answer.get('type')!r} out of turn")
    return AffinerError(
        str(answer.get("message") or "the chat process failed"),
        hint=answer.get("hint"),
        where=answer.get("where"),
    )


def _stop_child(
    child: subprocess.Popen[str], log: Path | None, grace: float = CHAT_STOP_GRACE_SECONDS
) -> None:
    """End the chat process: close its stdin (it leaves by itself), then SIGINT, then SIGKILL.

    Its log is removed when it ended cleanly, kept (for its traceback) when it did not.
    """
    with contextlib.suppress(OSError, ValueError):
        if child.stdin is not None:
            child.stdin.close()
    try:
        child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        stop_process_group(child, grace)
    with contextlib.suppress(OSError, ValueError):
        if child.stdout is not None:
            child.stdout.close()
    if log is not None and child.poll() in _CLEAN_EXITS:
        log.unlink(missing_ok=True)
