"""The playground's models in their own process: ``python -m affiner.runner.chat RUN_DIR``.

Loaded inside the TUI, torch, the model's memory and a CUDA context would stay there for the
rest of its life. So `affiner.runner.inference.ChatProcess` starts this module in its own
session, and it loads the run's `ChatSession` once and answers requests, one JSON object a
line each way (the protocol is `ChatProcess`'s; this module is its other end).

Requests, on stdin:
    ``{"op": "stream", "id": 1, "messages": [...], "use_adapter": true,
    "max_new_tokens": 256, "temperature": 0.7}``: a chat turn.
    ``{"op": "classify", "id": 2, "texts": ["..."], "use_adapter": true}``: labels.
    ``{"op": "cancel", "id": 1}``: stop that turn's generation (read while it runs).

Answers, on stdout:
    ``{"type": "ready", "base": ..., "adapter": ..., "task": ..., "labels": [...],
    "base_head_untrained": ..., "device": ..., "has_chat_template": ...}`` once loaded
    (``base_head_untrained``: a classifier's base side has a new, random head), or
    ``{"type": "error", "message": ...}`` and exit code 2 (a configuration or weights
    problem) or 1 (a crash).
    ``{"type": "piece", "id": 1, "text": "..."}`` as a reply is written, then
    ``{"type": "done", "id": 1, "stopped": false}``.
    ``{"type": "predictions", "id": 2, "predictions": [{"label": ..., "probabilities": {...}}]}``.
    ``{"type": "error", "id": 1, "message": ..., "hint": ..., "where": ...}``: that request
    failed, in words (an `AffinerError`'s fields; a crash's traceback goes to stderr, the
    caller's log file); the process goes on serving.

End of stdin ends the process once the requests read are answered; with ``--exit-with-parent``
(what `ChatProcess` passes) it ends at once, stopping a reply midway: the caller holds the pipe's
other end until it exits, however it exits. SIGINT ends it too (exit code 130).

Only what is written through the protocol reaches stdout: file descriptor 1 is pointed at
stderr before anything is loaded, so a library's print cannot break a line of the protocol.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from affiner.planner.errors import AffinerError

#: Seconds the process may take to leave after its caller has gone, before it exits outright
#: (a model still loading cannot be interrupted; nothing here needs cleaning up).
PARENT_GONE_GRACE_SECONDS = 10.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m affiner.runner.chat",
        description="Load a run's tuned model (and its base) once and answer JSON-line requests.",
    )
    parser.add_argument("run_dir", help="the run folder (holds run.toml and the saved weights)")
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when available), cpu or cuda (default auto)"
    )
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop at once when stdin closes (the caller has gone), even midway through a reply",
    )
    return parser


class _Channel:
    """The protocol's stdout: whole lines, flushed, one writer at a time."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"type": kind, **fields}, ensure_ascii=False)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


def _take_stdout() -> IO[str]:
    """A private copy of stdout for the protocol; fd 1 and `sys.stdout` then write to stderr."""
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


class _Requests(threading.Thread):
    """Reads stdin in the background, so a cancel (or the caller's going) is seen mid-reply."""

    def __init__(self, stdin: IO[str], exit_with_parent: bool) -> None:
        super().__init__(name="affiner-chat-requests", daemon=True)
        self._stdin = stdin
        self._exit_with_parent = exit_with_parent
        self.queue: queue.Queue[dict[str, Any] | str | None] = queue.Queue()
        self.parent_gone = threading.Event()
        self._cancelled: set[Any] = set()
        self._lock = threading.Lock()

    def run(self) -> None:
        for line in self._stdin:
            if not line.strip():
                continue
            try:
                request = json.loads(line)
            except json.JSONDecodeError as exc:
                self.queue.put(f"a request is not JSON ({exc.msg}): {line.strip()[:80]}")
                continue
            if not isinstance(request, dict):
                self.queue.put(f"a request is not a JSON object: {line.strip()[:80]}")
            elif request.get("op") == "cancel":
                with self._lock:
                    self._cancelled.add(request.get("id"))
            else:
                self.queue.put(request)
        if self._exit_with_parent:
            self.parent_gone.set()
            threading.Thread(target=_exit_later, name="affiner-chat-exit", daemon=True).start()
        self.queue.put(None)

    def cancelled(self, request_id: Any) -> bool:
        if self.parent_gone.is_set():
            return True
        with self._lock:
            return request_id in self._cancelled

    def forget(self, request_id: Any) -> None:
        with self._lock:
            self._cancelled.discard(request_id)


def _exit_later(grace: float = PARENT_GONE_GRACE_SECONDS) -> None:
    time.sleep(grace)
    os._exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # SIGINT is how a caller stops this process; make it raise even when inherited ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    channel = _Channel(_take_stdout())
    requests = _Requests(sys.stdin, args.exit_with_parent)
    requests.start()
    try:
        session = _load(Path(args.run_dir).expanduser().resolve(), args.device, channel)
        if session is None:
            return 2
        while not requests.parent_gone.is_set():
            request = requests.queue.get()
            if request is None:
                return 0
            if isinstance(request, str):
                channel.send("error", id=None, message=request)
                continue
            _serve(session, request, channel, requests)
        return 0
    except KeyboardInterrupt:
        return 130
    except _Crash:
        return 1


class _Crash(Exception):
    """Loading crashed (the message was sent and the traceback written to stderr)."""


def _load(run_dir: Path, device: str, channel: _Channel) -> Any:
    """The loaded session, or None after sending the reason (a crash raises `_Crash`)."""
    try:
        from affiner.runner.inference import ChatSession

        session = ChatSession.from_run(run_dir, device=device).load()
    except AffinerError as exc:
        channel.send("error", **_words(exc))
        return None
    except Exception as exc:
        traceback.print_exc()
        channel.send("error", message=f"loading the models crashed: {_first_line(exc)}")
        raise _Crash from exc
    channel.send(
        "ready",
        base=session.base,
        adapter=str(session.adapter) if session.adapter is not None else None,
        task=session.task,
        labels=list(session.labels),
        base_head_untrained=session.base_head_untrained,
        device=session.device,
        has_chat_template=bool(getattr(session.tokenizer, "chat_template", None)),
    )
    return session


def _serve(session: Any, request: dict[str, Any], channel: _Channel, requests: _Requests) -> None:
    """Answer one request; its failure is sent in words and the process goes on."""
    request_id = request.get("id")
    op = request.get("op")
    try:
        if op == "stream":
            stopped = False

            def stop() -> bool:
                nonlocal stopped
                stopped = stopped or requests.cancelled(request_id)
                return stopped

            for piece in session.stream(
                request.get("messages") or [],
                use_adapter=bool(request.get("use_adapter", True)),
                max_new_tokens=int(request.get("max_new_tokens", 256)),
                temperature=float(request.get("temperature", 0.7)),
                stop=stop,
            ):
                if piece:
                    channel.send("piece", id=request_id, text=piece)
            channel.send("done", id=request_id, stopped=stopped)
        elif op == "classify":
            predictions = session.classify(
                [str(text) for text in request.get("texts") or []],
                use_adapter=bool(request.get("use_adapter", True)),
            )
            channel.send("predictions", id=request_id, predictions=[asdict(p) for p in predictions])
        else:
            channel.send("error", id=request_id, message=f"unknown request {op!r}")
    except AffinerError as exc:
        channel.send("error", id=request_id, **_words(exc))
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        traceback.print_exc()
        channel.send("error", id=request_id, message=f"the model failed: {_first_line(exc)}")
    finally:
        requests.forget(request_id)


def _words(exc: AffinerError) -> dict[str, Any]:
    """An `AffinerError` as the fields of an ``error`` answer (the caller raises it again)."""
    fields: dict[str, Any] = {"message": exc.message}
    if exc.hint:
        fields["hint"] = exc.hint
    if exc.where:
        fields["where"] = exc.where
    return fields


def _first_line(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
