"""What the guided assistant answers with: messages to show (`Say`) and slow work for the
screen (`Task`), together one `Reply`.

They live apart from the step machine (`affiner.tui.assistant.flow`) so that every part of
the conversation (the steps there, the settings in `affiner.tui.assistant.knobs`) can build
a reply without importing the flow, and without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Say:
    """One message for the conversation. `kind` picks the widget: ``markdown`` (the text),
    ``data`` / ``histogram`` / ``example`` (a `DataPreview` in `data`), ``plan`` (the plan
    bars), ``settings`` (the settings form)."""

    text: str
    role: str = "affiner"
    kind: str = "markdown"
    data: Any = None


@dataclass
class Task:
    """Slow work for the screen: ``probe``, ``resolve_model`` (arg: ref), ``load_data``
    (arg: path), ``plan``, ``preflight`` (arg: RunConfig), ``launch`` (arg: RunConfig),
    ``open_monitor`` (arg: run folder), ``demo`` (arg: ``chat`` or ``classify``)."""

    kind: str
    arg: Any = None


@dataclass
class Reply:
    messages: list[Say] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)

    def __add__(self, other: Reply) -> Reply:
        return Reply(self.messages + other.messages, self.tasks + other.tasks)


def say(*texts: str) -> Reply:
    """A reply of plain messages, one a text."""
    return Reply([Say(t) for t in texts])
