"""The playground: ask the tuned model and its base model the same thing, side by side.

The chat session (`affiner.runner.inference.ChatProcess`, through `Services.chat_session`) loads
the base model and the run's adapter once, in a child process started from a thread worker:
the TUI never imports torch. The session is closed (its process stopped, its memory given
back) when another run is opened and when the screen goes away. Each question is answered
by the tuned model, then by the base model (the same loaded weights with the adapter
switched off), streamed token by token: the worker thread posts a `Streamed` message per
piece and the handler appends it to the transcript.

Answers are laid out in one scrolling transcript, a row per turn with the tuned answer on
the left and the base answer on the right, so the two sides of a turn always start on the
same line, however long the other side's previous answer was.

Classification runs show each model's predicted label and probabilities instead, under the
run's label names. When the base checkpoint was never a classifier, its head is new and
random: the base side says its scores are chance rather than presenting them as a result.

The playground follows the app's current run (`AffinerApp.current_run`): opened from the
monitor, or shown after the monitor switched runs, it loads that run. The generation settings
are shown above the answers and changed by typing ``/temp 0.2`` or ``/max 128``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, Static
from textual.worker import Worker, WorkerState, get_current_worker

# ChatPane is imported from here by tests and older callers, as it lived here before
from affiner.tui.widgets.side_by_side import SIDES, ChatPane, Transcript

MAX_NEW_TOKENS = 256
TEMPERATURE = 0.7
#: What ``/temp`` and ``/max`` accept.
TEMPERATURE_RANGE = (0.0, 2.0)
MAX_NEW_TOKENS_RANGE = (1, 4096)
ASK_PLACEHOLDER = "Ask both models (Enter sends; /temp 0.2, /max 128)"


@dataclass
class GenerationSettings:
    """How the chat models write their answers (a classifier has none).

    Attributes:
        temperature: 0 answers greedily (the same answer each time); above 0 samples.
        max_new_tokens: the longest answer, in tokens.
    """

    temperature: float = TEMPERATURE
    max_new_tokens: int = MAX_NEW_TOKENS

    def describe(self) -> str:
        how = "greedy" if self.temperature <= 0 else f"temperature {self.temperature:g}"
        return (
            f"generation: {how}, max {self.max_new_tokens} new tokens (/temp X, /max N change them)"
        )

    def change(self, command: str) -> str:
        """Apply ``/temp X`` or ``/max N``; return what changed, in words.

        Raises:
            ValueError: not one of the two commands, or a value out of range (the message
                says what is accepted).
        """
        name, _, value = command.strip().partition(" ")
        low, high = TEMPERATURE_RANGE if name in ("/temp", "/temperature") else MAX_NEW_TOKENS_RANGE
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if name in ("/temp", "/temperature"):
            if not low <= number <= high:
                raise ValueError(f"/temp takes a number from {low:g} to {high:g} (0 is greedy)")
            self.temperature = number
        elif name == "/max":
            if not (low <= number <= high and number == int(number)):
                raise ValueError(f"/max takes a whole number of tokens from {low} to {high}")
            self.max_new_tokens = int(number)
        else:
            raise ValueError("the commands are /temp X and /max N")
        return self.describe()


@dataclass
class Streamed(Message):
    """A piece of one side's answer (threads post these; the handler draws). `chat` is the
    conversation it answers: one the user has since cleared or left is dropped."""

    side: str
    text: str
    chat: int = 0


@dataclass
class Answered(Message):
    """One side finished its answer."""

    side: str
    chat: int = 0


@dataclass
class SessionReady(Message):
    """The models are loaded: what was loaded, in words, and what a classifier knows.

    Attributes:
        labels: the class names the answers use (empty for chat runs).
        base_head_untrained: the base side's classification head is random (None: unknown).
    """

    description: str
    classifier: bool = False
    labels: list[str] = field(default_factory=list)
    base_head_untrained: bool | None = None


class PlaygroundScreen(Screen):
    """Chat with a run's tuned model, its base model's answer beside it."""

    HELP = (
        "Ask the run's tuned model and its base model the same thing, side by side (a "
        "classifier shows both models' label scores), to see what the fine-tune changed. It "
        "follows the run the monitor shows. /temp X and /max N set the generation."
    )

    DEFAULT_CSS = """
    PlaygroundScreen #run-info { padding: 0 1; color: $text-muted; height: auto; }
    PlaygroundScreen #head-note { padding: 0 1; color: $warning; height: auto; display: none; }
    PlaygroundScreen #head-note.-shown { display: block; }
    PlaygroundScreen #headers { height: 1; padding: 0 1; }
    PlaygroundScreen #ask { margin: 0 1; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+n", "new_chat", "New chat"),
        Binding("pageup", "scroll('up')", "Scroll up", show=False),
        Binding("pagedown", "scroll('down')", "Scroll down", show=False),
        Binding("escape", "focus_input", "Type", show=False),
    ]

    def __init__(self, services: Any, run_dir: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.services = services
        self.run_dir: Path | None = Path(run_dir) if run_dir is not None else None
        self.session: Any = None
        self._session_lock = threading.Lock()
        self.busy = False
        #: the conversation shown: a new chat or another run starts the next one
        self.chat = 0
        self.generation = GenerationSettings()
        self.classifier = False
        self.base_head_untrained: bool | None = None
        self._description = ""

    def compose(self) -> ComposeResult:
        yield Static(id="run-info")
        yield Static(id="head-note")
        with Horizontal(id="headers"):
            for side in SIDES:
                yield ChatPane(side)
        yield Transcript(id="transcript")
        yield Input(placeholder=ASK_PLACEHOLDER, id="ask")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#ask", Input).focus()
        self.show_run(self.run_dir)

    def on_screen_resume(self) -> None:
        """Follow the app's current run: the monitor may have opened another since."""
        current = getattr(self.app, "current_run", None)
        if current is not None and Path(current) != self.run_dir:
            self.show_run(current)

    def show_run(self, run_dir: str | Path | None) -> None:
        """Open `run_dir` (drops the loaded models of the previous run)."""
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._new_conversation()
        self._close_session()
        self.classifier = False
        self.base_head_untrained = None
        self._description = ""
        self.query_one("#ask", Input).placeholder = ASK_PLACEHOLDER
        for pane in self.query(ChatPane):
            pane.clear()
        self.query_one(Transcript).clear()
        self.query_one("#head-note", Static).update("")
        self.query_one("#head-note", Static).remove_class("-shown")
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
        classifier = getattr(session, "task", "") == "classification"
        labels = [str(x) for x in getattr(session, "labels", None) or []] if classifier else []
        untrained = getattr(session, "base_head_untrained", None) if classifier else None
        kind = "classifier" if classifier else "chat"
        if labels:
            kind += f", labels {' · '.join(labels)}"
        self.post_message(
            SessionReady(
                f"Run {self.run_dir.name} ({kind}): base {session.base}, weights {adapter}",
                classifier=classifier,
                labels=labels,
                base_head_untrained=untrained,
            )
        )

    @work(thread=True, exclusive=True, group="playground-ask", name="answer", exit_on_error=False)
    def _answer(
        self,
        question: str,
        histories: dict[str, list[dict[str, str]]],
        settings: GenerationSettings,
        chat: int,
    ) -> None:
        worker = get_current_worker()
        session = self._ensure_session()
        if getattr(session, "task", "causal_lm") == "classification":
            for side in SIDES:
                (prediction,) = session.classify([question], use_adapter=side == "tuned")
                chance = side == "base" and getattr(session, "base_head_untrained", None) is True
                answer = format_prediction(prediction, chance=chance)
                self.post_message(Streamed(side, answer, chat))
                self.post_message(Answered(side, chat))
            return
        for side in SIDES:
            for piece in session.stream(
                histories[side],
                use_adapter=side == "tuned",
                max_new_tokens=settings.max_new_tokens,
                temperature=settings.temperature,
            ):
                if worker.is_cancelled:
                    return
                self.post_message(Streamed(side, piece, chat))
            self.post_message(Answered(side, chat))

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
        self.classifier = message.classifier
        self.base_head_untrained = message.base_head_untrained
        self._description = message.description
        self._show_info()
        self.query_one("#ask", Input).placeholder = (
            "Type a text to classify (Enter sends)" if self.classifier else ASK_PLACEHOLDER
        )
        note = ""
        if message.classifier and message.base_head_untrained:
            share = f"1/{len(message.labels)}" if message.labels else "an equal share"
            note = (
                "The base model was never a classifier: its head here is new and untrained, so "
                f"the base side's scores are chance (about {share} each), not a result."
            )
        head_note = self.query_one("#head-note", Static)
        head_note.update(note)
        head_note.set_class(bool(note), "-shown")

    @on(Streamed)
    def _streamed(self, message: Streamed) -> None:
        if message.chat == self.chat:
            self.query_one(f"#pane-{message.side}", ChatPane).append(message.text)

    @on(Answered)
    def _answered(self, message: Answered) -> None:
        if message.chat == self.chat and message.side == SIDES[-1]:
            self.busy = False

    @on(Input.Submitted, "#ask")
    def _ask(self, event: Input.Submitted) -> None:
        question = event.value.strip()
        if not question:
            return
        if question.startswith("/"):
            self._command(event.input, question)
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
        self._answer(question, histories, GenerationSettings(**vars(self.generation)), self.chat)

    def _command(self, field: Input, command: str) -> None:
        """``/temp X`` or ``/max N``: change how the next answers are written."""
        if self.classifier:
            self.notify("A classifier predicts labels: it has no generation settings.", timeout=4)
            return
        try:
            said = self.generation.change(command)
        except ValueError as error:
            self.notify(str(error), severity="warning", timeout=5)
            return
        field.value = ""
        self.notify(said, timeout=3)
        self._show_info()

    def _show_info(self) -> None:
        """What is loaded, and how the answers are written."""
        how = (
            "classifier: no generation settings" if self.classifier else self.generation.describe()
        )
        text = f"{self._description}\n{how}" if self._description else how
        self.query_one("#run-info", Static).update(text)

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
        self._new_conversation()
        for pane in self.query(ChatPane):
            pane.clear()
        self.query_one(Transcript).clear()

    def _new_conversation(self) -> None:
        """Stop answering the old conversation; what its thread still posts is dropped."""
        self.workers.cancel_group(self, "playground-ask")
        self.chat += 1
        self.busy = False

    def action_scroll(self, direction: str) -> None:
        transcript = self.query_one(Transcript)
        if direction == "up":
            transcript.scroll_page_up(animate=False)
        else:
            transcript.scroll_page_down(animate=False)

    def action_focus_input(self) -> None:
        self.query_one("#ask", Input).focus()


def format_prediction(prediction: Any, *, chance: bool = False) -> str:
    """``positive  (positive 0.93 · negative 0.07)``: the pick, then every probability.

    With `chance` (an untrained head) the line says so instead of presenting a pick.
    """
    ranked = sorted(prediction.probabilities.items(), key=lambda item: -item[1])
    scores = " · ".join(f"{name} {p:.2f}" for name, p in ranked)
    if chance:
        return f"chance, untrained head  ({scores})"
    return f"{prediction.label}  ({scores})"
