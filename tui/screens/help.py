"""F1: what the screen underneath shows, its keys, the app's keys, and what the assistant understands.

Textual's own key panel lists the focused widget's keys first (an input's cursor keys), so the
keys that matter fall off the bottom at 80x24. This help is built from the screen it covers:
its ``HELP`` (Textual's Markdown help attribute; else its docstring), its own ``BINDINGS``
(hidden ones too: the footer has no room for them all), then the app's keys that screen
does not take over, and on the assistant screen the phrases it understands (`affiner.tui.assistant.answers.PHRASES`, the
same table its ``help`` prints). Nothing here names another screen's keys: a key added to a
screen appears in its help without touching this file.

It scrolls (arrows, PgUp/PgDn) and closes with Esc or F1, so it fits 80x24 however long it is.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from rich.console import Group, RenderableType
from rich.markdown import Markdown
from rich.table import Table
from rich.text import Text
from textual.actions import parse as parse_action
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.dom import DOMNode
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

#: How keys are written in the help (the rest as Textual names them, ``ctrl+r``).
KEY_WORDS = {
    "escape": "Esc",
    "enter": "Enter",
    "space": "Space",
    "tab": "Tab",
    "pageup": "PgUp",
    "pagedown": "PgDn",
    "up": "↑",
    "down": "↓",
    "left": "←",
    "right": "→",
    "home": "Home",
    "end": "End",
}


def key_words(key: str) -> str:
    """``f2`` → ``F2``, ``escape`` → ``Esc``; with a modifier as typed (``ctrl+home``)."""
    *modifiers, last = key.split("+")
    if last.startswith("f") and last[1:].isdigit():
        last = last.upper()
    elif not modifiers:
        last = KEY_WORDS.get(last, last)
    return "+".join([*modifiers, last])


@dataclass
class KeyRow:
    """One action and every key that runs it (``F2 · ctrl+t``)."""

    keys: list[str]
    description: str
    action: str


@dataclass
class HelpContent:
    """What the help shows for one screen, as data (tests read it without drawing)."""

    title: str
    about: str
    screen_keys: list[KeyRow] = field(default_factory=list)
    app_keys: list[KeyRow] = field(default_factory=list)
    commands: Sequence[tuple[str, str]] = ()


def describe(binding: Binding) -> str:
    """The footer's word for a key and, when it has one, its tooltip: ``Assist: the guided
    assistant``. The footer has room for one word; the help has room for the sentence."""
    words = binding.description.strip()
    tip = (binding.tooltip or "").strip()
    if not words:
        return tip or binding.action
    if not tip:
        return words
    if tip.lower().startswith(words.lower().rstrip("…")):
        return tip  # the sentence already starts with the word
    first = tip[0].lower() if tip[1:2].islower() else tip[0]  # "GPUs" keeps its capital
    return f"{words}: {first}{tip[1:]}"


def available(node: DOMNode | None, action: str) -> bool:
    """Whether `node` offers `action` now: a screen hides a key that does nothing in this state
    (Stop on a finished run) through ``check_action``, and the help follows it."""
    if node is None:
        return True
    _, name, params = parse_action(action)
    try:
        return node.check_action(name, params) is not False
    except Exception:  # a screen's check must not keep the help from opening
        return True


def key_rows(
    bindings: Iterable[BindingType],
    taken: set[str] | None = None,
    node: DOMNode | None = None,
) -> list[KeyRow]:
    """Bindings grouped by action, in their order; keys in `taken` (a screen's own) left out,
    and actions `node` says are unavailable now."""
    rows: dict[str, KeyRow] = {}
    for binding in Binding.make_bindings(bindings):
        if taken is not None and binding.key in taken:
            continue
        if not available(node, binding.action):
            continue
        description = describe(binding)
        row = rows.setdefault(binding.action, KeyRow([], description, binding.action))
        row.keys.append(key_words(binding.key))
    return list(rows.values())


def screen_about(screen: Screen) -> str:
    """The screen's ``HELP`` text, else its docstring (and its module's first paragraph when the
    docstring only points there)."""
    text = getattr(screen, "HELP", None)
    if isinstance(text, str) and text.strip():
        return inspect.cleandoc(text)
    doc = inspect.getdoc(type(screen)) or ""
    if "module docstring" in doc or not doc:
        module = inspect.getmodule(type(screen))
        module_doc = inspect.getdoc(module) if module is not None else None
        if module_doc:
            return module_doc.split("\n\n")[0].replace("\n", " ")
    return doc.replace("\n\n", "\0").replace("\n", " ").replace("\0", "\n\n")


def help_content(
    screen: Screen,
    app: App,
    *,
    title: str,
    extra_app_keys: Sequence[BindingType] = (),
    commands: Sequence[tuple[str, str]] = (),
) -> HelpContent:
    """The help for `screen`: its text and keys, then the app's keys it leaves to the app.

    Args:
        screen: the screen the help covers.
        app: whose ``BINDINGS`` follow the screen's.
        title: the screen's name as the user knows it (``Hardware``).
        extra_app_keys: app keys Textual adds itself (the command palette), written out.
        commands: phrases typed into the screen, with what each does (the assistant's).
    """
    own = list(type(screen).BINDINGS)
    taken = {binding.key for binding in Binding.make_bindings(own)}
    return HelpContent(
        title=title,
        about=screen_about(screen),
        screen_keys=key_rows(own, node=screen),
        app_keys=key_rows([*type(app).BINDINGS, *extra_app_keys], taken, node=app),
        commands=commands,
    )


def _key_table(rows: Sequence[KeyRow]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True, min_width=12)
    table.add_column(ratio=1)
    for row in rows:
        table.add_row(" · ".join(row.keys), row.description)
    return table


def render_help(content: HelpContent) -> RenderableType:
    """The help as one Rich renderable: sections with a bold heading each."""
    # HELP is Markdown in Textual (DOMNode.HELP); docstrings read well as Markdown too.
    parts: list[RenderableType] = [Markdown(content.about), Text()]
    if content.screen_keys:
        parts += [
            Text("Keys on this screen", style="bold underline"),
            _key_table(content.screen_keys),
        ]
        parts.append(Text())
    parts += [Text("Keys everywhere", style="bold underline"), _key_table(content.app_keys)]
    if content.commands:
        parts += [Text(), Text("What you can type here", style="bold underline")]
        table = Table.grid(padding=(0, 2))
        table.add_column(ratio=3)
        table.add_column(ratio=2)
        for phrases, what in content.commands:
            table.add_row(Text(phrases, style="bold"), what)
        parts.append(table)
    return Group(*parts)


class HelpScreen(ModalScreen[None]):
    """The help for the screen under it; Esc or F1 closes it, the arrows and PgUp/PgDn scroll."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 100; max-width: 100%; height: auto; max-height: 100%;
        border: round $accent; padding: 0 1; background: $surface;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,f1", "close", "Close help"),
        Binding("q", "close", "Close help", show=False),
    ]

    def __init__(self, content: HelpContent) -> None:
        super().__init__()
        self.content = content

    def compose(self) -> ComposeResult:
        body = VerticalScroll(id="help-body")
        body.border_title = f"Help: {self.content.title}"
        body.border_subtitle = "Esc/F1 close · ↑↓ PgUp PgDn scroll"
        with body:
            yield Static(render_help(self.content), id="help-text")

    def on_mount(self) -> None:
        self.query_one("#help-body").focus()

    def action_close(self) -> None:
        self.dismiss(None)
