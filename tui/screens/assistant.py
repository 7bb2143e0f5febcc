"""The first screen: a guided conversation from "what do I have" to a running fine-tune.

This first version shows the hardware found and takes typed input; the full step machine
lives in `tui.assistant_flow`.
"""

from __future__ import annotations

from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Input, Markdown


class AssistantScreen(Screen):
    """The guided assistant: messages above, one input line below."""

    def __init__(self, services: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.services = services

    def compose(self) -> ComposeResult:
        yield VerticalScroll(id="conversation")
        yield Input(placeholder="Type an answer or a question (help)", id="prompt")
        yield Footer()

    def on_mount(self) -> None:
        self._say("Looking at this machine…")
        self._probe()

    def _say(self, text: str) -> None:
        self.query_one("#conversation", VerticalScroll).mount(Markdown(text))

    @work(thread=True, name="probe-hardware", group="assistant", exit_on_error=False)
    def _probe(self) -> None:
        report = self.services.probe_hardware()
        names = ", ".join(g.name for g in report.gpus) or f"no GPU ({report.gpu_reason})"
        self.app.call_from_thread(self._say, f"Found: {names}.")

    @on(Input.Submitted, "#prompt")
    def _submitted(self, event: Input.Submitted) -> None:
        self._say(f"> {event.value}")
        event.input.value = ""
