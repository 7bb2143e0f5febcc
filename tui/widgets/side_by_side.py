"""Two models' answers side by side, a row per turn, so both sides of a turn start on one line.

Two panes scrolling on their own drift apart as soon as one side writes longer answers than
the other: the third question sits at line 12 on the left and line 5 on the right. Here one
`Transcript` scrolls every turn, and each `TurnRow` holds both sides of one turn, as tall as
the longer of the two. A `ChatPane` is one side's column header and keeps that side's turns
(its conversation for the next question); it draws each turn into the transcript's row.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Static

SIDES = ("tuned", "base")
TITLES = {"tuned": "tuned (base + adapter)", "base": "base model"}


def turn_text(role: str, content: str) -> Text:
    """One turn as a cell shows it: who spoke, then what."""
    text = Text()
    if role == "user":
        text.append("you  ", style="bold cyan")
        text.append(content)
    elif role == "assistant":
        text.append("model  ", style="bold green")
        text.append(content or "…")
    elif role == "error":
        text.append(content, style="bold red")
    else:
        text.append(content, style="dim")
    return text


class TurnRow(Horizontal):
    """One turn of both sides: the tuned answer left, the base answer right, top-aligned."""

    DEFAULT_CSS = """
    TurnRow { height: auto; margin-bottom: 1; }
    TurnRow > Static { width: 1fr; padding: 0 1; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[str, Text] = {side: Text() for side in SIDES}

    def compose(self) -> ComposeResult:
        for side in SIDES:
            yield Static(self.cells[side], classes=f"cell-{side}")

    def show(self, side: str, role: str, content: str) -> None:
        """Set one side's cell (drawn now, or when the row is composed)."""
        self.cells[side] = turn_text(role, content)
        for cell in self.query(f".cell-{side}").results(Static):
            cell.update(self.cells[side])


class Transcript(VerticalScroll, can_focus=False):
    """Every turn of the chat, both sides in one scroll (see the module docstring)."""

    DEFAULT_CSS = """
    Transcript { height: 1fr; width: 100%; border: round $primary; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rows: list[TurnRow] = []

    def show(self, index: int, side: str, role: str, content: str) -> None:
        while len(self.rows) <= index:
            row = TurnRow()
            self.rows.append(row)
            self.mount(row)
        self.rows[index].show(side, role, content)
        self.scroll_end(animate=False)

    def clear(self) -> None:
        self.rows.clear()
        self.query(TurnRow).remove()


class ChatPane(Static):
    """One model's side: its column header, and the turns it has had (drawn by `Transcript`)."""

    DEFAULT_CSS = """
    ChatPane { width: 1fr; padding: 0 1; text-style: bold; color: $primary; }
    """

    def __init__(self, side: str, **kwargs: Any) -> None:
        super().__init__(TITLES[side], id=f"pane-{side}", **kwargs)
        self.side = side
        self.turns: list[tuple[str, str]] = []  # (role, text)

    def add(self, role: str, text: str = "") -> None:
        self.turns.append((role, text))
        self._draw(len(self.turns) - 1)

    def append(self, text: str) -> None:
        role, old = self.turns[-1]
        self.turns[-1] = (role, old + text)
        self._draw(len(self.turns) - 1)

    def clear(self) -> None:
        self.turns.clear()

    def history(self) -> list[dict[str, str]]:
        """The chat so far as messages (notes left out), for the next question."""
        return [{"role": r, "content": t} for r, t in self.turns if r in ("user", "assistant")]

    def _draw(self, index: int) -> None:
        role, text = self.turns[index]
        self.screen.query_one(Transcript).show(index, self.side, role, text)
