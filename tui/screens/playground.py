"""The playground: ask the tuned model and its base model the same thing, side by side.

The chat session (`affiner.runner.inference.ChatProcess`, through `Services.chat_session`) loads
the base model and the run's adapter once, in a child process started from a thread worker:
the TUI never imports torch. The session is closed (its process stopped, its memory given
back) when another run is opened and when the screen goes away. Each question is answered by the tuned model, then by the base model (the
same loaded weights with the adapter switched off), streamed token by token: the worker
thread posts a `Streamed` message per piece and the handler appends it to the pane.
Classification runs show each model's predicted label and probabilities instead.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, Static
from textual.worker import Worker, WorkerState, get_current_worker

SIDES = ("tuned", "base")
TITLES = {"tuned": "tuned (base + adapter)", "base": "base model"}
MAX_NEW_TOKENS = 256
TEMPERATURE = 0.7


@dataclass
class Streamed(Message):
    """A piece of one side's answer (threads post these; the handler draws)."""

    side: str
    text: str


@dataclass
class Answered(Message):
    """One side finished its answer."""

    side: str


@dataclass
class SessionReady(Message):
    """The models are loaded: what was loaded, in words."""

    description: str


class ChatPane(VerticalScroll, can_focus=False):
    """One model's side of the conversation."""

    DEFAULT_CSS = """
    ChatPane {
        width: 1fr;
        border: round $primary;
        padding: 0 1;
    }
    ChatPane > Static { width: 1fr; }
    """

    def __init__(self, side: str, **kwargs: Any) -> None:
        super().__init__(id=f"pane-{side}", **kwargs)
        self.side = side
        self.turns: list[tuple[str, str]] = []  # (role, text)
        self.border_title = TITLES[side]

    def compose(self) -> ComposeResult:
        yield Static(id=f"transcript-{self.side}")

    def add(self, role: str, text: str = "") -> None:
        self.turns.append((role, text))
        self.redraw()

    def append(self, text: str) -> None:
        role, old = self.turns[-1]
        self.turns[-1] = (role, old + text)
        self.redraw()

    def clear(self) -> None:
        self.turns.clear()
        self.redraw()

    def history(self) -> list[dict[str, str]]:
        """The chat so far as messages (notes left out), for the next question."""
        return [{"role": r, "content": t} for r, t in self.turns if r in ("user", "assistant")]

    def redraw(self) -> None:
        text = Text()
        for role, content in self.turns:
            if role == "user":
                text.append("you  ", style="bold cyan")
                text.append(content + "\n\n")
            elif role == "assistant":
                text.append("model  ", style="bold green")
                text.append((content or "…") + "\n\n")
            elif role == "error":
                text.append(content + "\n\n", style="bold red")
            else:
                text.append(content + "\n\n", style="dim")
        self.query_one(Static).update(text)
        self.scroll_end(animate=False)


class PlaygroundScreen(Screen):
    """Chat with a run's tuned model, its base model's answer beside it."""

    DEFAULT_CSS = """
    PlaygroundScreen #run-info { padding: 0 1; color: $text-muted; height: auto; }
    PlaygroundScreen #panes { height: 1fr; }
    PlaygroundScreen #ask { margin: 0 1; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+n", "new_chat", "New chat"),
        Binding("escape", "focus_input", "Type", show=False),
    ]

    def __init__(self, services: Any, run_dir: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.services = services
        self.run_dir: Path | None = Path(run_dir) if run_dir is not None else None
        self.session: Any = None
        self._session_lock = threading.Lock()
        self.busy = False

    def compose(self) -> ComposeResult:
        yield Static(id="run-info")
        with Horizontal(id="panes"):
            for side in SIDES:
                yield ChatPane(side)
        yield Input(placeholder="Ask both models (Enter sends)", id="ask")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#ask", Input).focus()
        self.show_run(self.run_dir)

    def show_run(self, run_dir: str | Path | None) -> None:
        """Open `run_dir` (drops the loaded models of the previous run)."""
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._close_session()
        for pane in self.query(ChatPane):
            pane.clear()
        info = self.query_one("#run-info", Static)
        if self.run_dir is None:
            info.update("No run open: pick a finished run on the runs screen (F4), then F6.")
            return
        info.update(f"Run {self.run_dir.name}: loading the models…")
        self._load()

    # -- workers (threads post messages; handlers draw) ------------------------------------
    @work(
        thread=True,
        exclusive=True,
        group="playground-load",
        name="load-models",
        exit_on_error=False,
    )
    def _load(self) -> None:
        session = self._ensure_session()
        adapter = getattr(session, "adapter", None)
        kind = "classifier" if getattr(session, "task", "") == "classification" else "chat"
        self.post_message(
            SessionReady(
                f"Run {self.run_dir.name} ({kind}): base {session.base}, weights {adapter}"
            )
        )

    @work(thread=True, exclusive=True, group="playground-ask", name="answer", exit_on_error=False)
    def _answer(self, question: str, histories: dict[str, list[dict[str, str]]]) -> None:
        worker = get_current_worker()
        session = self._ensure_session()
        if getattr(session, "task", "causal_lm") == "classification":
            for side in SIDES:
                (prediction,) = session.classify([question], use_adapter=side == "tuned")
                self.post_message(Streamed(side, _format_prediction(prediction)))
                self.post_message(Answered(side))
            return
        for side in SIDES:
            for piece in session.stream(
                histories[side],
                use_adapter=side == "tuned",
                max_new_tokens=MAX_NEW_TOKENS,
                temperature=TEMPERATURE,
            ):
                if worker.is_cancelled:
                    return
                self.post_message(Streamed(side, piece))
            self.post_message(Answered(side))

    def on_unmount(self) -> None:
        self._close_session()

    def _close_session(self) -> None:
        """Drop the session, loaded or loading; one with a process of its own stops it.

        Stopping a process takes a moment (it leaves by itself when its stdin closes), so it
        is done on a thread, off the event loop; if the app exits first, the closed pipe ends
        the process all the same.
        """
        session, self.session = self.session, None
        close = getattr(session, "close", None)
        if callable(close):
            threading.Thread(target=close, name="playground-close", daemon=True).start()

    def _ensure_session(self) -> Any:
        """The loaded session, loading it once even when a question races the first load.

        The session is kept before it has loaded, so opening another run (or leaving) while it
        loads closes it too, instead of leaving its process behind.
        """
        with self._session_lock:
            if self.session is None:
                session = self.services.chat_session(self.run_dir)
                self.session = session
                try:
                    if hasattr(session, "load"):
                        session.load()
                except BaseException:
                    if self.session is session:
                        self._close_session()
                    raise
            return self.session

    # -- handlers -------------------------------------------------------------------------
    @on(SessionReady)
    def _ready(self, message: SessionReady) -> None:
        self.query_one("#run-info", Static).update(message.description)

    @on(Streamed)
    def _streamed(self, message: Streamed) -> None:
        self.query_one(f"#pane-{message.side}", ChatPane).append(message.text)

    @on(Answered)
    def _answered(self, message: Answered) -> None:
        if message.side == SIDES[-1]:
            self.busy = False

    @on(Input.Submitted, "#ask")
    def _ask(self, event: Input.Submitted) -> None:
        question = event.value.strip()
        if not question:
            return
        if self.run_dir is None:
            self.notify("Open a run first (F4, then pick one).", severity="warning")
            return
        if self.busy:
            self.notify("Still answering; one question at a time.", timeout=2)
            return
        event.input.value = ""
        self.busy = True
        histories = {}
        for pane in self.query(ChatPane):
            pane.add("user", question)
            histories[pane.side] = pane.history()
            pane.add("assistant")
        self._answer(question, histories)

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if not (worker.group or "").startswith("playground") or event.state != WorkerState.ERROR:
            return
        if worker.is_cancelled:  # a load or an answer for a run no longer open
            return
        from affiner.tui.screens.assistant import readable

        self.busy = False
        text = f"Could not {'load the models' if worker.name == 'load-models' else 'answer'}: {readable(worker.error)}"
        for pane in self.query(ChatPane):
            pane.add("error", text)
        if worker.name == "load-models":
            self.query_one("#run-info", Static).update(text)

    def action_new_chat(self) -> None:
        for pane in self.query(ChatPane):
            pane.clear()

    def action_focus_input(self) -> None:
        self.query_one("#ask", Input).focus()


def _format_prediction(prediction: Any) -> str:
    """``fresh (0.91) · rotten 0.09``: the predicted label first, then every probability."""
    ranked = sorted(prediction.probabilities.items(), key=lambda item: -item[1])
    return f"{prediction.label}  " + " · ".join(f"{name} {p:.2f}" for name, p in ranked)
